"""Operational mistakes end in one line that names the file or field and the fix, never in a
traceback: exit 2 when the spec or the arguments must change, 1 when the machine must.

No Ray here: the specs only ingest (a few synthetic or generated images), so ``plan`` and
``run`` check and work in the test process.
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile
from pathlib import Path

import pytest

from sslpipe.datasets.sources import SyntheticShapesSource
from sslpipe.pipelines.cli.main import main


def _sslpipe(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str) -> str:
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def _spec(tmp_path: Path, source: dict, workdir: Path | None = None) -> Path:
    """A one-stage spec: line 2 is the workdir, line 6 the source."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"""name: ops
workdir: {workdir or tmp_path / "runs"}
stages:
  - name: ingest
    type: ingest
    source: {json.dumps(source)}
    val_fraction: 0.25
"""
    )
    return spec


def _images(folder: Path, count: int, names: str = "img{}.jpg", classes: bool = False) -> None:
    """``count`` small JPEGs in ``folder`` (``classes``: in a sub-folder per shape)."""
    source = SyntheticShapesSource(count, image_size=16, seed=0)
    for i, item in enumerate(source.items()):
        sub = folder / source.classes[item.label] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        (sub / names.format(f"{i + 1:08d}")).write_bytes(source.load(item).image)


def test_missing_data_path(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, {"kind": "image_folder", "path": str(tmp_path / "nowhere")})
    code, out, err = _sslpipe(capsys, "plan", str(spec))
    assert code == 1 and out == ""
    assert _one_line(err) == (
        f"{spec}:6:38: stages[0].source.path: {tmp_path / 'nowhere'} does not exist"
    )
    assert main(["validate", str(spec)]) == 0  # a spec for another machine still validates


def test_flat_folder_and_imagenet_val_get_their_hints(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "photos", 3)
    spec = _spec(tmp_path, {"kind": "image_folder", "path": str(tmp_path / "photos")})
    code, _, err = _sslpipe(capsys, "plan", str(spec))
    assert code == 2
    assert "holds images but no class folders: use kind: unlabelled_folder" in _one_line(err)

    _images(tmp_path / "val", 3, names="ILSVRC2012_val_{}.JPEG")
    spec = _spec(tmp_path, {"kind": "image_folder", "path": str(tmp_path / "val")})
    code, _, err = _sslpipe(capsys, "run", str(spec))
    assert code == 2
    line = _one_line(err)
    assert "ImageNet's flat val folder" in line and "kind: file_list" in line
    assert "LOC_val_solution.csv" in line
    assert not (tmp_path / "runs" / "ingest").exists()


def test_compressed_tar_and_wrong_kinds(tmp_path: Path, capsys) -> None:
    _images(tmp_path / "tree", 4, classes=True)
    plain = tmp_path / "images.tar"
    with tarfile.open(plain, "w") as archive:
        archive.add(tmp_path / "tree", arcname=".")
    packed = tmp_path / "images.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    cases = [
        ({"kind": "tar", "path": str(packed)}, "is gzip-compressed: decompress it"),
        ({"kind": "image_folder", "path": str(packed)}, "is gzip-compressed"),
        ({"kind": "image_folder", "path": str(plain)}, "is a tar archive: use kind: tar"),
        ({"kind": "tar", "path": str(tmp_path / "tree")}, "is a folder: use kind: image_folder"),
    ]
    for source, expected in cases:
        code, _, err = _sslpipe(capsys, "plan", str(_spec(tmp_path, source)))
        assert code == 2 and expected in _one_line(err), (source, err)
    code, out, _ = _sslpipe(
        capsys, "plan", str(_spec(tmp_path, {"kind": "tar", "path": str(plain)}))
    )
    assert code == 0 and out.split()[:2] == ["ingest", "run"]


def test_workdir_that_cannot_be_written(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    source = {"kind": "synthetic", "num_images": 8, "image_size": 16}
    for workdir, expected in [
        (blocker, f"{blocker} is a file; remove it or choose another workdir"),
        (blocker / "runs", f"{blocker / 'runs'} cannot be created: {blocker} is a file"),
    ]:
        spec = _spec(tmp_path, source, workdir)
        for command in ("plan", "run"):
            code, _, err = _sslpipe(capsys, command, str(spec))
            assert code == 1
            assert _one_line(err).startswith(f"{spec}:2:1: workdir: {expected}"), err
    if os.geteuid() != 0:  # root writes anywhere; a read-only folder only stops other users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        code, _, err = _sslpipe(capsys, "run", str(_spec(tmp_path, source, locked / "runs")))
        assert code == 1 and "is not writable" in _one_line(err)


def test_if_changed_failure_is_recorded_and_shown_by_status(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    _images(images, 8, classes=True)
    spec = _spec(tmp_path, {"kind": "image_folder", "path": str(images)})
    code, out, _ = _sslpipe(capsys, "run", str(spec), "--if-changed")
    assert code == 0 and "ops: all 1 stages succeeded (1 ran now)" in out
    images.rename(tmp_path / "moved")  # the data mount is gone one night
    code, _, err = _sslpipe(capsys, "run", str(spec), "--if-changed")
    assert code == 1 and "does not exist" in _one_line(err)
    checks = [json.loads(line) for line in (tmp_path / "runs" / "checks.jsonl").open()]
    assert [bool(c.get("error")) for c in checks] == [False, True]
    assert checks[1]["error"] == err.strip()
    code, out, _ = _sslpipe(capsys, "status", str(tmp_path / "runs"))
    assert code == 0
    assert out.splitlines()[-1] == (
        f"last --if-changed check {checks[1]['time']} failed: {checks[1]['error']}"
    )


def test_rejected_inputs_are_visible_in_summary_status_and_report(tmp_path: Path, capsys) -> None:
    images = tmp_path / "images"
    _images(images, 8, classes=True)
    (images / "disc" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    spec = _spec(tmp_path, {"kind": "image_folder", "path": str(images)})
    rejected = tmp_path / "runs" / "ingest" / "rejected.jsonl"
    note = f"1 input(s) rejected; reasons in {rejected}"
    code, out, _ = _sslpipe(capsys, "run", str(spec))
    assert code == 0 and note in out
    code, out, _ = _sslpipe(capsys, "status", str(tmp_path / "runs"))
    assert code == 0 and note in out and "rejected=1" in out
    code, out, _ = _sslpipe(capsys, "report", str(tmp_path / "runs"))
    page = (tmp_path / "runs" / "report.html").read_text()
    manifest = json.loads((tmp_path / "runs" / "ingest" / "manifest.json").read_text())
    for text in ("<th>spec</th><td>ops</td>", "sslpipe version", "not_an_image 1",
                 manifest["source_fingerprint"], "<td>disc</td>", str(images)):  # fmt: skip
        assert text in page, text


def test_debug_keeps_the_traceback(tmp_path: Path, capsys) -> None:
    code, _, err = _sslpipe(capsys, "ingest", "synthetic:4", "--out", "/dev/null/out")
    assert code == 1
    assert _one_line(err) == (
        "error: /dev/null/out/.partial: Not a directory (--debug prints the traceback)"
    )
    code, _, err = _sslpipe(capsys, "ingest", "synthetic:4", "--out", "/dev/null/out", "--debug")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == "error: /dev/null/out/.partial: Not a directory"


def test_registry_show_on_a_folder_that_is_not_a_registry(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    for folder, what in [(tmp_path, "is not a model registry"), (tmp_path / "x", "does not exist")]:
        code, _, err = _sslpipe(capsys, "registry", "show", str(folder))
        assert code == 2
        assert _one_line(err).startswith(f"error: {folder} {what}: a registry is")


def test_version_and_damaged_state(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("sslpipe 0.")
    state = tmp_path / "runs" / "ingest" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"status": "succ')  # a disk that filled up mid-write
    spec = _spec(tmp_path, {"kind": "synthetic", "num_images": 8, "image_size": 16})
    code, _, err = _sslpipe(capsys, "plan", str(spec))
    assert code == 1
    assert _one_line(err).startswith(f"error: {state} is damaged (")
    assert err.strip().endswith(f"delete {state.parent}")


def test_quiet_output_passes_our_lines_only(capsys) -> None:
    """What Ray hands the driver from its workers (a batch of lines, as Ray 2.6x sends it)."""
    from sslpipe.pipelines.run.ray_runtime import _print_our_lines

    _print_our_lines(
        {
            "pid": 4242,
            "actor_name": "TrainController",
            "is_err": True,
            "lines": [
                "[pretrain] step 3/18 (17%) epoch 1/3 loss 21.79, ETA 0m04s",
                "Requesting resources: {'CPU': 2} * 2",
                "[2026-12-03 11:21:53,702 E 17516 17568] core_worker.cc:2465: Actor with class "
                "name: 'PreemptionWatcher' has constructor arguments in the object store",
                "[probe] features 2/4",
            ],
        }
    )
    assert capsys.readouterr().out.splitlines() == [
        "[pretrain] step 3/18 (17%) epoch 1/3 loss 21.79, ETA 0m04s",
        "[probe] features 2/4",
    ]


def test_every_command_and_argument_has_help() -> None:
    import argparse

    from sslpipe.pipelines.cli.main import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    missing.extend([] if helps.get(name) else [f"{path} {name}"])
                    walk(sub, f"{path} {name}")
            elif not action.help and not isinstance(action, argparse._HelpAction):
                missing.append(f"{path} {action.dest}")

    walk(build_parser(), "sslpipe")
    assert missing == []


def test_methods_lists_defaults_views_and_loss_options(capsys) -> None:
    code, out, _ = _sslpipe(capsys, "methods")
    assert code == 0
    assert out.splitlines()[:2] == [
        "vicreg: views 'vicreg', projector [8192, 8192, 8192], lars at base_lr 0.2 (linear "
        "scaling), weight_decay 1e-06, cosine schedule after 10 warm-up epochs",
        '  loss: sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, eps=0.0001, loss_precision="fp32"',
    ]
    assert "barlow_twins: " in out and "lambd=0.0051" in out
    code, _, err = _sslpipe(capsys, "methods", "vicrg")
    assert code == 2 and _one_line(err).startswith(
        "error: methods: no method 'vicrg'; did you mean 'vicreg'?"
    )
    code, _, err = _sslpipe(capsys, "explain", "vicreg.loss.sim_coef")
    assert code == 2 and "did you mean 'sim_coeff'?" in _one_line(err)

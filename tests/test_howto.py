"""The how-to guides (``docs/howto/``, one page per task), as written: each block marked
``<!-- howto: NAME -->`` is read from its page and run against generated data (commands that
would train are validated and their data checked, which is what can go wrong in them; the
training itself is ``test_quickstart``'s). Every page has such blocks, and every block is
checked here."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from sslpipe.datasets.sources import SyntheticShapesSource
from sslpipe.pipelines.cli.main import build_parser, main
from sslpipe.pipelines.run.preflight import data_problems
from sslpipe.pipelines.spec.pipeline import load_spec
from sslpipe.pipelines.stages import STAGE_TYPES, StageConfig

REPO = Path(__file__).resolve().parents[1]
HOWTO = REPO / "docs" / "howto"
WNIDS = ("n01440764", "n01443537")
_BLOCK = r"<!-- howto: ([\w-]+) -->\n```\w+\n(.*?)```"
CHECKED = {
    "own-labelled", "own-unlabelled", "imagenet-val", "imagenet-spec", "gpu-check", "cluster",
    "nightly", "resume", "explain", "set",
}  # fmt: skip


def _blocks() -> dict[str, tuple[str, str]]:
    """Every how-to block: name → (page, text)."""
    return {
        name: (page.name, text)
        for page in sorted(HOWTO.glob("*.md"))
        for name, text in re.findall(_BLOCK, page.read_text(), re.DOTALL)
    }


def _block(name: str) -> str:
    assert name in _blocks(), f"docs/howto has no how-to block {name!r}"
    return _blocks()[name][1]


def test_every_page_has_checked_blocks_and_every_block_is_checked() -> None:
    blocks = _blocks()
    assert set(blocks) == CHECKED
    pages = {page for page, _ in blocks.values()}
    assert pages == {p.name for p in HOWTO.glob("*.md")}
    readme = (REPO / "README.md").read_text()
    assert all(f"(docs/howto/{page})" in readme for page in pages)


def _commands(name: str) -> list[list[str]]:
    """The ``sslpipe …`` command lines of a shell block, as argument lists."""
    text = _block(name).replace("\\\n", " ")
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    commands = []
    for words in (shlex.split(line) for line in lines):
        found = [i for i, w in enumerate(words) if w == "sslpipe" or w.endswith("bin/sslpipe")]
        commands += (
            [words[found[0] + 1 : words.index(">>") if ">>" in words else None]] if found else []
        )
    return commands


def _jpegs(count: int, seed: int = 0) -> list[bytes]:
    source = SyntheticShapesSource(count, image_size=16, seed=seed)
    return [source.load(item).image for item in source.items()]


def _tar_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_own_labelled_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for index, image in enumerate(_jpegs(6)):
        path = tmp_path / "data" / "photos" / f"class{index % 2}" / f"{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
    (command,) = _commands("own-labelled")
    assert command[0] == "run"
    args = build_parser().parse_args(command)
    spec = load_spec(REPO / args.spec, args.overrides)
    assert spec.stage("ingest").source.kind == "image_folder"
    assert data_problems(spec) == []


def test_own_unlabelled_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for index, image in enumerate(_jpegs(5)):
        path = tmp_path / "data" / "unlabelled" / f"day{index % 2}" / "cam" / f"{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
    (tmp_path / "spec.yaml").write_text(_block("own-unlabelled"))
    assert main(["validate", "spec.yaml"]) == 0
    ingest_only = "stages=[{name: ingest, type: ingest, val_fraction: 0, shard_size: 512MB, "
    ingest_only += "source: {kind: unlabelled_folder, path: data/unlabelled}}]"
    assert main(["run", "spec.yaml", "--set", ingest_only]) == 0
    manifest = json.loads(Path("runs/my_unlabelled/ingest/manifest.json").read_text())
    assert manifest["splits"]["train"]["class_counts"] == {"unlabelled": 5}


def test_imagenet_from_its_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _jpegs(6)
    train = {f"{WNIDS[i % 2]}_{i}.JPEG": image for i, image in enumerate(images[:4])}
    per_class = {
        f"{wnid}.tar": _tar_of({k: v for k, v in train.items() if k.startswith(wnid)})
        for wnid in WNIDS
    }
    (tmp_path / "ILSVRC2012_img_train.tar").write_bytes(_tar_of(per_class))
    val = {f"ILSVRC2012_val_0000000{i}.JPEG": image for i, image in enumerate(images[4:], 1)}
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(_tar_of(val))
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{WNIDS[1]} 10 20 30 40\n"
        f"ILSVRC2012_val_00000002,{WNIDS[0]} 1 2 3 4 {WNIDS[0]} 5 6 7 8\n"
    )
    env = {**os.environ, "SSLPIPE_IMAGENET": str(tmp_path)}
    subprocess.run(["bash", "-euc", _block("imagenet-val")], env=env, check=True, timeout=60)
    assert (tmp_path / "val.csv").read_text().splitlines() == [
        "path,label",
        f"val/ILSVRC2012_val_00000001.JPEG,{WNIDS[1]}",
        f"val/ILSVRC2012_val_00000002.JPEG,{WNIDS[0]}",
    ]
    monkeypatch.setenv("SSLPIPE_IMAGENET", str(tmp_path))
    monkeypatch.setenv("SSLPIPE_RUNS", str(tmp_path / "runs"))
    (tmp_path / "imagenet.yaml").write_text(_block("imagenet-spec"))
    spec = load_spec(tmp_path / "imagenet.yaml")
    assert data_problems(spec) == []
    for stage in ("ingest", "ingest_val"):
        assert spec.stage(stage).source.open().classes == list(WNIDS)
    # The flat folder itself is not a labelled image folder: plan says what to do instead.
    as_folder = '{kind: image_folder, path: "${SSLPIPE_IMAGENET}/val"}'
    flat = _block("imagenet-spec").replace(
        '{kind: file_list, path: "${SSLPIPE_IMAGENET}/val.csv"}', as_folder
    )
    (tmp_path / "flat.yaml").write_text(flat)
    (problem,) = data_problems(load_spec(tmp_path / "flat.yaml"))
    assert "ImageNet's flat val folder" in problem.message and problem.exit_code == 2


@pytest.mark.xfail(
    STAGE_TYPES["pretrain"].config.resource_request is StageConfig.resource_request,
    strict=True,
    reason="until the pretrain stage declares its Ray request (resource_request)",
)
def test_gpu_asked_where_there_is_none(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (command,) = _commands("gpu-check")
    assert main(["validate", *command[1:]]) == 0
    capsys.readouterr()
    assert main(command) == 1
    assert "asks for GPUs, but the Ray cluster has none" in capsys.readouterr().err


def test_cluster_and_nightly_commands_are_what_sslpipe_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    submit, status = _commands("cluster")
    args = build_parser().parse_args(submit)
    assert args.command == "submit" and not args.no_wait
    load_spec(args.spec, args.overrides)
    assert build_parser().parse_args(status).action == "status"
    (nightly,) = _commands("nightly")
    args = build_parser().parse_args(nightly)
    assert args.command == "run" and args.if_changed
    load_spec(args.spec, args.overrides)


def test_resume_and_discovery_commands_are_what_sslpipe_takes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    first, again, status = _commands("resume")
    assert first == again and build_parser().parse_args(first).command == "run"
    assert build_parser().parse_args(status).command == "status"
    for command in _commands("explain"):
        assert main(command) == 0, command
    out = capsys.readouterr().out
    assert "vicreg.loss.sim_coeff: default 25.0" in out and "barlow_twins 0.0051" in out
    (validate,) = _commands("set")
    assert main(validate) == 0

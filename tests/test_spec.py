"""Spec validation and composition: a corpus of broken specs, extends, ${VAR}, --set, DAG order.

Every file in ``tests/specs/broken/`` must fail with exactly the listed problems (line,
column, key path and message), all at once, exit code 2, no traceback.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sslpipe.pipelines.cli.main import main
from sslpipe.pipelines.errors import SpecError
from sslpipe.pipelines.run.preflight import data_problems
from sslpipe.pipelines.spec.pipeline import execution_order, load_spec
from sslpipe.pipelines.stages.ingest import shard_caps

REPO = Path(__file__).resolve().parents[1]
BROKEN = REPO / "tests" / "specs" / "broken"
EXAMPLES = REPO / "pipelines" / "examples"

EXPECTED: list[tuple[str, str]] = [
    ("01_empty.yaml", "1:1: the file is empty"),
    (
        "02_unclosed_bracket.yaml",
        "4:1: invalid YAML: expected the node content, but found '<stream end>'",
    ),
    ("03_top_level_list.yaml", "1:1: the top level must be a mapping"),
    ("04_duplicate_key.yaml", "3:1: name: duplicate key 'name'"),
    ("05_duplicate_stage.yaml", "7:5: stages[1].name: duplicate stage name 'ingest'"),
    ("06_misspelled_top_key.yaml", "1:1: stages: missing required key 'stages'"),
    ("06_misspelled_top_key.yaml", "3:1: stage: unknown key 'stage'; did you mean 'stages'?"),
    (
        "07_misspelled_stage_key.yaml",
        "10:5: stages[1].epoch: unknown key 'epoch'; did you mean 'epochs'?",
    ),
    (
        "08_wrong_type.yaml",
        "10:5: stages[1].epochs: expected a whole number, got 'ten'",
    ),
    ("09_negative_epochs.yaml", "10:5: stages[1].epochs: must be greater than 0, got -1"),
    (
        "10_unknown_stage_type.yaml",
        "8:5: stages[1].type: 'pretrian' is not allowed; did you mean 'pretrain'? (allowed: ingest, pretrain, probe, export)",
    ),
    (
        "11_unknown_method.yaml",
        "10:5: stages[1].method: 'vicregg' is not allowed; did you mean 'vicreg'? (allowed: vicreg, vicreg_exp, vicreg_ctr, barlow_twins, simclr, simclr_abs, simclr_sq, dcl, dclw, dcl_abs, dcl_sq, wmse, spectral, byol, simsiam, pirl, dino, mae)",
    ),
    (
        "12_unknown_backbone.yaml",
        "10:5: stages[1].backbone: 'resnet101' is not allowed; did you mean 'resnet50'? (allowed: small_cnn, resnet18, resnet34, resnet50, vit_tiny_patch16, vit_small_patch16, vit_base_patch16, vit_tiny_patch4, vit_small_patch4, vit_mini_patch4)",
    ),
    (
        "13_unknown_reference.yaml",
        "9:5: stages[1].data: no stage named 'ingst'; did you mean 'ingest'?",
    ),
    (
        "14_wrong_reference_type.yaml",
        "9:5: stages[1].model: stage 'ingest' has type ingest, expected a pretrain stage",
    ),
    ("15_missing_name.yaml", "1:1: name: missing required key 'name'"),
    ("16_missing_stage_field.yaml", "7:5: stages[1].data: missing required key 'data'"),
    ("17_no_stages.yaml", "3:1: stages: needs at least 1 item(s)"),
    (
        "18_python_tag.yaml",
        "1:7: name: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed (plain data only)",
    ),
    ("19_non_string_key.yaml", "3:1: keys must be strings, got 1"),
    (
        "20_extends_itself.yaml",
        "1:1: extends: extends forms a cycle: tests/specs/broken/20_extends_itself.yaml -> tests/specs/broken/20_extends_itself.yaml",
    ),
    (
        "21_extends_missing.yaml",
        "1:1: extends: no such file 'no_such_base.yaml' (relative paths are relative to the directory sslpipe runs in)",
    ),
    (
        "22_unset_variable.yaml",
        "2:1: workdir: environment variable SSLPIPE_TEST_SURELY_UNSET is not set (give a default: ${SSLPIPE_TEST_SURELY_UNSET:-\u2026})",
    ),
    (
        "23_bad_stage_name.yaml",
        "7:5: stages[1].name: 'Pre-Train' must be lowercase letters, digits and _, starting with a letter",
    ),
    ("24_batch_of_one.yaml", "10:5: stages[1].global_batch_size: must be greater than 1, got 1"),
    (
        "25_unknown_view_override.yaml",
        "11:7: stages[1].view_overrides.sise: unknown key 'sise'; did you mean 'size'?",
    ),
    (
        "26_promote_metric_of_other_stage.yaml",
        "14:5: stages[3]: promote.metric 'pretrain.loss' must name this export's probe stage (probe: probe)",
    ),
    (
        "27_unknown_probe_kind.yaml",
        "9:5: stages[1].model: stage 'ingest' has type ingest, expected a pretrain stage",
    ),
    (
        "27_unknown_probe_kind.yaml",
        "11:21: stages[1].kinds[1]: 'svm' is not allowed (allowed: linear, knn)",
    ),
    (
        "28_unknown_source_kind.yaml",
        "6:14: stages[0].source.kind: 's3bucket' is not allowed (allowed: synthetic, image_folder, unlabelled_folder, tar, file_list)",
    ),
    (
        "29_tab_indentation.yaml",
        "4:1: invalid YAML: a tab character: use spaces, not tabs",
    ),
    ("30_bad_extends_value.yaml", "1:1: extends: must be a file name or a list of file names"),
    (
        "31_wrong_optimizer.yaml",
        "10:5: stages[1].optimizer: 'lamb' is not allowed (allowed: lars, sgd, adam, adamw)",
    ),
    ("32_stages_not_list.yaml", "3:1: stages: expected a list of mappings, got a mapping"),
    (
        "33_loss_option_of_another_method.yaml",
        "11:5: stages[1].loss: 'sim_coeff' is not an option of barlow_twins's loss (allowed: lambd, loss_precision, scaling)",
    ),
    (
        "34_misspelled_loss_option.yaml",
        "11:5: stages[1].loss: 'lamda' is not an option of barlow_twins's loss; did you mean 'lambd'? (allowed: lambd, loss_precision, scaling)",
    ),
    (
        "35_merge_key.yaml",
        "11:5: stages[1]: YAML merge keys (<<) are not supported: put the shared settings in a base spec and write `extends: base.yaml`",
    ),
    (
        "36_billion_laughs.yaml",
        "8:5: more than 20,000 values once aliases are expanded; a spec is plain settings (is an alias repeating a large block?)",
    ),
    ("37_deep_nesting.yaml", "3:15: nested more than 32 levels deep"),
    (
        "38_not_utf8.yaml",
        "2:18: not UTF-8 text (byte 0xe9 cannot be decoded); save the file as UTF-8",
    ),
    ("39_alias_cycle.yaml", "3:9: an alias refers to the collection that contains it"),
    (
        "40_force_unknown_stage.yaml",
        "--force pretrian: no stage named 'pretrian'; did you mean 'pretrain'? (stages: ingest, pretrain)",
    ),
    (
        "40_force_unknown_stage.yaml",
        "--force report: no stage named 'report' (stages: ingest, pretrain)",
    ),
    (
        "41_set_unknown_stage.yaml",
        "--set stages.pretrian.epochs=1: stages: no item 'pretrian' in stages; did you mean 'pretrain'? (items: ingest, pretrain)",
    ),
    (
        "42_shard_size_unit.yaml",
        "7:5: stages[0].shard_size: '512XB': expected a sample count or bytes like 512MB",
    ),
    ("43_not_a_number.yaml", "7:5: stages[0].val_fraction: expected a finite number, got nan"),
    (
        "43_not_a_number.yaml",
        "11:5: stages[1].projector: expected a list of whole numbers, got 1024",
    ),
    (
        "43_not_a_number.yaml",
        "12:5: stages[1].view_overrides: expected a mapping (key: value), got a list of 2",
    ),
    (
        "44_missing_type.yaml",
        "4:5: stages[0]: missing required key 'type' (one of: export, ingest, pretrain, probe)",
    ),
    (
        "45_short_list.yaml",
        "10:22: stages[1].view_overrides.crop_scale: expected a list of 2 numbers, got a list of 1",
    ),
    (
        "46_batch_not_divisible.yaml",
        "11:5: stages[1].num_workers: global_batch_size 100 is not divisible by num_workers 8; each worker takes an equal share (e.g. 96 or 104)",
    ),
    (
        "47_pirl_without_jigsaw.yaml",
        "11:5: stages[1].views: pirl needs a jigsaw view (e.g. views: pirl)",
    ),
    (
        "48_wmse_window_over_batch.yaml",
        "13:5: stages[1].loss: w_size 128 must divide global_batch_size 64 (W-MSE whitens sub-batches of w_size samples)",
    ),
    (
        "49_views_of_another_size.yaml",
        "11:5: stages[1].views: vicreg takes 2 image view(s), the views of 'multicrop' give 8",
    ),
    (
        "50_view_index_out_of_range.yaml",
        "12:9: stages[1].views[1]: index 2: preset 'vicreg' has 2 views",
    ),
    (
        "51_view_override_out_of_range.yaml",
        "13:5: stages[1].view_overrides: view_overrides.view 2: there are 2 views",
    ),
    (
        "52_elastic_range_not_dividing.yaml",
        "11:5: stages[1].num_workers: {min: 3, max: 8}: an elastic group takes only sizes that "
        "divide global_batch_size 256 (each worker an equal share), and min and max must be "
        "such sizes; sizes allowed in this range: 4, 8",
    ),
    (
        "60_crop_area_in_percent.yaml",
        "10:22: stages[1].view_overrides.crop_scale: [30, 100]: areas are fractions of the "
        "image, in (0, 1]; written in percent? [0.3, 1]",
    ),
    (
        "61_crop_area_reversed.yaml",
        "10:22: stages[1].view_overrides.crop_scale: [1, 0.3]: the smaller value comes first: "
        "[0.3, 1]",
    ),
    (
        "62_negative_blur_sigma.yaml",
        "11:26: stages[1].views[0].blur_sigma: [-1, 2]: both must be at least 0",
    ),
    (
        "63_warmup_longer_than_run.yaml",
        "11:5: stages[1].warmup_epochs: warm-up of 20 epochs must be shorter than the run "
        "(epochs: 10)",
    ),
    (
        "64_lr_drop_outside_run.yaml",
        "12:5: stages[1].lr_drop_epochs: drops [50] epochs before the end fall outside the run "
        "(epochs: 10); each must be below 10",
    ),
    (
        "65_absurd_magnitudes.yaml",
        "6:48: stages[0].source.image_size: must be at most 4096, got 100000",
    ),
    (
        "65_absurd_magnitudes.yaml",
        "10:5: stages[1].epochs: must be at most 10000, got 1000000000000",
    ),
    (
        "65_absurd_magnitudes.yaml",
        "11:5: stages[1].global_batch_size: must be at most 1048576, got 1000000000",
    ),
    ("65_absurd_magnitudes.yaml", "12:5: stages[1].dali_threads: must be at most 256, got 100000"),
    (
        "65_absurd_magnitudes.yaml",
        "13:22: stages[1].view_overrides.size: must be at most 4096, got 100000",
    ),
    (
        "66_promote_metric_not_written.yaml",
        "19:35: stages[3].promote.metric: probe stage 'probe' writes no metric 'top_1'; did you "
        "mean 'top1'? (its metrics: top1)",
    ),
    (
        "67_promote_metric_of_baseline_off.yaml",
        "19:35: stages[3].promote.metric: probe stage 'probe' writes no metric "
        "'top1_random_init' (its metrics: top1)",
    ),
    ("68_probe_bounds.yaml", "14:13: stages[2].knn_k[0]: must be greater than 0, got 0"),
    ("68_probe_bounds.yaml", "15:5: stages[2].batch_size: must be at most 1048576, got 100000000"),
    (
        "70_worker_counts_and_seeds.yaml",
        "10:5: stages[1].num_workers: must be greater than 0, got 0",
    ),
    ("70_worker_counts_and_seeds.yaml", "11:5: stages[1].seed: must be at least 0, got -1"),
    (
        "70_worker_counts_and_seeds.yaml",
        "12:23: stages[1].projector[1]: must be greater than 0, got 0",
    ),
    (
        "70_worker_counts_and_seeds.yaml",
        "17:5: stages[2].num_workers: expected a whole number, got a list of 1",
    ),
    (
        "69_set_mistakes.yaml",
        "--set pretrain.view_overrides.crop_scale=[30,100]: stages[1].view_overrides.crop_scale: "
        "[30, 100]: areas are fractions of the image, in (0, 1]; written in percent? [0.3, 1]",
    ),
    (
        "69_set_mistakes.yaml",
        "--set pretrian.epochs=5: unknown key 'pretrian'; did you mean 'stages.pretrain.epochs'? "
        "(a path starts with name, workdir, stages or a stage's name: ingest, pretrain)",
    ),
    (
        "69_set_mistakes.yaml",
        "--set stages.pretrain.epoch=5: stages[1].epoch: unknown key 'epoch'; did you mean "
        "'epochs'?",
    ),
]


def test_the_corpus_is_complete() -> None:
    files = sorted(p.name for p in BROKEN.glob("*.yaml"))
    assert files == sorted({name for name, _ in EXPECTED})
    assert len(files) >= 25


def _arguments(path: Path) -> list[str]:
    """The command-line arguments a corpus file names in its first line (``# args: …``)."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("latin-1")
    return first.removeprefix("# args:").split() if first.startswith("# args:") else []


@pytest.mark.parametrize("name", sorted({name for name, _ in EXPECTED}))
def test_broken_spec_reports_every_problem_with_its_position(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("SSLPIPE_TEST_SURELY_UNSET", raising=False)
    path = f"tests/specs/broken/{name}"
    started = time.perf_counter()
    assert main(["validate", path, *_arguments(REPO / path)]) == 2
    assert time.perf_counter() - started < 2  # bounded: a billion laughs is refused at once
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    want = [
        message if message.startswith("--") else f"{path}:{message}"
        for n, message in EXPECTED
        if n == name
    ]
    assert captured.err.splitlines() == want


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_validates(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    spec = load_spec(EXAMPLES / example)
    assert [s.name for s in execution_order(spec)]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BASE = """\
name: base
workdir: ${SSLPIPE_TEST_ROOT:-runs}/base
stages:
  - name: ingest
    type: ingest
    source: {kind: synthetic, num_images: 100, image_size: 32}
  - name: pretrain
    type: pretrain
    data: ingest
    epochs: 3
    view_overrides: {size: 16, crop_scale: [0.5, 1.0]}
"""


def test_extends_deep_merges_stages_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "base.yaml", BASE)
    child = _write(
        tmp_path / "child.yaml",
        """\
extends: base.yaml
name: child
stages:
  - name: pretrain
    epochs: 5
    view_overrides: {size: 24}
  - name: probe
    type: probe
    model: pretrain
    data: ingest
""",
    )
    spec = load_spec(child)
    assert spec.name == "child"
    assert [s.name for s in spec.stages] == ["ingest", "pretrain", "probe"]
    pretrain = spec.stage("pretrain")
    assert pretrain.epochs == 5
    assert pretrain.view_overrides.size == 24
    assert pretrain.view_overrides.crop_scale == (0.5, 1.0)  # kept from the base


def test_problems_in_a_base_point_into_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "base.yaml", BASE.replace("epochs: 3", "epochs: three"))
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\n")
    with pytest.raises(SpecError) as raised:
        load_spec(child)
    assert [str(p) for p in raised.value.problems] == [
        "base.yaml:10:5: stages[1].epochs: expected a whole number, got 'three'"
    ]


def test_extends_cycle_through_two_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    _write(tmp_path / "b.yaml", "name: b\nextends: a.yaml\n")
    with pytest.raises(SpecError) as raised:
        load_spec("a.yaml")
    assert (
        str(raised.value)
        == "b.yaml:2:1: extends: extends forms a cycle: a.yaml -> b.yaml -> a.yaml"
    )


def test_environment_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_path = _write(tmp_path / "spec.yaml", BASE.replace("epochs: 3", "epochs: ${EPOCHS:-7}"))
    monkeypatch.delenv("SSLPIPE_TEST_ROOT", raising=False)
    monkeypatch.delenv("EPOCHS", raising=False)
    spec = load_spec(spec_path)
    assert (spec.workdir, spec.stage("pretrain").epochs) == ("runs/base", 7)
    monkeypatch.setenv("SSLPIPE_TEST_ROOT", "/data/runs")
    monkeypatch.setenv("EPOCHS", "2")
    spec = load_spec(spec_path)
    assert (spec.workdir, spec.stage("pretrain").epochs) == ("/data/runs/base", 2)
    monkeypatch.setenv("EPOCHS", "two")
    with pytest.raises(SpecError, match=r"spec.yaml:10:5: stages\[1\].epochs: expected a whole"):
        load_spec(spec_path)
    literal = _write(tmp_path / "literal.yaml", BASE.replace("runs}/base", "runs}/$${HOME}"))
    assert load_spec(literal).workdir == "/data/runs/${HOME}"


def test_set_overrides_are_type_checked_like_the_file(tmp_path: Path) -> None:
    spec_path = _write(tmp_path / "spec.yaml", BASE)
    spec = load_spec(
        spec_path,
        ["stages.pretrain.epochs=9", "workdir=/tmp/x", "stages.1.view_overrides.size=48"],
    )
    assert spec.stage("pretrain").epochs == 9
    assert spec.workdir == "/tmp/x"
    assert spec.stage("pretrain").view_overrides.size == 48
    with pytest.raises(SpecError) as raised:
        load_spec(
            spec_path,
            ["stages.pretrain.epochs=many", "stages.pretrain.epoch=1", "stages.nope.x=1", "name"],
        )
    assert [str(p) for p in raised.value.problems] == [
        "--set name: expected --set path.to.key=value",
        "--set stages.nope.x=1: stages: no item 'nope' in stages (items: ingest, pretrain)",
        "--set stages.pretrain.epoch=1: stages[1].epoch: unknown key 'epoch'; "
        "did you mean 'epochs'?",
        "--set stages.pretrain.epochs=many: stages[1].epochs: expected a whole number, got 'many'",
    ]


def test_execution_order_follows_references_not_file_order() -> None:
    spec = load_spec(
        EXAMPLES / "quickstart.yaml",
        [],
    )
    names = [s.name for s in spec.stages]
    reordered = spec.model_copy(update={"stages": list(reversed(spec.stages))})
    assert [s.name for s in execution_order(reordered)] == names


def test_relative_paths_follow_one_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``extends`` and data paths alike are relative to the directory sslpipe runs in."""
    (tmp_path / "specs" / "base").mkdir(parents=True)
    (tmp_path / "data" / "cats").mkdir(parents=True)
    _write(tmp_path / "specs" / "base" / "base.yaml", BASE)
    child = _write(
        tmp_path / "specs" / "child.yaml",
        "extends: specs/base/base.yaml\nname: child\nstages:\n"
        "  - name: ingest\n    source: {kind: unlabelled_folder, path: data}\n",
    )
    monkeypatch.chdir(tmp_path)
    spec = load_spec("specs/child.yaml")
    assert data_problems(spec) == []
    monkeypatch.chdir(tmp_path / "specs")  # elsewhere, both point elsewhere
    with pytest.raises(SpecError) as raised:
        load_spec(child)
    assert str(raised.value).endswith(
        "extends: no such file 'specs/base/base.yaml' "
        "(relative paths are relative to the directory sslpipe runs in)"
    )


def test_size_and_units(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = _write(
        tmp_path / "big.yaml", "name: big\nworkdir: runs\nnotes: '" + "x" * 300_000 + "'\n"
    )
    started = time.perf_counter()
    assert main(["validate", str(big)]) == 2
    assert time.perf_counter() - started < 1
    assert capsys.readouterr().err == (
        f"{big}:1:1: {big.stat().st_size:,} bytes; a spec may have at most 262,144 (is this the right file? "
        "large lists belong in a data file the spec names)\n"
    )
    spec = load_spec(
        _write(
            tmp_path / "units.yaml",
            BASE.replace("    source:", "    shard_size: 512MB\n    source:"),
        )
    )
    ingest = spec.stage("ingest")
    assert shard_caps(ingest.shard_size, ingest.shard_bytes)[1] == 512_000_000
    assert shard_caps(ingest.shard_size, ingest.shard_bytes) == shard_caps("512MB", None)


def test_views_written_out_in_the_spec_reach_the_loader(tmp_path: Path) -> None:
    """``views:`` as a list (preset views with a field changed, repeats) and a
    ``view_overrides`` for one view: ``recipes()`` is what the loader gets."""
    spec = tmp_path / "views.yaml"
    spec.write_text(
        """name: views
workdir: runs
stages:
  - {name: ingest, type: ingest, source: {kind: synthetic, num_images: 100}}
  - name: pretrain
    type: pretrain
    data: ingest
    method: simclr
    views:
      - {preset: multicrop, index: 0, repeat: 2}
      - {preset: multicrop, index: 2, repeat: 4, solarize_p: 0.3}
    view_overrides: {view: 5, size: 64}
"""
    )
    recipes = load_spec(spec).stages[1].recipes()
    assert [r.size for r in recipes] == [224, 224, 96, 96, 96, 64]
    assert [r.solarize_p for r in recipes] == [0, 0, 0.3, 0.3, 0.3, 0.3]
    assert recipes[2].crop_scale == (0.05, 0.14)


def test_set_takes_stage_shorthand_when_no_top_level_key_has_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    spec = load_spec("tests/specs/tiny.yaml", ["pretrain.epochs=5", "workdir=elsewhere"])
    assert spec.stage("pretrain").epochs == 5 and spec.workdir == "elsewhere"
    with pytest.raises(SpecError) as raised:  # a mistake in a key the --set made is the --set's
        load_spec("tests/specs/tiny.yaml", ["stages.probe.view_overrides.size=16"])
    (problem,) = raised.value.problems
    assert str(problem).startswith(
        "--set stages.probe.view_overrides.size=16: stages[2].view_overrides: unknown key "
        "'view_overrides' (allowed keys: "
    )
    assert "knn_k, knn_temperature" in str(problem)  # the probe's keys, not the export's

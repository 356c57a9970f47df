"""The settings reference: ``docs/settings.md`` is what the models say today, the JSON Schema
accepts every example (editors check specs with it) and rejects what validate rejects, and
``sslpipe explain`` speaks of one setting."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from sslpipe.pipelines.cli.main import main
from sslpipe.pipelines.spec.compose import EXTENDS_KEY
from sslpipe.pipelines.spec.reference import json_schema, markdown
from sslpipe.pipelines.spec.yaml_source import load_yaml

REPO = Path(__file__).resolve().parents[1]


def test_docs_settings_is_current() -> None:
    written = (REPO / "docs" / "settings.md").read_text(encoding="utf-8")
    assert written == markdown(), "regenerate: sslpipe schema --markdown --out docs/settings.md"


def test_schema_accepts_the_examples_and_rejects_a_misspelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "--out", str(tmp_path / "spec.schema.json")]) == 0
    schema = json.loads((tmp_path / "spec.schema.json").read_text())
    assert schema == json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    for example in sorted((REPO / "pipelines" / "examples").glob("*.yaml")):
        data = load_yaml(example).data
        assert not list(validator.iter_errors(data)), example.name
        if EXTENDS_KEY not in data:  # a full spec: what the editor flags, validate flags too
            broken = {**data, "stages": [{**data["stages"][0], "shard_sise": 5}]}
            assert list(validator.iter_errors(broken)), example.name


def test_explain_a_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "ingest.val_fraction"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ingest.val_fraction: a number",
        "  default: 0.1",
        "  must be: at least 0, less than 1",
        "  stratified validation split",
    ]
    assert main(["explain", "ingest.source.tar"]) == 0
    assert "labelled" in capsys.readouterr().out
    assert main(["explain", "ingest.val_fractoin"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: explain: ingest has no setting 'val_fractoin'; did you mean")

"""sslpipe's Python API: the command line's code paths, called from Python.

    import sslpipe

    results = sslpipe.run("pipelines/examples/quickstart.yaml",
                          set={"stages.pretrain.epochs": 2}, force=["probe"])
    backbone, card = sslpipe.load_backbone("runs/quickstart")

``spec`` is a file (``extends`` and ``${VAR}`` as on the command line) or the spec as a
Python mapping; ``set`` maps ``path.to.key`` to a value (``--set``; a list of
``"path=value"`` strings works too). Mistakes raise ``SpecError`` (every problem, with its
position) or ``UserError`` (a one-line reason), the errors the command line prints. Importing
``sslpipe`` is light: torch, Ray and DALI load when a function needs them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from sslpipe.pipelines.errors import SpecError, UsageError, UserError
    from sslpipe.pipelines.run.runner import StageResult
    from sslpipe.pipelines.spec.pipeline import PipelineSpec

__all__ = [
    "SpecError",
    "UsageError",
    "UserError",
    "__version__",
    "ingest",
    "load_backbone",
    "plan",
    "run",
    "validate",
]

_ERRORS = ("SpecError", "UsageError", "UserError")


def __getattr__(name: str) -> Any:
    """The error classes and ``__version__``, on first use: ``import sslpipe.ssl_ops`` runs
    this file too, the objectives must not import pipeline code, and every ``sslpipe``
    command imports this before it can catch Ctrl-C (reading the version takes a while)."""
    if name in _ERRORS:
        from sslpipe.pipelines import errors

        return getattr(errors, name)
    if name == "__version__":
        from importlib.metadata import version

        return version("sslpipe")
    raise AttributeError(f"module 'sslpipe' has no attribute {name!r}")


Spec = str | Path | Mapping[str, Any]
Overrides = Mapping[str, Any] | Sequence[str] | None


def _overrides(values: Overrides) -> list[str]:
    """``--set`` arguments: ``"path=value"`` strings as given, a mapping's values as JSON (a
    subset of YAML, so numbers, strings, lists and mappings keep their type)."""
    if values is None:
        return []
    if isinstance(values, Mapping):
        return [f"{path}={json.dumps(value)}" for path, value in values.items()]
    return list(values)


def validate(spec: Spec, *, set: Overrides = None, force: Sequence[str] = ()) -> PipelineSpec:
    """The validated spec (``sslpipe validate``); raises ``SpecError`` with every problem."""
    from sslpipe.pipelines.spec.pipeline import load_spec

    return load_spec(spec if isinstance(spec, Mapping) else Path(spec), _overrides(set), force)


def plan(spec: Spec, *, set: Overrides = None, force: Sequence[str] = ()) -> list[StageResult]:
    """What ``run`` would do (``sslpipe plan``): per stage, ``.reason`` it would run, or None.

    Checks the data and the cluster as ``run`` does; writes nothing."""
    from sslpipe.pipelines.run.runner import plan_pipeline

    return plan_pipeline(validate(spec, set=set, force=force), tuple(force))


def run(
    spec: Spec,
    *,
    set: Overrides = None,
    force: Sequence[str] = (),
    if_changed: bool = False,
) -> list[StageResult]:
    """Run what is not up to date (``sslpipe run``); per stage, whether it ``.ran`` now, its
    ``.state`` (status, seconds, metrics) and ``.outputs``."""
    from sslpipe.pipelines.run.runner import run_pipeline

    pipeline = validate(spec, set=set, force=force)
    return run_pipeline(pipeline, force=tuple(force), if_changed=if_changed)


def ingest(
    source: str | Path,
    out: str | Path,
    *,
    shard_size: int | str = 10_000,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int | None = None,
    labelled: bool = True,
) -> dict[str, Any]:
    """Images → validated WebDataset shards in ``out`` (``sslpipe ingest``); the manifest.

    ``source``: an image folder, a ``.tar`` (also of per-class tars), a ``.csv``/``.jsonl``
    file list, or ``"synthetic:N"``; ``shard_size``: samples, or bytes like ``"512MB"``.
    """
    from sslpipe.pipelines.cli.datasets import ingest_images

    return ingest_images(
        str(source),
        Path(out),
        shard_size=str(shard_size),
        val_fraction=val_fraction,
        seed=seed,
        workers=(os.cpu_count() or 1) if workers is None else workers,
        labelled=labelled,
    )


def load_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A trained backbone (torch module, eval mode) and its model card, from a model registry
    (its ``latest``), a registry version, an export or pretrain stage folder, or a workdir
    with one such stage."""
    from sslpipe.pipelines.models.published import load_published_backbone

    return load_published_backbone(Path(path))

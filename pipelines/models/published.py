"""Find and load a published backbone: from a model registry, an export or pretrain stage's
folder, or a workdir (``sslpipe.load_backbone``). Torch loads only when a model is loaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError, UserError
from ..run.outputs import MODEL_CARD, MODEL_DESCRIPTION, SAFETENSORS_WEIGHTS
from ..run.store import RunStore
from .registry import ModelRegistry

if TYPE_CHECKING:
    from torch import nn

_KINDS = ("export", "pretrain")


def model_folder(path: Path) -> Path:
    """The folder holding a backbone: ``path`` itself, a registry's ``latest``, or the
    export (else pretrain) stage of a workdir."""
    if (path / MODEL_CARD).is_file() or (path / MODEL_DESCRIPTION).is_file():
        return path
    if ModelRegistry(path).is_registry():
        latest = ModelRegistry(path).latest()
        if latest is None:
            raise UserError(f"{path}: the registry has no promoted model yet")
        return latest
    states = RunStore(path).states() if path.is_dir() else {}
    done = {name: s.get("type") for name, s in states.items() if s.get("status") == "succeeded"}
    for kind in _KINDS:
        found = [name for name, stage_type in done.items() if stage_type == kind]
        if len(found) > 1:
            choices = ", ".join(str(path / name) for name in found)
            raise UsageError(f"{path} has {len(found)} finished {kind} stages; name one: {choices}")
        if found:
            return path / found[0]
    raise UsageError(
        f"{path}: not a model registry, an export or pretrain stage's folder, or a workdir "
        "with a finished one"
    )


def load_published_backbone(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone (eval mode) and its card: an export's ``model_card.json``, or for a
    pretrain stage its ``model.json``."""
    from .weights import ModelDescription, load_backbone, upgraded

    folder = model_folder(path)
    if not (folder / MODEL_CARD).is_file():
        backbone, description = load_backbone(folder)
        return backbone, description.model_dump(mode="json")
    from safetensors.torch import load_file

    card = json.loads((folder / MODEL_CARD).read_text())
    fields = upgraded(card)  # older cards too
    fields = {key: fields[key] for key in ModelDescription.model_fields if key in fields}
    backbone = ModelDescription.model_construct(**fields).build_backbone()
    backbone.load_state_dict(load_file(folder / SAFETENSORS_WEIGHTS))
    return backbone.eval(), card

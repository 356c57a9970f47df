"""The settings reference, from the spec's pydantic models (the one place defaults live):
the JSON Schema that editors use (``sslpipe schema``), one field explained
(``sslpipe explain pretrain.epochs``) and ``docs/settings.md`` (``sslpipe schema --markdown``).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .compose import EXTENDS_KEY, RELATIVE_PATHS
from .errors import UsageError, did_you_mean
from .spec import PipelineSpec, _tag_of, _union_members, describe
from .stages import STAGE_TYPES

SCHEMA_ID = "https://sslpipe.invalid/spec.schema.json"
_BOUNDS = {
    annotated_types.Gt: ("greater than", "gt"),
    annotated_types.Ge: ("at least", "ge"),
    annotated_types.Lt: ("less than", "lt"),
    annotated_types.Le: ("at most", "le"),
    annotated_types.MinLen: ("at least {} item(s)", "min_length"),
    annotated_types.MaxLen: ("at most {} item(s)", "max_length"),
}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file, ``extends`` included.

    A file that extends another may leave out what its base sets, and its stages may be
    partial (a name and the keys it changes), so the full checks apply without ``extends``.
    """
    schema = PipelineSpec.model_json_schema()
    stages = schema["properties"]["stages"]
    schema["properties"]["stages"] = {"type": "array", "description": stages["description"]}
    schema["properties"][EXTENDS_KEY] = {
        "description": "base spec file(s) this one is merged over; " + RELATIVE_PATHS,
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    partial = {"type": "object", "required": ["name"]}
    schema["if"] = {"required": [EXTENDS_KEY]}
    schema["then"] = {"properties": {"stages": {"items": partial}}}
    schema["else"] = {"required": schema.pop("required"), "properties": {"stages": stages}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's value is validated against (a union's, or a list's items')."""
    found = []
    for member in _union_members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            found.append(member)
        elif typing.get_origin(member) in (list, tuple, dict):
            found += [m for arg in typing.get_args(member) for m in _models(arg)]
    return found


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    return json.dumps(value, ensure_ascii=False)


def _bounds(field: FieldInfo) -> str:
    words = []
    for item in field.metadata:
        for kind, (text, attribute) in _BOUNDS.items():
            if isinstance(item, kind):
                value = getattr(item, attribute)
                words.append(text.format(value) if "{}" in text else f"{text} {value}")
        if getattr(item, "pattern", None):
            words.append(f"matching {item.pattern}")
    return ", ".join(words)


def _sections() -> Iterator[tuple[str, type[BaseModel], str]]:
    """``(title, model, intro)`` for the top level, each stage type and each nested block."""
    yield "spec", PipelineSpec, "The top level of a spec file."
    for name, stage_type in STAGE_TYPES.items():
        yield from _model_sections(name, stage_type.config)


def _model_sections(
    title: str, model: type[BaseModel]
) -> Iterator[tuple[str, type[BaseModel], str]]:
    yield title, model, (model.__doc__ or "").strip().split("\n\n")[0]
    for name, field in model.model_fields.items():
        members = _models(field.annotation)
        for member in members:
            tags = sorted(_tag_of(member))
            suffix = f" ({', '.join(f'kind: {t}' for t in tags)})" if len(members) > 1 else ""
            yield from _model_sections(f"{title}.{name}{suffix}", member)


def markdown() -> str:
    """``docs/settings.md``: every setting with its type, default, bounds and meaning."""
    lines = [
        "# Spec settings",
        "",
        "Generated from the spec models by `sslpipe schema --markdown` (do not edit; "
        "`tests/test_reference.py` checks it is current). "
        f"`sslpipe explain STAGE.FIELD` prints one of them; {RELATIVE_PATHS}.",
    ]
    for title, model, intro in _sections():
        lines += ["", f"## `{title}`", ""]
        lines += [intro, ""] if intro else []
        lines += ["| key | type | default | bounds | meaning |", "| --- | --- | --- | --- | --- |"]
        for name, field in model.model_fields.items():
            cells = [f"`{name}`", describe(field.annotation), f"`{_default(field)}`",
                     _bounds(field), field.description or ""]  # fmt: skip
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def explain(dotted: str) -> str:
    """One setting (``pretrain.global_batch_size``) or every setting of a block (``probe``,
    ``ingest.source``, ``export.promote``), in words."""
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        raise UsageError("explain: name a stage type or a setting, e.g. pretrain.epochs")
    if parts[0] in PipelineSpec.model_fields and parts[0] != "stages":
        models, prefix = [PipelineSpec], []
    elif parts[0] in STAGE_TYPES:
        models, prefix, parts = [STAGE_TYPES[parts[0]].config], [parts[0]], parts[1:]
    else:
        known = [*STAGE_TYPES, "name", "workdir"]
        raise UsageError(
            f"explain: no stage type or setting {parts[0]!r}{did_you_mean(parts[0], known)} "
            f"(stage types: {', '.join(STAGE_TYPES)}; top level: name, workdir)"
        )
    field: FieldInfo | None = None
    for part in parts:
        by_tag = [m for m in models if part in _tag_of(m)]
        if by_tag and field is not None:
            models, field = by_tag, None
        else:
            holders = [m for m in models if part in m.model_fields]
            if not holders:
                known = sorted({k for m in models for k in m.model_fields})
                where = ".".join(prefix) or "the top level"
                raise UsageError(
                    f"explain: {where} has no setting {part!r}{did_you_mean(part, known)} "
                    f"(settings: {', '.join(known)})"
                )
            field = holders[0].model_fields[part]
            models = _models(field.annotation) or models
        prefix.append(part)
    name = ".".join(prefix)
    if field is None:
        return _block(name, models)
    text = [f"{name}: {describe(field.annotation)}"]
    text.append(f"  default: {_default(field)}")
    if bounds := _bounds(field):
        text.append(f"  must be: {bounds}")
    if field.description:
        text.append(f"  {field.description}")
    nested = _models(field.annotation)
    if nested:
        text.append(_block(name, nested))
    return "\n".join(text)


def _block(name: str, models: list[type[BaseModel]]) -> str:
    text = []
    for model in models:
        tags = sorted(_tag_of(model))
        head = f"{name} ({', '.join(tags)})" if len(models) > 1 and tags else name
        text.append(f"{head}:")
        for key, field in model.model_fields.items():
            default = _default(field)
            meaning = f"  {field.description}" if field.description else ""
            text.append(f"  {key:<24} {describe(field.annotation)}; default {default}{meaning}")
    return "\n".join(text)

"""The settings reference, from the spec's pydantic models (the one place defaults live):
the JSON Schema that editors use (``sslpipe schema``), one field explained
(``sslpipe explain pretrain.epochs``) and ``docs/settings.md`` (``sslpipe schema --markdown``);
and the methods' defaults, views and loss options from their catalog cards (``sslpipe
methods``, ``sslpipe explain vicreg.loss.sim_coeff``).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from ..errors import UsageError, did_you_mean
from ..stages import STAGE_TYPES
from ..stages.pretrain import METHODS, MethodCard
from .compose import EXTENDS_KEY, RELATIVE_PATHS
from .pipeline import PipelineSpec, _tag_of, _union_members, describe

SCHEMA_ID = "https://sslpipe.invalid/spec.schema.json"
TOP_LEVEL = "spec"  # the top level's section name in docs/settings.md, and in explain
# pretrain fields whose keys are a method's: field → the card's mapping of their defaults
_METHOD_MAPPINGS = {"loss": "loss", "method_options": "options"}
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
    """The field's bounds in words: its own, a rule on its value (a validator's docstring, e.g.
    an ordered pair's), and its items' (a list's or a tuple's)."""
    words = _constraint_words(field.metadata)
    union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
    for member in typing.get_args(field.annotation) if union else (field.annotation,):
        if typing.get_origin(member) is typing.Annotated:  # e.g. AreaRange | None
            words += _constraint_words(typing.get_args(member)[1:])
            member = typing.get_args(member)[0]
        items = [a for a in typing.get_args(member) if a is not Ellipsis]
        if typing.get_origin(member) in (list, tuple) and items:
            item_words = _constraint_words(_annotated_metadata(items[0]))
            words += [f"each {', '.join(item_words)}"] if item_words else []
    return ", ".join(dict.fromkeys(words))


def _annotated_metadata(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is not typing.Annotated:
        return []
    found = []
    for item in typing.get_args(annotation)[1:]:
        found += item.metadata if isinstance(item, FieldInfo) else [item]
    return found


def _constraint_words(metadata: Any) -> list[str]:
    words = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            words += _constraint_words(item.metadata)
        for kind, (text, attribute) in _BOUNDS.items():
            if isinstance(item, kind):
                value = getattr(item, attribute)
                words.append(text.format(value) if "{}" in text else f"{text} {value}")
        if getattr(item, "pattern", None):
            words.append(f"matching {item.pattern}")
        rule = getattr(getattr(item, "func", None), "__doc__", None)
        if isinstance(item, AfterValidator) and rule:
            words.append(rule.strip())
    return words


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
    if parts == [TOP_LEVEL]:
        return _block(TOP_LEVEL, [PipelineSpec])
    if parts[:1] == [TOP_LEVEL]:  # spec.workdir, as docs/settings.md heads its first section
        parts = parts[1:]
    if not parts:
        raise UsageError("explain: name a stage type or a setting, e.g. pretrain.epochs")
    if parts[0] in PipelineSpec.model_fields and parts[0] != "stages":
        models, prefix = [PipelineSpec], []
    elif parts[0] in STAGE_TYPES:
        models, prefix, parts = [STAGE_TYPES[parts[0]].config], [parts[0]], parts[1:]
    elif parts[0] in METHODS:
        return _explain_method(METHODS[parts[0]], parts[1:])
    else:
        known = [*STAGE_TYPES, *METHODS, TOP_LEVEL, "name", "workdir"]
        raise UsageError(
            f"explain: no stage type, method or setting {parts[0]!r}"
            f"{did_you_mean(parts[0], known)} (stage types: {', '.join(STAGE_TYPES)}; "
            f"methods: sslpipe methods; top level: name, workdir)"
        )
    if prefix == ["pretrain"] and len(parts) == 2 and parts[0] in _METHOD_MAPPINGS:
        return _method_option(parts[0], parts[1])
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


def _card_value(value: Any) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _options(mapping: Any) -> str:
    return ", ".join(f"{k}={_card_value(v)}" for k, v in mapping.items()) or "none"


def method_card(card: MethodCard) -> str:
    """A method's defaults, views and options, as ``sslpipe methods`` prints them."""
    lines = [
        f"{card.name}: views {card.views!r}, projector {list(card.projector)}, "
        f"{card.optimizer} at base_lr {card.base_lr:g} ({card.lr_scaling} scaling), "
        f"weight_decay {card.weight_decay:g}, {card.lr_schedule} schedule after "
        f"{card.warmup_epochs:g} warm-up epochs",
        f"  loss: {_options(card.loss)}",
        f"  method_options: {_options(card.options)}",
    ]
    if card.source:
        lines.append(f"  from: {card.source}")
    return "\n".join(lines)


def methods(name: str | None = None) -> str:
    """Every method's card (``sslpipe methods``), or the one named."""
    if name is None:
        return "\n".join(method_card(card) for card in METHODS.values())
    if name not in METHODS:
        raise UsageError(
            f"methods: no method {name!r}{did_you_mean(name, METHODS)} "
            f"(methods: {', '.join(METHODS)})"
        )
    return method_card(METHODS[name])


def _explain_method(card: MethodCard, parts: list[str]) -> str:
    """``vicreg``, ``vicreg.loss``, ``vicreg.loss.sim_coeff``, ``vicreg.base_lr``."""
    if not parts:
        return method_card(card)
    mappings = {field: getattr(card, attribute) for field, attribute in _METHOD_MAPPINGS.items()}
    if parts[0] in mappings:
        mapping, where = mappings[parts[0]], f"{card.name}.{parts[0]}"
        if len(parts) == 1:
            return f"{where}: {_options(mapping)}"
        if parts[1] not in mapping:
            raise UsageError(
                f"explain: {card.name} has no {parts[0]} option {parts[1]!r}"
                f"{did_you_mean(parts[1], mapping)} ({parts[0]}: {', '.join(mapping) or 'none'})"
            )
        return (
            f"{where}.{parts[1]}: default {_card_value(mapping[parts[1]])}\n"
            f"  set it in a pretrain stage with method: {card.name} as "
            f"{parts[0]}: {{{parts[1]}: …}}"
        )
    fields = list(STAGE_TYPES["pretrain"].config.model_fields)
    if parts[0] in fields and hasattr(card, parts[0]) and len(parts) == 1:
        return (
            f"{card.name}.{parts[0]}: default {_card_value(getattr(card, parts[0]))} "
            f"(a pretrain stage with method: {card.name} that leaves {parts[0]} unset)"
        )
    known = [*_METHOD_MAPPINGS, *(f for f in fields if hasattr(card, f))]
    raise UsageError(
        f"explain: {card.name} has no default {'.'.join(parts)!r}"
        f"{did_you_mean(parts[0], known)} (its defaults: {', '.join(known)})"
    )


def _method_option(field: str, option: str) -> str:
    """``pretrain.loss.lambd``: the methods that take the option, with their defaults."""
    attribute = _METHOD_MAPPINGS[field]
    takers = {
        n: getattr(c, attribute)[option]
        for n, c in METHODS.items()
        if option in getattr(c, attribute)
    }
    if not takers:
        known = sorted({k for c in METHODS.values() for k in getattr(c, attribute)})
        raise UsageError(
            f"explain: no method takes the {field} option {option!r}"
            f"{did_you_mean(option, known)}; `sslpipe methods` lists each method's"
        )
    defaults = ", ".join(f"{n} {_card_value(v)}" for n, v in takers.items())
    return (
        f"pretrain.{field}.{option}: an option of the method's {field}; default by method: "
        f"{defaults}\n  `sslpipe explain METHOD.{field}` lists a method's {field} options"
    )

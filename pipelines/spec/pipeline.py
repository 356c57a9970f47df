"""Pipeline specs: YAML → validated ``PipelineSpec``, or every problem with its file position.

The schema is the set of stage config models registered in ``stages.STAGE_TYPES``; each
model's field defaults and descriptions are the one place where defaults are documented.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from ..errors import SPEC_EXIT, Problem, SpecError, did_you_mean
from ..stages import STAGE_TYPES, StageConfig
from .compose import compose, stage_names
from .yaml_source import KeyPath, YamlDocument, format_path

AnyStage = Annotated[
    typing.Union[tuple(t.config for t in STAGE_TYPES.values())],  # noqa: UP007
    Field(discriminator="type"),
]


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the pipeline's name, shown in summaries, checks and reports",
    )
    workdir: str = Field(
        description="stage outputs go to <workdir>/<stage>/; a path every node sees on a cluster"
    )
    stages: list[AnyStage] = Field(min_length=1, description="the stages, in any order")
    _source: YamlDocument | None = PrivateAttr(None)

    def stage(self, name: str) -> StageConfig:
        return next(s for s in self.stages if s.name == name)

    def problem(self, path: KeyPath, message: str, exit_code: int = SPEC_EXIT) -> Problem:
        """A problem at ``path`` (e.g. ``("stages", 0, "source", "path")``), at the place in
        the files or ``--set`` arguments that set it when the spec was loaded from them."""
        if self._source is None:
            return Problem(self.name, 0, 0, format_path(path), message, exit_code)
        if names := self._source.defaulted.get(path):
            message += f" ({', '.join(names)} not set, so the spec's default was used)"
        return replace(self._source.problem(path, message), exit_code=exit_code)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is Annotated:
        return _union_members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _tag_of(model: type[BaseModel]) -> set[str]:
    tags: set[str] = set()
    for tag_field in ("type", "kind"):
        if tag_field in model.model_fields:
            tags |= set(typing.get_args(model.model_fields[tag_field].annotation))
    return tags


def _candidates(loc: tuple[str | int, ...]) -> tuple[Any, ...]:
    """The annotations that the value at ``loc`` is validated against (union tags skipped)."""
    candidates: tuple[Any, ...] = (PipelineSpec,)
    for part in loc:
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        sequences = [c for c in candidates if typing.get_origin(c) in (list, tuple)]
        if isinstance(part, int) and sequences:
            args = typing.get_args(sequences[0])
            candidates = _union_members(args[min(part, len(args) - 1)] if args else Any)
        elif len(models) > 1 and any(part in _tag_of(m) for m in models):
            # a union's tag (``probe``), also when another member has a field of that name
            candidates = tuple(m for m in models if part in _tag_of(m))
        elif models and any(part in m.model_fields for m in models):
            model = next(m for m in models if part in m.model_fields)
            candidates = _union_members(model.model_fields[part].annotation)
        else:
            return ()
    return candidates


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the model that the mapping at ``loc`` is validated against."""
    models = [c for c in _candidates(loc) if isinstance(c, type) and issubclass(c, BaseModel)]
    return list(models[0].model_fields) if len(models) == 1 else []


_WORDS: dict[Any, tuple[str, str]] = {
    int: ("a whole number", "whole numbers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "true/false values"),
    str: ("a string", "strings"),
}


def describe(annotation: Any) -> str:
    """An annotation in the user's words: ``list[float]`` → "a list of numbers"."""
    members = [m for m in _union_members(annotation) if m is not type(None)]
    if len(members) != 1:
        return " or ".join(dict.fromkeys(describe(m) for m in members)) or "null"
    (annotation,) = members
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:  # a type with bounds or validators: the type's words
        return describe(args[0])
    if annotation in _WORDS:
        return _WORDS[annotation][0]
    if origin is typing.Literal:
        return str(args[0]) if len(args) == 1 else "one of " + ", ".join(str(a) for a in args)
    if origin in (list, tuple):
        items = [
            typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a
            for a in args
            if a is not Ellipsis
        ]
        word = _WORDS.get(items[0], ("", "values"))[1] if items else "values"
        if items and describe(items[0]).startswith("a mapping"):
            word = "mappings"
        fixed = origin is tuple and Ellipsis not in args
        return f"a list of {len(args)} {word}" if fixed else f"a list of {word}"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "a mapping (key: value)"
    return getattr(annotation, "__name__", str(annotation))


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return repr(value)


def _expected(loc: tuple[str | int, ...], value: Any) -> str:
    wanted = [describe(c) for c in _candidates(loc) if c is not type(None)]
    what = " or ".join(dict.fromkeys(wanted)) if wanted else "another kind of value"
    return f"expected {what}, got {_kind_of(value)}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# The spec's name patterns in words.
_PATTERNS = {
    r"^[a-z][a-z0-9_]*$": "lowercase letters, digits and _, starting with a letter",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*$": "letters, digits, _ . and -, starting with a letter or digit",
    r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_@]+$": "<probe stage>.<metric>, e.g. probe.top1",
}


# pydantic's error types → the user's words (``e``: pydantic's error dict).
def _bound(words: str, key: str) -> Callable[[dict[str, Any]], str]:
    return lambda e: f"must be {words} {_number(e['ctx'][key])}, got {e['input']!r}"


_MESSAGES: dict[str, Callable[[dict[str, Any]], str]] = {
    "greater_than": _bound("greater than", "gt"),
    "greater_than_equal": _bound("at least", "ge"),
    "less_than": _bound("less than", "lt"),
    "less_than_equal": _bound("at most", "le"),
    "too_short": lambda e: f"needs at least {e['ctx']['min_length']} item(s)",
    "too_long": lambda e: f"takes at most {e['ctx']['max_length']} item(s)",
    "finite_number": lambda e: f"expected a finite number, got {e['input']!r}",
    "string_pattern_mismatch": lambda e: (
        f"{e['input']!r} must be {_PATTERNS.get(e['ctx']['pattern'], e['ctx']['pattern'])}"
    ),
    "int_from_float": lambda e: f"expected a whole number, got {e['input']!r}",
}
_TYPE_ERRORS = {
    "int_parsing", "int_type", "float_parsing", "float_type", "bool_parsing", "bool_type",
    "string_type", "list_type", "tuple_type", "dict_type", "model_type",
    "model_attributes_type", "literal_error", "enum",
}  # fmt: skip


def _document_path(doc: YamlDocument, loc: tuple[str | int, ...], kind: str = "") -> KeyPath:
    """Drop the union tags pydantic puts into ``loc``: a discriminated union's (e.g.
    ``stages.0.pretrain.epochs``) and a plain union's member names (``num_workers.WorkerRange
    .min``, ``num_workers.constrained-int``): a key the data does not have, unless it is the
    missing key an error is about."""
    path: list[str | int] = []
    node: Any = doc.data
    for depth, part in enumerate(loc):
        missing = kind == "missing" and depth == len(loc) - 1
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
        elif isinstance(node, dict) and part in (node.get("type"), node.get("kind")):
            continue
        elif isinstance(part, str) and not missing and node is not None and depth:
            continue  # a member of a union (nothing below a scalar, no such key in a mapping)
        else:
            node = None
        path.append(part)
    return tuple(path)


def _union_problems(doc: YamlDocument, errors: list[dict[str, Any]]) -> list[Problem]:
    """Each error as a problem; of a plain union's members, only the errors of those that fit
    the kind of value given (``num_workers: 0`` is a number too small, not a mapping), or, when
    none fits, one line naming every kind the union takes."""
    found = [(_document_path(doc, tuple(e["loc"]), e["type"]), e) for e in errors]

    def member_of_other_kind(path: KeyPath, error: dict[str, Any]) -> bool:
        return error["type"] in _TYPE_ERRORS and path[-1:] != tuple(error["loc"][-1:])

    fitting = [(path, e) for path, e in found if not member_of_other_kind(path, e)]
    problems = [_problem_from_pydantic(doc, e) for _, e in fitting]
    unfit = {path: e for path, e in reversed(found) if member_of_other_kind(path, e)}
    for path, error in unfit.items():
        if not any(other[: len(path)] == path for other, _ in fitting):
            problems.append(doc.problem(path, _expected(tuple(error["loc"][:-1]), error["input"])))
    return problems


def _problem_from_pydantic(doc: YamlDocument, error: dict[str, Any]) -> Problem:
    loc = tuple(error["loc"])
    path = _document_path(doc, loc, error["type"])
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(path[-1])
        allowed = _allowed_keys(loc[:-1])
        hint = did_you_mean(key, allowed)
        message = f"unknown key {key!r}{hint}"
        if not hint and allowed:
            message += f" (allowed keys: {', '.join(sorted(allowed))})"
        return doc.problem(path, message)
    if kind == "missing" and isinstance(path[-1], int):  # a fixed-length list too short
        return doc.problem(path[:-1], _expected(loc[:-1], error["input"]))
    if kind == "missing":
        return doc.problem(path, f"missing required key {str(path[-1])!r}")
    if kind == "union_tag_not_found":
        tag_key = error["ctx"]["discriminator"].strip("'")
        allowed = ", ".join(sorted(_tags(loc)))
        return doc.problem(path, f"missing required key {tag_key!r} (one of: {allowed})")
    if kind == "union_tag_invalid":
        tag_key = error["ctx"]["discriminator"].strip("'")
        allowed = [t.strip("' ") for t in error["ctx"]["expected_tags"].split(",")]
        return doc.problem((*path, tag_key), _not_allowed(error["ctx"]["tag"], allowed))
    if kind == "literal_error":
        allowed = [t.strip("' ") for t in error["ctx"]["expected"].replace(" or ", ",").split(",")]
        return doc.problem(path, _not_allowed(error["input"], allowed))
    if kind in _MESSAGES:
        return doc.problem(path, _MESSAGES[kind](error))
    if kind in _TYPE_ERRORS:
        return doc.problem(path, _expected(loc, error["input"]))
    return doc.problem(path, error["msg"].removeprefix("Value error, "))


def _tags(loc: tuple[str | int, ...]) -> set[str]:
    models = [c for c in _candidates(loc) if isinstance(c, type) and issubclass(c, BaseModel)]
    return set().union(*(_tag_of(m) for m in models)) if models else set()


def _not_allowed(value: Any, allowed: list[str]) -> str:
    return f"{value!r} is not allowed{did_you_mean(value, allowed)} (allowed: {', '.join(allowed)})"


def graph_problems(doc: YamlDocument) -> list[Problem]:
    """Duplicate stage names, references to unknown or wrongly typed stages, and cycles."""
    stages = doc.data.get("stages")
    if not isinstance(stages, list):
        return []
    problems: list[Problem] = []
    types_by_name: dict[str, str] = {}
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            continue
        if stage["name"] in types_by_name:
            message = f"duplicate stage name {stage['name']!r}"
            problems.append(doc.problem(("stages", index, "name"), message))
        types_by_name.setdefault(stage["name"], str(stage.get("type")))
    edges: dict[str, set[str]] = {name: set() for name in types_by_name}
    for index, stage in enumerate(stages):
        stage_type = STAGE_TYPES.get(stage.get("type")) if isinstance(stage, dict) else None
        if stage_type is None:
            continue
        for field, wanted in stage_type.config.inputs.items():
            ref = stage.get(field)
            if ref is None:
                continue
            where = ("stages", index, field)
            if ref not in types_by_name:
                hint = did_you_mean(ref, types_by_name)
                problems.append(doc.problem(where, f"no stage named {ref!r}{hint}"))
            elif types_by_name[ref] != wanted:
                message = f"stage {ref!r} has type {types_by_name[ref]}, expected a {wanted} stage"
                problems.append(doc.problem(where, message))
            else:
                edges[stage["name"]].add(ref)
    if not problems and (cycle := _find_cycle(edges)):
        index = next(i for i, s in enumerate(stages) if s.get("name") == cycle[0])
        message = "stages form a cycle: " + " -> ".join([*cycle, cycle[0]])
        problems.append(doc.problem(("stages", index), message))
    return problems


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for upstream in sorted(edges.get(node, ())):
            if state.get(upstream) == 1:
                return path[path.index(upstream) :] if upstream in path else [upstream]
            if upstream not in state and (found := visit(upstream, [*path, upstream])):
                return found
        state[node] = 2
        return None

    for node in edges:
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def execution_order(spec: PipelineSpec) -> list[StageConfig]:
    """Stages in dependency order (upstream first), ties kept in file order."""
    done: set[str] = set()
    order: list[StageConfig] = []
    pending = list(spec.stages)
    while pending:
        ready = next(s for s in pending if set(s.upstream().values()) <= done)
        pending.remove(ready)
        order.append(ready)
        done.add(ready.name)
    return order


def force_problems(doc: YamlDocument, force: Sequence[str]) -> list[Problem]:
    """``--force STAGE`` arguments that name no stage of the spec."""
    names = stage_names(doc)
    known = ", ".join(names)
    return [
        Problem(f"--force {name}", 0, 0, "", f"no stage named {name!r}{hint} (stages: {known})")
        for name in force
        if name not in names
        for hint in [did_you_mean(name, map(str, names))]
    ]


def validate_document(doc: YamlDocument, problems: Sequence[Problem] = ()) -> PipelineSpec:
    """The validated spec, or ``SpecError`` with ``problems`` and every problem found here."""
    problems = [*problems, *graph_problems(doc)]
    spec = None
    try:
        spec = PipelineSpec.model_validate(doc.data)
    except ValidationError as error:
        problems += _union_problems(doc, error.errors())
    if problems or spec is None:
        raise SpecError(problems)
    spec._source = doc
    stages = {stage.name: stage for stage in spec.stages}
    if mistakes := [
        spec.problem(("stages", index, *field), message)
        for index, stage in enumerate(spec.stages)
        for field, message in stage.reference_problems(stages)
    ]:
        raise SpecError(mistakes)
    return spec


def load_spec(
    source: Path | str | Mapping[str, Any],
    overrides: Sequence[str] = (),
    force: Sequence[str] = (),
) -> PipelineSpec:
    """Compose (``extends``, ``${VAR}``, ``--set``) and validate a spec (a file, or the spec as
    Python data), and check that ``force`` names its stages.

    Raises ``SpecError`` listing every problem.
    """
    doc, problems = compose(source, overrides, top_level=list(PipelineSpec.model_fields))
    return validate_document(doc, [*problems, *force_problems(doc, force)])

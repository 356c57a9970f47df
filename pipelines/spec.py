"""Pipeline specs: YAML → validated ``PipelineSpec``, or every problem with its file position.

The schema is the set of stage config models registered in ``stages.STAGE_TYPES``; each
model's field defaults and descriptions are the one place where defaults are documented.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .compose import compose
from .errors import Problem, SpecError, did_you_mean
from .stages import STAGE_TYPES, StageConfig
from .yaml_source import KeyPath, YamlDocument

AnyStage = Annotated[
    typing.Union[tuple(t.config for t in STAGE_TYPES.values())],  # noqa: UP007
    Field(discriminator="type"),
]


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    workdir: str = Field(description="stage outputs go to <workdir>/<stage>/")
    stages: list[AnyStage] = Field(min_length=1)

    def stage(self, name: str) -> StageConfig:
        return next(s for s in self.stages if s.name == name)


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


def _allowed_keys(loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the model that the mapping at ``loc`` is validated against."""
    candidates: tuple[Any, ...] = (PipelineSpec,)
    for part in loc:
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        lists = [c for c in candidates if typing.get_origin(c) is list]
        if isinstance(part, int) and lists:
            candidates = _union_members(typing.get_args(lists[0])[0])
        elif models and any(part in m.model_fields for m in models):
            model = next(m for m in models if part in m.model_fields)
            candidates = _union_members(model.model_fields[part].annotation)
        elif models and any(part in _tag_of(m) for m in models):
            candidates = tuple(m for m in models if part in _tag_of(m))
        else:
            return []
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return list(models[0].model_fields) if len(models) == 1 else []


def _document_path(doc: YamlDocument, loc: tuple[str | int, ...]) -> KeyPath:
    """Drop the union tags pydantic puts into ``loc`` (e.g. ``stages.0.pretrain.epochs``)."""
    path: list[str | int] = []
    node: Any = doc.data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
        elif isinstance(node, dict) and part in (node.get("type"), node.get("kind")):
            continue
        else:
            node = None
        path.append(part)
    return tuple(path)


def _problem_from_pydantic(doc: YamlDocument, error: dict[str, Any]) -> Problem:
    loc = tuple(error["loc"])
    path = _document_path(doc, loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(path[-1])
        allowed = _allowed_keys(loc[:-1])
        hint = did_you_mean(key, allowed)
        message = f"unknown key {key!r}{hint}"
        if not hint and allowed:
            message += f" (allowed keys: {', '.join(sorted(allowed))})"
        return doc.problem(path, message)
    if kind == "missing":
        return doc.problem(path, f"missing required key {str(path[-1])!r}")
    if kind == "union_tag_invalid":
        tag_key = error["ctx"]["discriminator"].strip("'")
        allowed = [t.strip("' ") for t in error["ctx"]["expected_tags"].split(",")]
        return doc.problem((*path, tag_key), _not_allowed(error["ctx"]["tag"], allowed))
    if kind == "literal_error":
        allowed = [t.strip("' ") for t in error["ctx"]["expected"].replace(" or ", ",").split(",")]
        return doc.problem(path, _not_allowed(error["input"], allowed))
    return doc.problem(path, error["msg"].removeprefix("Value error, "))


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


def validate_document(doc: YamlDocument, problems: Sequence[Problem] = ()) -> PipelineSpec:
    """The validated spec, or ``SpecError`` with ``problems`` and every problem found here."""
    problems = [*problems, *graph_problems(doc)]
    spec = None
    try:
        spec = PipelineSpec.model_validate(doc.data)
    except ValidationError as error:
        problems += [_problem_from_pydantic(doc, e) for e in error.errors()]
    if problems or spec is None:
        raise SpecError(problems)
    return spec


def load_spec(path: Path | str, overrides: Sequence[str] = ()) -> PipelineSpec:
    """Compose (``extends``, ``${VAR}``, ``--set``) and validate a spec.

    Raises ``SpecError`` listing every problem.
    """
    return validate_document(*compose(path, overrides))

"""Compose a spec from its files and the command line, keeping where each value came from.

Three layers, applied in this order:

1. ``extends: base.yaml`` (or a list of files; like every relative path of a spec, relative
   to the directory sslpipe runs in, see ``RELATIVE_PATHS``): the base is loaded first (its
   own ``extends`` too) and the extending file is deep-merged over it. Mappings merge key by
   key, except that a mapping naming another ``kind`` (or ``type``) replaces it; a list of
   named mappings (``stages``) merges item by item on ``name``, new names appended; any
   other value is replaced. A file that extends itself, directly or not, is an
   error.
2. ``${VAR}`` and ``${VAR:-default}`` in string values take the environment variable (or the
   default when it is unset or empty); ``$${`` writes a literal ``${``.
3. ``--set path.to.key=value`` overrides: the value is read as a YAML scalar or flow
   collection, list items are addressed by index or, for named items, by name
   (``stages.pretrain.epochs=1``; ``pretrain.epochs=1`` for short when ``pretrain`` is a stage
   and no top-level key). The result is validated like the file, and a mistake in it is
   reported at the ``--set`` argument.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import Problem, SpecError, did_you_mean
from .yaml_source import KeyPath, Position, YamlDocument, format_path, load_yaml, parse_yaml

EXTENDS_KEY = "extends"
KIND_KEYS = ("kind", "type")  # a mapping's variant: one of another variant replaces it
# The one rule for relative paths: data paths, workdir, registries and `extends` alike.
RELATIVE_PATHS = "relative paths are relative to the directory sslpipe runs in"
_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


PYTHON_SPEC = "<spec>"  # the file name of a spec given as Python data (positions unknown)


def compose(
    source: Path | str | Mapping[str, Any],
    overrides: Sequence[str] = (),
    top_level: Collection[str] = (),
) -> tuple[YamlDocument, list[Problem]]:
    """The spec at ``source`` (a file, or the spec as Python data) with its bases merged in,
    variables filled and overrides set (``top_level``: the spec's top-level keys, which an
    override's path starts with unless it starts with a stage's name).

    Unreadable files and ``extends`` errors raise ``SpecError``; problems with variables and
    overrides are returned, so that validation can report them together with its own.
    """
    if isinstance(source, Mapping):
        doc = _with_bases(YamlDocument(PYTHON_SPEC, _unshared(source)), chain=())
    else:
        doc = _with_bases(load_yaml(source), chain=(Path(source).resolve(),))
    problems = _interpolate(doc, doc.data, ())
    for override in overrides:
        problems += _apply_override(doc, override, top_level)
    return doc, problems


def _unshared(value: Any) -> Any:
    """A copy in which no two places share a mapping or list (as YAML aliases are built), so
    that an override of one place changes only that place."""
    if isinstance(value, Mapping):
        return {key: _unshared(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_unshared(item) for item in value]
    return value


def _with_bases(doc: YamlDocument, chain: tuple[Path, ...]) -> YamlDocument:
    """``doc`` merged over its ``extends`` bases; ``chain``: the files being loaded (cycles)."""
    bases = doc.data.pop(EXTENDS_KEY, None)
    if bases is None:
        return doc
    names = bases if isinstance(bases, list) else [bases]
    if not names or not all(isinstance(n, str) and n for n in names):
        problem = doc.problem((EXTENDS_KEY,), "must be a file name or a list of file names")
        raise SpecError([problem])
    merged: YamlDocument | None = None
    for name in names:
        base_path = Path(name).resolve()
        if base_path in chain:
            cycle = " -> ".join(os.path.relpath(p) for p in (*chain, base_path))
            raise SpecError([doc.problem((EXTENDS_KEY,), f"extends forms a cycle: {cycle}")])
        if not base_path.is_file():
            message = f"no such file {name!r} ({RELATIVE_PATHS})"
            raise SpecError([doc.problem((EXTENDS_KEY,), message)])
        relative = Path(os.path.relpath(base_path))
        base = _with_bases(load_yaml(relative), (*chain, base_path))
        merged = base if merged is None else _merged(merged, base)
    assert merged is not None
    return _merged(merged, doc)


def _merged(base: YamlDocument, top: YamlDocument) -> YamlDocument:
    """``top`` deep-merged over ``base``, positions taken from whichever set each value."""
    out = YamlDocument(top.file, None)
    out.data = _merge_node(base, (), top, (), out, ())
    return out


def _merge_node(
    base: YamlDocument,
    base_path: KeyPath,
    top: YamlDocument,
    top_path: KeyPath,
    out: YamlDocument,
    out_path: KeyPath,
) -> Any:
    base_value, top_value = _at(base.data, base_path), _at(top.data, top_path)
    if (
        isinstance(base_value, dict)
        and isinstance(top_value, dict)
        and _same_kind(base_value, top_value)
    ):
        _copy_position(top, top_path, out, out_path)
        merged: dict[str, Any] = {}
        for key in [*base_value, *(k for k in top_value if k not in base_value)]:
            if key not in top_value:
                merged[key] = _copy(base, (*base_path, key), out, (*out_path, key))
            elif key not in base_value:
                merged[key] = _copy(top, (*top_path, key), out, (*out_path, key))
            else:
                sub = (*base_path, key), (*top_path, key), (*out_path, key)
                merged[key] = _merge_node(base, sub[0], top, sub[1], out, sub[2])
        return merged
    if _is_named_list(base_value) and _is_named_list(top_value):
        _copy_position(top, top_path, out, out_path)
        top_index = {item["name"]: i for i, item in enumerate(top_value)}
        merged_list: list[Any] = []
        for i, item in enumerate(base_value):
            where = (*out_path, len(merged_list))
            if item["name"] in top_index:
                j = top_index.pop(item["name"])
                merged_list.append(
                    _merge_node(base, (*base_path, i), top, (*top_path, j), out, where)
                )
            else:
                merged_list.append(_copy(base, (*base_path, i), out, where))
        for j in top_index.values():
            merged_list.append(_copy(top, (*top_path, j), out, (*out_path, len(merged_list))))
        return merged_list
    return _copy(top, top_path, out, out_path)


def _same_kind(base: dict[str, Any], top: dict[str, Any]) -> bool:
    """Whether ``top`` merges into ``base``: not when it names another ``kind``/``type`` (a
    source of another kind shares none of the base's keys, so it replaces the base's)."""
    return all(top[tag] == base[tag] for tag in KIND_KEYS if tag in top and tag in base)


def _is_named_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict) and isinstance(item.get("name"), str) for item in value
    )


def _at(data: Any, path: KeyPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _copy(src: YamlDocument, src_path: KeyPath, dst: YamlDocument, dst_path: KeyPath) -> Any:
    """The value at ``src_path``, with the positions of everything under it re-rooted."""
    depth = len(src_path)
    for path, position in src.positions.items():
        if path[:depth] == src_path:
            dst.positions[(*dst_path, *path[depth:])] = position
    return _at(src.data, src_path)


def _copy_position(
    src: YamlDocument, src_path: KeyPath, dst: YamlDocument, dst_path: KeyPath
) -> None:
    if src_path in src.positions:
        dst.positions[dst_path] = src.positions[src_path]


def _interpolate(doc: YamlDocument, node: Any, path: KeyPath) -> list[Problem]:
    """Fill ``${VAR}`` / ``${VAR:-default}`` in every string under ``node``, in place."""
    if isinstance(node, dict):
        items: list[tuple[Any, Any]] = list(node.items())
    else:
        items = list(enumerate(node)) if isinstance(node, list) else []
    problems: list[Problem] = []
    for key, value in items:
        if isinstance(value, str):
            missing: list[str] = []

            defaulted: list[str] = []

            def fill(
                match: re.Match[str], missing: list[str] = missing, defaulted: list[str] = defaulted
            ) -> str:
                if match.group(0) == "$${":
                    return "${"
                name, default = match.group(1), match.group(2)
                if os.environ.get(name):
                    return os.environ[name]
                if default is None:
                    missing.append(name)
                    return ""
                defaulted.append(name)
                return default

            node[key] = _VARIABLE.sub(fill, value)
            if defaulted:
                doc.defaulted[(*path, key)] = defaulted
            problems += [
                doc.problem(
                    (*path, key),
                    f"environment variable {name} is not set (give a default: ${{{name}:-…}})",
                )
                for name in missing
            ]
        else:
            problems += _interpolate(doc, value, (*path, key))
    return problems


def _apply_override(doc: YamlDocument, override: str, top_level: Collection[str]) -> list[Problem]:
    source: Position = (f"--set {override}", 0, 0)
    key_text, sep, value_text = override.partition("=")
    if not sep or not key_text.strip():
        return [Problem(*source, "", "expected --set path.to.key=value")]
    try:
        value = parse_yaml(value_text, source[0]).data if value_text.strip() else ""
    except SpecError as error:
        return [Problem(*source, key_text, f"value: {p.message}") for p in error.problems]
    parts = key_text.strip().split(".")
    if top_level and parts[0] not in top_level:
        stages = stage_names(doc)
        if parts[0] not in stages:
            return [Problem(*source, "", _unknown_start(parts, top_level, stages))]
        parts = ["stages", *parts]
    node: Any = doc.data
    path: KeyPath = ()
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            position = _list_position(node, part)
            if position is None:
                names = [str(i["name"]) for i in node if isinstance(i, dict) and "name" in i]
                known = f" (items: {', '.join(names)})" if names else ""
                hint = did_you_mean(part, names)
                message = f"no item {part!r} in {format_path(path) or 'the list'}{hint}{known}"
                return [Problem(*source, format_path(path), message)]
            step: str | int = position
        elif isinstance(node, dict):
            step = part
        else:
            return [Problem(*source, format_path(path), "is not a mapping or list")]
        path = (*path, step)
        if last:
            node[step] = value
        else:
            if isinstance(node, dict) and not isinstance(node.get(step), dict | list):
                node[step] = {}
                doc.positions[path] = source  # a mistake in a key it made is the --set's
            node = node[step]
    for written in [p for p in doc.positions if p[: len(path)] == path]:
        del doc.positions[written]
    for written in [p for p in doc.defaulted if p[: len(path)] == path]:
        del doc.defaulted[written]
    doc.positions[path] = source
    return []


def stage_names(doc: YamlDocument) -> list[str]:
    """The names of the spec's stages, as far as they are written."""
    stages = doc.data.get("stages") if isinstance(doc.data, dict) else None
    return [
        s["name"] for s in stages or () if isinstance(s, dict) and isinstance(s.get("name"), str)
    ]


def _unknown_start(parts: list[str], top_level: Collection[str], stages: list[str]) -> str:
    """Why an override's path cannot start with ``parts[0]``, with the path it may mean."""
    starts = {key: key for key in top_level} | {name: f"stages.{name}" for name in stages}
    close = difflib.get_close_matches(parts[0], list(starts), n=1, cutoff=0.6)
    hint = f"; did you mean {'.'.join([starts[close[0]], *parts[1:]])!r}?" if close else ""
    return (
        f"unknown key {parts[0]!r}{hint} (a path starts with {', '.join(top_level)} or a "
        f"stage's name: {', '.join(stages) or 'none'})"
    )


def _list_position(items: list[Any], part: str) -> int | None:
    if part.isdigit():
        return int(part) if int(part) < len(items) else None
    return next(
        (i for i, item in enumerate(items) if isinstance(item, dict) and item.get("name") == part),
        None,
    )

"""Safe YAML loading that remembers where every key and value stands in the file.

Only plain YAML is accepted (the safe schema: mappings, lists, strings, numbers, booleans,
null); tags that would construct Python objects are errors, and so are duplicate keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, SpecError

KeyPath = tuple[str | int, ...]
Position = tuple[str, int, int]  # file, 1-based line and column (0, 0: not from a file)


@dataclass
class YamlDocument:
    """Plain data plus where each key path was written (its key, else its value).

    A document composed from several files (``extends``, ``--set``) keeps, for every path,
    the position of the text that set it.
    """

    file: str
    data: Any
    positions: dict[KeyPath, Position] = field(default_factory=dict)

    def position(self, path: KeyPath) -> Position:
        """Position of the deepest prefix of ``path`` that was written somewhere."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.positions:
                return self.positions[path[:end]]
        return (self.file, 1, 1)

    def problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(*self.position(path), format_path(path), message)


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _position(file: str, node: yaml.Node) -> Position:
    return (file, *_mark(node))


class _Builder:
    def __init__(self, file: str) -> None:
        self.doc = YamlDocument(file, None)
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.doc.positions.setdefault(path, _position(self.doc.file, node))
        if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_COLLECTION_TAGS:
            self._error(node, path, f"YAML tag {node.tag!r} is not allowed (plain data only)")
            return None
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.build(key_node, (*path, "<key>"))
                if not isinstance(key, str):
                    self._error(key_node, path, f"keys must be strings, got {key!r}")
                    continue
                if key in result:
                    self._error(key_node, (*path, key), f"duplicate key {key!r}")
                    continue
                self.doc.positions[(*path, key)] = _position(self.doc.file, key_node)
                result[key] = self.build(value_node, (*path, key))
            self.doc.positions.pop((*path, "<key>"), None)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            self._error(node, path, f"YAML tag {node.tag!r} is not allowed (plain data only)")
            return None

    def _error(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(*_position(self.doc.file, node), format_path(path), message))


def load_yaml(path: Path | str) -> YamlDocument:
    """Parse ``path`` into plain data with positions; raise ``SpecError`` for bad YAML."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError([Problem(file, 1, 1, "", f"cannot read file: {error.strerror}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"invalid YAML: {error.problem or error.context}"
        raise SpecError([Problem(file, line, column, "", message)]) from None
    if node is None:
        raise SpecError([Problem(file, 1, 1, "", "the file is empty")])
    builder = _Builder(file)
    builder.doc.data = builder.build(node, ())
    if builder.problems:
        raise SpecError(builder.problems)
    if not isinstance(builder.doc.data, dict):
        line, column = _mark(node)
        raise SpecError([Problem(file, line, column, "", "the top level must be a mapping")])
    return builder.doc

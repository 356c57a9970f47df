"""Safe, bounded YAML loading that remembers where every key and value stands in the file.

Only plain YAML is accepted (the safe schema: mappings, lists, strings, numbers, booleans,
null); tags that would construct Python objects are errors, and so are duplicate keys and
merge keys (``<<``; ``extends`` does that job). A spec comes from whoever edits it, so the
work is bounded before any value is built: the file's size (``MAX_BYTES``), the number of
nodes once aliases are expanded (``MAX_NODES``: a "billion laughs" file is refused without
being expanded) and the nesting depth (``MAX_DEPTH``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import Problem, SpecError

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
    # Environment variables that were unset where ``${VAR:-default}`` took its default.
    defaulted: dict[KeyPath, list[str]] = field(default_factory=dict)

    def position(self, path: KeyPath) -> Position:
        """Position of the deepest prefix of ``path`` that was written somewhere."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.positions:
                return self.positions[path[:end]]
        return (self.file, 0, 0)  # not from a file: the problem names the file only

    def problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(*self.position(path), format_path(path), message)


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


MAX_BYTES = 256 * 1024
MAX_NODES = 20_000
MAX_DEPTH = 32
_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
_MERGE_TAG = "tag:yaml.org,2002:merge"
# PyYAML's wording for the usual slips, in the user's words.
_HINTS = {
    "found character '\\t' that cannot start any token": "a tab character: use spaces, not tabs",
    "mapping values are not allowed here": "mapping values are not allowed here (a missing "
    "space after ':', or a value with ': ' in it that needs quotes?)",
}


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _position(file: str, node: yaml.Node) -> Position:
    return (file, *_mark(node))


def _expanded_size(node: yaml.Node) -> tuple[int, int, yaml.Node | None]:
    """Nodes and depth of ``node`` once every alias is expanded, computed without expanding
    (each distinct node is visited once); stops at the first node past a limit or in a cycle
    and returns it as the third value."""
    sizes: dict[int, tuple[int, int]] = {}
    in_progress: set[int] = set()

    def visit(node: yaml.Node) -> tuple[int, int]:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in in_progress:
            raise _Refused(node, "an alias refers to the collection that contains it")
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        in_progress.add(id(node))
        count, depth = 1, 0
        for child in children:
            child_count, child_depth = visit(child)
            count, depth = count + child_count, max(depth, child_depth + 1)
            if count > MAX_NODES:
                raise _Refused(
                    node,
                    f"more than {MAX_NODES:,} values once aliases are expanded; a spec is "
                    "plain settings (is an alias repeating a large block?)",
                )
            if depth > MAX_DEPTH:
                raise _Refused(node, f"nested more than {MAX_DEPTH} levels deep")
        in_progress.discard(id(node))
        sizes[id(node)] = (count, depth)
        return count, depth

    visit(node)
    return sizes[id(node)]


class _Refused(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node, self.message = node, message


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
                if key_node.tag == _MERGE_TAG:
                    message = (
                        "YAML merge keys (<<) are not supported: put the shared settings in "
                        "a base spec and write `extends: base.yaml`"
                    )
                    self._error(key_node, path, message)
                    continue
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


def _read_text(file: str) -> str:
    """The file as text, refused when it is too large for a spec or not UTF-8."""
    path = Path(file)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            message = (
                f"{size:,} bytes; a spec may have at most {MAX_BYTES:,} (is this the right "
                "file? large lists belong in a data file the spec names)"
            )
            raise SpecError([Problem(file, 1, 1, "", message)])
        data = path.read_bytes()
    except OSError as error:
        raise SpecError([Problem(file, 1, 1, "", f"cannot read file: {error.strerror}")]) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8", errors="replace")
        line, column = before.count("\n") + 1, len(before.rsplit("\n", 1)[-1]) + 1
        message = (
            f"not UTF-8 text (byte 0x{data[error.start]:02x} cannot be decoded); "
            "save the file as UTF-8"
        )
        raise SpecError([Problem(file, line, column, "", message)]) from None


def parse_yaml(text: str, file: str) -> YamlDocument:
    """Parse YAML ``text`` (from ``file``, for positions) into plain data with positions;
    raise ``SpecError`` for invalid, unsafe or unbounded YAML."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = str(error.problem or error.context)
        message = f"invalid YAML: {_HINTS.get(problem, problem)}"
        raise SpecError([Problem(file, line, column, "", message)]) from None
    except RecursionError:
        message = f"nested more than {MAX_DEPTH} levels deep"
        raise SpecError([Problem(file, 1, 1, "", message)]) from None
    if node is None:
        raise SpecError([Problem(file, 1, 1, "", "the file is empty")])
    try:
        _expanded_size(node)
    except _Refused as refused:
        raise SpecError([Problem(*_position(file, refused.node), "", refused.message)]) from None
    builder = _Builder(file)
    builder.doc.data = builder.build(node, ())
    if builder.problems:
        raise SpecError(builder.problems)
    return builder.doc


def load_yaml(path: Path | str) -> YamlDocument:
    """Read and parse the spec file at ``path``; its top level must be a mapping."""
    file = str(path)
    doc = parse_yaml(_read_text(file), file)
    if not isinstance(doc.data, dict):
        line, column = doc.positions[()][1:]
        raise SpecError([Problem(file, line, column, "", "the top level must be a mapping")])
    return doc

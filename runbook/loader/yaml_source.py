"""Reading a YAML file into plain Python data, keeping the `line:col` of every key and value.

`parse` composes the text with the safe loader and builds dicts, lists and scalars from its nodes,
recording where each one sits in a `SourceMap` (by its path of keys and indexes), and reports what YAML
would hide or refuse: duplicate keys (YAML would keep only the last), keys that are not text, recursive
aliases, unsupported tags, syntax errors, a file too large or nested too deeply. `read_text` reads a
file as UTF-8, with the position of the first byte that is not.

Scalars follow the YAML 1.2 core schema: only `true`/`false` are booleans (`no`, `on` stay text),
`0755` is the number 755, and dates stay text (params are typed by the runbook, not by YAML).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runbook.errors import InvalidFile, Problem

Loc = tuple[str | int, ...]
"""Where a value sits in the parsed data: its path of mapping keys and list indexes."""

_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TAG = "tag:yaml.org,2002:"
_STR, _NULL, _BOOL, _INT, _FLOAT, _MERGE = (_TAG + t for t in ("str", "null", "bool", "int", "float", "merge"))
_MAX_NODES = 1_000_000


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader with YAML 1.2 core-schema scalars (and `<<` merge keys)."""

    yaml_implicit_resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}


for _tag, _regexp, _first in [
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (_INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        _FLOAT,
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
    (_NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_MERGE, r"^(?:<<)$", "<"),
]:
    _Loader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


@dataclass
class SourceMap:
    """Where each key and value of a parsed file sits, by its path of keys and indexes."""

    filename: str
    text: str
    values: dict[Loc, Node] = field(default_factory=dict)
    keys: dict[Loc, Node] = field(default_factory=dict)
    _line_starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._line_starts = [0] + [m.end() for m in re.finditer(r"\r\n|[\r\n\x85\u2028\u2029]", self.text)]

    def _node(self, loc: Loc) -> Node | None:
        for n in range(len(loc), -1, -1):
            node = self.values.get(loc[:n])
            if node is not None:
                return node
        return None

    def value_pos(self, loc: Loc) -> tuple[int, int]:
        """1-based (line, col) of the value at `loc`, or of its nearest existing parent."""
        node = self._node(loc)
        if node is None:
            return (1, 1)
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def key_pos(self, loc: Loc) -> tuple[int, int]:
        """1-based (line, col) of the mapping key at `loc` (its value's position when there is none)."""
        node = self.keys.get(loc)
        if node is None:
            return self.value_pos(loc)
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def problem(self, loc: Loc, message: str, *, at_key: bool = False) -> Problem:
        line, col = self.key_pos(loc) if at_key else self.value_pos(loc)
        return Problem(self.filename, line, col, message)

    def text_problem(self, loc: Loc, value: str, start: int, end: int, message: str) -> Problem:
        """A problem at `value[start:end]` inside the string at `loc`, found in the file's own text.

        The k-th occurrence of that snippet in the value is the k-th in the scalar's source span when
        the scalar is written without escapes or folding inside it; otherwise, the scalar's start.
        """
        node = self.values.get(loc)
        snippet = value[start:end]
        if node is None or not snippet:
            return self.problem(loc, message)
        src_start = self._offset(node.start_mark.line, node.start_mark.column)
        src_end = self._offset(node.end_mark.line, node.end_mark.column)
        raw = self.text[src_start:src_end]
        in_value = _occurrences(value, snippet)
        in_source = _occurrences(raw, snippet)
        if len(in_value) != len(in_source) or start not in in_value:
            return self.problem(loc, message)
        line, col = self.line_col(src_start + in_source[in_value.index(start)])
        return Problem(self.filename, line, col, message)

    def _offset(self, line: int, col: int) -> int:
        return self._line_starts[min(line, len(self._line_starts) - 1)] + col

    def line_col(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return (line + 1, offset - self._line_starts[line] + 1)

    def line_of(self, loc: Loc) -> int:
        return self.value_pos(loc)[0]


def _occurrences(text: str, snippet: str) -> list[int]:
    out: list[int] = []
    pos = text.find(snippet)
    while pos != -1:
        out.append(pos)
        pos = text.find(snippet, pos + len(snippet))
    return out


class _TooBig(Exception):
    pass


class _Builder:
    """Turns composed YAML nodes into plain Python values, recording positions and key problems."""

    def __init__(self, smap: SourceMap, problems: list[Problem]) -> None:
        self.smap = smap
        self.problems = problems
        self.active: set[int] = set()
        self.count = 0

    def build(self, node: Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooBig
        self.smap.values[loc] = node
        if isinstance(node, ScalarNode):
            return self._scalar(node, loc)
        if id(node) in self.active:
            self.problems.append(self.smap.problem(loc, "an alias refers to itself (a recursive anchor)"))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return self._sequence(node, loc)
            if isinstance(node, MappingNode):
                return self._mapping(node, loc)
            raise AssertionError(f"unknown YAML node {node!r}")
        finally:
            self.active.discard(id(node))

    def _sequence(self, node: SequenceNode, loc: Loc) -> list[Any]:
        self._check_tag(node, _TAG + "seq", loc)
        return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        self._check_tag(node, _TAG + "map", loc)
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE:
                for k, v in self._merged(vnode, loc).items():
                    out.setdefault(k, v)
        seen: dict[str, Node] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE:
                continue
            if not isinstance(knode, ScalarNode):
                line, col = knode.start_mark.line + 1, knode.start_mark.column + 1
                self.problems.append(Problem(self.smap.filename, line, col, "a key must be plain text"))
                continue
            key = knode.value
            if key in seen:
                first = seen[key].start_mark.line + 1
                line, col = knode.start_mark.line + 1, knode.start_mark.column + 1
                message = f'duplicate key "{key}" (first at line {first}; YAML would keep only this one)'
                self.problems.append(Problem(self.smap.filename, line, col, message))
            seen[key] = knode
            self.smap.keys[(*loc, key)] = knode
            out[key] = self.build(vnode, (*loc, key))
        return out

    def _merged(self, node: Node, loc: Loc) -> dict[str, Any]:
        """The keys a `<<: *anchor` (or `<<: [*a, *b]`) brings in; earlier sources win."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        out: dict[str, Any] = {}
        for src in sources:
            if not isinstance(src, MappingNode):
                line, col = src.start_mark.line + 1, src.start_mark.column + 1
                self.problems.append(Problem(self.smap.filename, line, col, "`<<` must name a mapping"))
                continue
            for k, v in self._mapping(src, loc).items():
                out.setdefault(k, v)
        return out

    def _check_tag(self, node: Node, expected: str, loc: Loc) -> None:
        if node.tag != expected:
            self.problems.append(self.smap.problem(loc, f"unsupported YAML tag {node.tag}"))

    def _scalar(self, node: ScalarNode, loc: Loc) -> Any:
        tag, value = node.tag, node.value
        try:
            if tag == _STR:
                return value
            if tag == _NULL:
                return None
            if tag == _BOOL:
                return _yaml_bool(value)
            if tag == _INT:
                return _yaml_int(value)
            if tag == _FLOAT:
                return _yaml_float(value)
        except ValueError:
            self.problems.append(self.smap.problem(loc, f"{value!r} is not a valid {tag.removeprefix(_TAG)}"))
            return value
        self.problems.append(self.smap.problem(loc, f"unsupported YAML tag {tag}"))
        return value


def _yaml_bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    raise ValueError(text)


def _yaml_int(text: str) -> int:
    t = text.replace("_", "")
    if t.startswith(("0o", "0x", "0b")):
        return int(t[2:], {"o": 8, "x": 16, "b": 2}[t[1]])
    return int(t, 10)


def _yaml_float(text: str) -> float:
    t = text.lower()
    if t.lstrip("+-") == ".inf":
        return float("-inf") if t.startswith("-") else float("inf")
    if t == ".nan":
        return float("nan")
    return float(t)


# --- reading and parsing ------------------------------------------------------------------------


def read_text(path: Path, filename: str) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        reason = e.strerror or str(e)
        raise InvalidFile([Problem(filename, 1, 1, f"cannot read the file: {reason}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = raw[: e.start]
        line = before.count(b"\n") + 1
        col = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise InvalidFile([Problem(filename, line, col, "the file is not UTF-8 text")]) from None


def _yaml_problem(e: yaml.YAMLError, smap: SourceMap) -> Problem:
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        mark = e.problem_mark
        problem, context = e.problem or "syntax error", e.context
        cmark = e.context_mark
        if context and cmark is not None and (cmark.line, cmark.column) != (mark.line, mark.column):
            context = f"{context} started at {cmark.line + 1}:{cmark.column + 1}"
        if context and problem.startswith("but "):
            message = f"{context}, {problem}"
        else:
            message = f"{problem} ({context})" if context else problem
        return Problem(smap.filename, mark.line + 1, mark.column + 1, f"YAML syntax error: {message}")
    if isinstance(e, yaml.reader.ReaderError):
        line, col = smap.line_col(e.position)
        return Problem(smap.filename, line, col, f"YAML syntax error: {e.reason} (character #x{e.character:x})")
    return Problem(smap.filename, 1, 1, f"YAML syntax error: {e}")


NOTHING = object()


def parse(text: str, filename: str) -> tuple[Any, SourceMap, list[Problem]]:
    """Plain Python data (or `NOTHING` when the YAML cannot be read), positions, and problems so far."""
    smap = SourceMap(filename, text)
    problems: list[Problem] = []
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        return NOTHING, smap, [_yaml_problem(e, smap)]
    if node is None:
        return NOTHING, smap, [Problem(filename, 1, 1, "the file is empty")]
    try:
        data = _Builder(smap, problems).build(node, ())
    except (_TooBig, RecursionError):
        return NOTHING, smap, [Problem(filename, 1, 1, "the file is too large or nested too deeply")]
    return data, smap, problems

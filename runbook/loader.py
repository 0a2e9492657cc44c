"""Loading YAML files into pydantic models, with every problem at its exact `file:line:col`.

`load_model` is generic (runbooks, profiles, the repository config): it parses YAML keeping the
position of every key and value, reports duplicate keys (which YAML would silently drop), validates
with pydantic and turns each pydantic error into a human message at the nearest position ("unknown
key ... (did you mean ...?)", "missing required key ..."). `load_runbook` adds the checks that need
the whole runbook: step ids, scenario names, actions and their `with:`, template references, quoted
templates, `rto_end`, param defaults. Every problem of a file is reported at once, as `InvalidFile`.

Scalars follow the YAML 1.2 core schema: only `true`/`false` are booleans (`no`, `on` stay text),
`0755` is the number 755, and dates stay text (params are typed by the runbook, not by YAML).
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runbook.errors import InvalidFile, Problem
from runbook.model import Param, Runbook
from runbook.params import coerce
from runbook.templating import (
    RUN_NAMES,
    Ref,
    has_template,
    heredoc_template_spans,
    quoted_template_spans,
    scan_refs,
)
from steps.registry import ACTIONS

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]

# --- YAML with positions ------------------------------------------------------------------------

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


# --- pydantic errors as human messages ----------------------------------------------------------

_MISMATCH = {
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "dict_type": "a mapping (key: value)",
    "list_type": "a list",
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "enum": "",
    "literal_error": "",
}


def _unwrap(ann: Any) -> Any:
    while True:
        origin = get_origin(ann)
        if origin is Annotated:
            ann = get_args(ann)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(ann) if a is not type(None)]
            if len(members) != 1:
                return ann
            ann = members[0]
        else:
            return ann


def _union_members(ann: Any) -> list[Any] | None:
    if get_origin(ann) in (Union, types.UnionType):
        return [a for a in get_args(ann) if a is not type(None)]
    return None


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _model_field_ann(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return Any


def _field_names(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _singular(key: str | int | None) -> str:
    if not isinstance(key, str):
        return "item"
    return key[:-1] if key.endswith("s") and not key.endswith("ss") else key


def has_item(data: Any, seg: Any) -> bool:
    if isinstance(data, dict):
        return isinstance(seg, str) and seg in data
    if isinstance(data, list):
        return isinstance(seg, int) and 0 <= seg < len(data)
    return False


def _item_owner(container: str | int | None, index: int, item: Any) -> str:
    if isinstance(item, dict):
        for k in ("id", "name"):
            if isinstance(item.get(k), str):
                return f'{_singular(container)} "{item[k]}"'
    return f"{_singular(container)} #{index + 1}"


@dataclass
class _Walk:
    """Where a pydantic `loc` lands in the data: the deepest existing path, and how to name it."""

    path: Loc
    rest: Loc = ()
    at_key: bool = False
    union: Loc | None = None
    tag: str | None = None
    parent_model: type[BaseModel] | None = None
    owner: str | None = None
    rel: Loc = ()


@dataclass
class Scope:
    """The model validated, its data, and where that data sits in the file."""

    model: type[BaseModel]
    data: Any
    base: Loc = ()
    owner: str | None = None
    rel: Loc = ()


def _walk(scope: Scope, loc: Loc) -> _Walk:
    ann: Any = scope.model
    cur = scope.data
    w = _Walk(path=scope.base, owner=scope.owner, rel=scope.rel)
    container: str | int | None = scope.base[-1] if scope.base else None
    segs = list(loc)
    i = 0
    while i < len(segs):
        seg = segs[i]
        ann = _unwrap(ann)
        if seg == "[key]":
            w.at_key = True
            i += 1
            break
        members = _union_members(ann)
        if members is not None:
            w.union, w.tag = w.path, str(seg)
            ann = next((m for m in members if getattr(m, "__name__", None) == seg), Any)
            i += 1
            continue
        if not has_item(cur, seg):
            break
        ann = _descend(w, ann, container, seg, cur[seg])
        w.path = (*w.path, seg)
        cur, container = cur[seg], seg
        i += 1
    w.rest = tuple(segs[i:])
    return w


def _descend(w: _Walk, ann: Any, container: str | int | None, seg: str | int, item: Any) -> Any:
    """Update the owner/relative path for one step into the data; return the child's annotation."""
    w.parent_model = ann if _is_model(ann) else None
    origin, args = get_origin(ann), get_args(ann)
    if _is_model(ann):
        w.rel = (*w.rel, seg)
        return _model_field_ann(ann, str(seg))
    if origin is list and args:
        if _is_model(_unwrap(args[0])) and isinstance(seg, int):
            w.owner, w.rel = _item_owner(container, seg, item), ()
        else:
            w.rel = (*w.rel, seg)
        return args[0]
    if origin is dict and len(args) == 2:
        if _is_model(_unwrap(args[1])):
            w.owner, w.rel = f'{_singular(container)} "{seg}"', ()
        else:
            w.rel = (*w.rel, seg)
        return args[1]
    w.rel = (*w.rel, seg)
    return Any


def _dotted(rel: Loc) -> str:
    out = ""
    for seg in rel:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else seg)
    return out


def _where(owner: str | None, rel: Loc) -> str:
    parts = [p for p in (_dotted(rel), owner) if p]
    return " in " + " of ".join(parts) if parts else " at the top level"


def _label(owner: str | None, rel: Loc) -> str:
    parts = [p for p in (_dotted(rel), owner) if p]
    return " of ".join(parts) + ": " if parts else ""


def _got(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    return "a list" if isinstance(value, list) else "a mapping"


def did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _value_error_text(err: dict[str, Any]) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    inp = err.get("input")
    if isinstance(inp, str) and msg.startswith(repr(inp)):
        msg = _got(inp) + msg[len(repr(inp)) :]
    return msg


def _mismatch_desc(err: dict[str, Any], member: Any) -> str:
    kind = err["type"]
    if kind in ("enum", "literal_error"):
        return f"one of {err.get('ctx', {}).get('expected', '?')}"
    if kind in ("model_type", "dict_type") and _is_model(member):
        required = [info.alias or n for n, info in member.model_fields.items() if info.is_required()]
        if required:
            return "a mapping like {" + ", ".join(f"{k}: ..." for k in required) + "}"
    return _MISMATCH.get(kind) or str(err["msg"]).lower()


def _describe(err: dict[str, Any], w: _Walk) -> str:
    kind, ctx, inp = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in ("value_error", "assertion_error"):
        return _value_error_text(err)
    if kind == "literal_error" and w.rel and w.rel[-1] == "version" and not w.rest:
        return f"unsupported version {_got(inp)}; this tool reads version {ctx.get('expected')} files"
    if kind in ("enum", "literal_error"):
        return f"expected one of {ctx.get('expected')}, got {_got(inp)}"
    if kind in _MISMATCH:
        return f"expected {_MISMATCH[kind]}, got {_got(inp)}"
    if kind == "string_pattern_mismatch":
        return f"{_got(inp)} does not match the pattern {ctx.get('pattern')}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        noun = _singular(w.rel[-1]) if w.rel else "item"
        return f"needs at least {n} {noun}{'' if n == 1 else 's'}"
    msg = str(err["msg"])
    return f"{msg[:1].lower()}{msg[1:]}, got {_got(inp)}"


def _problem(err: dict[str, Any], w: _Walk, smap: SourceMap) -> Problem:
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(w.path[-1])
        hint = did_you_mean(key, _field_names(w.parent_model))
        if err.get("input") is None and " " in key:
            hint += "; a comma inside { } starts a new key: put text with commas in quotes"
        return smap.problem(w.path, f'unknown key "{key}"{_where(w.owner, w.rel[:-1])}{hint}', at_key=True)
    if kind == "missing" and w.rest:
        return smap.problem(w.path, f'missing required key "{w.rest[-1]}"{_where(w.owner, w.rel)}')
    if w.at_key:
        where = _singular(w.path[-2] if len(w.path) > 1 else None)
        pattern = (err.get("ctx") or {}).get("pattern")
        detail = f"must match the pattern {pattern}" if pattern else str(err["msg"]).lower()
        return smap.problem(w.path, f'{where} name "{w.path[-1]}" {detail}', at_key=True)
    return smap.problem(w.path, _label(w.owner, w.rel) + _describe(err, w))


def _is_shallow_mismatch(err: dict[str, Any], w: _Walk) -> bool:
    return err["type"] in _MISMATCH and w.path == w.union and not w.rest


def _union_problem(group: list[tuple[dict[str, Any], _Walk]], scope: Scope, smap: SourceMap) -> list[Problem]:
    """One union (`confirm: yes | {typed: ...}`): the member that fits the input, or one merged message."""
    by_tag: dict[str | None, list[tuple[dict[str, Any], _Walk]]] = {}
    for err, w in group:
        by_tag.setdefault(w.tag, []).append((err, w))
    for items in by_tag.values():
        if not all(_is_shallow_mismatch(e, w) for e, w in items):
            return [_problem(e, w, smap) for e, w in items if not _is_shallow_mismatch(e, w)]
    first_err, first_w = group[0]
    descs: list[str] = []
    for err, w in group:
        member = _union_member_named(scope, w)
        desc = _mismatch_desc(err, member)
        if desc not in descs:
            descs.append(desc)
    message = f"{_label(first_w.owner, first_w.rel)}expected {', or '.join(descs)}, got {_got(first_err.get('input'))}"
    return [smap.problem(first_w.path, message)]


def _union_member_named(scope: Scope, w: _Walk) -> Any:
    for cls in _models_in(scope.model):
        if cls.__name__ == w.tag:
            return cls
    return None


def _models_in(model: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """Every model class reachable from `model`'s fields (for naming union members)."""
    seen: set[type[BaseModel]] = set()
    stack: list[Any] = [model]
    while stack:
        ann = stack.pop()
        if _is_model(ann) and ann not in seen:
            seen.add(ann)
            yield ann
            stack.extend(info.annotation for info in ann.model_fields.values())
        else:
            stack.extend(get_args(ann))


def translate(errors: list[dict[str, Any]], scope: Scope, smap: SourceMap) -> list[Problem]:
    """Every pydantic error of one validation as a Problem at the nearest position."""
    problems: list[Problem] = []
    unions: dict[Loc, list[tuple[dict[str, Any], _Walk]]] = {}
    for err in errors:
        w = _walk(scope, tuple(err["loc"]))
        if w.union is not None:
            unions.setdefault(w.union, []).append((err, w))
        else:
            problems.append(_problem(err, w, smap))
    for group in unions.values():
        problems.extend(_union_problem(group, scope, smap))
    return problems


def validate(scope: Scope, smap: SourceMap) -> tuple[BaseModel | None, list[Problem]]:
    try:
        return scope.model.model_validate(scope.data), []
    except ValidationError as e:
        return None, translate(e.errors(include_url=False), scope, smap)  # type: ignore[arg-type]


# --- generic loading ----------------------------------------------------------------------------


def _source(path_or_text: str | Path, filename: str | None) -> tuple[str, str]:
    if isinstance(path_or_text, Path):
        name = filename or str(path_or_text)
        return read_text(path_or_text, name), name
    return path_or_text, filename or "<string>"


Checks = Callable[[dict[str, Any], SourceMap, list[Problem]], list[Problem]]
"""Whole-file checks: given the data, positions and the schema's problems, return all problems."""


def load_model(path_or_text: str | Path, model_cls: type[M], *, filename: str | None = None) -> M:
    """Load a YAML file (a `Path`) or YAML text (a `str`) into `model_cls`. Raises InvalidFile.

    `filename` names the file in messages (default: the path, or `<string>` for text). Only the
    schema is checked here; `load_runbook` adds the checks that need the whole runbook.
    """
    text, name = _source(path_or_text, filename)
    return _load(text, name, model_cls, None)


def _load(text: str, filename: str, model_cls: type[M], checks: Checks | None) -> M:
    data, smap, problems = parse(text, filename)
    if data is NOTHING:
        raise InvalidFile(problems)
    model, found = validate(Scope(model_cls, data), smap)
    problems += found
    if checks is not None and isinstance(data, dict):
        problems = checks(data, smap, problems)
    if problems or model is None:
        raise InvalidFile(problems)
    return model  # type: ignore[return-value]


# --- the runbook's own checks -------------------------------------------------------------------

_STEP_TEXT_FIELDS = ("title", "cwd")
_KINDS = ("run", "argv", "action", "manual")
_ONE_KIND = "a step needs exactly one of run, argv, action, manual"


@dataclass
class _Site:
    """One string that may hold templates: where it is, and what it may refer to."""

    loc: Loc
    text: str
    step_index: int | None  # None: the runbook's `target` (no step outputs there)
    shell: bool = False


class _RunbookChecks:
    """Checks that need the whole runbook, run on the raw data so they add to schema problems."""

    def __init__(self, data: dict[str, Any], smap: SourceMap) -> None:
        self.data = data
        self.smap = smap
        self.problems: list[Problem] = []
        params = data.get("params")
        self.params: dict[str, Any] = params if isinstance(params, dict) else {}
        scenarios = data.get("scenarios")
        self.scenarios: list[str] = list(scenarios) if isinstance(scenarios, dict) else []
        steps = data.get("steps")
        self.steps: list[tuple[int, dict[str, Any]]] = (
            [(i, s) for i, s in enumerate(steps) if isinstance(s, dict)] if isinstance(steps, list) else []
        )
        self.first_index: dict[str, int] = {}
        for i, s in self.steps:
            sid = s.get("id")
            if isinstance(sid, str):
                self.first_index.setdefault(sid, i)

    def run(self) -> list[Problem]:
        self._kinds()
        self._duplicate_ids()
        self._scenario_names()
        self._actions()
        for site in self._sites():
            self._template(site)
        self._rto_end()
        self._param_defaults()
        return self.problems

    def _add(self, loc: Loc, message: str) -> None:
        self.problems.append(self.smap.problem(loc, message))

    def _step_name(self, i: int) -> str:
        sid = self.data["steps"][i].get("id")
        return f'step "{sid}"' if isinstance(sid, str) else f"step #{i + 1}"

    # kinds, ids and scenarios

    def _kinds(self) -> None:
        """Exactly one of run/argv/action/manual, checked even when other keys of the step are wrong."""
        for i, s in self.steps:
            kinds = [k for k in _KINDS if s.get(k) is not None]
            if not kinds:
                self._add(("steps", i), f"{self._step_name(i)} needs one of run, argv, action or manual")
            elif len(kinds) > 1:
                both = " and ".join(kinds)
                message = f"{self._step_name(i)} has {both}: {_ONE_KIND}"
                self.problems.append(self.smap.problem(("steps", i, kinds[1]), message, at_key=True))

    def _duplicate_ids(self) -> None:
        for i, s in self.steps:
            sid = s.get("id")
            if isinstance(sid, str) and self.first_index[sid] != i:
                first = self.smap.line_of(("steps", self.first_index[sid], "id"))
                self._add(("steps", i, "id"), f'duplicate step id "{sid}" (first at line {first})')

    def _scenario_names(self) -> None:
        if not self.scenarios:
            return
        for i, s in self.steps:
            self._scenario_list(("steps", i, "scenarios"), s.get("scenarios"), self._step_name(i))
        for name, p in self.params.items():
            if isinstance(p, dict):
                self._scenario_list(("params", name, "scenarios"), p.get("scenarios"), f'param "{name}"')

    def _scenario_list(self, loc: Loc, names: Any, owner: str) -> None:
        if not isinstance(names, list):
            return
        declared = ", ".join(self.scenarios)
        for j, name in enumerate(names):
            if isinstance(name, str) and name not in self.scenarios:
                hint = did_you_mean(name, self.scenarios) or f" (declared: {declared})"
                self._add((*loc, j), f'unknown scenario "{name}" in {owner}{hint}')

    # actions

    def _actions(self) -> None:
        for i, s in self.steps:
            action = s.get("action")
            if not isinstance(action, str):
                continue
            if action not in ACTIONS:
                hint = did_you_mean(action, list(ACTIONS)) or f" (built-in actions: {', '.join(sorted(ACTIONS))})"
                self._add(("steps", i, "action"), f'unknown action "{action}"{hint}')
                continue
            args = s.get("with", {})
            if args is None or isinstance(args, dict):
                self._action_args(i, action, args or {})

    def _action_args(self, i: int, action: str, args: dict[str, Any]) -> None:
        try:
            model = ACTIONS[action].args_model()
        except (ImportError, AttributeError) as e:
            self._add(("steps", i, "action"), f'action "{action}" cannot be loaded: {e}')
            return
        try:
            model.model_validate(args)
        except ValidationError as e:
            errors = [err for err in e.errors(include_url=False) if not _templated(args, tuple(err["loc"]))]
            scope = Scope(model, args, base=("steps", i, "with"), owner=self._step_name(i), rel=("with",))
            self.problems.extend(translate(errors, scope, self.smap))  # type: ignore[arg-type]

    # templates

    def _sites(self) -> Iterator[_Site]:
        for key in ("target", "repository"):
            value = self.data.get(key)
            if isinstance(value, str):
                yield _Site((key,), value, None)
        for i, s in self.steps:
            yield from self._step_sites(i, s)

    def _step_sites(self, i: int, s: dict[str, Any]) -> Iterator[_Site]:
        base: Loc = ("steps", i)
        for key in _STEP_TEXT_FIELDS:
            if isinstance(s.get(key), str):
                yield _Site((*base, key), s[key], i)
        if isinstance(s.get("run"), str):
            yield _Site((*base, "run"), s["run"], i, shell=True)
        for key in ("argv", "env", "with"):
            for loc, text in _strings(s.get(key), (*base, key)):
                yield _Site(loc, text, i)
        confirm = s.get("confirm")
        if isinstance(confirm, dict) and isinstance(confirm.get("typed"), str):
            yield _Site((*base, "confirm", "typed"), confirm["typed"], i)

    def _template(self, site: _Site) -> None:
        if not has_template(site.text):
            return
        refs, errors = scan_refs(site.text)
        for err in errors:
            self._at(site, err.offset, err.offset + 2, err.message)
        quoted = quoted_template_spans(site.text) if site.shell else []
        heredoc = heredoc_template_spans(site.text) if site.shell else []
        for ref in refs:
            message = self._ref_problem(ref, site.step_index, str(site.loc[0]))
            if message:
                self._at(site, ref.start, ref.end, message)
        for ref in quoted:
            self._at(
                site,
                ref.start,
                ref.end,
                f"template {{{{ {ref.key} }}}} inside quotes would be quoted twice; "
                f"write it unquoted, e.g. --dbname={{{{ db_name }}}}",
            )
        for ref in heredoc:
            name = ref.name.upper() if ref.kind == "param" else "VALUE"
            self._at(
                site,
                ref.start,
                ref.end,
                f"template {{{{ {ref.key} }}}} inside a here-document would keep its shell quotes in the text; "
                f'pass it through env (env: {{{name}: "{{{{ {ref.key} }}}}"}}) and write ${name}',
            )

    def _at(self, site: _Site, start: int, end: int, message: str) -> None:
        self.problems.append(self.smap.text_problem(site.loc, site.text, start, end, message))

    def _ref_problem(self, ref: Ref, step_index: int | None, where: str = "target") -> str | None:
        if ref.kind == "param":
            if ref.name in self.params:
                return None
            return f'unknown param "{ref.name}" in template{did_you_mean(ref.name, list(self.params))}'
        if ref.kind == "run":
            if ref.name in RUN_NAMES:
                return None
            names = ", ".join(f"run.{n}" for n in sorted(RUN_NAMES))
            hint = did_you_mean(f"run.{ref.name}", [f"run.{n}" for n in RUN_NAMES]) or f" (there are: {names})"
            return f'unknown run built-in "run.{ref.name}"{hint}'
        if step_index is None:
            return f"{{{{ {ref.key} }}}}: the {where} can use params and run.* only, not step outputs"
        return self._step_ref_problem(ref, step_index)

    def _step_ref_problem(self, ref: Ref, here: int) -> str | None:
        sid = ref.step or ""
        shown = f"{{{{ {ref.key} }}}}"
        if sid not in self.first_index:
            return f'{shown}: no step "{sid}"{did_you_mean(sid, list(self.first_index))}'
        there = self.first_index[sid]
        if there >= here:
            which = "this step" if there == here else "a later step"
            return f'{shown}: step "{sid}" is {which}; a template can only use outputs of earlier steps'
        step = self.data["steps"][there]
        action = step.get("action")
        if not isinstance(action, str):
            return f'{shown}: step "{sid}" is not an action step; only built-in actions have outputs'
        if action not in ACTIONS:
            return None  # reported as an unknown action
        outputs = ACTIONS[action].outputs
        if ref.name not in outputs:
            listed = ", ".join(outputs) or "none"
            hint = did_you_mean(ref.name, list(outputs)) or f" (it has: {listed})"
            return f'{shown}: action "{action}" of step "{sid}" has no output "{ref.name}"{hint}'
        return self._scenario_overlap(shown, sid, step, here)

    def _scenario_overlap(self, shown: str, sid: str, producer: dict[str, Any], here: int) -> str | None:
        theirs, mine = producer.get("scenarios"), self.data["steps"][here].get("scenarios")
        if isinstance(theirs, list) and isinstance(mine, list) and not set(map(str, theirs)) & set(map(str, mine)):
            return f'{shown}: step "{sid}" never runs in the same scenario as this step'
        return None

    # rto_end and defaults

    def _rto_end(self) -> None:
        marked = [(i, s) for i, s in self.steps if s.get("rto_end") is True]
        for n, (i, s) in enumerate(marked):
            for j, earlier in marked[:n]:
                shared = _shared_scenarios(earlier.get("scenarios"), s.get("scenarios"), self.scenarios)
                if shared is None:
                    continue
                plural = "s" if "," in (shared or "") else ""
                scope = f" in scenario{plural} {shared}" if shared else ""
                line = self.smap.line_of(("steps", j, "rto_end"))
                self._add(
                    ("steps", i, "rto_end"),
                    f"more than one rto_end step{scope}: {self._step_name(j)} (line {line}) already ends the RTO",
                )
                break

    def _param_defaults(self) -> None:
        for name, pdata in self.params.items():
            if not isinstance(pdata, dict) or pdata.get("default") is None:
                continue
            try:
                param = Param.model_validate(pdata)
            except ValidationError:
                continue  # reported by the schema
            try:
                coerce(str(name), param, pdata["default"])
            except ValueError as e:
                self._add(("params", name, "default"), f"bad default: {e}")


def _shared_scenarios(a: Any, b: Any, declared: list[str]) -> str | None:
    """`""` when two steps run together in every scenario, `'"x", "y"'` for some, None for none."""
    if a is None and b is None:
        return ""
    universe = set(declared) | {x for x in (a or []) + (b or []) if isinstance(x, str)}
    sa = universe if a is None else {x for x in a if isinstance(x, str)}
    sb = universe if b is None else {x for x in b if isinstance(x, str)}
    shared = [x for x in (declared or sorted(universe)) if x in sa & sb]
    return ", ".join(f'"{x}"' for x in shared) if shared else None


def _strings(obj: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Every string inside nested dicts and lists, with its location."""
    if isinstance(obj, str):
        yield loc, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, (*loc, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, (*loc, i))


def _templated(data: Any, loc: Loc) -> bool:
    """True when the value at `loc` (or a value on the way there) is a string with a template."""
    cur = data
    for seg in loc:
        if isinstance(cur, str):
            break
        if not has_item(cur, seg):
            return False
        cur = cur[seg]
    return isinstance(cur, str) and has_template(cur)


# --- public entry points ------------------------------------------------------------------------


def runbook_checks(data: dict[str, Any], smap: SourceMap, schema: list[Problem]) -> list[Problem]:
    """The schema's problems (less those a whole-file check says better) and the whole-file checks'."""
    kept = [p for p in schema if _ONE_KIND not in p.message]
    return kept + _RunbookChecks(data, smap).run()


def load_runbook(path: str | Path) -> Runbook:
    """Load and fully validate a runbook file. Raises InvalidFile with every problem of the file."""
    text, name = _source(Path(path), str(path))
    return _load(text, name, Runbook, runbook_checks)


def load_runbook_text(text: str, filename: str = "<string>") -> Runbook:
    """`load_runbook` for text already in memory (tests, editors). Raises InvalidFile."""
    return _load(text, filename, Runbook, runbook_checks)


_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*([mM][sS]|[smhdSMHD])\s*)+$", "examples": ["90s", "5m", "1h30m"]},
        {"type": "number", "minimum": 0, "description": "seconds"},
    ]
}


def _fix_durations(node: Any) -> Any:
    """Pydantic describes timedelta as ISO 8601; the file takes `90s`, `5m`, `1h30m` or seconds."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") == "duration":
            extra = {k: v for k, v in node.items() if k not in ("type", "format")}
            return {**extra, **_DURATION_SCHEMA}
        return {k: _fix_durations(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_durations(v) for v in node]
    return node


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the runbook file (version 1), for editors (`runbook schema`)."""
    schema = _fix_durations(Runbook.model_json_schema(by_alias=True, mode="validation"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "PostgreSQL DR runbook (runbook.yaml, version 1)",
    }

"""Pydantic validation errors as problems at the nearest `file:line:col`, in words a runbook author reads.

`validate` checks data against a model; `translate` follows each pydantic error's `loc` through the data
(a `Scope`: the model, its data and where that data sits in the file) down to the deepest part that
exists, names its owner (`step "restore"`, `param "db_name"`) and says what is wrong: "unknown key ...
(did you mean ...?)", "missing required key ...", "expected a whole number, got ...". The errors of one
union (`confirm: true` or `{typed: ...}`) become one message. `did_you_mean` and `has_item` serve the
runbook checks too.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from runbook.errors import Problem
from runbook.loader.yaml_source import Loc, SourceMap

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

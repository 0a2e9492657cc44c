"""The template language of runbook files: `{{ name }}`, `{{ steps.ID.OUTPUT }}`, `{{ run.NAME }}`.

Templates appear in a step's `run`, `argv`, `with`, `title`, `env`, `cwd`, `confirm.typed` and in the
runbook's `target`. The language is deliberately tiny: a reference is a param name, an output of an
earlier action step, or a built-in of the run; there are no filters and no expressions. A literal `{{`
is written `{{ '{{' }}`.

Everything here is pure (no I/O): parsing references with their offsets (for the validator), rendering
with a lookup supplied by the caller (the engine), and shell-quoting each substituted value in `run:`
so that no value can inject a command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

OPEN = "{{"
CLOSE = "}}"
LITERAL_OPEN = "'{{'"

RUN_NAMES: frozenset[str] = frozenset({"id", "dir", "mode", "scenario", "incident_start", "state_dir"})
"""The built-ins a template may name as `{{ run.NAME }}`."""

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_STEP_ID = r"[A-Za-z0-9][A-Za-z0-9_-]*"
_PARAM_RE = re.compile(rf"({_IDENT})")
_STEP_RE = re.compile(rf"steps\.({_STEP_ID})\.({_IDENT})")
_RUN_RE = re.compile(rf"run\.({_IDENT})")

RefKind = Literal["param", "step", "run"]


@dataclass(frozen=True)
class Ref:
    """One `{{ ... }}` reference; `start`/`end` are its offsets in the template text (end exclusive)."""

    kind: RefKind
    name: str
    step: str | None
    start: int
    end: int

    @property
    def key(self) -> str:
        """`db_name`, `steps.fetch.backup_dir` or `run.id`: the reference as it is written."""
        if self.kind == "step":
            return f"steps.{self.step}.{self.name}"
        if self.kind == "run":
            return f"run.{self.name}"
        return self.name


class TemplateSyntaxError(ValueError):
    """A template that is not `{{ name }}`, `{{ steps.ID.OUTPUT }}` or `{{ run.NAME }}`."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class MissingValue(KeyError):
    """A reference without a value (a param not given, an output nobody produced)."""

    def __init__(self, ref: Ref) -> None:
        super().__init__(ref.key)
        self.ref = ref

    def __str__(self) -> str:
        return f"no value for {{{{ {self.ref.key} }}}}"


Lookup = Callable[[Ref], str]
Token = str | Ref


def _ref_from(content: str, start: int, end: int) -> Ref | str:
    """The reference (or the literal text) that `{{ content }}` stands for."""
    body = content.strip()
    if body == LITERAL_OPEN:
        return OPEN
    if m := _STEP_RE.fullmatch(body):
        return Ref("step", m.group(2), m.group(1), start, end)
    if m := _RUN_RE.fullmatch(body):
        return Ref("run", m.group(1), None, start, end)
    if _PARAM_RE.fullmatch(body):
        return Ref("param", body, None, start, end)
    shown = body if len(body) <= 40 else body[:37] + "..."
    if body.startswith("steps"):
        hint = "write {{ steps.STEP_ID.OUTPUT }}"
    elif body.startswith("run."):
        hint = "write {{ run.NAME }}"
    else:
        hint = "write {{ name }}, {{ steps.STEP_ID.OUTPUT }} or {{ run.NAME }}; no filters or expressions"
    raise TemplateSyntaxError(f"unsupported template {{{{ {shown} }}}}: {hint}", start)


@lru_cache(maxsize=4096)
def _scan(text: str) -> tuple[tuple[Token, ...], tuple[TemplateSyntaxError, ...]]:
    """Split `text` into literal strings and references, going on past syntax errors.

    Cached: runbooks repeat their templates, and the validator and the engine read the same ones.
    """
    out: list[Token] = []
    errors: list[TemplateSyntaxError] = []
    pos = 0
    literal: list[str] = []
    while (start := text.find(OPEN, pos)) != -1:
        close = text.find(CLOSE, start + len(OPEN))
        if close == -1:
            errors.append(TemplateSyntaxError("unclosed {{ (a literal {{ is written {{ '{{' }})", start))
            break
        end = close + len(CLOSE)
        literal.append(text[pos:start])
        pos = end
        try:
            item = _ref_from(text[start + len(OPEN) : close], start, end)
        except TemplateSyntaxError as e:
            errors.append(e)
            continue
        if isinstance(item, str):
            literal.append(item)
        else:
            out.append("".join(literal))
            literal = []
            out.append(item)
    literal.append(text[pos:])
    out.append("".join(literal))
    return tuple(t for t in out if t != ""), tuple(errors)


def _tokens(text: str) -> tuple[Token, ...]:
    tokens, errors = _scan(text)
    if errors:
        raise errors[0]
    return tokens


def parse_refs(text: str) -> list[Ref]:
    """Every reference in `text`, in order. Raises TemplateSyntaxError (with `.offset`)."""
    return [t for t in _tokens(text) if isinstance(t, Ref)]


def scan_refs(text: str) -> tuple[list[Ref], list[TemplateSyntaxError]]:
    """Every well-formed reference and every syntax error of `text` (for the validator)."""
    tokens, errors = _scan(text)
    return [t for t in tokens if isinstance(t, Ref)], list(errors)


def has_template(text: str) -> bool:
    """True when `text` contains `{{` (a reference or a syntax error): cheap pre-check."""
    return OPEN in text


class ShellCode(str):
    """A value that is shell code by declaration (a param of type `command`): `render(shell=True)` inserts it
    as it is, so that the step runs, and shows, the command the operator gave."""

    __slots__ = ()


def render(text: str, lookup: Lookup, *, shell: bool) -> str:
    """Substitute every reference by `lookup(ref)`; with `shell=True` each value is `shlex.quote`d, except a
    `ShellCode` value (a `command` param), which is code by declaration.

    A KeyError from `lookup` becomes `MissingValue(ref)`.
    """
    parts: list[str] = []
    for token in _tokens(text):
        if isinstance(token, str):
            parts.append(token)
            continue
        value = _value(token, lookup)
        parts.append(shlex.quote(value) if shell and not isinstance(value, ShellCode) else value)
    return "".join(parts)


def _value(ref: Ref, lookup: Lookup) -> str:
    try:
        value = lookup(ref)
    except MissingValue:
        raise
    except KeyError:
        raise MissingValue(ref) from None
    if not isinstance(value, str):
        raise TypeError(f"lookup for {{{{ {ref.key} }}}} returned {type(value).__name__}, not str")
    return value


def render_obj(obj: Any, lookup: Lookup) -> Any:
    """Render every string inside dicts and lists (no shell quoting): the `with:` of an action."""
    if isinstance(obj, str):
        return render(obj, lookup, shell=False) if has_template(obj) else obj
    if isinstance(obj, dict):
        return {k: render_obj(v, lookup) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [render_obj(v, lookup) for v in obj]
    return obj


# --- templates inside shell quotes and here-documents -------------------------------------------

_SQ, _DQ, _ANSI, _SUBST, _BACKTICK, _TOP = "sq", "dq", "ansi", "subst", "bt", "top"
_QUOTED = frozenset({_SQ, _DQ, _ANSI})
_WORD_BREAK = frozenset(" \t\n;&|()")
_HEREDOC = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([^\s;&|<>()'\"]+))")


@dataclass
class _Heredoc:
    delimiter: str
    strip_tabs: bool


class _ShellScan:
    """A small model of bash quoting: quotes, `$( )`, backticks, comments and here-documents.

    Fed the literal text between references, it says in which context the next reference sits.
    """

    def __init__(self) -> None:
        self.stack: list[str] = [_TOP]
        self.depth: list[int] = [0]
        self.escaped = False
        self.comment = False
        self.prev = "\n"
        self.pending: list[_Heredoc] = []
        self.body: _Heredoc | None = None
        self.line = ""

    @property
    def context(self) -> str:
        """"heredoc", a quote kind, or an unquoted context."""
        return "heredoc" if self.body is not None else self.stack[-1]

    def ref(self) -> None:
        """A reference was substituted here (it is part of the current here-document line)."""
        if self.body is not None:
            self.line += "\0"
        self.prev = "x"

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            i += self._char(text, i)

    def _push(self, ctx: str) -> None:
        self.stack.append(ctx)
        self.depth.append(0)

    def _pop(self) -> None:
        if len(self.stack) > 1:
            self.stack.pop()
            self.depth.pop()

    def _char(self, text: str, i: int) -> int:
        c = text[i]
        if self.body is not None:
            self._body_char(c)
            return 1
        if self.comment:
            self.comment = c != "\n"
            if c == "\n":
                self._newline()
            return 1
        n = self._quoting(text, i)
        self.prev = text[i + n - 1]
        return n

    def _body_char(self, c: str) -> None:
        body = self.body
        if c != "\n" or body is None:
            self.line += c
            return
        line = self.line.lstrip("\t") if body.strip_tabs else self.line
        self.line = ""
        if line == body.delimiter:
            self.body = self.pending.pop(0) if self.pending else None

    def _newline(self) -> None:
        if self.pending and self.stack[-1] not in _QUOTED:
            self.body = self.pending.pop(0)

    def _quoting(self, text: str, i: int) -> int:
        """Consume one character (more for `$(`, `$'` and `<<WORD`); return how many."""
        c = text[i]
        nxt = text[i + 1] if i + 1 < len(text) else ""
        top = self.stack[-1]
        if self.escaped:
            self.escaped = False
            return 1
        if top == _SQ:
            if c == "'":
                self._pop()
            return 1
        if c == "\\":
            self.escaped = True
            return 1
        if top == _ANSI:
            if c == "'":
                self._pop()
            return 1
        if c == "$" and nxt == "(":
            self._push(_SUBST)
            return 2
        if c == "`":
            if top == _BACKTICK:
                self._pop()
            else:
                self._push(_BACKTICK)
            return 1
        if top == _DQ:
            if c == '"':
                self._pop()
            return 1
        return self._unquoted(text, i)

    def _unquoted(self, text: str, i: int) -> int:
        """Top level, inside `$( )` or backticks: quotes open, parentheses nest, `#` and `<<` work."""
        c = text[i]
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if c == "\n":
            self._newline()
        elif c == "#" and self.prev in _WORD_BREAK:
            self.comment = True
        elif c == "$" and nxt == "'":
            self._push(_ANSI)
            return 2
        elif c == "'":
            self._push(_SQ)
        elif c == '"':
            self._push(_DQ)
        elif c == "<" and nxt == "<" and (m := _HEREDOC.match(text, i)) and not text.startswith("<<<", i):
            word = next(g for g in m.groups()[1:] if g is not None)
            self.pending.append(_Heredoc(word, strip_tabs=m.group(1) == "-"))
            return m.end() - i
        elif self.stack[-1] == _SUBST and c == "(":
            self.depth[-1] += 1
        elif self.stack[-1] == _SUBST and c == ")":
            if self.depth[-1] == 0:
                self._pop()
            else:
                self.depth[-1] -= 1
        return 1


def _contexts(run_text: str) -> list[tuple[Ref, str]]:
    scan = _ShellScan()
    found: list[tuple[Ref, str]] = []
    for token in _scan(run_text)[0]:
        if isinstance(token, str):
            scan.feed(token)
        else:
            found.append((token, scan.context))
            scan.ref()
    return found


def quoted_template_spans(run_text: str) -> list[Ref]:
    """References in a shell command that sit inside single or double quotes.

    Such a value would be quoted twice (`"{{ x }}"` becomes `"'value'"`); write it unquoted, e.g.
    `--dbname={{ db_name }}`. Malformed `{{ }}` are skipped (`scan_refs` reports them).
    """
    return [ref for ref, ctx in _contexts(run_text) if ctx in _QUOTED]


def heredoc_template_spans(run_text: str) -> list[Ref]:
    """References inside the body of a here-document (`cat <<EOF ... EOF`).

    The shell does not remove quotes there, so a shell-quoted value keeps its quotes in the text;
    pass the value through `env:` and write `$NAME` instead.
    """
    return [ref for ref, ctx in _contexts(run_text) if ctx == "heredoc"]

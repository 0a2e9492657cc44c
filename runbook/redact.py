"""Secret masking: secrets never appear in anything the tool writes.

`Redactor` masks known secret values in whole texts and in nested JSON-like objects.
`StreamRedactor` does the same for a stream that arrives in arbitrary chunks (a child's pipe):
it holds back only the shortest necessary tail, one that could still grow into a secret, so a
secret split across two reads is masked, and the concatenated output of `feed()` + `flush()` is
exactly `Redactor.redact()` of the whole text.

Each secret is masked in the forms it takes in what the tool writes, not only as itself: shell-quoted
(`shlex.quote`, as a template puts it in a `run:` command, and its inside form, as part of a longer
quoted value) and JSON-escaped (as in an action's arguments, an output, a journal line). `secrets` keeps
the values themselves (what the supervisor is handed); the forms are derived here.

Semantics: at each position the longest form of a secret that matches there is masked (leftmost first,
like `re.sub` with the alternatives sorted longest-first); each masked occurrence becomes one `MASK`.

Masking is for display only; in objects (`redact_obj`) it applies to values, never to mapping keys,
which are names (a secret that happens to equal a key must not rename a field of a journal line).

This module is imported by the step supervisor, whose start-up must stay light: stdlib only.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from typing import Any

MASK = "••••••"

__all__ = ["MASK", "Redactor", "StreamRedactor", "forms_of"]


def forms_of(secret: str) -> set[str]:
    """The texts a secret becomes where the tool writes it: itself, shell-quoted (whole, and inside a longer
    single-quoted word), JSON-escaped (with and without `ensure_ascii`)."""
    return {
        secret,
        shlex.quote(secret),
        secret.replace("'", "'\"'\"'"),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


class Redactor:
    """Masks every occurrence of the given secret values (empty strings are ignored)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        unique = {s for s in secrets if isinstance(s, str) and s}
        self.secrets: tuple[str, ...] = tuple(sorted(unique, key=lambda s: (-len(s), s)))
        forms = sorted({f for s in self.secrets for f in forms_of(s)}, key=lambda s: (-len(s), s))
        self._pattern: re.Pattern[str] | None = (
            re.compile("|".join(re.escape(f) for f in forms)) if forms else None
        )
        self._prefixes: frozenset[str] = frozenset(f[:i] for f in forms for i in range(1, len(f)))
        self._longest_prefix = max((len(f) - 1 for f in forms), default=0)

    @property
    def any(self) -> bool:
        """True when there is at least one secret to mask."""
        return self._pattern is not None

    @property
    def pattern(self) -> re.Pattern[str] | None:
        return self._pattern

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by `MASK`."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MASK, text)

    def redact_obj(self, obj: Any, keep: frozenset[str] = frozenset()) -> Any:
        """A copy of `obj` with secrets masked in every string value (dict, list, tuple, str); dict keys are
        names and stay as they are, and so do the values of the top-level keys in `keep` (names too: a step
        id, an event type)."""
        if self._pattern is None:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {k: v if k in keep else self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.redact_obj(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.redact_obj(v) for v in obj)
        return obj

    def pending_start(self, text: str) -> int:
        """Start of the longest tail of `text` that is a proper prefix of some secret (len(text) if none)."""
        n = len(text)
        for length in range(min(n, self._longest_prefix), 0, -1):
            if text[n - length:] in self._prefixes:
                return n - length
        return n


class StreamRedactor:
    """Redacts a text stream fed in arbitrary chunks; see the module docstring for the guarantee."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._buf = ""

    @property
    def held(self) -> int:
        """How many characters are held back, waiting to know whether they start a secret."""
        return len(self._buf)

    def feed(self, text: str) -> str:
        """Add `text`; return the part of the stream that is now safe (and final) to emit."""
        pattern = self._redactor.pattern
        if pattern is None:
            return text
        buf = self._buf + text
        hold = self._redactor.pending_start(buf)
        out: list[str] = []
        pos = 0
        # A match starting before `hold` is final: no continuation can change the decision there,
        # because buf[q:] for q < hold is no proper prefix of any secret.
        for m in pattern.finditer(buf):
            if m.start() >= hold:
                break
            out.append(buf[pos:m.start()])
            out.append(MASK)
            pos = m.end()
        if pos < hold:
            out.append(buf[pos:hold])
            pos = hold
        self._buf = buf[pos:]
        return "".join(out)

    def flush(self) -> str:
        """End of stream: the held-back tail, redacted."""
        rest, self._buf = self._buf, ""
        return self._redactor.redact(rest)

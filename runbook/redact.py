"""Secret masking: secrets never appear in anything the tool writes.

`Redactor` masks known secret values in whole texts and in nested JSON-like objects.
`StreamRedactor` does the same for a stream that arrives in arbitrary chunks (a child's pipe):
it holds back only the shortest necessary tail, one that could still grow into a secret, so a
secret split across two reads is masked, and the concatenated output of `feed()` + `flush()` is
exactly `Redactor.redact()` of the whole text.

Semantics: at each position the longest secret that matches there is masked (leftmost first, like
`re.sub` with the alternatives sorted longest-first); each masked occurrence becomes one `MASK`.

This module is imported by the step supervisor, whose start-up must stay light: stdlib `re` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "••••••"

__all__ = ["MASK", "Redactor", "StreamRedactor"]


class Redactor:
    """Masks every occurrence of the given secret values (empty strings are ignored)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        unique = {s for s in secrets if isinstance(s, str) and s}
        self.secrets: tuple[str, ...] = tuple(sorted(unique, key=lambda s: (-len(s), s)))
        self._pattern: re.Pattern[str] | None = (
            re.compile("|".join(re.escape(s) for s in self.secrets)) if self.secrets else None
        )
        self._prefixes: frozenset[str] = frozenset(s[:i] for s in self.secrets for i in range(1, len(s)))
        self._longest_prefix = max((len(s) - 1 for s in self.secrets), default=0)

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

    def redact_obj(self, obj: Any) -> Any:
        """A copy of `obj` with secrets masked in every string, dict keys included (dict, list, tuple, str)."""
        if self._pattern is None:
            return obj
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {self.redact_obj(k): self.redact_obj(v) for k, v in obj.items()}
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

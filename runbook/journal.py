"""The run journal: append-only JSON lines, fsynced one by one, hash-chained.

Each line carries `seq` (1, 2, ...), `prev` (the previous line's hash) and `hash` (sha256 of the line's
own canonical content without `hash`). An edit anywhere, a removed line or a reordering is detected and
reported with its line number; a torn last line (the runner died while writing it) is cut with a warning.
Every value written passes through the redactor first (values only: keys, the event type and step ids are
names, so a secret that equals one of them cannot rename a field or break the fold of the journal).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runbook.clock import Clock, iso
from runbook.errors import JournalError
from runbook.redact import Redactor

GENESIS = "0" * 64
_NAMES = frozenset({"step", "for_step", "steps"})  # step ids, from the runbook file: never masked


def _canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def chain_problem(ev: dict[str, Any], seq: int, prev: str) -> str | None:
    """Why `ev` cannot be line `seq` after the line whose hash is `prev` (None: it can): the checks
    `read_journal` makes, for a reader that gets the lines from elsewhere (the repository's mirror)."""
    if ev.get("seq") != seq:
        return f"sequence number {ev.get('seq')!r} where {seq} was expected (a line was removed or inserted)"
    if ev.get("prev") != prev:
        return "the chain is broken here (the line before it was changed, removed or reordered)"
    body = {k: v for k, v in ev.items() if k != "hash"}
    if ev.get("hash") != _hash(body):
        return "this line was changed after it was written (its hash does not match)"
    return None


@dataclass
class JournalRead:
    events: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    good_bytes: int = 0  # length of the trustworthy prefix of the file
    torn: bool = False


def read_journal(path: Path) -> JournalRead:
    """Read and verify a journal. Raises JournalError for damage before the last line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise JournalError(f"{path}: no journal here", hint="`runbook runs` lists the runs") from None
    out = JournalRead()
    prev = GENESIS
    pos = 0
    lines = data.split(b"\n")
    # split leaves a last element: b"" when the file ends with a newline, else the torn tail
    for n, raw in enumerate(lines, start=1):
        is_last = n == len(lines)
        if is_last:
            if raw:
                out.torn = True
                out.warnings.append(
                    f"{path}:{n}: the last line was cut short (the runner died while writing it); it was dropped"
                )
            break
        try:
            ev = json.loads(raw.decode("utf-8"))
            if not isinstance(ev, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            if n == len(lines) - 1 and not lines[-1]:
                # a complete but unparsable last line: treated like a torn one
                out.torn = True
                out.warnings.append(f"{path}:{n}: the last line is unreadable; it was dropped")
                break
            raise JournalError(
                f"{path}:{n}: this line is not valid JSON; the journal was damaged or edited",
                hint="keep a copy of the file for the post-mortem; the run cannot be trusted past this line",
            ) from None
        claimed = ev.pop("hash", None)
        if ev.get("seq") != n:
            raise JournalError(f"{path}:{n}: sequence number {ev.get('seq')!r} where {n} was expected (a line was removed or inserted)")
        if ev.get("prev") != prev:
            raise JournalError(f"{path}:{n}: the chain is broken here (the line before it was changed, removed or reordered)")
        if claimed != _hash(ev):
            raise JournalError(f"{path}:{n}: this line was changed after it was written (its hash does not match)")
        prev = claimed
        ev["hash"] = claimed
        out.events.append(ev)
        pos += len(raw) + 1
    out.good_bytes = pos
    return out


class Journal:
    """Appends events to `journal.jsonl`; one fsync per event so nothing acknowledged is lost."""

    def __init__(self, path: Path, clock: Clock, redactor: Redactor | None = None) -> None:
        self.path = path
        self.clock = clock
        self.redactor = redactor or Redactor([])
        self._seq = 0
        self._prev = GENESIS
        self.warnings: list[str] = []
        if path.exists():
            read = read_journal(path)
            self.warnings = read.warnings
            if read.torn:
                with open(path, "r+b") as f:
                    f.truncate(read.good_bytes)
                    f.flush()
                    os.fsync(f.fileno())
            if read.events:
                self._seq = read.events[-1]["seq"]
                self._prev = read.events[-1]["hash"]
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, type_: str, **data: Any) -> dict[str, Any]:
        data = self.redactor.redact_obj(data, keep=_NAMES)
        body: dict[str, Any] = {"seq": self._seq + 1, "ts": iso(self.clock.now()), "type": type_, **data}
        body["prev"] = self._prev
        body = json.loads(json.dumps(body, ensure_ascii=False, default=str))  # exactly what a reader sees
        h = _hash(body)
        line = json.dumps({**body, "hash": h}, ensure_ascii=False, default=str, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8"))
        os.fsync(self._fd)
        self._seq += 1
        self._prev = h
        return {**body, "hash": h}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

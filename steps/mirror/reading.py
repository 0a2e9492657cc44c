"""The watcher's side of the mirror: read a run's chunks and live.json from one store, verified, never writing.

A chunk is returned only when everything about it holds: its name (number, first and last seq), that it is the
next one (no chunk missing, no seq skipped), its signature (a key of signing.public_keys; unsigned ones only with
allow_unsigned), its size, and every line's place in the journal's hash chain (seq, prev, hash), continuing the
chain of the chunks before it. Anything else raises `MirrorRefused` naming the object and the reason, and no
event of that chunk is returned.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runbook.errors import RunbookError
from runbook.journal import GENESIS, chain_problem
from steps.mirror.layout import (
    CHUNK_RE,
    MAX_CHUNK_BYTES,
    MAX_LIVE_BYTES,
    MAX_RUNBOOK_BYTES,
    RUNBOOK_RE,
    journal_prefix,
    live_key,
    run_prefix,
)

if TYPE_CHECKING:
    from steps.repository.signing import Trust
    from steps.repository.store import Store


class MirrorRefused(RunbookError):
    """An object of the mirror that is not genuine, or a chunk that is missing: nothing past it is shown."""

    title = "mirror"


@dataclass(frozen=True)
class Live:
    state: str  # running | detached | ended
    heartbeat: datetime | None
    last_seq: int
    driver: dict[str, Any]
    host: str
    behind_since: str | None
    raw: bytes  # to see whether it changed since the last read


class MirrorReader:
    """Follows run `run_id`'s mirror in `store`: `new_events()` returns the events after the last returned."""

    def __init__(self, store: Store, run_id: str, trust: Trust, keys: Any = None) -> None:
        self.store = store
        self.run_id = run_id
        self.trust = trust
        self.keys = keys  # steps.encrypted.reading.Keys: this host's identities, for encrypted chunks
        self.chunks = 0
        self.seq = 0
        self.prev = GENESIS
        self.raw: list[bytes] = []  # every verified line, byte for byte with its newline (a take-over rebuilds from it)
        self._deferred: Exception | None = None

    def exists(self) -> bool:
        """Does this store hold any of the run's mirror (chunks or live.json)?"""
        from steps.repository.store import NotFound

        if self.store.list_keys(journal_prefix(self.run_id)):
            return True
        try:
            self.store.get_bytes(live_key(self.run_id))
        except NotFound:
            return False
        return True

    def new_events(self) -> list[dict[str, Any]]:
        from steps.repository.signing import SIG_SUFFIX

        if self._deferred is not None:
            e, self._deferred = self._deferred, None
            raise e
        prefix = journal_prefix(self.run_id)
        listed = dict(self.store.list_keys(prefix))
        chunks: dict[int, tuple[str, int, int, int, str | None]] = {}
        for key, size in listed.items():
            name = key[len(prefix):]
            if name.endswith(SIG_SUFFIX):
                continue
            m = CHUNK_RE.match(name)
            if m is None:
                raise MirrorRefused(f"{self.where(key)}: not a chunk of the mirror (its name is not "
                                    "<chunk>-<first>-<last>.jsonl): refused, nothing after it is shown")
            n = int(m.group(1))
            if n in chunks:
                raise MirrorRefused(f"{self.where(key)}: a second chunk numbered {n}: refused")
            chunks[n] = (key, int(m.group(2)), int(m.group(3)), size, m.group(4))
        out: list[dict[str, Any]] = []
        later = sorted(n for n in chunks if n > self.chunks)
        try:
            for n in later:
                if n != self.chunks + 1:
                    missing = self.chunks + 1
                    raise MirrorRefused(f"chunk {missing:06d} of run {self.run_id} is missing from "
                                        f"{self.store.describe()} (events from {self.seq + 1} on): the events after "
                                        "it are not shown")
                key, first, last, size, epoch = chunks[n]
                out += self._chunk(key, first, last, size, key + SIG_SUFFIX in listed, epoch)
                self.chunks = n
        except Exception as e:
            if not out:
                raise
            self._deferred = e  # the chunks verified before it are returned first; the error on the next call
        return out

    def where(self, key: str) -> str:
        return f"{self.store.describe()}: {key}"

    def _chunk(self, key: str, first: int, last: int, size: int, signed: bool,
               epoch: str | None = None) -> list[dict[str, Any]]:
        if first != self.seq + 1 or last < first:
            raise MirrorRefused(f"{self.where(key)}: holds events {first} to {last}, but {self.seq + 1} comes next: "
                                "refused")
        if size > MAX_CHUNK_BYTES:
            raise MirrorRefused(f"{self.where(key)}: {size} bytes, more than a chunk ever holds: refused unread")
        data = self.store.get_bytes(key)
        verdict = self.trust.read(self.store, key, data, signed)
        if not verdict.accepted:
            raise MirrorRefused(f"{self.where(key)}: {verdict.reason}: refused, not shown")
        if epoch is not None:
            data = self._decrypt(key, data, epoch)
        events: list[dict[str, Any]] = []
        raws: list[bytes] = []
        seq, prev = self.seq, self.prev
        lines = data.split(b"\n")
        if lines[-1] != b"":
            raise MirrorRefused(f"{self.where(key)}: its last line is cut: refused")
        for n, raw in enumerate(lines[:-1], start=1):
            try:
                ev = json.loads(raw.decode("utf-8"))
                if not isinstance(ev, dict):
                    raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError):
                raise MirrorRefused(f"{self.where(key)}:{n}: not a journal line: refused") from None
            problem = chain_problem(ev, seq + 1, prev)
            if problem is None and seq == 0 and ev.get("type") != "run-started":
                problem = "the journal does not begin with run-started"
            if problem is None and seq == 0 and ev.get("run_id") != self.run_id:
                problem = f"the journal of run {ev.get('run_id')!r}, not of {self.run_id}"
            if problem is not None:
                raise MirrorRefused(f"{self.where(key)}:{n}: {problem}: refused")
            seq, prev = seq + 1, str(ev["hash"])
            events.append(ev)
            raws.append(raw + b"\n")
        if seq != last:
            raise MirrorRefused(f"{self.where(key)}: ends at event {seq}, its name says {last}: refused")
        self.seq, self.prev = seq, prev
        self.raw += raws
        return events

    def runbook(self, sha256: str) -> bytes | None:
        """The run's copy of its runbook, verified: its signature, then (opened where it is encrypted) that its
        sha256 is `sha256`, the hash run-started journaled. None when the store holds no copy (yet); MirrorRefused
        for one that is not genuine, two copies, or a copy that is not the run's."""
        import hashlib

        from steps.repository.signing import SIG_SUFFIX

        prefix = run_prefix(self.run_id)
        listed = dict(self.store.list_keys(prefix))
        found = [(k, size, m.group(1)) for k, size in listed.items()
                 if (m := RUNBOOK_RE.match(k[len(prefix):])) is not None]
        if not found:
            return None
        if len(found) > 1:
            raise MirrorRefused(f"{self.store.describe()}: {len(found)} copies of the runbook of run {self.run_id} "
                                f"({', '.join(sorted(k for k, _, _ in found))}), the driver writes one: refused")
        key, size, epoch = found[0]
        if size > MAX_RUNBOOK_BYTES:
            raise MirrorRefused(f"{self.where(key)}: {size} bytes, more than a runbook copy may hold: refused unread")
        data = self.store.get_bytes(key)
        verdict = self.trust.read(self.store, key, data, key + SIG_SUFFIX in listed)
        if not verdict.accepted:
            raise MirrorRefused(f"{self.where(key)}: {verdict.reason}: refused")
        if epoch is not None:
            data = self._decrypt(key, data, epoch)
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise MirrorRefused(f"{self.where(key)}: its sha256 is {got[:12]}…, the run's journal records "
                                f"{sha256[:12]}… for its runbook: not the run's copy, refused")
        return data

    def _decrypt(self, key: str, data: bytes, epoch: str) -> bytes:
        """The plaintext of an encrypted chunk (its stored bytes already verified against their signature)."""
        from steps.crypto.age import decrypt_bytes
        from steps.repository.manifest import Encryption

        what = f"the mirror of run {self.run_id} ({self.where(key)})"
        if self.keys is None:
            raise MirrorRefused(f"{what} is encrypted (epoch {epoch}) and no identity was given to open it")
        try:
            identity = self.keys.identity(self.store, Encryption(epoch=epoch), what)
            return bytes(decrypt_bytes(data, identity, what))
        except MirrorRefused:
            raise
        except RunbookError as e:
            raise MirrorRefused(e.message, hint=e.hint) from None

    def live(self) -> Live | None:
        """live.json, verified (None when there is none yet). A read that crosses the driver's rewrite (the new
        signature, the old bytes) is read again once before it is refused."""
        from steps.repository.store import NotFound

        key = live_key(self.run_id)
        for attempt in range(2):
            try:
                data = b""
                for part in self.store.iter_chunks(key):
                    data += part
                    if len(data) > MAX_LIVE_BYTES:
                        raise MirrorRefused(f"{self.where(key)}: larger than {MAX_LIVE_BYTES} bytes: refused unread")
            except NotFound:
                if attempt == 0:
                    time.sleep(0.3)  # between the driver's delete and its write
                    continue
                return None
            verdict = self.trust.read(self.store, key, data)
            if verdict.accepted:
                break
            if attempt == 1:
                raise MirrorRefused(f"{self.where(key)}: {verdict.reason}: refused, the driver's state is not shown")
            time.sleep(0.3)
        try:
            body = json.loads(data)
            if not isinstance(body, dict) or body.get("run_id") != self.run_id:
                raise ValueError(f"not the live state of run {self.run_id}")
            hb = body.get("heartbeat")
            return Live(state=str(body.get("state", "")), last_seq=int(body.get("last_seq") or 0),
                        heartbeat=datetime.fromisoformat(hb) if isinstance(hb, str) else None,
                        driver=dict(body.get("driver") or {}), host=str(body.get("host", "")),
                        behind_since=body.get("behind_since"), raw=data)
        except (ValueError, TypeError) as e:
            raise MirrorRefused(f"{self.where(key)}: unreadable: {e}") from None

"""The driver's side of the mirror: a thread that copies the journal's new lines into the repository.

Before the first chunk into a store, the run's copy of its runbook (the run directory's runbook.yaml, which
run-started's `runbook.sha256` names) is written there once, signed and sealed like a chunk: a watcher shows the
runbook's titles and expected durations from it. A resumed run goes on with the same copy (a resume reads the
run directory's copy, never the runbook file again), so a store that holds one already is left as it is.

The thread reads the journal file (its own descriptor, read-only: the engine's appends are never waited for)
every `EVENT_INTERVAL_S`, cuts the complete new lines into one chunk per store and writes it, signed; every
`HEARTBEAT_S` it rewrites live.json. A store that fails is retried at a growing interval (at most
`RETRY_MAX_S`) while the run goes on; the first failure is said once through `notify` ("watchers through the
repository are behind"), the recovery too. Nothing here ever raises into the engine.

`stop(state)` writes what is left and live.json's final state, waiting at most `STOP_WAIT_S`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.mirror.layout import (
    CHUNK_RE,
    RUNBOOK_RE,
    chunk_key,
    journal_prefix,
    live_key,
    run_prefix,
    runbook_key,
)

if TYPE_CHECKING:
    from steps.repository.signing import Signer
    from steps.repository.store import Store

EVENT_INTERVAL_S = 1.0
HEARTBEAT_S = 3.0
RETRY_MAX_S = 15.0
STOP_WAIT_S = 10.0


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


@dataclass
class _Target:
    """One store's progress: what it holds of the journal, and since when it is behind."""

    store: Store
    sealer: Callable[[], Any] | None = None  # the store encrypts: gets its Sealing (in the thread: it may write)
    sealing: Any = None  # steps.encrypted.writing.Sealing: the chunks are age-encrypted to its epoch
    known: bool = False  # its existing chunks were listed (a resumed run goes on after them)
    chunks: int = 0
    mirrored: int = 0  # last journal seq the store holds
    pending: tuple[str, bytes] | None = None  # a chunk being written (retried with the same name and bytes)
    runbook_done: bool = False  # the store holds the run's runbook copy
    runbook_pending: tuple[str, bytes] | None = None  # the copy being written (retried with the same bytes)
    behind_since: str | None = None
    error: str = ""
    retry_at: float = 0.0
    failures: int = 0
    live_at: float = 0.0


@dataclass
class MirrorStats:
    events: int = 0
    chunks: int = 0
    heartbeats: int = 0
    cpu_s: float = 0.0  # CPU time of the mirror thread


class JournalMirror:
    """Mirror `journal` (the run's journal.jsonl) of run `run_id` into `stores`, signed by `signer`."""

    def __init__(self, run_id: str, journal: Path, stores: list[Store], signer: Signer | None,
                 notify: Callable[[str], None] | None = None, driver: dict[str, Any] | None = None,
                 sealers: dict[int, Callable[[], Any]] | None = None, runbook: Path | None = None,
                 trust: Any = None) -> None:
        self.run_id = run_id
        self.trust = trust  # steps.repository.signing.Trust: take-over requests from other hosts are verified with it
        self.on_request: Callable[[Any], None] | None = None  # the engine's: each request read (steps.mirror.requests)
        self.leaving = "detached"  # live.json's last state when the run is left open: detached | handed-over
        self._seen_requests: set[str] = set()
        self.journal = journal
        self.runbook = runbook  # the run directory's copy of the runbook, written once into each store
        self.signer = signer
        self.notify = notify
        self.driver = driver or {}
        self.targets = [_Target(s, (sealers or {}).get(i)) for i, s in enumerate(stores)]
        self.stats = MirrorStats()
        self._lines: list[tuple[int, bytes]] = []  # (seq, line with its newline), every complete line read
        self._offset = 0
        self._state = "running"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"journal-mirror-{run_id}", daemon=True)
        self._said: list[str] = []  # said before `notify` was set: said when it is

    def start(self) -> JournalMirror:
        self._thread.start()
        return self

    def stop(self, state: str = "ended", wait_s: float = STOP_WAIT_S) -> list[str]:
        """Write what is left and live.json with `state` (ended | detached); returns what could not be."""
        self._state = state
        self._stop.set()
        self._thread.join(wait_s)
        problems = []
        for t in self.targets:
            if self._thread.is_alive() or t.mirrored < self._last_seq() or t.behind_since:
                problems.append(f"the journal's mirror in {t.store.describe()} is behind (event {t.mirrored} of "
                                f"{self._last_seq()}){': ' + t.error if t.error else ''}")
        return problems

    # ---- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        start_cpu = time.thread_time()
        try:
            while not self._stop.wait(EVENT_INTERVAL_S):
                self._round(final=False)
            deadline = time.monotonic() + STOP_WAIT_S - 2
            while True:  # the final round: every line, then live.json's last state; retried while time is left
                self._round(final=True)
                if all(t.mirrored >= self._last_seq() and not t.behind_since for t in self.targets):
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        finally:
            self.stats.cpu_s = time.thread_time() - start_cpu

    def _round(self, *, final: bool) -> None:
        self._read_journal()
        now = time.monotonic()
        for t in self.targets:
            if not final and now < t.retry_at:
                continue
            try:
                self._catch_up(t, final)
            except Exception as e:  # noqa: BLE001 - a store fails in many ways; the run goes on regardless
                self._failed(t, e)
            else:
                if t.behind_since:
                    self._say(f"the journal's mirror in {t.store.describe()} caught up: watchers through the "
                              f"repository were behind since {t.behind_since}")
                    t.behind_since, t.error, t.failures = None, "", 0
                    self._write_live(t)  # live.json no longer says behind
            if not final and t.behind_since is None:  # a store that fails writes is not read either, until back
                self._requests(t)

    def _requests(self, t: _Target) -> None:
        """Take-over requests from other hosts (steps.mirror.requests), verified, handed to the engine."""
        if self.on_request is None or self.trust is None:
            return
        from steps.mirror.requests import read_requests

        try:
            found = read_requests(t.store, self.run_id, self.trust, self._seen_requests)
        except Exception:  # noqa: BLE001 - a store that cannot be listed now: read again next round
            return
        for req in found:
            with contextlib.suppress(Exception):  # the engine's loop is gone: nothing drives the run here
                self.on_request(req)

    def _failed(self, t: _Target, e: Exception) -> None:
        t.failures += 1
        t.error = f"{type(e).__name__}: {e}"
        t.retry_at = time.monotonic() + min(RETRY_MAX_S, 2.0 ** t.failures)
        if t.behind_since is None:
            t.behind_since = _now()
            self._say(f"the repository {t.store.describe()} cannot be written ({t.error}): watchers through the "
                      f"repository are behind since {t.behind_since}; the run goes on, the mirror catches up "
                      "when it is back")

    def _say(self, text: str) -> None:
        if self.notify is None:
            self._said.append(text)
            return
        for earlier in self._said:
            self._safe_notify(earlier)
        self._said.clear()
        self._safe_notify(text)

    def _safe_notify(self, text: str) -> None:
        try:
            assert self.notify is not None
            self.notify(text)
        except Exception:  # noqa: BLE001,S110 - the cockpit is gone: the mirror says nothing more
            pass

    def _last_seq(self) -> int:
        return self._lines[-1][0] if self._lines else 0

    def _read_journal(self) -> None:
        try:
            size = os.stat(self.journal).st_size
        except OSError:
            return
        if size <= self._offset:
            return
        with open(self.journal, "rb") as f:
            f.seek(self._offset)
            data = f.read(size - self._offset)
        end = data.rfind(b"\n")
        if end < 0:
            return
        for raw in data[: end + 1].splitlines(keepends=True):
            try:
                seq = int(json.loads(raw)["seq"])
            except (ValueError, KeyError, TypeError):
                break  # never a complete line the journal wrote: read again next round
            self._lines.append((seq, raw))
            self.stats.events += 1
        self._offset += end + 1

    def _know(self, t: _Target) -> None:
        """A resumed run's store already holds chunks: go on after them."""
        for key, _ in t.store.list_keys(journal_prefix(self.run_id)):
            m = CHUNK_RE.match(key.rsplit("/", 1)[-1])
            if m:
                t.chunks = max(t.chunks, int(m.group(1)))
                t.mirrored = max(t.mirrored, int(m.group(3)))
        prefix = run_prefix(self.run_id)
        t.runbook_done = any(RUNBOOK_RE.match(key[len(prefix):]) for key, _ in t.store.list_keys(prefix))
        t.known = True

    def _seal(self, t: _Target, data: bytes) -> tuple[bytes, str | None]:
        """The bytes stored for `data` in `t` and their epoch: age-encrypted where the store encrypts (once: a
        retry writes the very same ciphertext), else as they are."""
        if t.sealing is None:
            return data, None
        from steps.crypto.age import encrypt_bytes

        return encrypt_bytes(data, t.sealing.recipient), t.sealing.epoch

    def _catch_up(self, t: _Target, final: bool) -> None:
        if not t.known:
            self._know(t)
        if t.sealer is not None and t.sealing is None:
            t.sealing = t.sealer()  # the epoch's data recipient; a failure is retried like any write
        if self.runbook is not None and not t.runbook_done and self._lines:  # run-started is written: the copy is
            if t.runbook_pending is None:
                data, epoch = self._seal(t, self.runbook.read_bytes())
                t.runbook_pending = (runbook_key(self.run_id, epoch), data)
            self._put_once(t.store, *t.runbook_pending)
            t.runbook_done, t.runbook_pending = True, None
        if t.pending is None:
            new = [(s, raw) for s, raw in self._lines if s > t.mirrored]
            if new:
                data, epoch = self._seal(t, b"".join(raw for _, raw in new))
                t.pending = (chunk_key(self.run_id, t.chunks + 1, new[0][0], new[-1][0], epoch), data)
        if t.pending is not None:
            key, data = t.pending
            self._put_once(t.store, key, data)
            m = CHUNK_RE.match(key.rsplit("/", 1)[-1])
            assert m is not None
            t.chunks, t.mirrored, t.pending = int(m.group(1)), int(m.group(3)), None
            self.stats.chunks += 1
            if any(s > t.mirrored for s, _ in self._lines):
                self._catch_up(t, final)  # lines that arrived while this chunk was written
                return
        if final or time.monotonic() - t.live_at >= HEARTBEAT_S:
            self._write_live(t)

    def _put_once(self, store: Store, key: str, data: bytes) -> None:
        """Write-once: a retry of a chunk whose first attempt got through (in part) finds its own bytes."""
        from steps.repository.signing import SIG_SUFFIX
        from steps.repository.store import ObjectExists

        parts = [(key + SIG_SUFFIX, self.signer.signature(key, data))] if self.signer is not None else []
        for k, b in [*parts, (key, data)]:
            try:
                store.put_bytes(k, b)
            except ObjectExists:
                if store.get_bytes(k) != b:
                    raise
        return None

    def _write_live(self, t: _Target) -> None:
        from steps.repository.signing import SIG_SUFFIX

        body = {"format_version": 1, "run_id": self.run_id, "driver": self.driver, "host": socket.gethostname(),
                "state": self._state if self._stop.is_set() else "running", "last_seq": t.mirrored,
                "chunks": t.chunks, "heartbeat": _now(), "behind_since": t.behind_since}
        data = (json.dumps(body, indent=1) + "\n").encode()
        key = live_key(self.run_id)
        t.store.delete([key, key + SIG_SUFFIX])
        self._put_once(t.store, key, data)
        t.live_at = time.monotonic()
        self.stats.heartbeats += 1


@dataclass
class MirrorPlan:
    """Which stores of a config get the mirror, each one that encrypts with how its Sealing is got."""

    stores: list[Any] = field(default_factory=list)
    sealers: dict[int, Callable[[], Any]] = field(default_factory=dict)  # index in `stores` -> Sealing getter


def plan(cfg: Any, signer: Signer | None) -> MirrorPlan:
    """The stores of `cfg` the journal is mirrored into: every one. Into one that encrypts (encrypt: true), the
    chunks are age-encrypted to the epoch its backups use (steps.encrypted.writing.sealing_for, as a backup
    writer: a new epoch when the recipients changed), got by the mirror's thread before its first chunk there
    (it reads, maybe writes, the repository: never on the way of the run)."""
    from steps.repository.configured import open_stores

    def sealer(store: Any) -> Callable[[], Any]:
        def get() -> Any:
            from steps.encrypted.writing import sealing_for

            return sealing_for(cfg, store, signer)

        return get

    out = MirrorPlan()
    for which in ("local", "s3"):
        if getattr(cfg, which) is None:
            continue
        store = open_stores(cfg, which)[0]  # type: ignore[arg-type]
        if cfg.encrypts(which):
            out.sealers[len(out.stores)] = sealer(store)
        out.stores.append(store)
    return out

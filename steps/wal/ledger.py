"""Signed WAL ledgers: what the database host archived, signed, so that a recovery hands PostgreSQL nothing else.

A base backup's manifest is signed (steps.repository.signing), but a recovery replays WAL too, and whoever can
write into the repository could plant a segment of their own (a valid one: PostgreSQL replays whatever the
restore_command gives it). Signing each segment inside `wal-push` would cost an import of `cryptography`
(~10 ms) on every one of them, on PostgreSQL's archiving path; instead:

- **Noting** (steps.wal.fast.note_pushed, standard library only): after a push is confirmed, `wal-push` (or the
  asynchronous uploader) writes `NAME` = `sha256 size` into `<spool>/<sysid>/seal-<destination>/pending/`, the
  sha256 being the one it computed itself from the file in pg_wal, not anything read back from the repository.
- **Sealing** (`wal-push --seal-worker`, one per cluster and destination, started by the first note, gone
  after `wal.worker_idle_s` idle): it gathers the notes (a short pause lets a burst make one ledger), writes a
  **ledger** into every repository, `clusters/<sysid>/wal-ledger/<first>-<last>-<sha12>.json` (first/last: the
  lowest and highest archived names in it, in WAL order; sha12: of its bytes), signed with
  `signing.wal_private_key` (a key of the server's user, its public key among `signing.public_keys`), its
  signature written first, both write-once; then removes the notes. Signing costs microseconds there.
- **Verifying** (`read_index`): a recovery (`pitr`) or a test restore (`verify-backup --kind base`) lists the
  ledgers whose last name is at or after the base backup's first segment, checks each signature, and builds
  the verified index `{name: sha256}`. A ledger refused (unsigned, unknown key, bad signature, moved) is named
  and its entries ignored; two genuine ledgers that disagree on a name drop the name.
- **Checking** (steps.wal.fast.signed_verdict): `wal-fetch --verified INDEX` hands PostgreSQL a file only when
  the index holds its name with the sha256 of the bytes read (a file in no ledger only with `allow_unsigned`,
  said on stderr); a name the ledgers list that every repository says is missing stops the recovery (126)
  instead of ending it early: it was deleted.

The index a recovery writes is one file of fixed-width sorted records (`write_index`): wal-fetch finds a name by
bisection with a few preads, whatever the archive's length, without parsing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from runbook.errors import RunbookError
from steps.repository.layout import parse_wal_name, wal_ledger_last, wal_ledger_prefix
from steps.repository.store import ObjectExists, RepositoryError
from steps.wal.fast import INDEX_MAGIC, INDEX_NAME_WIDTH, INDEX_RECORD, seal_root
from steps.wal.fast import wal_order as fast_order

if TYPE_CHECKING:
    from steps.repository.signing import Signer, Trust
    from steps.wal.settings import WalSettings
    from steps.wal.store import WalStore

LEDGER_FORMAT = "runbook-wal-ledger"
LEDGER_VERSION = 1
BATCH_PAUSE_S = 0.2  # a burst of segments makes one ledger, not one each
MAX_ENTRIES = 10_000


def ledger_prefix(sysid: int | str) -> str:
    return wal_ledger_prefix(str(sysid))


def wal_order(name: str) -> str:
    """A name's place in WAL order, as 24 hex digits (steps.wal.fast.wal_order), after checking it is a name."""
    parse_wal_name(name)
    return fast_order(name)


def ledger_key(sysid: int | str, names: Sequence[str], data: bytes) -> str:
    order = sorted(wal_order(n) for n in names)
    return f"{ledger_prefix(sysid)}{order[0]}-{order[-1]}-{hashlib.sha256(data).hexdigest()[:12]}.json"


# --- sealing ---------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} [{os.getpid()}] {msg}", flush=True)


def read_notes(pending: Path) -> dict[str, tuple[str, int]]:
    """The notes waiting to be sealed: {name: (sha256, size)}; a note that is not one is removed, said."""
    notes: dict[str, tuple[str, int]] = {}
    for entry in sorted(os.scandir(pending), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        try:
            parse_wal_name(entry.name)
            sha, size = Path(entry.path).read_text().split()
            if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
                raise ValueError("not a sha256")
            notes[entry.name] = (sha, int(size))
        except (ValueError, OSError) as e:
            _log(f"{entry.name}: not a note ({e}); removed")
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        if len(notes) >= MAX_ENTRIES:
            break
    return notes


def ledger_bytes(sysid: int, notes: dict[str, tuple[str, int]], key_id: str) -> bytes:
    doc = {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, "system_identifier": str(sysid),
           "sealed_at": datetime.now(UTC).isoformat(), "host": socket.gethostname(), "key_id": key_id,
           "files": [[n, sha, size] for n, (sha, size) in sorted(notes.items(), key=lambda x: wal_order(x[0]))]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def seal(stores: Sequence[WalStore], signer: Signer, sysid: int, notes: dict[str, tuple[str, int]],
         data: bytes | None = None) -> str:
    """Write one signed ledger of `notes` (its bytes `data` when a retry passes the same ones again) into every
    repository, signature first, both write-once: a retry finds what it wrote before and goes on. Its key."""
    from steps.repository.signing import SIG_SUFFIX

    if data is None:
        data = ledger_bytes(sysid, notes, signer.key_id)
    key = ledger_key(sysid, list(notes), data)
    sig = signer.signature(key, data)
    for store in stores:
        for k, blob in ((key + SIG_SUFFIX, sig), (key, data)):
            try:
                store.put_new(k, blob, {})
            except ObjectExists:
                if store.get(k) != blob:
                    raise RepositoryError(f"{k} already exists in {store.describe()} with other content",
                                          hint="someone wrote a ledger under this name: look at it") from None
    return key


def run_seal_worker(settings: WalSettings, sysid: int, ready: threading.Event | None = None) -> int:
    """`wal-push --seal-worker --sysid N`: seal the notes of one cluster and destination until idle.

    A batch that cannot be written is tried again, the same bytes (so a repository that took it once is not
    given a second ledger), backing off; after `worker_idle_s` of failures the sealer gives up (exit 1, said in
    its log): the notes stay, and the next push starts a sealer again. `check` says meanwhile that the newest
    archived WAL is not sealed."""
    from runbook.lockfile import LockFile
    from steps.repository.signing import load_private_key
    from steps.wal.store import open_wal_stores
    from steps.wal.worker import WorkerLock

    root = Path(seal_root(settings, sysid))
    pending = root / "pending"
    pending.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock: LockFile = WorkerLock(root / "seal-worker.lock")
    acquired = lock.try_acquire()
    if ready is not None:
        ready.set()  # the uploader starting us as a thread goes on once the lock is ours (or another's)
    if not acquired:
        return 0
    try:
        if not settings.wal_key:
            _log("no signing.wal_private_key in the config: nothing is sealed")
            return 1
        signer = load_private_key(Path(settings.wal_key))
        stores = open_wal_stores(settings.local_path, settings.s3)
        _log(f"sealer started for cluster {sysid} with key {signer.key_id}")
        idle_since = time.monotonic()
        batch: tuple[dict[str, tuple[str, int]], bytes] | None = None
        failing_since: float | None = None
        failures = 0
        while True:
            if batch is None:
                try:
                    notes = read_notes(pending)
                    if notes:
                        time.sleep(BATCH_PAUSE_S)
                        notes = read_notes(pending)
                except FileNotFoundError:
                    _log(f"{pending} is gone: stopping")
                    return 0
                if notes:
                    batch = (notes, ledger_bytes(sysid, notes, signer.key_id))
            if batch is not None:
                notes, data = batch
                try:
                    key = seal(stores, signer, sysid, notes, data)
                except RunbookError as e:
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > settings.worker_idle_s:
                        _log(f"cannot seal {len(notes)} file(s) for {now - failing_since:.0f} s: {e}; giving up "
                             "(the next push starts a sealer again)")
                        return 1
                    failures += 1
                    _log(f"cannot seal {len(notes)} file(s): {e}; trying again")
                    time.sleep(min(2 ** failures, 30, settings.worker_idle_s))
                    continue
                batch, failing_since, failures = None, None, 0
                for name in notes:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(pending / name)
                _log(f"sealed {len(notes)} file(s) in {key}")
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > settings.worker_idle_s:
                _log("idle: stopping")
                return 0
            time.sleep(0.05)
    finally:
        lock.release()


# --- verifying -------------------------------------------------------------------------------------------


@dataclass
class Index:
    """The verified index of one cluster's archived WAL, from its genuine ledgers."""

    segments: dict[str, str] = field(default_factory=dict)  # name -> sha256
    ledgers: int = 0  # genuine ledgers read
    refused: list[str] = field(default_factory=list)  # "KEY: why" for each ledger refused
    conflicts: list[str] = field(default_factory=list)  # names two genuine ledgers disagree on (dropped)
    errors: list[str] = field(default_factory=list)  # repositories that could not be read

    @property
    def newest(self) -> str | None:
        return max(self.segments, key=wal_order) if self.segments else None


def _parse_ledger(data: bytes, sysid: int) -> list[tuple[str, str]]:
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != LEDGER_FORMAT or doc.get("version") != LEDGER_VERSION:
        raise ValueError("not a WAL ledger this reader knows")
    if doc.get("system_identifier") != str(sysid):
        raise ValueError(f"a ledger of cluster {doc.get('system_identifier')}, not {sysid}")
    out = []
    for item in doc["files"]:
        name, sha = str(item[0]), str(item[1])
        parse_wal_name(name)
        if len(sha) != 64:
            raise ValueError(f"{name}: not a sha256")
        out.append((name, sha))
    return out


def read_index(stores: Sequence[WalStore], trust: Trust, sysid: int, since: str | None = None) -> Index:
    """The verified index from every repository's ledgers whose last name is at or after `since` (a WAL name:
    the base backup's first segment; None: all). Signatures are checked with `trust` (unsigned ledgers are
    never accepted: a ledger is only ever written signed)."""
    from steps.repository.signing import SIG_SUFFIX

    index = Index()
    floor = wal_order(since) if since else ""
    seen: set[bytes] = set()
    for store in stores:
        try:
            listed = {x.key for x in store.list(ledger_prefix(sysid))}
        except RepositoryError as e:
            index.errors.append(f"{store.describe()}: {e.message}")
            continue
        keys = [k for k in sorted(listed) if (last := wal_ledger_last(k)) is not None and last >= floor]

        def read(k: str, store: WalStore = store, listed: set[str] = listed) -> tuple[str, bytes | None, bytes | None]:
            return k, store.get(k), store.get(k + SIG_SUFFIX) if k + SIG_SUFFIX in listed else None

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                got = list(pool.map(read, keys))
        except RepositoryError as e:
            index.errors.append(f"{store.describe()}: {e.message}")
            continue
        for k, data, sig in got:
            if data is None or data in seen:
                continue
            verdict = trust.verify(k, data, sig)
            if not verdict.genuine:
                index.refused.append(f"{store.describe()}: {k}: {verdict.reason}")
                continue
            try:
                entries = _parse_ledger(data, sysid)
            except (ValueError, KeyError, TypeError, IndexError) as e:
                index.refused.append(f"{store.describe()}: {k}: signed, but unreadable ({e})")
                continue
            seen.add(data)
            index.ledgers += 1
            for name, sha in entries:
                old = index.segments.get(name)
                if old is not None and old != sha:
                    index.conflicts.append(name)
                index.segments[name] = sha
    for name in set(index.conflicts):
        index.segments.pop(name, None)
    return index


def write_index(path: Path, index: Index, *, accept_unsealed: bool, uid: int | None = None) -> None:
    """The index as wal-fetch reads it (steps.wal.fast.index_lookup): a header record, then one fixed-width
    record per name, sorted; written whole (temporary name, rename), mode 0644 (read by the server's user),
    owned by `uid` when given."""
    head = (f"{INDEX_MAGIC} accept-unsealed={1 if accept_unsealed else 0} newest={wal_order(index.newest) if index.newest else ''}"
            .ljust(INDEX_RECORD - 1) + "\n")
    lines = [head] + [f"{name.ljust(INDEX_NAME_WIDTH)}{sha}\n" for name, sha in sorted(index.segments.items())]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(lines))
            os.fchmod(f.fileno(), 0o644)
            if uid is not None:
                os.fchown(f.fileno(), uid, -1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

"""Publishing a staged backup into one repository, so that it exists only once it is whole and verified.

Order, per repository: refuse a directory that already holds anything (backups are never overwritten);
store every object; re-read every object from the repository and compare its sha256 with the manifest
(`store_objects`); only then store `manifest.json` (the backup now exists; its signature, written just before
it, makes it genuine: steps.repository.signing) and re-read it; then the verification record, signed too
(`commit`; level `readable` for a dump whose archive checks passed). The two phases
are separate so that the archive checks can run while the objects travel: the manifest waits for both. An interruption before the manifest leaves an
incomplete directory that nothing lists (and `prune` removes after a day); a repository failing at any
point gets no manifest.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from runbook import __version__
from steps.repository import layout
from steps.repository.manifest import (
    Check,
    Level,
    ObjectEntry,
    Tool,
    VerificationRecord,
    sha256_bytes,
    to_json,
)
from steps.repository.signing import Signer
from steps.repository.store import CorruptObject, ObjectExists, RepositoryError, Store

ByteProgress = Callable[[int, int], None]  # (bytes done, bytes total)
Encrypt = Callable[[Path, Path], tuple[int, str]]  # (plaintext file, ciphertext file to make) -> stored size, sha256


@dataclass
class Published:
    store: Store
    record: VerificationRecord
    timings: dict[str, float] = field(default_factory=dict)


class _Counter:
    def __init__(self, total: int, report: ByteProgress | None) -> None:
        self.total = total
        self.done = 0
        self.report = report
        self._lock = threading.Lock()
        self._last = 0.0

    def __call__(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.report and (now - self._last > 0.5 or self.done >= self.total):
                self._last = now
                self.report(self.done, self.total)


def store_objects(
    store: Store,
    prefix: str,
    staging: Path,
    objects: list[ObjectEntry],
    *,
    workers: int = 1,
    progress: ByteProgress | None = None,
    encrypt: Encrypt | None = None,
    stored: dict[str, tuple[int, str]] | None = None,
) -> dict[str, float]:
    """Phase 1: store every object under `prefix` and re-read it; no manifest yet, so no backup yet.

    Refuses a prefix that already holds anything. Returns timings. Raises RepositoryError.

    With `encrypt` (an encrypted repository: steps.encrypted.writing), each object is first encrypted into
    `<staging>/.encrypted-<repository>/<path>.age`, hashed as it is written, and that file is stored under
    `<path>.age`; the re-read compares the stored bytes with what was encrypted (this host holds no key to
    decrypt them: verify-backup on a host with an identity proves that). `stored` receives each object's
    stored (size, sha256) by path, for the repository's manifest.
    """
    from steps.repository.layout import ENCRYPTED_SUFFIX

    timings: dict[str, float] = {}
    existing = store.list_keys(prefix)
    if existing:
        raise ObjectExists(f"{prefix} already holds {len(existing)} objects in {store.describe()}; "
                           "backups are never overwritten")
    total = sum(o.size for o in objects)
    t0 = time.monotonic()
    up = _Counter(total, progress)
    expect: dict[str, tuple[int, str]] = {o.path: (o.size, o.sha256) for o in objects}
    suffix = ENCRYPTED_SUFFIX if encrypt is not None else ""
    lock = threading.Lock()

    def put(o: ObjectEntry) -> None:
        src = staging / o.path
        if encrypt is not None:
            src = staging / f".encrypted-{store.name}" / (o.path + suffix)
            src.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            got = encrypt(staging / o.path, src)
            with lock:
                expect[o.path] = got
        store.put_file(prefix + o.path + suffix, src, up)

    _each(objects, put, workers)
    timings["upload_s"] = time.monotonic() - t0

    t1 = time.monotonic()

    def reread(o: ObjectEntry) -> None:
        size, digest = store.hash_object(prefix + o.path + suffix)
        want_size, want = expect[o.path]
        if digest != want or size != want_size:
            raise CorruptObject(store.describe(), prefix + o.path + suffix, f"sha256 {want} ({want_size} bytes)",
                                f"sha256 {digest} ({size} bytes)")

    _each(objects, reread, workers)
    timings["reread_s"] = time.monotonic() - t1
    if stored is not None and encrypt is not None:
        stored.update(expect)
    return timings


def commit(
    store: Store,
    prefix: str,
    objects: list[ObjectEntry],
    manifest: bytes,
    *,
    backup_id: str,
    level: Level,
    checks: list[Check],
    signer: Signer,
) -> VerificationRecord:
    """Phase 2, after `store_objects`: the manifest (now the backup exists), re-read, then its record; both
    signed by `signer`."""
    key = prefix + layout.MANIFEST
    signer.put(store, key, manifest)
    if store.get_bytes(key) != manifest:
        raise CorruptObject(store.describe(), key, f"sha256 {sha256_bytes(manifest)}", "different bytes")
    now = datetime.now(UTC)
    total = sum(o.size for o in objects)
    detail = f"{len(objects)} objects, {total} bytes re-read from {store.describe()}"
    if any(o.stored_sha256 for o in objects):
        stored = sum(o.stored_size or 0 for o in objects)
        detail = (f"{len(objects)} objects, {total} bytes encrypted to {stored} stored bytes, re-read from "
                  f"{store.describe()}: each stored sha256 is what was encrypted (decryption is proven by "
                  "verify-backup on a host with an identity)")
    record = VerificationRecord(
        backup_id=backup_id, level=level.name, passed=True, checked_at=now, repository=store.name,
        manifest_sha256=sha256_bytes(manifest),
        checks=[Check(name="sha256 re-read", status="ok", detail=detail), *checks],
        tool=Tool(version=__version__), host=socket.gethostname(),
    )
    signer.put(store, layout.verification_key(prefix, now), to_json(record))
    return record


def publish(
    store: Store,
    prefix: str,
    staging: Path,
    objects: list[ObjectEntry],
    manifest: bytes,
    *,
    backup_id: str,
    level: Level,
    checks: list[Check],
    signer: Signer,
    workers: int = 1,
    progress: ByteProgress | None = None,
    encrypt: Encrypt | None = None,
    stored: dict[str, tuple[int, str]] | None = None,
) -> Published:
    """Both phases: publish `objects` (files under `staging`) and `manifest` under `prefix`. Raises RepositoryError.
    (`encrypt`, `stored`: as `store_objects`; the manifest must then record the stored sizes it returns.)"""
    t0 = time.monotonic()
    timings = store_objects(store, prefix, staging, objects, workers=workers, progress=progress, encrypt=encrypt,
                            stored=stored)
    record = commit(store, prefix, objects, manifest, backup_id=backup_id, level=level, checks=checks,
                    signer=signer)
    timings["total_s"] = time.monotonic() - t0
    return Published(store=store, record=record, timings=timings)


def _each(objects: list[ObjectEntry], fn: Callable[[ObjectEntry], None], workers: int) -> None:
    if workers <= 1 or len(objects) <= 1:
        for o in objects:
            fn(o)
        return
    # Biggest first, so one large table does not start last.
    ordered = sorted(objects, key=lambda o: o.size, reverse=True)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(fn, o) for o in ordered]
        for f in as_completed(futures):
            e = f.exception()
            if e is not None:  # the first failure ends the publication: no point sending the rest
                pool.shutdown(wait=True, cancel_futures=True)
                if isinstance(e, RepositoryError):
                    raise e
                raise RepositoryError(f"{type(e).__name__}: {e}")
    finally:
        pool.shutdown(wait=True)

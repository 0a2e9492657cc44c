"""The asynchronous side of WAL archiving: a spool, a long-lived uploader, and fetch read-ahead.

One Python process per segment costs an interpreter start, and with S3 a boto3 start and a fresh connection
(~0.4 s a segment, BENCHMARKS.md): too slow for a busy server. In the spirit of pgBackRest's asynchronous
archive-push, with `wal: {async: true}`:

- `wal-push PATH` looks in the spool (`<spool_dir>/<system identifier>/push-<pg_wal hash>-<destination hash>/out/`,
  the destination being every configured repository: WalSettings.destinations) for its segment's status. An
  `.ok` record confirms the segment only when it names this destination in full, this system identifier, and
  the file's size and sha256 as the file is now: every repository of this config holds these bytes, exit 0.
  Any other record is removed and the segment pushed again. An `.error` record is reported and removed (the
  next attempt tries again): exit 1. With no status it makes sure the uploader runs and waits (at most
  `push_timeout_s`) for one; it never confirms a segment whose record is missing.
  The spool is kept per destination so that a changed config starts an uploader of its own at once: the
  uploader still serving the old destination (until it is idle) writes its records where nobody with the
  new config looks, and holds no lock the new one needs.
- The uploader (`wal-push --async-worker`, one per cluster, an flock on `push-worker.lock`, started detached by
  `wal-push`, its log in `push-worker.log`) reads ahead of `pg_wal/archive_status/*.ready` (history files
  first, then oldest first, as PostgreSQL does), pushes up to `push_ahead` files at once through the very
  code of the synchronous mode (steps.wal.archive.push_data: checked, written once, durable, in every repository),
  and records `.ok` only after that (with the sha256 that push computed while compressing: no second hash). It removes the records of files PostgreSQL has marked `.done`, and exits
  after `worker_idle_s` with nothing to do.

Fetch read-ahead (`wal.prefetch: N`, on by default): after restoring segment X, `wal-fetch` writes X (and
the repository it reads, `--from`) to `<spool_dir>/<sysid>/in-<data directory hash>/.want` and makes sure the
prefetcher (`wal-fetch --prefetch-worker`) runs; it keeps X+1..X+N fetched from that repository, checked
against the archive's sha256 and decompressed in the spool, each with a record of its size and sha256
written after it. A later `wal-fetch` takes its segment from there (a rename when the spool is on pg_wal's
file system); when the prefetcher is still fetching it, it waits for it rather than read the repository a
second time. A segment the prefetcher could not get is marked `NAME.none` (and tried again later): the
waiting `wal-fetch` then reads the repository itself. The spool never answers "missing": only the
repository does. A name neither in the spool nor in the window (a `.history` file, the segments after the
archive's end that every recovery asks for) is asked of the running prefetcher (steps.wal.ask, `_AskServer`):
it reads it with the stores it has open, and answers "missing" only as the full path would, proven, for that ask.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from steps.repository.layout import next_segment, parse_wal_name, wal_key
from steps.wal.fast import (
    RECORD_MAGIC,
    RECORDS_MARK,
    format_record,
    note_pushed,
    prefetch_cap,
    push_root,
    read_identity,
    read_record,
    worker_alive,
    write_record,
)
from steps.wal.settings import WalSettings
from steps.wal.store import WalStore, open_wal_stores
from steps.wal.worker import WorkerLock


def _mkdirs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def _log(msg: str) -> None:
    print(f"{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')} [{os.getpid()}] {msg}", flush=True)


# --- asynchronous push ----------------------------------------------------------------------------------


def push_spool(settings: WalSettings, sysid: int, pg_wal: Path) -> Path:
    return Path(push_root(settings, sysid, str(pg_wal)))


def _push_task(stores: list[WalStore], settings: WalSettings, pg_wal: Path, name: str, sysid: int,
               out: Path, keys: Any = None) -> None:
    from steps.wal.archive import prepare, push_data

    t0 = time.monotonic()
    try:
        looked_ns = time.time_ns()
        before = os.stat(pg_wal / name)
        data, archived_as = prepare(pg_wal / name, parse_wal_name(name), sysid)
        meta = push_data(stores, name, data, archived_as, settings.level, keys)
        identity = read_identity(before, os.stat(pg_wal / name), looked_ns)
    except FileNotFoundError as e:
        write_record(out / f"{name}.error", f"cannot read {e.filename}: {e.strerror}")
        _log(f"{name}: FAILED: {e}")
        return
    except (RunbookError, ValueError) as e:
        write_record(out / f"{name}.error", str(e))
        _log(f"{name}: FAILED: {e}")
        return
    except Exception as e:  # noqa: BLE001 - recorded for the waiting wal-push, which exits non-zero
        write_record(out / f"{name}.error", f"unexpected {type(e).__name__}: {e}")
        _log(f"{name}: FAILED:\n{traceback.format_exc()}")
        return
    # What is confirmed: these bytes (the sha256 pack computed while compressing: no second hash), under this
    # cluster's directory, in every repository of this destination (steps.wal.fast.confirms checks it all).
    record = {"name": name, "sha256": meta["sha256"], "size": meta["size"],
              "system_identifier": meta["system_identifier"], "destinations": settings.destinations,
              "stored": meta["stored"], "at": datetime.now(UTC).isoformat()}
    if identity is not None and identity[2] == meta["size"]:  # wal-push need not hash it again
        record["identity"] = identity
    unnoted = note_pushed(settings, archived_as, name, str(meta["sha256"]), int(meta["size"]))  # before the .ok
    if unnoted:
        write_record(out / f"{name}.error", unnoted)
        _log(f"{name}: FAILED: {unnoted}")
        return
    write_record(out / f"{name}.ok", format_record(record))
    _log(f"{name}: {', '.join(f'{k} {v}' for k, v in meta['stored'].items())} "
         f"({meta['compressed_size']} bytes, {time.monotonic() - t0:.3f} s)")


def _pushed_by_its_caller(out: Path, name: str) -> bool:
    """Is a `wal-push` pushing NAME itself (steps.wal.fast.push_myself: the first call of a burst, which started
    us)? Then it is not ours to push. Its `NAME.self` left by a pusher that is gone is removed: ours again."""
    marker = out / f"{name}.self"
    if not marker.exists():
        return False
    if worker_alive(marker):
        return True
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    return False


def _ready(status_dir: Path) -> list[str]:
    names = [n[: -len(".ready")] for n in os.listdir(status_dir) if n.endswith(".ready")]
    return sorted(names, key=lambda n: (not n.endswith(".history"), n))


def run_push_worker(settings: WalSettings, pg_wal: Path, sysid: int) -> int:
    root = push_spool(settings, sysid, pg_wal)
    out = root / "out"
    _mkdirs(out)
    lock = WorkerLock(root / "push-worker.lock")
    if not lock.try_acquire():
        return 0  # another uploader serves this cluster
    status_dir = pg_wal / "archive_status"
    destinations = settings.destinations
    write_record(root / "destinations.json", destinations)  # for a person reading the spool
    _log(f"uploader started for {pg_wal} (cluster {sysid}, {settings.push_ahead} in parallel) "
         f"to {destinations}")
    stores = open_wal_stores(settings.local_path, settings.s3, encrypt=settings.encrypt)
    keys = None
    if any(s.encrypt for s in stores):  # one writer key per repository for the uploader's life (steps.wal.crypt)
        from steps.wal.crypt import WalKeys

        keys = WalKeys.of(settings)
    sealer = _start_sealer(settings, sysid)
    # Every ready file at once (up to push_ahead), as pgBackRest's asynchronous archive-push reads ahead of the
    # whole archive_status: a burst is pushed in one wave while PostgreSQL's calls come one by one, and the
    # calls after the first find their record there. Measured against 1, 2, 4 and 8 at once (docs/wal.md).
    pool = ThreadPoolExecutor(max_workers=settings.push_ahead, thread_name_prefix="wal-push")
    inflight: dict[str, Future[None]] = {}
    idle_since = time.monotonic()
    next_sweep = 0.0
    try:
        while True:
            try:
                ready = _ready(status_dir)
            except FileNotFoundError:
                _log(f"{status_dir} is gone: stopping")
                break
            for name in ready:
                if len(inflight) >= settings.push_ahead:
                    break
                if name in inflight or (out / f"{name}.ok").exists() or (out / f"{name}.error").exists():
                    continue
                if _pushed_by_its_caller(out, name):
                    continue
                inflight[name] = pool.submit(_push_task, stores, settings, pg_wal, name, sysid, out, keys)
            for name in [n for n, f in inflight.items() if f.done()]:
                del inflight[name]
            now = time.monotonic()
            if inflight:
                idle_since = now
            if now >= next_sweep:
                _sweep(out, status_dir, set(ready))
                next_sweep = now + 10
            if not inflight and now - idle_since > settings.worker_idle_s:
                _log("idle: stopping")
                break
            time.sleep(0.01)  # a listing of archive_status (~50 µs): a new .ready is seen within 10 ms
    finally:
        pool.shutdown(wait=True)
        lock.release()
        if sealer is not None:
            sealer.join()  # it seals what is noted, then stops after worker_idle_s idle
    return 0


def _start_sealer(settings: WalSettings, sysid: int) -> threading.Thread | None:
    """The WAL sealer (steps.wal.ledger) as a thread of this long-lived uploader, when a WAL key is configured:
    no process of its own to start for each burst, and the stores' connections already open. It holds the
    sealer's lock like a sealer process, so `note_pushed` starts none beside it."""
    if not settings.wal_key:
        return None
    from steps.wal.ledger import run_seal_worker

    ready = threading.Event()
    t = threading.Thread(target=run_seal_worker, args=(settings, sysid, ready), name="wal-sealer")
    t.start()
    ready.wait(10)  # its lock taken before the first push notes anything: no sealer process beside it
    return t


def _sweep(out: Path, status_dir: Path, ready: set[str]) -> None:
    """Drop records of files PostgreSQL no longer lists as ready (archived: `.done`), once nobody can be
    waiting for them; errors nobody asked about are dropped after ten minutes (they are retried then)."""
    now = time.time()
    for entry in os.scandir(out):
        if entry.name.startswith("."):
            if now - entry.stat().st_mtime > 600:
                os.unlink(entry.path)
            continue
        name, _, kind = entry.name.rpartition(".")
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        if ((kind == "ok" and name not in ready and age > 60) or (kind == "error" and age > 600)
                or (kind == "self" and not worker_alive(entry.path))):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


# --- fetch read-ahead -------------------------------------------------------------------------------------


def _prefetch_task(stores: list[WalStore], spool: Path, name: str, sysid: int, keys: Any = None,
                   attempts: int = 1) -> str:
    from steps.wal.archive import fetch_checked

    data, digest, problems = fetch_checked(stores, wal_key(str(sysid), name), name, attempts, sysid, keys)
    if data is None:
        (spool / f"{name}.none").touch()
        if problems:  # a wrong key, an altered copy, an unreachable store: wal-fetch reads it itself and says so
            _log(f"{name}: not read ahead: {'; '.join(problems)}")
        return "error" if problems else "missing"
    tmp = spool / f".tmp-{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, spool / name)
    write_record(spool / f"{name}.json",
                 format_record({"size": len(data), "sha256": digest}))  # checked by unpack just now
    return "ok"


GROW_AFTER_WAIT_MS = 5.0  # a wal-fetch that waited longer than this for our copy: replay outran the read-ahead


def _adapt_depth(spool: Path, want: dict[str, Any], waits: list[float], depth: int, cap: int) -> int:
    """The read-ahead depth after this request: grown (by half of `wal.prefetch`'s worth, up to `cap`) when the
    wal-fetch that sent it waited for our copy, so that replay stops waiting on the network or decompression;
    never shrunk while we run (a wal-fetch decides to wait for a segment from the depth we published: a
    segment dropped from the window would leave it waiting). `.depth` is written before the deeper fetches."""
    try:
        waited = float(want.get("waited_ms") or 0)
    except (TypeError, ValueError):
        waited = 0.0
    waits.append(waited)
    del waits[:-16]
    if waited <= GROW_AFTER_WAIT_MS or depth >= cap:
        return depth
    grown = min(cap, depth + max(2, depth // 2))
    write_record(spool / ".depth", str(grown))
    slow = sum(1 for w in waits if w > GROW_AFTER_WAIT_MS)
    _log(f"replay waited {waited:.0f} ms for {want.get('name')} ({slow} of the last {len(waits)} waited): "
         f"reading ahead {grown} segments instead of {depth}")
    return grown


class _RecoveryWatch:
    """Has the recovery of `datadir` that a read-ahead serves ended? PostgreSQL removes `recovery.signal` (or a
    promoted standby's `standby.signal`) when its archive recovery ends: a signal file there when the
    prefetcher started and gone now means nothing more will be replayed; a data directory without pg_control
    has been removed. Looked at every 0.2 s (two stats). A prefetcher started outside a recovery (wal-fetch by
    hand) is never ended by the signal files."""

    EVERY_S = 0.2

    def __init__(self, datadir: str | None) -> None:
        self.datadir = datadir
        paths = [os.path.join(datadir, n) for n in ("recovery.signal", "standby.signal")] if datadir else []
        self.signals = [p for p in paths if os.path.exists(p)]
        self.next_look = 0.0

    def ended(self, now: float) -> tuple[str, bool] | None:
        """None while the recovery goes on; else why it is over, and whether nobody can even ask any more."""
        if self.datadir is None or now < self.next_look:
            return None
        self.next_look = now + self.EVERY_S
        if not os.path.exists(os.path.join(self.datadir, "global", "pg_control")):
            return f"the data directory {self.datadir} is gone", True
        if self.signals and not any(os.path.exists(p) for p in self.signals):
            return f"the recovery of {self.datadir} has ended", False
        return None


ASK_LINGER_S = 5.0  # after the recovery ends, the asks PostgreSQL still sends (timeline history) are answered


def run_prefetch_worker(settings: WalSettings, spool: Path, sysid: int, datadir: str | None = None) -> int:
    lock = WorkerLock(spool / ".lock")
    if not lock.try_acquire():
        return 0
    # Replay is one process waiting for us: read-ahead needs a fraction of a core to stay ahead of it, and
    # must not take that core from it when the machine is busy.
    with contextlib.suppress(OSError):
        os.nice(10)
    for entry in os.scandir(spool):  # what an earlier prefetcher left: unknown freshness, start clean
        if not entry.name.startswith("."):
            os.unlink(entry.path)
    opened: dict[str, list[WalStore]] = {}
    pool = ThreadPoolExecutor(max_workers=min(settings.max_parallel, settings.prefetch), thread_name_prefix="prefetch")
    inflight: dict[str, Future[str]] = {}
    retry_at: dict[str, float] = {}
    missing: set[str] = set()  # names the repository said it does not hold, at their last try
    last_want: Any = None
    changed = time.monotonic()
    depth, cap = settings.prefetch, prefetch_cap(settings)
    write_record(spool / ".depth", str(depth))
    write_record(spool / RECORDS_MARK, RECORD_MAGIC)  # we read `.want` as key=value lines (steps.wal.fast)
    waits: list[float] = []  # what the last wal-fetches waited for our copy, ms
    from steps.wal.archive import reader_keys

    keys = reader_keys(settings)  # epochs opened once for the whole replay, not once per segment
    asks = _AskServer(settings, spool, sysid, keys, opened)
    watch = _RecoveryWatch(datadir)
    ended = False
    try:
        while True:
            now = time.monotonic()
            if not ended and (over := watch.ended(now)) is not None:
                # Nothing more is replayed: no read-ahead, no retries; the asks are answered a little longer.
                why, nobody_asks = over
                _log(f"{why}: reading ahead no more")
                ended, changed = True, now
                if nobody_asks:
                    break
            try:
                want = None if ended else read_record(str(spool / ".want"))
            except OSError:
                want = None
                if not spool.is_dir():  # the recovering cluster and its spool were removed: nobody will ask
                    _log(f"{spool} is gone: stopping")
                    break
            if want != last_want:
                last_want, changed = want, now
                if isinstance(want, dict):
                    depth = _adapt_depth(spool, want, waits, depth, cap)
            idle_s = ASK_LINGER_S if ended else settings.worker_idle_s
            if now - changed > idle_s and not inflight:
                break
            if want:
                source = str(want.get("source") or "any")
                if source not in opened:
                    try:
                        opened[source] = open_wal_stores(settings.local_path, settings.s3, source, settings.encrypt)
                    except RunbookError as e:  # wal-fetch itself reports it to PostgreSQL
                        _log(f"cannot read ahead from {source}: {e}")
                        break
                window = [next_segment(want["name"], int(want["segment_size"]), i)
                          for i in range(1, depth + 1)]
                keep = set(window)
                for entry in os.scandir(spool):
                    base = entry.name.removesuffix(".json").removesuffix(".none")
                    if not entry.name.startswith(".") and base not in keep:
                        os.unlink(entry.path)
                blocked = False  # WAL is archived in order: what comes after a missing segment waits for it
                for n in window:
                    if n in inflight:
                        blocked = blocked or n in missing
                        continue
                    if (spool / f"{n}.json").exists():
                        continue
                    if blocked:  # not tried: a wal-fetch that wants it does not wait for us, it asks
                        if not (spool / f"{n}.none").exists():
                            (spool / f"{n}.none").touch()
                        continue
                    if retry_at.get(n, 0) > now:
                        blocked = n in missing
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        (spool / f"{n}.none").unlink()  # tried again: a waiting wal-fetch waits for this try
                    inflight[n] = pool.submit(_prefetch_task, opened[source], spool, n, sysid, keys)
                    blocked = n in missing  # one try at the archive's end at a time
            for n in [n for n, f in inflight.items() if f.done()]:
                fut = inflight.pop(n)
                try:
                    result = fut.result()
                except Exception:  # noqa: BLE001 - a failed read-ahead only means wal-fetch reads it itself
                    (spool / f"{n}.none").touch()
                    result = "error"
                if result != "ok":
                    retry_at[n] = now + (1.0 if result == "missing" else 3.0)
                (missing.add if result == "missing" else missing.discard)(n)
            if asks.poll():  # an ask is work: the prefetcher is not idle while recovery asks
                changed = now
            asks.wait(0.01)  # 10 ms, or less when a wal-fetch asks
    finally:
        asks.close()
        pool.shutdown(wait=True)
        if ended:  # what was read ahead and never replayed (up to the window's 512 MB) is not kept
            for entry in os.scandir(spool):
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
        lock.release()
    return 0


# --- asks: a wal-fetch that found nothing in the read-ahead asks us (steps.wal.ask) --------------------------


class _AskServer:
    """The prefetcher's side of steps.wal.ask: a `wal-fetch` that finds NAME neither in the spool nor in the
    window asks us (`<spool>/.asks/NAME.ask`) instead of starting the stores, boto3 and the keys cold. We read
    NAME with fetch_checked as the full path does (its attempts, its checks, the marker's proof of a miss asked
    now, encrypted copies with the keys we hold) and answer, with the ask's nonce: `NAME.found` after the file
    and its record (taken as a read-ahead segment is), `NAME.missing` only when every repository said it does
    not exist and proved it is the repository, `NAME.none` for anything else (the asker's full path then
    reports it). Two threads of their own: an ask never waits behind the read-ahead's fetches."""

    SWEEP_S = 10.0
    KEEP_S = 60.0  # answers nobody took (an asker that gave up) and asks nobody waits for any more

    def __init__(self, settings: WalSettings, spool: Path, sysid: int, keys: Any,
                 opened: dict[str, list[WalStore]]) -> None:
        from steps.wal.ask import ASKS, WAKE

        self.settings, self.sysid, self.keys, self.opened = settings, sysid, keys, opened
        self.dir = spool / ASKS
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ask")
        self.inflight: dict[str, Future[None]] = {}
        self.next_sweep = 0.0
        self.wake_r: int | None = None
        self.wake_w: int | None = None
        try:
            _mkdirs(self.dir)
            for entry in os.scandir(self.dir):  # answers of an earlier prefetcher; asks are still answered
                if not entry.name.endswith(".ask"):
                    with contextlib.suppress(OSError):  # (not ours to remove: a directory, say)
                        os.unlink(entry.path)
            # The wake-up: a wal-fetch asks only while this FIFO has a reader (us), and writes a byte into it; the
            # loop, waiting on it instead of sleeping its 10 ms, takes the ask up at once. We hold its write end
            # too: the reader never sees an end.
            wake = self.dir / WAKE
            os.mkfifo(wake, 0o600)
            self.wake_r = os.open(wake, os.O_RDONLY | os.O_NONBLOCK)
            self.wake_w = os.open(wake, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:  # no FIFO read: nobody asks us; the read-ahead goes on
            _log(f"asks not served: {self.dir}: {e}")
            self._close_wake()

    def poll(self) -> bool:
        """Take up every new ask (one listing of a small directory a loop, ~20 µs); True when one was."""
        from steps.wal.ask import parse_ask

        for name in [n for n, f in self.inflight.items() if f.done()]:
            del self.inflight[name]
        try:
            entries = os.listdir(self.dir)
        except OSError:
            return False
        took = False
        for entry in entries:
            if not entry.endswith(".ask"):
                continue
            name = entry[: -len(".ask")]
            if name in self.inflight:
                continue  # asked again while we read it: taken up once this answer is written
            path = self.dir / entry
            try:
                text = path.read_text()
                path.unlink()
            except (OSError, UnicodeDecodeError):
                continue
            ask = parse_ask(text)
            if ask is None:
                continue  # not an ask whole: nobody can be waiting for an answer to it
            self.inflight[name] = self.pool.submit(self._answer, name, *ask)
            took = True
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + self.SWEEP_S
            self._sweep()
        return took

    def _answer(self, name: str, nonce: str, source: str, destinations: str) -> None:
        from steps.wal.ask import askable

        t0 = time.monotonic()
        try:
            if destinations != self.settings.destinations:
                answer, why = "none", "asked with another repository config than ours"
            elif not askable(name):
                answer, why = "none", "not a segment or history file name"
            else:
                stores = self.opened.get(source)
                if stores is None:
                    stores = open_wal_stores(self.settings.local_path, self.settings.s3, source,
                                             self.settings.encrypt)
                    self.opened.setdefault(source, stores)
                result = _prefetch_task(stores, self.dir, name, self.sysid, self.keys, self.settings.fetch_attempts)
                answer = {"ok": "found", "missing": "missing"}.get(result, "none")
                why = "" if answer != "none" else "see above"
        except Exception as e:  # noqa: BLE001 - any doubt: the asker's full path reads it and reports
            answer, why = "none", f"{type(e).__name__}: {e}"
        if answer != "none":
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{name}.none").unlink()  # _prefetch_task's mark of a miss, without a nonce
        write_record(self.dir / f"{name}.{answer}", nonce + "\n")
        _log(f"{name}: asked from {source}: {answer} ({time.monotonic() - t0:.3f} s){': ' + why if why else ''}")

    def wait(self, timeout: float) -> None:
        """Sleep `timeout`, or until a wal-fetch wakes us (its ask is then taken up by the next poll)."""
        if self.wake_r is None:
            time.sleep(timeout)
        elif select.select([self.wake_r], [], [], timeout)[0]:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)

    def _sweep(self) -> None:
        from steps.wal.ask import WAKE

        now = time.time()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.dir):
                with contextlib.suppress(OSError):
                    if entry.name != WAKE and now - entry.stat().st_mtime > self.KEEP_S:
                        os.unlink(entry.path)

    def close(self) -> None:
        """No new asks (the FIFO's reader gone), and what was taken up answered before the lock is let go (an
        asker that wrote its ask meanwhile looks once more when it is, then reads the repository itself)."""
        self._close_wake()
        self.pool.shutdown(wait=True)

    def _close_wake(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            if fd is not None:
                os.close(fd)
        self.wake_r = self.wake_w = None

"""The hot paths of `wal-push`/`wal-fetch`, on what the interpreter has loaded at start (os, sys, time, fcntl).

PostgreSQL starts these commands once per segment and waits for each: during a replay the startup process
is stalled for as long as `wal-fetch` runs, so every millisecond of interpreter start and import is paid
per segment. Two paths need no more than this module:
- `wal-fetch -c CONFIG [--from R] NAME DEST` when the read-ahead spool (steps.wal.spool) holds NAME, or its
  prefetcher is fetching it: check its size against the prefetcher's record, rename it into place, ask for
  the next ones;
- `wal-push -c CONFIG PATH` in the asynchronous mode: wait for the uploader's `.ok` record of this very file
  (its sha256 and size) in this very destination (the repositories configured now, the cluster's
  directory), or report its `.error`.
`fetch_prefetched` and `push_async` are those two answers; runbook.cli.wal_fast, the command line of the hot path,
calls them, and sends everything else (and every doubt: an option, a missing cache, an unexpected error) to
steps.wal.archive, which does the whole job. Both paths keep the contract of steps.wal.archive: an `.ok` is the
only confirmation a segment gets, and the spool never answers "missing". This module imports no other module
of steps.wal at run time (the settings are only a type here): archive and spool build on it, never the reverse.

On the quick answers nothing heavier is imported: no json, re, enum, pathlib, hashlib or typing (~11 ms of
imports per segment, more than the interpreter's own start). The records they read (the uploader's `NAME.ok`, the
read-ahead's `NAME.json`, `.want`) are `key=value` lines (`format_record`, `parse_record`); the short hashes of
paths come from the interpreter's built-in `_sha256` (`short_hash`), the same digest as hashlib's. The doubts
(a record of other bytes: hash the file) import what they need when they need it.
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs an import
if TYPE_CHECKING:
    from typing import Protocol

    class Settings(Protocol):
        """What these answers read of the config: steps.wal.settings.WalSettings (the full load) or
        steps.wal.hot.HotSettings (its hot cache), whose attributes have these names."""

        @property
        def path(self) -> str | os.PathLike[str]: ...
        @property
        def destinations(self) -> str: ...
        @property
        def dest_hash(self) -> str: ...
        @property
        def spool_dir(self) -> str | os.PathLike[str]: ...
        @property
        def async_mode(self) -> bool: ...
        @property
        def push_timeout_s(self) -> float: ...
        @property
        def prefetch(self) -> int: ...
        @property
        def wal_key(self) -> str | None: ...
        @property
        def data_directory(self) -> str | None: ...

POLL_S = 0.003  # a look is two failed opens (~20 µs): a waiting wal-push sees its record within 3 ms
PREFETCH_WAIT_S = 10.0  # the longest a wal-fetch waits for a segment the prefetcher is fetching
_HEX = frozenset("0123456789ABCDEF")
RECORD_MAGIC = "runbook-record 1"  # the first line of every record below
RECORDS_MARK = ".records"  # in a read-ahead spool: its prefetcher reads `.want` in this format


def short_hash(text: str) -> str:
    """sha256 of `text` (UTF-8), hex, its first 12 digits: a directory's tag. Through the interpreter's built-in
    `_sha256` (3.11; `_sha2` from 3.12), not hashlib, which loads OpenSSL (~2 ms): the same digest."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment,unused-ignore]
    return str(sha256(text.encode()).hexdigest())[:12]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    return "\\".join(p.replace("\\n", "\n").replace("\\r", "\r") for p in value.split("\\\\"))


def _flat(value: object) -> str:
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def format_record(fields: dict[str, object]) -> str:
    """A record as `key=value` lines after RECORD_MAGIC: a list as its items joined by spaces (an identity), a
    dict as `key.sub=value` lines, None left out; backslashes and line breaks in values escaped."""
    lines = [RECORD_MAGIC]
    for key, value in fields.items():
        if isinstance(value, dict):
            lines += [f"{key}.{k}={_escape(_flat(v))}" for k, v in value.items() if v is not None]
        elif value is not None:
            lines.append(f"{key}={_escape(_flat(value))}")
    return "\n".join(lines) + "\n"


def parse_record(text: str) -> dict[str, str] | None:
    """A record written by format_record, every value a string; None when it is not one whole (a record that does
    not parse confirms nothing). A JSON object (what an uploader or prefetcher started before the upgrade still
    writes) is read through json, loaded for it alone, into the same flat form."""
    if text.startswith("{"):
        return _from_json(text)
    if not text.startswith(RECORD_MAGIC + "\n") or not text.endswith("\n"):
        return None
    rec: dict[str, str] = {}
    for line in text[len(RECORD_MAGIC) + 1:-1].split("\n"):
        key, sep, value = line.partition("=")
        if not sep or not key:
            return None
        rec[key] = _unescape(value)
    return rec


def _from_json(text: str) -> dict[str, str] | None:
    import json

    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return parse_record(format_record(obj))


def read_record(path: str) -> dict[str, str] | None:
    """The record in a file; None when it does not parse. OSError (FileNotFoundError) when it cannot be read."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_record(f.read())


def is_segment_name(name: str) -> bool:
    return len(name) == 24 and set(name) <= _HEX


def sha256_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256) of a file, hashed through a mapping (no copy of a 16 MB segment into the process)."""
    import hashlib
    import mmap

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not size:
            return 0, hashlib.sha256(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            return size, hashlib.sha256(m).hexdigest()


def write_record(path: str | os.PathLike[str], text: str) -> None:
    """Write a small file whole or not at all (a temporary name, then rename), mode 0600."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}-{os.getpid()}-{id(text)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def worker_alive(lock_path: str | os.PathLike[str]) -> bool:
    """Does a worker hold this lock? (it holds an exclusive flock for its whole life: steps.wal.worker.WorkerLock)
    Asked through runbook.flockprobe, not runbook.lockfile (~3 ms of imports on the per-segment path)."""
    from runbook.flockprobe import is_held

    return is_held(lock_path)


def spawn(argv: list[str], log: str | os.PathLike[str], cwd: str | os.PathLike[str] | None) -> None:
    """Start `runbook ARGV...` detached (own session, no terminal), its output appended to `log`."""
    import subprocess

    try:
        if os.stat(log).st_size > 5 * 1024 * 1024:
            os.replace(log, f"{os.fspath(log)}.1")
    except OSError:
        pass
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        subprocess.Popen([sys.executable, "-m", "runbook", *argv], stdin=subprocess.DEVNULL, stdout=fd,
                         stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                         cwd=os.fspath(cwd) if cwd else None)
    finally:
        os.close(fd)


def cluster_identity(wal_path: str, configured: str | None) -> tuple[int | None, str | None]:
    """(system identifier, data directory) from `global/pg_control` of the data directory running us: the
    working directory PostgreSQL gives both commands, else the parent of the file's pg_wal, else the config's."""
    candidates = [os.getcwd(), os.path.dirname(os.path.dirname(os.path.abspath(wal_path)))]
    if configured:
        candidates.append(configured)
    for d in candidates:
        try:
            with open(os.path.join(d, "global", "pg_control"), "rb") as f:
                head = f.read(8)
        except OSError:
            continue
        if len(head) == 8:
            return int.from_bytes(head, "little"), d
    return None, None


# pg_control's check value for the floating-point format (FLOATFORMAT_VALUE, the double 1234567.0), which is
# followed, in every version since PostgreSQL 11, by blcksz, relseg_size, xlog_blcksz and xlog_seg_size (uint32).
_FLOAT_FORMAT = (0x4132D68700000000).to_bytes(8, sys.byteorder)


def _power_of_two(n: int, low: int, high: int) -> bool:
    return low <= n <= high and n & (n - 1) == 0


def control_segment_size(datadir: str) -> int | None:
    """The WAL segment size `global/pg_control` records (`xlog_seg_size`), found after its floating-point check
    value rather than at a fixed offset, which moves between major versions; None when the file cannot be read,
    the check value is not there, or the sizes after it are not the powers of two PostgreSQL allows (1 MB-1 GB
    segments, 1-64 kB pages). The first wal-fetch of a replay knows, before it reads its segment, which ones
    come next."""
    try:
        with open(os.path.join(datadir, "global", "pg_control"), "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    at = head.find(_FLOAT_FORMAT)
    while at != -1 and at % 8:
        at = head.find(_FLOAT_FORMAT, at + 1)
    if at == -1 or len(head) < at + 24:
        return None
    blcksz, _relseg, xlog_blcksz, seg_size = (int.from_bytes(head[at + 8 + 4 * i:at + 12 + 4 * i], sys.byteorder)
                                              for i in range(4))
    if not (_power_of_two(blcksz, 1024, 65536) and _power_of_two(xlog_blcksz, 1024, 65536)
            and _power_of_two(seg_size, 1024 * 1024, 1024 * 1024 * 1024)):
        return None
    return seg_size


# --- asynchronous push: the waiting side -------------------------------------------------------------


def push_root(settings: Settings, sysid: int, pg_wal: str) -> str:
    """The spool of one cluster's pg_wal pushed to one destination: `push-<pg_wal>-<destination>`.

    A restored copy of a cluster (same identifier) on the same host gets an uploader of its own; so does a
    changed repository config (another directory, bucket, prefix or endpoint: WalSettings.destinations).
    The uploader puts its records where its own config says, and `wal-push` looks only where its config
    says: a record made for another destination is never even read, and an uploader still serving the old
    destination does not hold up the new one."""
    where = short_hash(os.path.abspath(pg_wal))
    return os.path.join(os.fspath(settings.spool_dir), str(sysid), f"push-{where}-{settings.dest_hash}")


def confirms(rec: dict[str, str], settings: Settings, sysid: int, size: int, sha256: str) -> bool:
    """Does an uploader's `.ok` record (parse_record) confirm this file, in this cluster's directory, in every
    repository configured now? All of it must match: the destination (in full, not the spool directory's short
    hash), the system identifier it is archived under, the size and sha256 of the file as it is now."""
    return (rec.get("destinations") == settings.destinations and rec.get("system_identifier") == str(sysid)
            and rec.get("size") == str(size) and rec.get("sha256") == sha256)


def file_identity(st: os.stat_result) -> list[int]:
    """What tells one file's life from another: device, inode, size, modification and change times (ns).
    The uploader records it when the file is the same before and after it read it (steps.wal.spool)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


RACY_NS = 20_000_000  # longer than a kernel tick (file times come from a coarse clock: 4-10 ms a tick)


def read_identity(before: os.stat_result, after: os.stat_result, looked_ns: int) -> list[int] | None:
    """The identity to record for a file read between the stats `before` (taken at `looked_ns`, time.time_ns)
    and `after`: None when it changed while read, or when it changed so shortly before it was looked at that
    a later change could carry the same ctime (the coarse clock has not ticked yet: git's "racily clean"
    files). Otherwise any later change of the file gives it a later ctime, which wal-push notices."""
    ident = file_identity(after)
    if file_identity(before) != ident or before.st_ctime_ns > looked_ns - RACY_NS:
        return None
    return ident


def confirms_unchanged(rec: dict[str, str], settings: Settings, sysid: int, path: str) -> bool:
    """Does the record confirm the file without hashing it again? When the uploader saw the file, before and
    after reading it, with the identity it has now (same inode, size, mtime and ctime to the nanosecond): the
    bytes it hashed and stored are the bytes here. PostgreSQL never writes into a segment it marked ready; a
    file of another life under this name (a recycled segment, a restored copy of the cluster) has another
    ctime, which no user process can set. Anything else: hash the file and compare (`confirms`)."""
    ident = rec.get("identity")
    if not ident:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (ident == " ".join(str(i) for i in file_identity(st))
            and confirms(rec, settings, sysid, st.st_size, str(rec.get("sha256"))))


_PUSHING_MYSELF: dict[str, tuple[int, str]] = {}  # name -> (the locked `NAME.self` of this process, its out/)


def push_myself(out: str, name: str) -> bool:
    """Take `out/NAME.self`: this process pushes NAME itself (the first call of a burst, while the uploader it
    just started is still starting), and the uploader leaves NAME alone while the lock is held. The lock is
    held until the process exits (a killed pusher leaves a file nobody holds: the uploader then pushes NAME,
    and the retry waits for that). False when another process holds it."""
    import fcntl

    if name in _PUSHING_MYSELF:
        return True
    fd = os.open(os.path.join(out, f"{name}.self"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _PUSHING_MYSELF[name] = (fd, out)
    return True


def record_own_push(name: str, record: dict[str, object]) -> None:
    """After this process pushed NAME itself (`push_myself`) and every repository holds it: its `.ok` record, as
    the uploader would have written it, so that the uploader does not push it again before PostgreSQL marks
    it done. Nothing when this process is not pushing NAME for the uploader."""
    if name in _PUSHING_MYSELF:
        write_record(os.path.join(_PUSHING_MYSELF[name][1], f"{name}.ok"), format_record(record))


def push_via_worker(settings: Settings, path: str, name: str, sysid: int, datadir: str | None) -> int | None:
    """Exit 0 only on the uploader's `.ok` record of this very file; 1 on its `.error` or after the bound.
    None: the caller pushes the file itself, in full, as the synchronous mode does: when it is not marked
    ready in its pg_wal (run by hand: the uploader would never see it), or when no uploader runs (the first
    call of a burst: this one is started for the files after it, and this call does not wait for its start,
    which costs an interpreter and the imports of the whole push; `push_myself` keeps it off this file)."""
    if name in _PUSHING_MYSELF:
        return None  # the full path's second look: this process pushes it
    pg_wal = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(os.path.join(pg_wal, "archive_status", f"{name}.ready")):
        return None
    root = push_root(settings, sysid, pg_wal)
    out = os.path.join(root, "out")
    try:
        os.makedirs(out, mode=0o700, exist_ok=True)
    except OSError as e:
        print(f"runbook wal-push: cannot create the WAL spool {out}: {e.strerror}\n"
              "  hint: wal.spool_dir must be writable by the server's user", file=sys.stderr)
        return 1
    ok, err = os.path.join(out, f"{name}.ok"), os.path.join(out, f"{name}.error")
    lock = os.path.join(root, "push-worker.lock")
    deadline = time.monotonic() + settings.push_timeout_s
    next_look = 0.0
    mine: tuple[int, str] | None = None
    while True:
        try:
            rec = read_record(ok)
            if rec is None:
                rec = {}  # not a record of ours: confirms nothing
        except FileNotFoundError:
            rec = None
        if rec is not None:
            if confirms_unchanged(rec, settings, sysid, path):
                return 0
            if mine is None:
                try:
                    mine = sha256_file(path)
                except OSError as e:
                    print(f"runbook wal-push: cannot read {path}: {e.strerror}", file=sys.stderr)
                    return 1
            if confirms(rec, settings, sysid, *mine):
                return 0
            _unlink(ok)  # a record of other bytes, or of another destination: this file is pushed afresh
        try:
            with open(err) as f:
                message = f.read()
        except FileNotFoundError:
            message = None
        if message is not None:
            _unlink(err)  # the next attempt starts afresh
            print(f"runbook wal-push: {name} was not archived: {message.strip()}", file=sys.stderr)
            return 1
        now = time.monotonic()
        if now >= deadline:
            print(f"runbook wal-push: {name} was not confirmed within {settings.push_timeout_s:g} s by the "
                  f"asynchronous uploader; see {os.path.join(root, 'push-worker.log')}", file=sys.stderr)
            return 1
        if now >= next_look:
            if not worker_alive(lock):
                first = next_look == 0.0 and push_myself(out, name)
                spawn(["wal-push", "-c", str(settings.path), "--async-worker", "--pg-wal", pg_wal,
                       "--sysid", str(sysid)], os.path.join(root, "push-worker.log"), datadir)
                if first:
                    return None
            next_look = now + 1.0
        time.sleep(POLL_S)


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 - contextlib would be one more import on the per-segment path
        os.unlink(path)
    except FileNotFoundError:
        pass


# --- fetch read-ahead: the taking side ---------------------------------------------------------------


def fetch_spool(settings: Settings, sysid: int, datadir: str) -> str | None:
    """The read-ahead spool of one recovering data directory (created), or None when it cannot be."""
    tag = short_hash(os.path.abspath(datadir))
    path = os.path.join(os.fspath(settings.spool_dir), str(sysid), f"in-{tag}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return path


def take(spool: str, name: str, dest: str, verified: str | None = None) -> bool:
    """Move a prefetched segment to DEST when it is there whole: a rename when the spool shares pg_wal's file
    system, else a copy written whole (temporary name, then rename).

    No second sha256 here: the prefetcher checked the bytes against the archive's sha256 before it wrote
    them, and its record (written after the file) carries their size, compared with the file's. Hashing the
    16 MB again cost ~30 ms on replay's critical path, per segment, to guard only the few seconds a file
    spends in the spool; PostgreSQL still checks every record's CRC as it replays.
    With a verified index (`verified`), the sha256 the prefetcher checked must be the one the signed ledgers
    list: anything else is left to the full path, which refuses it with the reason."""
    data_path, rec_path = os.path.join(spool, name), os.path.join(spool, f"{name}.json")
    try:
        rec = read_record(rec_path)
        size = os.stat(data_path).st_size
    except OSError:
        return False
    if rec is None:
        return False
    if str(size) != rec.get("size"):
        print(f"runbook wal-fetch: warning: the prefetched {name} in {spool} is {size} bytes, not the "
              f"{rec.get('size')} archived; reading it from the repository", file=sys.stderr)
        _unlink(data_path)
        _unlink(rec_path)
        return False
    if verified is not None and signed_verdict(verified, name, str(rec.get("sha256")))[0] != "ok":
        return False
    try:
        os.replace(data_path, dest)
    except OSError:
        import shutil

        tmp = os.path.join(os.path.dirname(os.path.abspath(dest)), f".{os.path.basename(dest)}.runbook-{os.getpid()}")
        try:
            shutil.copyfile(data_path, tmp)
            os.replace(tmp, dest)
        except OSError:
            _unlink(tmp)
            return False
        _unlink(data_path)
    _unlink(rec_path)
    return True


def _segment_index(name: str, segment_size: int) -> tuple[int, int]:
    """(timeline, position) of a segment name: the position counts segments from the start of WAL."""
    per_log = 0x100000000 // segment_size
    return int(name[:8], 16), int(name[8:16], 16) * per_log + int(name[16:], 16)


def in_window(want: dict[str, str], name: str, depth: int) -> bool:
    """Is `name` among the segments the prefetcher was asked for (the `depth` after want["name"])?"""
    try:
        size = int(want["segment_size"])
        tli, pos = _segment_index(name, size)
        want_tli, want_pos = _segment_index(str(want["name"]), size)
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        return False
    return tli == want_tli and 1 <= pos - want_pos <= depth


def prefetch_cap(settings: Settings) -> int:
    """The deepest the read-ahead grows: four times `wal.prefetch` (32 segments, 512 MB of spool, by default)."""
    return 4 * settings.prefetch


def window_depth(settings: Settings, spool: str) -> int:
    """How many segments after the last one asked for the running prefetcher fetches: `wal.prefetch`, or more
    once it has grown the window (it writes `.depth` before it fetches deeper, and never shrinks it while it
    runs, so a wal-fetch never waits for a segment nobody fetches)."""
    try:
        with open(os.path.join(spool, ".depth")) as f:
            depth = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return settings.prefetch
    return max(settings.prefetch, min(depth, prefetch_cap(settings)))


def wait_prefetched(settings: Settings, spool: str, name: str, dest: str, source: str,
                    verified: str | None = None) -> bool:
    """Take `name` from the spool once the running prefetcher has it, when it is already fetching it.

    Replay asks for segment X+1 the moment X is replayed; when that is faster than the read-ahead, waiting
    for the prefetcher's copy (a few ms) beats reading the repository again from a cold process. False at
    once when no prefetcher runs or `name` is not in what it was asked for, and as soon as it says it could
    not get it (`NAME.none`), or after a bound: the caller then reads the repository itself."""
    try:
        want = read_record(os.path.join(spool, ".want"))
    except OSError:
        return False
    if not os.path.exists(os.path.join(spool, RECORDS_MARK)):
        return False  # a prefetcher of an older build, which cannot read our `.want`: not worth waiting for
    if want is None or want.get("source", "any") != source or not in_window(want, name, window_depth(settings, spool)):
        return False
    lock = os.path.join(spool, ".lock")
    none = os.path.join(spool, f"{name}.none")
    deadline = time.monotonic() + PREFETCH_WAIT_S
    next_look = 0.0
    while True:
        if take(spool, name, dest, verified):
            return True
        now = time.monotonic()
        if os.path.exists(none) or now >= deadline:
            return False
        if now >= next_look:
            if not worker_alive(lock):
                return False
            next_look = now + 0.5
        time.sleep(0.002)


def _spawn_prefetcher(settings: Settings, spool: str, sysid: int, datadir: str | None) -> None:
    spawn(["wal-fetch", "-c", str(settings.path), "--prefetch-worker", "--spool", spool, "--sysid", str(sysid),
           *(["--datadir", datadir] if datadir else [])], os.path.join(spool, ".prefetch.log"), None)


def start_prefetcher(settings: Settings, spool: str, sysid: int, datadir: str | None, name: str | None = None,
                     segment_size: int | None = None, source: str = "any") -> bool:
    """Before a wal-fetch reads `name` from the repository itself (the full path: the first call of a replay, or
    a call replay sent ahead of the read-ahead), ask for the segments after it, when the segment size is known
    (control_segment_size), and start the spool's prefetcher when none runs: its interpreter, its stores and
    the next segments' reads run beside ours, instead of after, so the next wal-fetch finds its segment read.
    Without a size, a prefetcher it starts waits for the `.want` this call writes at its end (request_after;
    an earlier recovery's is removed first: nobody asked for it). True when this call started it
    (request_after then does not start another)."""
    want = os.path.join(spool, ".want")
    announce = name is not None and bool(segment_size)
    try:
        if announce:
            write_record(want, format_record({"name": name, "segment_size": segment_size, "source": source,
                                              "waited_ms": 0.0}))
        if worker_alive(os.path.join(spool, ".lock")):
            return False
        if not announce:
            _unlink(want)
        _spawn_prefetcher(settings, spool, sysid, datadir)
        return True
    except OSError as e:
        print(f"runbook wal-fetch: warning: read-ahead not started: {e}", file=sys.stderr)
        return False


def withdraw_want(spool: str, name: str) -> None:
    """The segment a wal-fetch asked the read-ahead to follow (start_prefetcher) is not in the archive: nothing
    after it is read ahead."""
    try:
        want = read_record(os.path.join(spool, ".want"))
    except OSError:
        return
    if want is not None and want.get("name") == name:
        _unlink(os.path.join(spool, ".want"))


def request_after(settings: Settings, spool: str, sysid: int, datadir: str | None, name: str, segment_size: int,
                  source: str = "any", waited_ms: float = 0.0, started: bool = False) -> None:
    """Ask the prefetcher for the segments after `name`, and start it when none runs (`started`: this process
    started it a moment ago, start_prefetcher: it may not hold its lock yet). `waited_ms`: how long this
    wal-fetch waited for the prefetcher's copy of `name` (0: it was ready): the prefetcher reads ahead deeper
    while replay keeps waiting for it."""
    try:
        write_record(os.path.join(spool, ".want"),
                     format_record({"name": name, "segment_size": segment_size, "source": source,
                                    "waited_ms": round(waited_ms, 1)}))
        if not started and not worker_alive(os.path.join(spool, ".lock")):
            _spawn_prefetcher(settings, spool, sysid, datadir)
    except OSError as e:
        print(f"runbook wal-fetch: warning: read-ahead not started: {e}", file=sys.stderr)


def segment_size_of(path: str) -> int:
    """The segment size in a segment's long page header (bytes 32-35)."""
    with open(path, "rb") as f:
        head = f.read(40)
    return int.from_bytes(head[32:36], "little")



# --- the two quick answers ---------------------------------------------------------------------------


def fetch_prefetched(settings: Settings, name: str, dest: str, source: str = "any",
                     verified: str | None = None) -> bool:
    """`wal-fetch NAME DEST` from the read-ahead spool: True when DEST now holds NAME (taken from the spool,
    or waited for while the prefetcher was fetching it) and the segments after it are asked for; False when
    the spool cannot answer (no read-ahead, not a segment, no identity, not prefetched): read the repository."""
    if settings.prefetch <= 0 or not is_segment_name(name):
        return False
    sysid, datadir = cluster_identity(dest, settings.data_directory)
    if sysid is None or datadir is None:
        return False
    spool = fetch_spool(settings, sysid, datadir)
    if spool is None:
        return False
    waited_ms = 0.0
    if not take(spool, name, dest, verified):
        t0 = time.monotonic()
        if not wait_prefetched(settings, spool, name, dest, source, verified):
            return False
        waited_ms = (time.monotonic() - t0) * 1000
    request_after(settings, spool, sysid, datadir, name, segment_size_of(dest), source, waited_ms)
    return True


def push_async(settings: Settings, path: str) -> int | None:
    """`wal-push PATH` in the asynchronous mode: the exit code from the uploader's record (push_via_worker);
    None when the mode is off, the cluster cannot be told, or the file is not marked ready: push it in full."""
    if not settings.async_mode:
        return None
    name = os.path.basename(path)
    sysid, datadir = cluster_identity(path, settings.data_directory)
    if sysid is None:
        return None
    return push_via_worker(settings, path, name, sysid, datadir)


# --- signed WAL ledgers: the pushing side's note, the fetching side's lookup (steps.wal.ledger) -------------


def seal_root(settings: Settings, sysid: int) -> str:
    """Where this host notes what it archived for one cluster and one destination, until the sealer signs it:
    `<spool_dir>/<sysid>/seal-<destination>/` (`pending/NAME` files, `seal-worker.lock`, `seal-worker.log`)."""
    return os.path.join(os.fspath(settings.spool_dir), str(sysid), f"seal-{settings.dest_hash}")


def note_pushed(settings: Settings, sysid: int, name: str, sha256: str, size: int) -> str | None:
    """After a push is stored: note `NAME sha256 size` for the sealer (steps.wal.ledger), and start it when none
    runs. A small file written whole and a lock probed: ~0.2 ms, no import beyond the standard library.
    Nothing when no WAL key is configured (`signing.wal_private_key`). Returns why the note could not be
    written (None when it was): with a WAL key, a file archived but never sealed is one no recovery replays,
    so the push is not confirmed (PostgreSQL retries; the retry finds the file archived and notes it again)."""
    if not settings.wal_key:
        return None
    root = seal_root(settings, sysid)
    pending = os.path.join(root, "pending")
    try:
        os.makedirs(pending, mode=0o700, exist_ok=True)
        write_record(os.path.join(pending, name), f"{sha256} {size}\n")
    except OSError as e:
        return (f"{name} is stored, but not noted for sealing in {pending}: {e.strerror}; a recovery would not "
                "replay it, so it is not confirmed (wal.spool_dir must be writable by the server's user)")
    if name in _PUSHING_MYSELF:  # the uploader this call just started seals it, in its sealer thread
        return None
    try:
        if not worker_alive(os.path.join(root, "seal-worker.lock")):
            spawn(["wal-push", "-c", str(settings.path), "--seal-worker", "--sysid", str(sysid)],
                  os.path.join(root, "seal-worker.log"), None)
    except OSError as e:  # noted: the next push starts a sealer
        print(f"runbook wal-push: warning: the WAL sealer could not be started: {e}", file=sys.stderr)
    return None


INDEX_MAGIC = "runbook-wal-index 1"
INDEX_NAME_WIDTH = 40  # the longest archived name: a .backup file, 24 + 1 + 8 + 7
INDEX_RECORD = INDEX_NAME_WIDTH + 64 + 1  # name padded, sha256 hex, newline


def wal_order(name: str) -> str:
    """A name's place in WAL order (24 hex digits): a history file at the start of its timeline, anything else
    (segment, partial segment, backup label file) at its segment (steps.wal.ledger sorts ledgers so)."""
    return name[:8] + "0" * 16 if name.endswith(".history") else name[:24]


def index_lookup(path: str, name: str) -> tuple[str | None, bool, str]:
    """(the signed sha256 of NAME, or None; whether unsealed files are accepted; the WAL order of the newest
    signed file) from a verified index (steps.wal.ledger.write_index: fixed-width sorted records, found by
    bisection with pread: a few reads whatever its size). OSError/ValueError when the index cannot be read:
    the caller stops recovery."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, INDEX_RECORD, 0).decode("ascii").split()
        if head[:2] != INDEX_MAGIC.split() or size % INDEX_RECORD:
            raise ValueError(f"{path} is not a verified WAL index")
        fields = dict(f.split("=", 1) for f in head[2:] if "=" in f)
        accept, newest = fields.get("accept-unsealed") == "1", fields.get("newest", "")
        lo, hi = 1, size // INDEX_RECORD
        want = name.ljust(INDEX_NAME_WIDTH)
        while lo < hi:
            mid = (lo + hi) // 2
            rec = os.pread(fd, INDEX_RECORD, mid * INDEX_RECORD).decode("ascii")
            key = rec[:INDEX_NAME_WIDTH]
            if key == want:
                return rec[INDEX_NAME_WIDTH:INDEX_NAME_WIDTH + 64], accept, newest
            if key < want:
                lo = mid + 1
            else:
                hi = mid
        return None, accept, newest
    finally:
        os.close(fd)


def signed_verdict(index: str, name: str, sha256: str) -> tuple[str, str | None]:
    """May NAME with these bytes be handed to PostgreSQL under the verified index?
    ("ok", None); ("end", why): a file after the newest one the ledgers sign, not accepted: the archive ends
    here for this recovery (wal-fetch answers "missing", and says why on stderr; pitr said it before the
    replay); ("refuse", why): replaced, or unsigned among signed files, or the index unreadable: recovery stops.
    A file the ledgers do not list is accepted only when the index says so (`allow_unsigned`), with a warning."""
    try:
        signed, accept, newest = index_lookup(index, name)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return "refuse", f"the verified WAL index {index} cannot be read ({e}); nothing unchecked is replayed"
    if signed == sha256:
        return "ok", None
    if signed is not None:
        return "refuse", (f"{name} in the repository (sha256 {sha256}) is not the file the WAL ledgers signed "
                          f"(sha256 {signed}): it was replaced after it was archived")
    if accept:
        print(f"runbook wal-fetch: warning: {name} is in no signed WAL ledger (archived unsealed, or planted); "
              "accepted because the recovery allows unsigned WAL", file=sys.stderr)
        return "ok", None
    why = (f"{name} is in no signed WAL ledger of this cluster: archived without a ledger (the sealer did not "
           "run, or no signing.wal_private_key) or planted by someone who can write into the repository")
    if wal_order(name) > newest:
        return "end", why + "; after the newest signed file, so the archive ends here for this recovery"
    return "refuse", why

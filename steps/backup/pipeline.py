"""The logical backup as a pipeline: each file pg_dump has finished is hashed, stored in every repository and
read back while the dump goes on; the manifest still waits for everything (steps.backup.logical).

**When is a file of the dump finished?** pg_dump (directory format) writes each file once: it opens it, writes
it and closes it, and never opens it again (toc.dat first, before any data; then one `<dump id>.dat.gz` per
table, one at a time per worker). So a file is finished once no process of the dump holds it open. The watcher
polls every `POLL_S`: it lists the dump directory **first**, then reads the open files of pg_dump and of its
workers (`/proc/<pid>/fd`, the process and its descendants, read after the listing); a file listed at the
previous poll, listed again, and open in none of them now, has been closed. (Listed a poll earlier: the
kernel makes the directory entry a moment before the descriptor shows in /proc.) When pg_dump has exited,
everything left is finished. Where /proc cannot be read the watcher finds nothing until pg_dump exits: the
files are then handled after the dump, as before the pipeline.

Every file is stat'ed before it is hashed and again when the dump is over: a file that changed after it was
hashed (the rule above broken) fails the backup instead of publishing bytes its manifest does not describe.

**Publishing** goes as `steps.repository.publish.store_objects` does, one object at a time as it comes: a
prefix that already holds anything is refused first; each object is stored (locally a hard link, fsynced;
on S3 an upload) and re-read from the repository, its sha256 compared. S3 transfers run `s3.max_concurrency`
at a time, the local store one at a time. A repository that fails stops receiving objects and gets no
manifest; the others go on. Objects without a manifest are not a backup: on failure the caller deletes what
reached the local repository, and `prune` removes S3's leftovers after a day (the backup's credentials need
no delete right).

**An encrypted repository** (steps.encrypted.writing) gets each object through a `SealedStream`: the same
chunks, age-encrypted to its epoch's data recipient as they pass, stored as `<path>.age` (on S3 the parts go up
as they fill; locally the ciphertext is written to the staging directory's `.encrypted/` spool and hard-linked
when whole). The ciphertext is hashed as it is produced and the re-read compares the stored bytes with that;
each repository's manifest then records its own stored sizes and sha256 (`stored_objects`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from steps.encrypted.writing import SPOOL, SealedStream, Sealing
from steps.repository.manifest import ObjectEntry
from steps.repository.store import CHUNK, CorruptObject, ObjectExists, ObjectStream, RepositoryError, Store

log = logging.getLogger("runbook.backup")

POLL_S = 0.1


class Changed(RepositoryError):
    """A file of the dump changed after it was hashed (and maybe published)."""


# --- which files pg_dump has finished ------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (pg_dump's workers are its children), from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def open_files(pids: list[int]) -> set[str]:
    """The paths these processes hold open now. PermissionError when /proc will not say (then nothing can be
    called finished before the dump ends); a process that is gone holds nothing."""
    paths: set[str] = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                paths.add(os.readlink(f"{fd_dir}/{fd}"))
            except FileNotFoundError:
                continue
    return paths


def list_files(root: Path) -> list[str]:
    """Every regular file under `root`, relative, with /."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


class FinishedFiles:
    """The rule of the module's docstring, one poll at a time."""

    def __init__(self, root: Path, pid: int) -> None:
        self.root = root
        self.real = os.path.realpath(root)
        self.pid = pid
        self.seen_before: set[str] = set()
        self.done: set[str] = set()
        self.listed: list[str] = []  # at the last poll: every file not handed out yet
        self.proc_readable = True

    def poll(self) -> list[str]:
        listed = [f for f in list_files(self.root) if f not in self.done] if self.root.is_dir() else []
        self.listed = listed
        candidates = [f for f in listed if f in self.seen_before]
        self.seen_before = set(listed)
        if not candidates or not self.proc_readable:
            return []
        try:
            held = open_files(descendants(self.pid))
        except PermissionError:
            self.proc_readable = False
            log.info("cannot read pg_dump's open files in /proc: the dump's files are handled after it ends")
            return []
        finished = [f for f in candidates if os.path.join(self.real, f) not in held]
        self.done.update(finished)
        return finished

    def rest(self) -> list[str]:
        """Once pg_dump has exited: every file not handed out yet."""
        rest = [f for f in list_files(self.root) if f not in self.done] if self.root.is_dir() else []
        self.done.update(rest)
        return rest


# --- publishing each object as it is read ---------------------------------------------------------


@dataclass
class _StoreState:
    store: Store
    slots: threading.BoundedSemaphore  # concurrent transfers to this repository
    error: RepositoryError | None = None
    stored: list[str] = field(default_factory=list)  # keys that may have reached it (for cleanup)
    busy_s: float = 0.0
    finish_s: float = 0.0
    reread_s: float = 0.0
    sealing: Sealing | None = None  # an encrypted repository: the key its objects are written with
    stored_objects: dict[str, tuple[int, str]] = field(default_factory=dict)  # encrypted: path -> stored size, sha256


class Publisher:
    """Sends each object to every repository while it is read (`open` .. `write` .. `finish`), then re-reads
    it from the repository and compares its sha256. A repository that fails is left alone from then on."""

    def __init__(self, stores: list[Store], staging: Path, workers: Callable[[Store], int],
                 sealings: dict[str, Sealing | None] | None = None) -> None:
        self.staging = staging
        self.states = [_StoreState(s, threading.BoundedSemaphore(max(1, workers(s))),
                                   sealing=(sealings or {}).get(s.name)) for s in stores]
        self.prefix: str | None = None
        self.cancelled = threading.Event()
        self._lock = threading.Lock()

    def begin(self, prefix: str) -> None:
        """Refuse a prefix that already holds anything (backups are never overwritten), per repository."""
        self.prefix = prefix
        for st in self.states:
            try:
                existing = st.store.list_keys(prefix)
                if existing:
                    raise ObjectExists(f"{prefix} already holds {len(existing)} objects in {st.store.describe()}; "
                                       "backups are never overwritten")
            except RepositoryError as e:
                st.error = e

    def _fail(self, st: _StoreState, e: BaseException, key: str) -> None:
        err = e if isinstance(e, RepositoryError) else RepositoryError(f"{type(e).__name__} while storing {key}: {e}")
        with self._lock:
            if st.error is None:
                st.error = err

    def open(self, rel: str) -> list[tuple[_StoreState, ObjectStream]]:
        assert self.prefix is not None
        key = self.prefix + rel
        streams: list[tuple[_StoreState, ObjectStream]] = []
        for st in self.states:
            if st.error is None and not self.cancelled.is_set():
                try:
                    if st.sealing is not None:  # encrypted as it is read (steps.encrypted.writing)
                        spool = self.staging / SPOOL / st.store.name / (rel + ".age")
                        streams.append((st, st.sealing.stream(st.store, key, spool)))
                    else:
                        streams.append((st, st.store.open_stream(key, self.staging / rel)))
                except Exception as e:  # noqa: BLE001 - this repository fails, the others go on
                    self._fail(st, e, key)
        return streams

    def write(self, streams: list[tuple[_StoreState, ObjectStream]], chunk: bytes) -> None:
        for st, stream in streams:
            if st.error is not None or self.cancelled.is_set() or not stream.sends_early:
                continue
            t0 = time.monotonic()
            try:
                with st.slots:
                    with self._lock:
                        if stream.key not in st.stored:
                            st.stored.append(stream.key)
                    stream.write(chunk)
            except Exception as e:  # noqa: BLE001
                stream.abort()
                self._fail(st, e, stream.key)
            finally:
                with self._lock:
                    st.busy_s += time.monotonic() - t0

    def finish(self, streams: list[tuple[_StoreState, ObjectStream]], o: ObjectEntry) -> None:
        """The object is whole: store it, re-read it from the repository, compare."""
        for st, stream in streams:
            if st.error is not None or self.cancelled.is_set():
                stream.abort()
                continue
            t0 = time.monotonic()
            try:
                with st.slots:
                    ours = True
                    try:
                        stream.finish()
                    except ObjectExists:
                        ours = False  # someone else's: never removed by the cleanup
                        raise
                    finally:
                        if ours:
                            with self._lock:
                                if stream.key not in st.stored:
                                    st.stored.append(stream.key)
                    t1 = time.monotonic()
                    size, digest = st.store.hash_object(stream.key)
                # Encrypted: the stored bytes must be the ciphertext this host produced (it cannot decrypt).
                want_size, want = stream.stored if isinstance(stream, SealedStream) else (o.size, o.sha256)
                if digest != want or size != want_size:
                    raise CorruptObject(st.store.describe(), stream.key, f"sha256 {want} ({want_size} bytes)",
                                        f"sha256 {digest} ({size} bytes)")
                with self._lock:
                    if isinstance(stream, SealedStream):
                        st.stored_objects[o.path] = stream.stored
                    st.finish_s += t1 - t0
                    st.reread_s += time.monotonic() - t1
            except Exception as e:  # noqa: BLE001
                stream.abort()
                self._fail(st, e, stream.key)
            finally:
                with self._lock:
                    st.busy_s += time.monotonic() - t0

    def close(self) -> None:
        self.cancelled.set()

    def cleanup_local(self) -> None:
        """A failed run: remove what reached the local repository (no manifest, so no backup, but bytes)."""
        for st in self.states:
            if st.store.name == "local" and st.stored:
                try:
                    st.store.delete(st.stored)
                except RepositoryError as e:
                    log.warning("could not remove the objects of the failed backup from %s: %s",
                                st.store.describe(), e)


# --- the whole pipeline, as the dump sees it ------------------------------------------------------


class DumpPipeline:
    """What steps.backup.dump.take_dump calls while pg_dump runs: `begin` with the system identifier once the
    database's facts are known, `watch` with pg_dump's pid, `dump_ended` when it exited, `add` for the files
    written beside the dump, then `objects`.

    Each file of the dump is read from the moment it appears, by a thread of its own (at most pg_dump's jobs
    and toc.dat grow at once), front to back as pg_dump appends to it: every chunk is hashed and handed to the
    repositories (S3 sends a part whenever one is full). Once the watcher says pg_dump has closed the file, the
    thread reads to its end, stats it, and the object is finished in every repository and re-read."""

    def __init__(self, staging: Path, dump_dir: str, publisher: Publisher, prefix_of: Callable[[str], str],
                 on_file: Callable[[str], None] | None = None) -> None:
        self.staging = staging
        self.dump_dir = dump_dir
        self.publisher = publisher
        self.prefix_of = prefix_of  # the repository prefix of the backup, from the cluster's system identifier
        self.on_file = on_file  # told of each finished file of the dump (relative to the dump directory)
        self.entries: dict[str, ObjectEntry] = {}
        self.stats: dict[str, tuple[int, int, int]] = {}
        self.timings: dict[str, float] = {"hash_s": 0.0}
        self.error: BaseException | None = None
        self.dump_ended_at: float | None = None
        self.finished_during_dump = 0
        self._watcher: threading.Thread | None = None
        self._readers: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._ended = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._files: FinishedFiles | None = None

    def begin(self, system_identifier: str) -> None:
        self.publisher.begin(self.prefix_of(system_identifier))

    def watch(self, pid: int) -> None:
        self._files = FinishedFiles(self.staging / self.dump_dir, pid)
        self._watcher = threading.Thread(target=self._watch, name="dump-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        assert self._files is not None
        try:
            while not self._ended.is_set() and not self._stop.is_set():
                finished = self._files.poll()
                for rel in self._files.listed:
                    self._read(f"{self.dump_dir}/{rel}")
                for rel in finished:
                    self._closed(f"{self.dump_dir}/{rel}")
                self._ended.wait(POLL_S)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e

    def _read(self, rel: str) -> threading.Event:
        """Start reading `rel` (once); the event says pg_dump has closed it."""
        with self._lock:
            if rel in self._readers:
                return self._readers[rel][1]
            closed = threading.Event()
            t = threading.Thread(target=self._reader, args=(rel, closed), name=f"read {rel}", daemon=True)
            self._readers[rel] = (t, closed)
        t.start()
        return closed

    def _closed(self, rel: str) -> None:
        """pg_dump closed `rel` (once per file)."""
        closed = self._read(rel)
        if closed.is_set():
            return
        closed.set()
        if not self._ended.is_set():
            self.finished_during_dump += 1
        if self.on_file is not None and rel.startswith(self.dump_dir + "/"):
            self.on_file(rel[len(self.dump_dir) + 1:])

    def _reader(self, rel: str, closed: threading.Event) -> None:
        streams = []
        try:
            streams = self.publisher.open(rel)
            h = hashlib.sha256()
            n = 0
            hash_s = 0.0
            with open(self.staging / rel, "rb") as f:
                while True:
                    done = closed.is_set()  # sampled before the read: a read after the close sees every byte
                    chunk = f.read(CHUNK)
                    if chunk:
                        t0 = time.monotonic()
                        h.update(chunk)
                        hash_s += time.monotonic() - t0
                        n += len(chunk)
                        self.publisher.write(streams, chunk)
                        continue
                    if done:
                        break
                    if self._stop.is_set():
                        raise _Stopped
                    closed.wait(0.05)
                st = os.fstat(f.fileno())
            if st.st_size != n:
                raise Changed(f"{rel} changed while it was read ({st.st_size} bytes, {n} read)")
            entry = ObjectEntry(path=rel, size=n, sha256=h.hexdigest())
            with self._lock:
                self.stats[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
                self.entries[rel] = entry
                self.timings["hash_s"] += hash_s
            self.publisher.finish(streams, entry)
        except _Stopped:
            for _st, stream in streams:
                stream.abort()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            for _st, stream in streams:
                stream.abort()
            with self._lock:
                if self.error is None:
                    self.error = e

    def dump_ended(self) -> None:
        """pg_dump exited (successfully): the watcher stops; every file is closed now."""
        self.dump_ended_at = time.monotonic()
        self._ended.set()
        if self._watcher is not None:
            self._watcher.join()
        if self.error is not None:
            raise self.error
        for rel in list_files(self.staging / self.dump_dir):
            self._closed(f"{self.dump_dir}/{rel}")

    def stop(self) -> None:
        self._stop.set()
        self._ended.set()
        if self._watcher is not None:
            self._watcher.join()
        for t, _closed in list(self._readers.values()):
            t.join()

    def add(self, rel: str) -> None:
        """A file written beside the dump after it (globals.sql, user_mappings.sql): closed already."""
        self._read(rel).set()

    def wait(self) -> None:
        """Every file read, and finished in every repository (or its repository failed). Raises what failed
        in a reader (an unreadable file, `Changed`)."""
        for t, _closed in list(self._readers.values()):
            t.join()
        if self.error is not None:
            raise self.error

    def objects(self) -> list[ObjectEntry]:
        """Every file of the staging directory, hashed (the shadow directory of the read check and the ciphertext
        spool of an encrypted local repository excepted), once
        each is checked unchanged since it was read. Raises Changed."""
        files = [f for f in list_files(self.staging) if not f.startswith((SHADOW + "/", SPOOL + "/"))]
        for rel in files:
            if rel not in self._readers:  # not expected (nothing is written after pg_dump): read it now
                self._read(rel).set()
        self.wait()
        for rel in files:
            st = os.stat(self.staging / rel, follow_symlinks=False)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != self.stats[rel]:
                raise Changed(f"{rel} changed after it was read: the dump is not published",
                              hint="report this: the rule that tells a finished dump file (steps.backup.pipeline) "
                                   "was wrong here")
        missing = set(self.entries) - set(files)
        if missing:
            raise Changed(f"{sorted(missing)[0]} was read but is gone from the dump")
        return sorted(self.entries.values(), key=lambda o: o.path)


class _Stopped(Exception):
    pass


SHADOW = ".read-check"  # the read check's directory inside the staging directory (steps.backup.archive_check)

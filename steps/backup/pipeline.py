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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from steps.repository.manifest import ObjectEntry
from steps.repository.store import CorruptObject, ObjectExists, RepositoryError, Store, sha256_file

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
        self.proc_readable = True

    def poll(self) -> list[str]:
        listed = [f for f in list_files(self.root) if f not in self.done] if self.root.is_dir() else []
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


# --- publishing each object as it comes -----------------------------------------------------------


@dataclass
class _StoreState:
    store: Store
    pool: ThreadPoolExecutor
    error: RepositoryError | None = None
    stored: list[str] = field(default_factory=list)  # keys written (for cleanup)
    futures: list[Future[None]] = field(default_factory=list)
    busy_s: float = 0.0
    upload_s: float = 0.0
    reread_s: float = 0.0


class Publisher:
    """Stores each object in every repository, re-reads it and compares, as the objects come."""

    def __init__(self, stores: list[Store], staging: Path, workers: Callable[[Store], int]) -> None:
        self.staging = staging
        self.states = [_StoreState(s, ThreadPoolExecutor(max_workers=max(1, workers(s)),
                                                         thread_name_prefix=f"publish-{s.name}")) for s in stores]
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

    def submit(self, entry: ObjectEntry) -> None:
        assert self.prefix is not None
        for st in self.states:
            if st.error is None and not self.cancelled.is_set():
                st.futures.append(st.pool.submit(self._one, st, entry))

    def _one(self, st: _StoreState, o: ObjectEntry) -> None:
        if st.error is not None or self.cancelled.is_set():
            return
        assert self.prefix is not None
        key = self.prefix + o.path
        t0 = time.monotonic()
        try:
            ours = True
            try:
                st.store.put_file(key, self.staging / o.path)
            except ObjectExists:
                ours = False  # someone else's: never removed by the cleanup
                raise
            finally:
                if ours:  # what may have reached the repository, for the cleanup of a failed run
                    with self._lock:
                        st.stored.append(key)
            t1 = time.monotonic()
            size, digest = st.store.hash_object(key)
            if digest != o.sha256 or size != o.size:
                raise CorruptObject(st.store.describe(), key, f"sha256 {o.sha256} ({o.size} bytes)",
                                    f"sha256 {digest} ({size} bytes)")
            t2 = time.monotonic()
            with self._lock:
                st.upload_s += t1 - t0
                st.reread_s += t2 - t1
        except RepositoryError as e:
            with self._lock:
                if st.error is None:
                    st.error = e
        except Exception as e:  # a bug or an unexpected library error: this repository fails, said plainly
            with self._lock:
                if st.error is None:
                    st.error = RepositoryError(f"{type(e).__name__} while storing {key}: {e}")
        finally:
            with self._lock:
                st.busy_s += time.monotonic() - t0

    def wait(self) -> None:
        """Every submitted object stored and re-read (or its repository failed)."""
        for st in self.states:
            for f in list(st.futures):
                f.result()

    def close(self) -> None:
        """Stop: what was not started is dropped, what is running ends."""
        self.cancelled.set()
        for st in self.states:
            st.pool.shutdown(wait=True, cancel_futures=True)

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
    """What steps.backup.dump.take_dump calls while pg_dump runs: `begin` with the repository prefix once the
    database's facts are known, `watch` with pg_dump's pid, `dump_ended` when it exited, then `objects`."""

    def __init__(self, staging: Path, dump_dir: str, publisher: Publisher, prefix_of: Callable[[str], str],
                 on_file: Callable[[str], None] | None = None) -> None:
        self.staging = staging
        self.prefix_of = prefix_of  # the repository prefix of the backup, from the cluster's system identifier
        self.dump_dir = dump_dir
        self.publisher = publisher
        self.on_file = on_file  # told of each finished file of the dump (relative to the dump directory)
        self.entries: dict[str, ObjectEntry] = {}
        self.stats: dict[str, tuple[int, int, int]] = {}
        self.timings: dict[str, float] = {"hash_s": 0.0}
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._ended = threading.Event()
        self._stop = threading.Event()
        self._files: FinishedFiles | None = None
        self.dump_ended_at: float | None = None
        self.hashed_during_dump = 0

    def begin(self, system_identifier: str) -> None:
        self.publisher.begin(self.prefix_of(system_identifier))

    def watch(self, pid: int) -> None:
        self._files = FinishedFiles(self.staging / self.dump_dir, pid)
        self._thread = threading.Thread(target=self._run, name="dump-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._files is not None
        try:
            while not self._ended.is_set() and not self._stop.is_set():
                for rel in self._files.poll():
                    self._take(f"{self.dump_dir}/{rel}", during=True)
                self._ended.wait(POLL_S)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e

    def dump_ended(self) -> None:
        """pg_dump exited (successfully): the watcher stops; what it left is taken now."""
        self.dump_ended_at = time.monotonic()
        self._ended.set()
        if self._thread is not None:
            self._thread.join()
        if self.error is not None:
            raise self.error
        if self._files is not None:
            for rel in self._files.rest():
                self._take(f"{self.dump_dir}/{rel}", during=False)

    def stop(self) -> None:
        self._stop.set()
        self._ended.set()
        if self._thread is not None:
            self._thread.join()

    def _take(self, rel: str, *, during: bool) -> None:
        path = self.staging / rel
        t0 = time.monotonic()
        st = os.stat(path, follow_symlinks=False)
        size, digest = sha256_file(path)
        self.timings["hash_s"] += time.monotonic() - t0
        self.stats[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
        entry = ObjectEntry(path=rel, size=size, sha256=digest)
        self.entries[rel] = entry
        if during:
            self.hashed_during_dump += 1
        self.publisher.submit(entry)
        if self.on_file is not None and rel.startswith(self.dump_dir + "/"):
            self.on_file(rel[len(self.dump_dir) + 1:])

    def add(self, rel: str) -> None:
        """A file written beside the dump after it (globals.sql, user_mappings.sql)."""
        self._take(rel, during=False)

    def objects(self) -> list[ObjectEntry]:
        """Every file of the staging directory, hashed (the shadow directory of the read check excepted), once
        each is checked unchanged since it was hashed. Raises Changed."""
        files = [f for f in list_files(self.staging) if not f.startswith(SHADOW + "/")]
        for rel in files:
            if rel not in self.entries:  # not expected (pg_dump makes nothing after it exits): hash it now
                self._take(rel, during=False)
            st = os.stat(self.staging / rel, follow_symlinks=False)
            if (st.st_ino, st.st_size, st.st_mtime_ns) != self.stats[rel]:
                raise Changed(f"{rel} changed after it was hashed: the dump is not published",
                              hint="report this: the rule that tells a finished dump file (steps.backup.pipeline) "
                                   "was wrong here")
        missing = set(self.entries) - set(files)
        if missing:
            raise Changed(f"{sorted(missing)[0]} was hashed but is gone from the dump")
        return sorted(self.entries.values(), key=lambda o: o.path)


SHADOW = ".read-check"  # the read check's directory inside the staging directory (steps.backup.archive_check)

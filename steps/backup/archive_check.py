"""Checking a dump archive with pg_restore before it is published.

`pg_restore --list` only proves the table of contents parses: it accepts archives with flipped bytes or
cut short. `pg_restore -f /dev/null` reads and decompresses every table's data (and large objects), so a
broken data file fails it. Together with the sha256 re-read of every stored object this is the
`readable` level of DESIGN.md.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

from runbook.errors import RunbookError
from steps.pg.tools import ToolFailed, tool
from steps.repository.manifest import Check


def toc_entries(dump_dir: Path) -> list[str]:
    """The archive's table of contents, one entry per line (comments dropped)."""
    proc = subprocess.run([tool("pg_restore"), "--list", str(dump_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolFailed("pg_restore --list", proc.returncode, proc.stderr)
    return [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith(";")]


def check_archive(dump_dir: Path) -> list[Check]:
    """Both checks, as records; raises ToolFailed (with pg_restore's message) when one fails."""
    entries = toc_entries(dump_dir)
    data = [e for e in entries if " TABLE DATA " in e or " BLOBS " in e or " BLOB DATA " in e]
    checks = [Check(name="pg_restore --list", status="ok", detail=f"{len(entries)} table-of-contents entries")]
    proc = subprocess.run([tool("pg_restore"), "--file=/dev/null", str(dump_dir)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise ToolFailed("pg_restore --file=/dev/null", proc.returncode, proc.stderr,
                         hint="the dump cannot be read back; it is not published")
    checks.append(Check(name="pg_restore --file=/dev/null", status="ok",
                        detail=f"read every data entry ({len(data)} tables/large-object sets)"))
    return checks


class StreamingCheck:
    """`pg_restore --file=/dev/null` run while the dump is still being written, over a shadow directory.

    pg_dump writes toc.dat first, then the data files; pg_restore (one job) reads toc.dat, then each table's
    data file in the order of the table of contents, `<dump id>.dat` (`.gz` when compressed), a name made from
    the entry's dump id, which `pg_restore --list` shows. So once toc.dat is finished: the shadow directory
    gets a hard link to it and, for each TABLE DATA entry, a named pipe of its file's name, and pg_restore
    starts on it. A feeder thread waits for pg_restore to open a pipe (a writer's non-blocking open succeeds
    only when a reader is there), waits until the dump has finished that file, and streams it in: pg_restore
    reads the same bytes from the same table of contents as it would from the dump directory, while the next
    files are written.

    What it cannot foresee it does not guess: an archive with large objects (blobs.toc and its files), a data
    file that does not appear, or one the dump made that the table of contents did not name, gives
    `overlapped = False`, and the caller runs `check_archive` on the finished dump directory instead."""

    POLL_S = 0.02
    END_S = 120.0  # pg_restore's time to end once every file was fed: what is left in a pipe, the post-data

    def __init__(self, dump_dir: Path, shadow: Path, compression: int) -> None:
        self.dump_dir = dump_dir
        self.shadow = shadow
        self.suffix = ".gz" if compression > 0 else ""
        self.entries: list[str] = []
        self.data_files: list[str] = []
        self.overlapped = False
        self.why_not = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.fed: set[str] = set()
        self._ready: set[str] = set()
        self._cond = threading.Condition()
        self._stop = False
        self._feeder: threading.Thread | None = None
        self.feed_error: BaseException | None = None
        self.started_at: float | None = None

    def start(self) -> None:
        """Called once toc.dat is finished. Sets `overlapped`; raises nothing (a failure means: not overlapped,
        `why_not` says why)."""
        try:
            self.shadow.mkdir(mode=0o700)
            os.link(self.dump_dir / "toc.dat", self.shadow / "toc.dat")
            self.entries = toc_entries(self.shadow)
        except (OSError, ToolFailed) as e:
            self.why_not = f"could not prepare the overlapped read check: {e}"
            return
        ids = []
        for line in self.entries:
            head, _, rest = line.partition(";")
            desc = rest.split()
            if " BLOBS " in f" {rest} " or " BLOB " in f" {rest} ":
                self.why_not = "the archive has large objects"
                return
            if " TABLE DATA " in f" {' '.join(desc)} ":
                if not head.strip().isdigit():
                    self.why_not = f"unexpected table-of-contents line {line!r}"
                    return
                ids.append(head.strip())
        self.data_files = [f"{i}.dat{self.suffix}" for i in ids]
        try:
            for name in self.data_files:
                os.mkfifo(self.shadow / name, 0o600)
            self.proc = subprocess.Popen([tool("pg_restore"), "--file=/dev/null", str(self.shadow)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (OSError, RunbookError) as e:
            self.why_not = f"could not start the overlapped read check: {e}"
            return
        self.started_at = time.monotonic()
        self.overlapped = True
        self._feeder = threading.Thread(target=self._feed, name="read-check-feeder", daemon=True)
        self._feeder.start()

    def file_done(self, name: str) -> None:
        """The dump finished this file (relative to the dump directory)."""
        with self._cond:
            self._ready.add(name)
            self._cond.notify_all()

    def _open_reader(self, pending: list[str], full_scan: bool) -> tuple[str, int] | None:
        """A pending pipe pg_restore has opened (the next in order first; every one now and then)."""
        for name in pending if full_scan else pending[:1]:
            try:
                return name, os.open(self.shadow / name, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                    raise
        return None

    def _feed(self) -> None:
        pending = list(self.data_files)
        n = 0
        try:
            while pending and not self._stop:
                assert self.proc is not None
                got = self._open_reader(pending, full_scan=n % 10 == 0)
                n += 1
                if got is None:
                    if self.proc.poll() is not None:
                        return
                    time.sleep(self.POLL_S)
                    continue
                name, fd = got
                try:
                    os.set_blocking(fd, True)
                    self._stream(name, fd)
                except BrokenPipeError:  # pg_restore stopped reading: its exit status says why
                    return
                except _Stopped:
                    return
                finally:
                    os.close(fd)
                pending.remove(name)
                self.fed.add(name)
        except BaseException as e:  # noqa: BLE001 - reported by result()
            self.feed_error = e

    def _is_done(self, name: str, timeout: float = 0.0) -> bool:
        """Has the dump closed `name`? Waits up to `timeout` for it; raises _Stopped when aborted."""
        with self._cond:
            if name not in self._ready and not self._stop and timeout:
                self._cond.wait(timeout)
            if self._stop:
                raise _Stopped
            return name in self._ready

    def wait_done(self, name: str) -> None:
        """Until the dump has closed `name` (raises _Stopped when aborted)."""
        while not self._is_done(name, 0.5):
            pass

    def _stream(self, name: str, fd: int) -> None:
        """Feed `name` into its pipe as the dump writes it, front to back, to its end once the dump closed it."""
        path = self.dump_dir / name
        while not path.exists():  # pg_restore may ask for a table the dump has not begun
            if self._is_done(name, self.POLL_S):
                break
        with open(path, "rb") as f:
            while True:
                done = self._is_done(name)  # sampled before the read: a read after the close sees every byte
                chunk = f.read(1024 * 1024)
                if chunk:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    continue
                if done:
                    return
                self._is_done(name, self.POLL_S)

    def result(self) -> list[Check]:
        """After the dump: wait for pg_restore; its checks, or ToolFailed. Only when `overlapped`."""
        assert self.proc is not None
        produced = sorted(p.name for p in self.dump_dir.iterdir() if p.name not in ("toc.dat",))
        if produced != sorted(self.data_files):
            self.abort()
            self.overlapped = False
            self.why_not = "the dump's data files are not those its table of contents names"
            raise NotOverlapped(self.why_not)
        if self._feeder is not None:
            self._feeder.join()  # every pipe fed, or pg_restore gone, or the feeder failed
        if self.feed_error is not None:  # not pg_restore's verdict: pg_restore may wait on a pipe nobody feeds
            self.abort()
            self.overlapped = False
            self.why_not = f"the overlapped read check could not feed every file: {self.feed_error}"
            raise NotOverlapped(self.why_not)
        try:
            _, stderr = self.proc.communicate(timeout=self.END_S)
        except subprocess.TimeoutExpired:
            self.abort()
            self.overlapped = False
            self.why_not = f"pg_restore did not end within {self.END_S:.0f} s of its last file (waiting on a file " \
                           "its table of contents named otherwise?)"
            raise NotOverlapped(self.why_not) from None
        if self.proc.returncode != 0:
            raise ToolFailed("pg_restore --file=/dev/null", self.proc.returncode, stderr.decode(errors="replace"),
                             hint="the dump cannot be read back; it is not published")
        if self.fed != set(self.data_files):
            self.overlapped = False
            self.why_not = "the overlapped read check ended without reading every file"
            raise NotOverlapped(self.why_not)
        return [Check(name="pg_restore --list", status="ok", detail=f"{len(self.entries)} table-of-contents entries"),
                Check(name="pg_restore --file=/dev/null", status="ok",
                      detail=f"read every data entry ({len(self.data_files)} tables/large-object sets), "
                             "while the dump was written")]

    def abort(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        if self._feeder is not None:
            self._feeder.join()


class _Stopped(Exception):
    pass


class NotOverlapped(Exception):
    """The overlapped check could not vouch for the archive: run check_archive on the finished dump."""

"""One lock file: an exclusive `flock` on a file that names its holder (after Barman's barman/lockfile.py).

The contract, the same for every lock built on it (the run lock, runbook.lock; the backup lock,
steps.backup.lock; the verify-backup lock, steps.proof.verify; the WAL spool workers' lock, steps.wal.spool;
the demo's sandbox lock, steps.sandbox.lock):

- **flock semantics.** The lock is `flock(LOCK_EX)` on the open file, not the file's existence: the file is
  created when missing and never removed, so its path is stable and an empty or stale file means nothing.
  It is advisory, per host (one host's kernel), and per open file: the same process opening the file twice
  is refused like any other.
- **Released by the kernel when the process dies** (closing the descriptor, exit, a crash, SIGKILL): a dead
  holder never leaves a stale lock behind. What the file says outlives it: a subclass may give that claim a
  meaning of its own (the run lock does; see runbook.lock).
- **The holder record** (JSON by default: pid, user, host, since, and what a subclass adds) is written over
  the file's content only after the lock is taken, and only by the holder; until then the file still says
  what its previous holder wrote, which the new holder may read first (`taken`).
- **Wait** (`wait` seconds, 0 by default): when the lock is held, try again every `poll_s` until it is free
  or the time is up. **Refuse**: still held after the wait, `acquire` raises `refusal(holder, wait)`
  (a runbook.errors.LockHeld naming the holder unless a subclass says otherwise, exit code Exit.LOCKED) and
  `try_acquire` returns False, leaving the holder it saw in `seen`.
- **Never through a planted link.** The file is opened with `O_NOFOLLOW` and must be a regular file: a lock
  in a shared directory (the sandbox's, beside it in /var/tmp) must not let another local user point it at a
  file that root would then truncate when it writes its record. Such a path is refused (`cannot_open`).
- **Reading a holder without holding the lock** (`read_holder(path)`, or a refused `acquire`): open the file
  read-only and parse it, no lock taken. A holder writes its record in place, so a reader that comes in
  the instant between the truncation and the write sees an empty or partial file: that reads as None
  ("another process"), never as an error. `is_held(path)` asks the kernel instead (a shared flock tried
  and released at once), and is the only reliable answer to "does anyone hold it now".

Standard library only, and cheap to import: `runbook wal-push`/`wal-fetch` (steps.wal.fast, run by
PostgreSQL once per WAL segment) call `is_held`; what only a holder needs is imported when it is needed.
"""

from __future__ import annotations

import fcntl
import json
import os
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs an import on the per-segment path
if TYPE_CHECKING:
    from typing import Any, Self

    Record = dict[str, Any]


class LockFile:
    """An exclusive flock on `path`, naming its holder. Subclasses say where, with which modes and record,
    and how they refuse; `with LockFile(path, wait=5):` takes it (or refuses) and lets go at the end."""

    file_mode = 0o600
    dir_mode: int | None = None  # create the lock's directory (parents too) with this mode; None: it must exist
    poll_s = 0.2  # how often a waiting `acquire` tries again
    fsync = False  # make the holder record durable (for a record that means something after a crash)

    def __init__(self, path: str | os.PathLike[str], *, wait: float = 0.0) -> None:
        self.path = path
        self.wait = wait
        self.fd = -1
        self.seen: Record | None = None  # the holder a refused attempt saw

    # --- taking and letting go ---------------------------------------------------------------------------

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def acquire(self, wait: float | None = None) -> None:
        """Take the lock, waiting up to `wait` seconds (default: the constructor's) for its holder to let go;
        still held then: refuse, raising `refusal(holder, wait)`."""
        wait = self.wait if wait is None else wait
        if not self.try_acquire(wait):
            raise self.refusal(self.seen, wait)

    def try_acquire(self, wait: float | None = None) -> bool:
        """`acquire`, answering False (the holder it saw in `seen`) instead of refusing."""
        if self.fd >= 0:
            raise RuntimeError(f"{self.path} is already held by this object")
        wait = max(self.wait if wait is None else wait, 0.0)
        fd = self._open()
        try:
            if not self._flock(fd, wait):
                self.seen = self._read(fd)
                os.close(fd)
                return False
            self.fd = fd
            self.taken(self._read(fd))
            self.write(self.holder_record())
        except BaseException:
            if self.fd >= 0:
                self._unlock()
            else:
                os.close(fd)
            raise
        return True

    def release(self) -> None:
        """Let go (again: nothing). The holder record stays in the file; it means nothing once unlocked."""
        self._unlock()

    def _unlock(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for a copy of the descriptor a fork may have kept
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- what subclasses say -----------------------------------------------------------------------------

    def holder_record(self) -> Record:
        """The holder record written once the lock is taken."""
        from datetime import UTC, datetime

        return {"pid": os.getpid(), "user": current_user(), "host": hostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds")}

    def taken(self, previous: Record | None) -> None:
        """Called holding the lock, before the record is written, with what the file said (its previous
        holder's record). Raising refuses after all: the lock is released, the file left as it was."""

    def waiting(self, holder: Record | None, wait: float) -> None:
        """Called once, when the lock is found held and the caller is about to wait up to `wait` s for it."""

    def refusal(self, holder: Record | None, wait: float) -> BaseException:
        """The error `acquire` raises when the lock is still held after `wait` s."""
        from runbook.errors import LockHeld

        waited = f"; waited {wait:g} s, refusing" if wait > 0 else ""
        return LockHeld(f"{self.path} is held: {self.describe(holder)}{waited}")

    def describe(self, holder: Record | None) -> str:
        if not holder:
            return "another process"
        return f"pid {holder.get('pid')} ({holder.get('user')}@{holder.get('host')}) since {holder.get('since')}"

    def cannot_open(self, error: OSError) -> BaseException:
        """The error raised when the lock's directory or file cannot be created or opened."""
        return error

    @classmethod
    def encode(cls, record: Record) -> bytes:
        return json.dumps(record).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Record | None:
        """A record from the file's bytes; None when empty or unreadable (being written, or not ours)."""
        try:
            value = json.loads(raw) if raw.strip() else None
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    # --- the holder, read and written ---------------------------------------------------------------------

    def write(self, record: Record) -> None:
        """Write the holder record (only the holder does)."""
        if self.fd < 0:
            raise RuntimeError(f"{self.path} is not held by this object")
        data = self.encode(record)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        if self.fsync:
            os.fsync(self.fd)

    def clear(self) -> None:
        """Empty the holder record (only the holder does): the file says nothing once unlocked."""
        if self.fd < 0:
            raise RuntimeError(f"{self.path} is not held by this object")
        os.ftruncate(self.fd, 0)
        if self.fsync:
            os.fsync(self.fd)

    @classmethod
    def read_holder(cls, path: str | os.PathLike[str]) -> Record | None:
        """The record in a lock file, read without taking the lock; None when there is none (or no file)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return cls._read(fd)
        finally:
            os.close(fd)

    @staticmethod
    def is_held(path: str | os.PathLike[str]) -> bool:
        """Does a process hold this lock now? (runbook.flockprobe)"""
        from runbook.flockprobe import is_held

        return is_held(path)

    # --- inside ------------------------------------------------------------------------------------------

    def _open(self) -> int:
        import errno
        import stat

        try:
            if self.dir_mode is not None:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=self.dir_mode, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, self.file_mode)
        except OSError as e:
            if e.errno == errno.ELOOP:  # the lock's name is a symbolic link: someone planted it
                e = OSError(errno.ELOOP, "it is a symbolic link, not a lock file (remove it; it was not made "
                            "by runbook)", str(self.path))
            raise self.cannot_open(e) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self.cannot_open(OSError(errno.EINVAL, "it is not a regular file (remove it; it was not made "
                                           "by runbook)", str(self.path)))
        return fd

    def _flock(self, fd: int, wait: float) -> bool:
        deadline = time.monotonic() + wait
        first = True
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if first:
                self.waiting(self._read(fd), wait)
                first = False
            time.sleep(min(self.poll_s, left))

    @classmethod
    def _read(cls, fd: int) -> Record | None:
        try:
            raw = b""
            while chunk := os.pread(fd, 65536, len(raw)):
                raw += chunk
        except OSError:
            return None
        return cls.decode(raw)


def current_user() -> str:
    """This process's user name (its uid when it has none, as in a container without a passwd entry)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def hostname() -> str:
    import socket

    return socket.gethostname()

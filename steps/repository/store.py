"""The backup repository: one layout (steps.repository.layout) on two backends, a local directory and S3.

A `Store` holds objects by key (relative to the repository root, `/`-separated). Its rules:
- **never overwrite**: every write looks first and refuses an existing key (`ObjectExists`); locally the
  final name is made with `link(2)`, which cannot replace a file; on S3 see steps.repository.s3;
- **verify**: reading an object to a file hashes it while it streams and refuses a mismatch
  (`CorruptObject`, naming the object); after writing, callers re-read (`hash_object`) and compare;
- errors a user can act on are `RepositoryError`s with a message saying what to do.

The S3 backend is steps.repository.s3; steps.repository.configured opens the stores a config names.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, Protocol

from runbook.errors import Exit, RunbookError

CHUNK = 1024 * 1024
Progress = Callable[[int], None]
StoreName = Literal["local", "s3"]

# The marker object at the repository's root: written by the first backup, basebackup or wal-push, it proves
# that this directory (or S3 prefix) is the repository. `wal-fetch` answers "missing" only where it is, so that
# an unmounted file system or a wrong path stops a recovery (126) instead of ending it early (docs/wal.md).
MARKER = "REPOSITORY"
MARKER_FORMAT = "runbook repository"
MARKER_VERSION = 1


def marker_bytes() -> bytes:
    import json
    import socket
    from datetime import UTC, datetime

    return (json.dumps({"format": MARKER_FORMAT, "version": MARKER_VERSION,
                        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "created_by": socket.gethostname()}) + "\n").encode()


class RepositoryError(RunbookError):
    """A repository could not be read or written: unreachable, refused, full, missing."""

    exit_code = Exit.CANNOT_RUN
    title = "repository"


class ObjectExists(RepositoryError):
    """A write would replace an existing object: backups are never overwritten."""


class NotFound(RepositoryError):
    """The object does not exist in the repository."""


class BadKey(RepositoryError, ValueError):
    """A key that does not name an object inside the repository (`..`, absolute, NUL): refused before anything
    is opened, read or written."""


class CorruptObject(RepositoryError):
    """An object's bytes do not match the sha256 (or size) recorded in its manifest."""

    def __init__(self, where: str, key: str, expected: str, got: str) -> None:
        super().__init__(
            f"corrupt object {key} in {where}: expected {expected}, read {got}",
            hint="this copy cannot be trusted; use another copy (from: s3 / from: local) or another backup",
        )
        self.key = key


class ChunkFilter(Protocol):
    """Bytes in (`write`, in order), bytes out to the sink it was made with; `close` once the input ended."""

    def write(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...


class Decoding(Protocol):
    """How an object's stored bytes become what the manifest describes (an encrypted repository: age, made by
    steps.encrypted.reading; this layer knows no cipher). `stored_size`/`stored_sha256` are the stored bytes'
    as the manifest records them: checked first, as the bytes arrive, before anything decoded is used."""

    stored_size: int
    stored_sha256: str

    def decoder(self, sink: Callable[[bytes], None]) -> ChunkFilter: ...

    def mismatch(self, key: str, got_size: int, got_sha256: str, decoded: Decoded) -> RepositoryError:
        """The error for stored bytes that do not match the manifest; `decoded` says how far they decoded."""
        ...


Decoded = Literal["refused", "cut", "whole"]
"""How stored bytes that do not match their manifest decoded: `refused` (the decoder rejected some: altered),
`cut` (every byte decoded but the end is missing: truncated), `whole` (a complete, valid object, but not the one
the manifest names: replaced)."""


def sha256_file(path: Path, progress: Progress | None = None) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if progress:
                progress(len(chunk))
    return size, h.hexdigest()


def _check_key(key: str) -> str:
    parts = key.split("/")
    if (not key or key.startswith("/") or "\x00" in key or any(p in ("", ".", "..") for p in parts[:-1])
            or parts[-1] in (".", "..")):
        raise BadKey(f"bad repository key {key!r}: not a plain path inside the repository",
                     hint="the manifest that named it was not written by this tool: do not use that backup")
    return key


class Store(ABC):
    """One repository backend. Keys are relative to the repository root."""

    name: StoreName

    @abstractmethod
    def describe(self) -> str:
        """Where this repository is, for messages: a path or an s3:// URL."""

    @abstractmethod
    def check_access(self) -> None:
        """Raise a RepositoryError saying what to do when the repository cannot be used at all."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def put_file(self, key: str, src: Path, progress: Progress | None = None) -> None:
        """Store a file under `key`; refuses an existing key."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store small bytes (manifests, records) under `key`; refuses an existing key."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object; NotFound when it does not exist."""

    @abstractmethod
    def iter_chunks(self, key: str, size: int | None = None) -> Iterator[bytes]:
        """The object's bytes, streamed, in order. `size`: what the manifest says it holds, when known (a backend
        may then read parts of it at once: S3's ranged GETs)."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate 'directories' under `prefix` (which ends in / or is empty)."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        """Every key under `prefix`, recursively, with its size."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Delete these keys, in order (missing keys are fine)."""

    def read_retries(self) -> int:
        return 1

    def open_stream(self, key: str, src: Path) -> ObjectStream:
        """An object written while its file `src` is still being written (steps.backup.pipeline): `write` each
        chunk as it is read, `finish` once the file is whole. This default sends nothing early: `finish` is
        `put_file(key, src)`. The S3 store sends parts as they fill (steps.repository.s3)."""
        return ObjectStream(self, key, src)

    def has_marker(self) -> bool:
        """Is the repository marker (MARKER) at the root? RepositoryError when that cannot be told."""
        return self.exists(MARKER)

    def ensure_marker(self) -> bool:
        """Write the repository marker unless it is there (True: written now). Writers only: backup,
        basebackup, wal-push; `check` and the readers never create it."""
        if self.has_marker():
            return False
        try:
            self.put_bytes(MARKER, marker_bytes())
        except ObjectExists:
            return False
        return True

    def transient(self, e: BaseException) -> bool:
        return False

    def hash_object(self, key: str, progress: Progress | None = None) -> tuple[int, str]:
        """Re-read an object from the repository: (size, sha256)."""
        from steps.repository.retry import retry

        def once() -> tuple[int, str]:
            h = hashlib.sha256()
            size = 0
            for chunk in self.iter_chunks(key):
                h.update(chunk)
                size += len(chunk)
                if progress:
                    progress(len(chunk))
            return size, h.hexdigest()

        return retry(once, attempts=self.read_retries(), transient=self.transient)

    def fetch_file(self, key: str, dest: Path, *, size: int, sha256: str, progress: Progress | None = None,
                   decoding: Decoding | None = None) -> None:
        """Copy an object to `dest`, verifying size and sha256 as it streams; a mismatch leaves no file.
        The bytes go into a new temporary file beside `dest` (O_EXCL, O_NOFOLLOW, 0600), renamed to `dest`
        only once they verified: a link planted at `dest` is replaced, never written through. `decoding`: as
        `fetch_beneath`."""
        from steps.fs import open_dir

        _check_key(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open_dir(dest.parent) as fd:
                self.fetch_beneath(key, fd, dest.name, size=size, sha256=sha256, progress=progress, replace=True,
                                   decoding=decoding)
        except OSError as e:
            raise local_error(e, f"writing {dest}") from None

    def fetch_beneath(self, key: str, dir_fd: int, name: str, *, size: int, sha256: str,
                      progress: Progress | None = None, replace: bool = False,
                      decoding: Decoding | None = None) -> None:
        """Copy an object to `name` (a checked relative path) beneath the directory `dir_fd`, never following a
        link: streamed into a new temporary file `.tmp-<leaf>-<pid>` (O_EXCL, 0600) while it is hashed, then
        renamed to its name only when size and sha256 match. A mismatch, or any failure, leaves no file.
        Without `replace`, an existing `name` is refused (UnsafePath).

        With `decoding` (an encrypted object, `key` its stored key), the stored bytes are hashed as they arrive
        and decoded as they stream into the temporary file; then, in this order: the stored size and sha256
        against `decoding`'s (`decoding.mismatch` names a truncated or altered object, even when decoding
        failed on the way), the decoder's end (its own authentication), the plaintext's `size` and `sha256`.
        Only then is the file renamed to its name: nothing decoded is used before all three held."""
        from steps.fs import UnsafePath, check_relative, open_beneath, open_subdir, rename_in
        from steps.repository.retry import retry

        _check_key(key)
        check_relative(name)
        *dirs, leaf = name.split("/")
        tmp = f".tmp-{leaf}-{os.getpid()}"
        parent = open_subdir(dir_fd, "/".join(dirs), create=True) if dirs else os.dup(dir_fd)
        try:
            if not replace:
                try:
                    os.stat(leaf, dir_fd=parent, follow_symlinks=False)
                    raise UnsafePath(f"{name!r} exists already: refusing to replace it")
                except FileNotFoundError:
                    pass
            fd = open_beneath(parent, tmp)
            try:
                def once() -> tuple[int, str]:
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    h = hashlib.sha256()
                    n = 0

                    def out(chunk: bytes) -> None:
                        nonlocal n
                        h.update(chunk)
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                        n += len(chunk)

                    if decoding is None:
                        for chunk in self.iter_chunks(key, size=size):
                            out(chunk)
                            if progress:
                                progress(len(chunk))
                    else:  # `size` is the plaintext's: the stored object's own size tells the backend its parts
                        decode_chunks(self.iter_chunks(key, size=decoding.stored_size), key, decoding, out, progress)
                    return n, h.hexdigest()

                got_size, got = retry(once, attempts=self.read_retries(), transient=self.transient)
                if got != sha256 or got_size != size:
                    raise CorruptObject(self.describe(), key, f"sha256 {sha256} ({size} bytes)",
                                        f"sha256 {got} ({got_size} bytes)")
                os.fsync(fd)
            except BaseException:
                os.unlink(tmp, dir_fd=parent)
                raise
            finally:
                os.close(fd)
            rename_in(parent, tmp, leaf)
        except OSError as e:
            raise local_error(e, f"writing {name}") from None
        finally:
            os.close(parent)


def decode_chunks(chunks: Iterator[bytes], key: str, decoding: Decoding, out: Callable[[bytes], None],
            progress: Progress | None) -> None:
    """Stored bytes through `decoding` into `out`: the stored sha256 decides first (see Store.fetch_beneath)."""
    stored = hashlib.sha256()
    n = 0
    decoder = decoding.decoder(out)
    failed: RunbookError | None = None
    for chunk in chunks:
        stored.update(chunk)
        n += len(chunk)
        if progress:
            progress(len(chunk))
        if failed is None:
            try:
                decoder.write(chunk)
            except RunbookError as e:  # the stored hash (read to the end) says first whether the bytes changed
                failed = e
    if (n, stored.hexdigest()) != (decoding.stored_size, decoding.stored_sha256):
        how: Decoded = "refused"
        if failed is None:
            try:
                decoder.close()
                how = "whole"
            except RunbookError:
                how = "cut"
        raise decoding.mismatch(key, n, stored.hexdigest(), how)
    if failed is not None:
        raise failed
    decoder.close()


class ObjectStream:
    """An upload fed while its source file grows; never-overwrite as `put_file`. The caller re-reads the object
    after `finish` and compares its sha256, as after `put_file`."""

    sends_early = False  # does `write` send anything (else it is skipped and `finish` does all)

    def __init__(self, store: Store, key: str, src: Path) -> None:
        self.store = store
        self.key = _check_key(key)
        self.src = src

    def write(self, chunk: bytes) -> None:
        """The next bytes of the file, in order."""

    def finish(self) -> None:
        """The file is whole: the object is stored (RepositoryError otherwise)."""
        self.store.put_file(self.key, self.src)

    def abort(self) -> None:
        """Give up: nothing may stay half-sent where the store would keep it (S3: the multipart upload)."""


def local_error(e: OSError, what: str) -> RepositoryError:
    if e.errno == errno.ENOSPC:
        return RepositoryError(f"no space left on the device while {what}", hint="free space or point the repository at a bigger disk")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RepositoryError(f"permission denied while {what}: {e.strerror}",
                               hint="run as the user that owns the repository, or fix its permissions")
    return RepositoryError(f"{what}: {e.strerror or e}")


def make_dirs(path: Path, mode: int = 0o750) -> None:
    """Create `path` and its missing parents, **each** with `mode` (Path.mkdir(parents=True) gives the parents
    the default 0777 & ~umask, i.e. 0755: a repository's `clusters/`, `logical/`... were readable by anyone)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for q in reversed(missing):
        try:
            q.mkdir(mode=mode)
        except FileExistsError:
            if not q.is_dir():
                raise
        else:
            os.chmod(q, mode)  # exactly as documented, whatever the umask (the server's group reads it)


class LocalStore(Store):
    """A repository in a local directory. Directories 0750, files 0640."""

    name: StoreName = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"local repository {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def check_access(self) -> None:
        try:
            make_dirs(self.root)
        except OSError as e:
            raise local_error(e, f"creating {self.root}") from None
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise RepositoryError(f"{self.describe()} is not writable by this user",
                                  hint="run as the user that owns it, or fix its permissions")

    def exists(self, key: str) -> bool:
        return os.path.lexists(self._path(key))

    def _mkdirs(self, path: Path) -> None:
        make_dirs(path)

    def put_file(self, key: str, src: Path, progress: Progress | None = None) -> None:
        dst = self._path(key)
        try:
            if os.path.lexists(dst):
                raise ObjectExists(f"{key} already exists in {self.describe()}; backups are never overwritten")
            self._mkdirs(dst.parent)
            try:
                # Same filesystem (staging inside the repository): a hard link, no copy. fsync the inode.
                os.link(src, dst)
                with open(dst, "rb") as f:
                    os.fsync(f.fileno())
                os.chmod(dst, 0o640)
                if progress:
                    progress(dst.stat().st_size)
                return
            except FileExistsError:
                raise ObjectExists(f"{key} already exists in {self.describe()}; backups are never overwritten") from None
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise
            tmp = dst.parent / f".tmp-{dst.name}-{os.getpid()}"
            try:
                with open(src, "rb") as fin, open(tmp, "wb") as fout:
                    while chunk := fin.read(CHUNK):
                        fout.write(chunk)
                        if progress:
                            progress(len(chunk))
                    fout.flush()
                    os.fsync(fout.fileno())
                os.chmod(tmp, 0o640)
                self._link_final(tmp, dst, key)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise local_error(e, f"writing {dst}") from None

    def _link_final(self, tmp: Path, dst: Path, key: str) -> None:
        try:
            os.link(tmp, dst)
        except FileExistsError:
            raise ObjectExists(f"{key} already exists in {self.describe()}; backups are never overwritten") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        dst = self._path(key)
        tmp = dst.parent / f".tmp-{dst.name}-{os.getpid()}"
        try:
            if os.path.lexists(dst):
                raise ObjectExists(f"{key} already exists in {self.describe()}; backups are never overwritten")
            self._mkdirs(dst.parent)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self._link_final(tmp, dst, key)
                self.sync_dir(dst.parent)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise local_error(e, f"writing {dst}") from None

    def sync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{key} does not exist in {self.describe()}") from None
        except OSError as e:
            raise local_error(e, f"reading {self._path(key)}") from None

    def iter_chunks(self, key: str, size: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except FileNotFoundError:
            raise NotFound(f"{key} does not exist in {self.describe()}") from None
        except OSError as e:
            raise local_error(e, f"reading {path}") from None

    def list_dirs(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        try:
            return sorted(e.name for e in os.scandir(base) if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise local_error(e, f"listing {base}") from None

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        base = self.root / prefix if prefix else self.root
        out: list[tuple[str, int]] = []
        if not base.is_dir():
            return out
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                out.append((full.relative_to(self.root).as_posix(), full.lstat().st_size))
        return sorted(out)

    def delete(self, keys: list[str]) -> None:
        parents: set[Path] = set()
        try:
            for key in keys:
                path = self._path(key)
                path.unlink(missing_ok=True)
                parents.add(path.parent)
            # Remove directories left empty, deepest first, never the root.
            for d in sorted(parents, key=lambda p: len(p.parts), reverse=True):
                while d != self.root and self.root in d.parents:
                    try:
                        d.rmdir()
                    except OSError:
                        break
                    d = d.parent
        except OSError as e:
            raise local_error(e, "deleting from the local repository") from None

    def remove_tree(self, prefix: str) -> None:
        shutil.rmtree(self.root / prefix, ignore_errors=True)


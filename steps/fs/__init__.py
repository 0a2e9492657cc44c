"""Writing where a hostile repository or a local user cannot steer: paths are data, links are never followed.

Everything a repository holds is untrusted input, and a recovery runs as root. The helpers here are the only way
the actions turn a name read from a repository (a manifest's object path, a tar member) into a file on disk:

- `check_relative` refuses a name that is not a plain relative path (absolute, `..`, `.`, empty parts, NUL,
  backslash), before anything is opened;
- `private_dir` makes a fresh working directory (`mkdtemp`, 0700) under a parent that is a real directory owned by
  root or by us, so that nobody else can have prepared, or swap, what is inside it;
- `open_beneath` walks a checked relative path from a directory descriptor one component at a time with
  `O_NOFOLLOW`, creating missing directories 0700, and creates the file itself with `O_EXCL`: a symlink planted
  anywhere on the way, or at the name, fails the open instead of being followed;
- `refuse_symlink` refuses a place the operator named (a data directory, a tablespace target) that is a symlink;
- `open_subdir` gives a descriptor on a directory beneath another the same way (for renames inside it), and
  `private_enough` says whether a file or directory could have been changed by anyone but root or us.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from runbook.errors import RunbookError


class UnsafePath(RunbookError):
    """A path from untrusted input, or a place on disk, that the tool refuses to use."""


def check_relative(name: str, what: str = "object path") -> str:
    """`name` when it is a plain relative path inside its directory; UnsafePath otherwise."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"{what} is empty")
    if "\x00" in name or "\\" in name:
        raise UnsafePath(f"{what} {name!r} holds a NUL or a backslash")
    if name.startswith("/"):
        raise UnsafePath(f"{what} {name!r} is absolute")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"{what} {name!r} is not a plain relative path (empty part, '.' or '..')")
    return name


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def check_parent(parent: Path, what: str = "working directory parent") -> None:
    """A directory we may make private things in: real (no symlink), owned by root or us, not writable by others
    unless sticky (like /var/tmp)."""
    try:
        st = os.lstat(parent)
    except FileNotFoundError:
        raise UnsafePath(f"the {what} {parent} does not exist: create it (owned by root, mode 0755)") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"the {what} {parent} is a symlink: name the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"the {what} {parent} is not a directory")
    if not _owner_ok(st):
        raise UnsafePath(f"the {what} {parent} belongs to uid {st.st_uid}, not to root or to us: another user "
                         "could change what is inside it; use a directory owned by root")
    if st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(f"the {what} {parent} is writable by everyone without the sticky bit: chmod o-w it")


def private_dir(parent: Path, prefix: str) -> Path:
    """A fresh directory `parent/prefixXXXX`, 0700, ours alone. The parent is made (0750) when missing."""
    if not os.path.lexists(parent):
        os.makedirs(parent, mode=0o750, exist_ok=True)
    check_parent(parent)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def refuse_symlink(path: Path, what: str) -> None:
    """UnsafePath when `path` is a symlink."""
    if os.path.islink(path):
        raise UnsafePath(f"the {what} {path} is a symlink: name the real directory, the tool does not follow links")


@contextmanager
def open_dir(path: Path) -> Iterator[int]:
    """A descriptor on the directory `path` itself (never a symlink's target)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _walk_dirs(dir_fd: int, parts: list[str], create: bool, private: bool = False) -> int:
    """A new descriptor on dir_fd/parts..., each component a real directory (made 0700 when `create`; with
    `private`, each one root's or ours and writable by nobody else)."""
    fd = os.dup(dir_fd)
    try:
        for part in parts:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                raise UnsafePath(f"{'/'.join(parts)}: {part} is not a plain directory ({e.strerror})") from None
            os.close(fd)
            fd = nxt
            if private and not private_enough(os.fstat(fd)):
                raise UnsafePath(f"{'/'.join(parts)}: the directory {part} may be written by another user")
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_beneath(dir_fd: int, name: str, *, mode: int = 0o600, what: str = "object path") -> int:
    """A new file `name` (checked relative) beneath `dir_fd`, opened for writing; never an existing one, never
    through a link. Parent directories are made 0700 as needed."""
    check_relative(name, what)
    *dirs, leaf = name.split("/")
    parent = _walk_dirs(dir_fd, dirs, create=True)
    try:
        return os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                       dir_fd=parent)
    except FileExistsError:
        raise UnsafePath(f"{what} {name!r} exists already (or is a link): refusing to write through it") from None
    finally:
        os.close(parent)


def open_read_beneath(dir_fd: int, name: str, *, what: str = "object path") -> int:
    """An existing regular file `name` beneath `dir_fd`, opened for reading without following any link."""
    check_relative(name, what)
    *dirs, leaf = name.split("/")
    parent = _walk_dirs(dir_fd, dirs, create=False)
    try:
        fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except OSError as e:
        raise UnsafePath(f"{what} {name!r} cannot be opened as a plain file ({e.strerror})") from None
    finally:
        os.close(parent)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{what} {name!r} is not a regular file")
    return fd


def stat_private_file(dir_fd: int, name: str) -> os.stat_result:
    """The facts of the regular file `name` beneath `dir_fd` when it, and every directory on the way, is a real
    one of root or ours that nobody else may write (reached without a link); UnsafePath otherwise."""
    check_relative(name, "file")
    *dirs, leaf = name.split("/")
    parent = _walk_dirs(dir_fd, dirs, create=False, private=True)
    try:
        fd = open_read_beneath(parent, leaf, what="file")
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not private_enough(st):
        raise UnsafePath(f"{name} may be written by another user")
    return st


def hash_beneath(dir_fd: int, name: str, *, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size, sha256 hex) of the regular file `name` beneath `dir_fd`, read without following any link."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with os.fdopen(open_read_beneath(dir_fd, name, what="file"), "rb") as f:
        while data := f.read(chunk):
            h.update(data)
            size += len(data)
    return size, h.hexdigest()


def rename_in(dir_fd: int, src: str, dst: str) -> None:
    """Rename one entry of the directory `dir_fd` to another name in it (single components: renameat would
    follow a link in a longer path)."""
    for n in (src, dst):
        if "/" in check_relative(n):
            raise UnsafePath(f"{n!r}: rename_in takes names within one directory")
    os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


# --- directories beneath a descriptor, and owners and modes set on descriptors -----------------------------


def open_subdir(dir_fd: int, name: str, *, create: bool = False, what: str = "directory") -> int:
    """A new descriptor on the directory `name` (checked relative) beneath `dir_fd`, every component a real
    directory, never a link; with `create`, missing components are made 0700. The caller closes it."""
    check_relative(name, what)
    return _walk_dirs(dir_fd, name.split("/"), create=create)


def private_enough(st: os.stat_result) -> bool:
    """True when what `st` describes belongs to root or to us and nobody else may write it."""
    return _owner_ok(st) and not st.st_mode & 0o022


def open_real_dir(path: Path, what: str) -> int:
    """A descriptor on the directory `path` itself: UnsafePath, with a clear message, when it is a symlink or
    not a directory. (Only the last component is not followed: the parents are the operator's to lay out.)"""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if os.path.islink(path):
            raise UnsafePath(f"the {what} {path} is a symlink: name the real directory, the tool does not "
                             "follow links") from None
        raise UnsafePath(f"the {what} {path} cannot be opened as a directory ({e.strerror})") from None


def set_owner_mode(fd: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None) -> None:
    """fchmod/fchown on an open descriptor: the file that was opened, whatever its name points at now."""
    if uid is not None or gid is not None:
        os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
    if mode is not None:
        os.fchmod(fd, mode)


def make_real_dir(path: Path, *, mode: int = 0o700, uid: int | None = None, gid: int | None = None,
                  what: str = "directory") -> None:
    """`path` made (its missing parents too) or taken as it is, refused when it is a symlink, then given `mode`
    and owner through a descriptor that does not follow a link."""
    if not os.path.lexists(path):
        os.makedirs(path, mode=mode, exist_ok=True)
    fd = open_real_dir(path, what)
    try:
        set_owner_mode(fd, mode=mode, uid=uid, gid=gid)
    finally:
        os.close(fd)


def _chown_below(fd: int, uid: int, gid: int) -> None:
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:  # swapped for a link since the stat
                raise UnsafePath(f"{name} changed while its owner was set ({e.strerror})") from None
            try:
                os.fchown(sub, uid, gid)
                _chown_below(sub, uid, gid)
            finally:
                os.close(sub)
        else:  # a file, or a link itself (lchown): never what a link points at
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def chown_tree(path: Path, uid: int, gid: int, what: str = "directory") -> None:
    """`path` and everything beneath it given to uid:gid, walked through directory descriptors that never
    follow a link (a link is chowned itself, its target never). A `path` that is a symlink is refused."""
    fd = open_real_dir(path, what)
    try:
        os.fchown(fd, uid, gid)
        _chown_below(fd, uid, gid)
    finally:
        os.close(fd)


def empty_subdir(dir_fd: int, name: str, *, keep: tuple[str, ...] = (), what: str = "directory") -> None:
    """Everything in the real directory `name` beneath `dir_fd` removed but the entries named in `keep`.
    A link in it is removed itself, never followed; `name` itself being a link is refused (UnsafePath)."""
    import shutil

    fd = open_subdir(dir_fd, name, what=what)
    try:
        for entry in os.listdir(fd):
            if entry in keep:
                continue
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(entry, dir_fd=fd)  # the fd-based rmtree: it never follows a link
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)


def exists_beneath(dir_fd: int, name: str) -> bool:
    """Whether the single component `name` exists in `dir_fd` (a link counts, it is not followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def read_plain_text(path: Path, *, missing: str | None = None) -> str:
    """The text of the regular file `path`, opened without following a link at its name (a server's log or
    pid file sits where the server's user writes: root never reads what a link planted there points at).
    `missing`: returned when the file does not exist (else FileNotFoundError). UnsafePath for a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        if missing is None:
            raise
        return missing
    except OSError as e:
        raise UnsafePath(f"{path} cannot be read as a plain file ({e.strerror}): a link there is never followed") \
            from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        return f.read().decode(errors="replace")

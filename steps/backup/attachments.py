"""The plan's secondary target: the directory of user-uploaded files, as a tar with a per-file manifest.

`capture` writes one uncompressed tar (uploads are mostly already-compressed formats: images, PDFs,
office files; gzip would cost CPU for little) and hashes every file with the very bytes that go into the
tar, so the manifest cannot disagree with the archive even if a file changes while it is read.
Regular files and directories are kept; symlinks and special files are skipped and reported.

`extract` restores byte-identical files: every member must be a plain file or directory with a safe
relative path that the manifest lists (no absolute paths, no `..`, no links: tarfile's `data` filter
as well), a non-empty destination is refused unless `overwrite`, and a symbolic link at the destination
always. The files go into a fresh private directory (0700) beside the destination, are re-hashed there,
and only then are renamed into place, through directory descriptors that never follow a link.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from runbook.errors import RunbookError
from steps.repository.manifest import FileEntry

TAR_FORMAT = tarfile.PAX_FORMAT


class AttachmentsError(RunbookError):
    """The attachments could not be captured or restored."""


@dataclass
class Capture:
    files: list[FileEntry]
    skipped: list[str] = field(default_factory=list)


class _HashingReader(io.RawIOBase):
    """Reads exactly `size` bytes of a file for tarfile, hashing them on the way."""

    def __init__(self, f: BinaryIO, size: int, name: str) -> None:
        self.f = f
        self.left = size
        self.name = name
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0 or n > self.left:
            n = self.left
        data = self.f.read(n)
        if len(data) < n:
            raise AttachmentsError(f"{self.name} shrank while it was archived; run the backup again")
        self.left -= len(data)
        self.hash.update(data)
        return data


def safe_relpath(name: str) -> str:
    """The normalised relative path of a tar member or manifest entry, or AttachmentsError."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or name.startswith("/") or "\\" in name or "\x00" in name:
        raise AttachmentsError(f"unsafe path in the attachments archive: {name!r}; nothing is restored from it")
    return p.as_posix()


def capture(src: Path, tar_path: Path) -> Capture:
    """Archive `src` into `tar_path`. Raises AttachmentsError."""
    if not src.is_dir():
        raise AttachmentsError(f"the attachments directory {src} does not exist",
                               hint="fix attachments.path in the repository config")
    files: list[FileEntry] = []
    skipped: list[str] = []
    try:
        with tarfile.open(tar_path, "w", format=TAR_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(src):
                dirnames.sort()
                base = Path(dirpath)
                rel_dir = base.relative_to(src).as_posix()
                if rel_dir != ".":
                    info = tar.gettarinfo(str(base), arcname=rel_dir)
                    info.uname = info.gname = ""
                    tar.addfile(info)
                for name in sorted(filenames):
                    path = base / name
                    rel = path.relative_to(src).as_posix()
                    st = path.lstat()
                    if not stat.S_ISREG(st.st_mode):
                        skipped.append(rel)
                        continue
                    with open(path, "rb") as f:
                        st = os.fstat(f.fileno())
                        info = tarfile.TarInfo(rel)
                        info.size = st.st_size
                        info.mode = stat.S_IMODE(st.st_mode)
                        info.mtime = st.st_mtime
                        reader = _HashingReader(f, st.st_size, rel)
                        tar.addfile(info, reader)  # type: ignore[arg-type]
                    files.append(FileEntry(path=rel, size=st.st_size, sha256=reader.hash.hexdigest(),
                                           mode=info.mode, mtime=st.st_mtime))
    except OSError as e:
        from steps.repository.store import local_error

        raise AttachmentsError(str(local_error(e, f"archiving {src}"))) from None
    return Capture(files=files, skipped=skipped)


def check_destination(dest: Path, *, overwrite: bool = False) -> os.stat_result | None:
    """The destination's own status (None: it does not exist yet), or AttachmentsError.

    A symbolic link at the destination is refused, never followed; so is anything but a directory, and a
    non-empty directory unless `overwrite`."""
    try:
        st = dest.lstat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AttachmentsError(f"cannot look at {dest}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise AttachmentsError(f"{dest} is a symbolic link; nothing was restored (a restore never follows one)",
                               hint="name the real directory, or remove the link")
    if not stat.S_ISDIR(st.st_mode):
        raise AttachmentsError(f"{dest} exists and is not a directory; nothing was restored")
    if not overwrite and any(os.scandir(dest)):
        raise AttachmentsError(f"{dest} is not empty; nothing was restored",
                               hint="restore into an empty directory, or pass overwrite: true")
    return st


def private_workdir(dest: Path, what: str) -> Path:
    """A fresh directory beside `dest` (mode 0700, an unpredictable name): nothing planted can be in it, and
    what is staged in it is renamed into place on the same filesystem. The parent must be a real directory owned
    by root or by us (steps.fs.private_dir)."""
    from steps.fs import private_dir

    return private_dir(dest.parent, f".{dest.name}.{what}-")


def extract(tar_path: Path, files: list[FileEntry], dest: Path, *, overwrite: bool = False,
            work: Path | None = None) -> int:
    """Restore the archive into `dest`, verified file by file. Returns the number of files.

    The files are extracted into a private staging directory (in `work`, else a fresh one beside `dest`),
    re-hashed there, and only then renamed into place: a missing `dest` is the staged directory renamed, an
    existing one receives the staged entries one by one through directory descriptors that refuse symbolic
    links (a link planted at a file's name is replaced, never written through)."""
    expected = {safe_relpath(f.path): f for f in files}
    existing = check_destination(dest, overwrite=overwrite)
    with tarfile.open(tar_path, "r:") as tar:
        members = tar.getmembers()
        seen: set[str] = set()
        for m in members:
            rel = safe_relpath(m.name)
            if m.isdir():
                continue
            if not m.isfile():
                raise AttachmentsError(f"{rel} in the attachments archive is not a plain file; nothing is restored")
            if rel not in expected:
                raise AttachmentsError(f"{rel} is in the attachments archive but not in its manifest; nothing is restored")
            seen.add(rel)
        missing = sorted(set(expected) - seen)
        if missing:
            raise AttachmentsError(f"the attachments archive lacks {len(missing)} files of its manifest, e.g. {missing[0]}")
        own_work = work is None
        work_dir = private_workdir(dest, "restore") if work is None else work
        try:
            staged = Path(tempfile.mkdtemp(prefix="files-", dir=work_dir))
            try:
                _extract_checked(tar, members, staged)
                _verify(staged, expected)
                _place(staged, dest, existing)
            except OSError as e:
                raise AttachmentsError(f"restoring into {dest} failed: {e}") from None
        finally:
            if own_work:
                shutil.rmtree(work_dir, ignore_errors=True)
    return len(expected)


def _extract_checked(tar: tarfile.TarFile, members: list[tarfile.TarInfo], staged: Path) -> None:
    """Extract members already checked to be plain files and directories with safe relative names.

    With tarfile's "data" filter where the interpreter has it (3.11.4 and later); without it (Debian 12's 3.11.2,
    the interpreter the server's user can run), member by member with no owner, no times and no special bits
    taken from the archive: what the filter would have done to these members."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(staged, members=members, filter="data")
        return
    for m in members:
        tar.extract(m, staged, set_attrs=False)
        path = staged / safe_relpath(m.name)
        os.chmod(path, (m.mode & 0o755) | (0o700 if m.isdir() else 0o600), follow_symlinks=False)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _verify(staged: Path, expected: dict[str, FileEntry]) -> None:
    for rel, entry in expected.items():
        try:
            fd = os.open(staged / rel, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            raise AttachmentsError(f"restored file {rel} cannot be read back: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            h = hashlib.sha256()
            while chunk := f.read(1024 * 1024):
                h.update(chunk)
            if h.hexdigest() != entry.sha256:
                raise AttachmentsError(f"restored file {rel} does not match its sha256 in the manifest")
            os.fchmod(f.fileno(), entry.mode & 0o777)
            os.utime(f.fileno(), (entry.mtime, entry.mtime))


def _place(staged: Path, dest: Path, existing: os.stat_result | None) -> None:
    """Move the verified files into `dest`; the owner of an existing `dest` gets them (when we are root)."""
    if existing is not None and os.geteuid() == 0:
        for root, dirs, names in os.walk(staged):
            for name in dirs + names:
                os.chown(os.path.join(root, name), existing.st_uid, existing.st_gid, follow_symlinks=False)
    if existing is None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o777 & ~umask)
        try:
            os.rename(staged, dest)
            return
        except OSError as e:
            raise AttachmentsError(f"{dest} appeared while the attachments were restored ({e.strerror}); "
                                   "its content was left as it is") from None
    try:
        dfd = os.open(dest, _DIR_FLAGS)
    except OSError as e:
        raise AttachmentsError(f"{dest} cannot be opened as a directory without following links: {e.strerror}; "
                               "nothing was restored") from None
    sfd = os.open(staged, _DIR_FLAGS)
    try:
        _merge(sfd, dfd, dest, "")
    finally:
        os.close(sfd)
        os.close(dfd)


def _merge(sfd: int, dfd: int, dest: Path, rel: str) -> None:
    for name in sorted(os.listdir(sfd)):
        st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
        path = rel + name
        if stat.S_ISDIR(st.st_mode):
            try:  # absent (or empty) there: the whole directory moves, with its owner and mode
                os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=dfd)
                continue
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                    raise
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            except OSError as e:
                raise AttachmentsError(f"{dest / path} is a symbolic link or not a directory ({e.strerror}); "
                                       "the restore stopped there and never writes through a link") from None
            schild = os.open(name, _DIR_FLAGS, dir_fd=sfd)
            try:
                _merge(schild, child, dest, path + "/")
            finally:
                os.close(schild)
                os.close(child)
            continue
        try:
            os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=dfd)  # replaces a link at that name, never follows it
        except OSError as e:
            raise AttachmentsError(f"cannot put {path} into {dest}: {e.strerror}") from None

"""The plan's secondary target: the directory of user-uploaded files, as a tar with a per-file manifest.

`capture` writes one uncompressed tar (uploads are mostly already-compressed formats: images, PDFs,
office files; gzip would cost CPU for little) and hashes every file with the very bytes that go into the
tar, so the manifest cannot disagree with the archive even if a file changes while it is read.
Regular files and directories are kept; symlinks and special files are skipped and reported.

`extract` restores byte-identical files: every member must be a plain file or directory with a safe
relative path that the manifest lists (no absolute paths, no `..`, no links: tarfile's `data` filter
as well), a non-empty destination is refused unless `overwrite`, and every file is re-hashed afterwards.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
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


def extract(tar_path: Path, files: list[FileEntry], dest: Path, *, overwrite: bool = False) -> int:
    """Restore the archive into `dest`, verified file by file. Returns the number of files."""
    expected = {safe_relpath(f.path): f for f in files}
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise AttachmentsError(f"{dest} is not empty; nothing was restored",
                               hint="restore into an empty directory, or pass overwrite: true")
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
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, filter="data")
    for rel, entry in expected.items():
        path = dest / rel
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                h.update(chunk)
        if h.hexdigest() != entry.sha256:
            raise AttachmentsError(f"restored file {rel} does not match its sha256 in the manifest")
        os.chmod(path, entry.mode & 0o777)
        os.utime(path, (entry.mtime, entry.mtime))
    return len(expected)

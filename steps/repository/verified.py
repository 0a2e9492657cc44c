"""A fetched backup directory remembers that its files were checked, so the restore does not hash them again.

`fetch-latest-backup` checks every object's sha256 as it streams it in, into a private directory it made
(0700, files 0600). It then writes `.verified.json` there (0600, by the tool, never taken from the repository:
no object may be named with a leading dot): the manifest's own sha256 and each file's size, modification
time (ns), inode, change time (ns) and device as they were once checked. The change time is what an in-place
edit cannot hide: restoring the mtime with utime(2) sets the ctime to now.

`restore-logical` trusts the stamp only when it cannot have been planted or dodged: the directory, every
directory on the way to each file, each file and the stamp itself belong to root or to the user restoring
and nobody else may write them, nothing on the way is a link, the stamp is bound to the manifest being
restored (its sha256), and every file's five facts still match. Anything it cannot prove unchanged is hashed
again. Hashing 1.7 GB again cost about a second of the RTO for nothing; a stale or edited stamp costs only
that second back.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from steps.fs import (
    UnsafePath,
    open_beneath,
    open_dir,
    open_read_beneath,
    private_enough,
    rename_in,
    stat_private_file,
)

STAMP = ".verified.json"
VERSION = 2  # 1: size, mtime and inode only (not trusted any more: hashed again)


def _fingerprint(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev]


def write_stamp(dir_fd: int, manifest_sha256: str, paths: list[str], by: str) -> None:
    """Record, after every file beneath `dir_fd` was checked against the manifest, what they look like.
    Written 0600 under a new temporary name, then renamed over any older stamp."""
    files = {}
    for p in paths:
        fd = open_read_beneath(dir_fd, p, what="file")
        try:
            files[p] = _fingerprint(os.fstat(fd))
        finally:
            os.close(fd)
    record = {"version": VERSION, "manifest_sha256": manifest_sha256, "by": by,
              "at": datetime.now(UTC).isoformat(timespec="seconds"), "files": files}
    tmp = f"{STAMP}.tmp-{os.getpid()}"
    fd = open_beneath(dir_fd, tmp, what="stamp")
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(json.dumps(record).encode())
            f.flush()
            os.fsync(fd)
    except BaseException:
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    finally:
        os.close(fd)
    rename_in(dir_fd, tmp, STAMP)


def checked_unchanged(directory: Path, manifest_sha256: str, paths: list[str]) -> tuple[str, str] | None:
    """(who checked, when) when a stamp the tool wrote covers exactly these files, unchanged since, and nobody
    but root or us could have changed them or it; else None (hash again)."""
    try:
        with open_dir(directory) as dfd:
            if not private_enough(os.fstat(dfd)):
                return None
            sfd = open_read_beneath(dfd, STAMP, what="stamp")
            try:
                st = os.fstat(sfd)
                if not stat.S_ISREG(st.st_mode) or not private_enough(st):
                    return None
                with os.fdopen(sfd, "rb", closefd=False) as f:
                    record = json.loads(f.read(1 << 24))
            finally:
                os.close(sfd)
            if (record.get("version") != VERSION or record["manifest_sha256"] != manifest_sha256
                    or set(record["files"]) != set(paths)):
                return None
            for p in paths:
                if _fingerprint(stat_private_file(dfd, p)) != record["files"][p]:
                    return None
        return str(record["by"]), str(record["at"])
    except (OSError, UnsafePath, ValueError, KeyError, TypeError, AttributeError):
        return None

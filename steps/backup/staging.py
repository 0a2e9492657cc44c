"""Stale staging: what a backup killed with `kill -9` (or a crashed host) left in the staging directory.

A backup writes each dump, attachments tar and base tar into `<staging>/<what>-<backup id>` (by default
`<local repository>/.staging/`; with no usable local repository `<state dir>/staging/`: `fallback_root`) and
removes it when it ends; a process killed outright leaves it there, whole
dumps, forever. The next backup removes such entries **under its lock**, and only entries no live backup owns:
a running backup holds its backup lock (steps.backup.lock, an flock) and has recorded its backup id in it
before it makes its staging entry, so the ids of the live backups are those recorded in the locks held now.
An entry whose name ends in another id is stale; one whose name is not a staging name is left alone.
`runbook check` reports stale entries (`find_stale`) without removing them.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runbook.lockfile import LockFile

_ENTRY = re.compile(r"^(?:.+-)?(\d{8}T\d{6}Z)$")


@dataclass(frozen=True)
class Stale:
    path: Path
    backup_id: str
    size: int  # bytes, the files in it


def fallback_root(cfg: Any) -> Path:
    """The staging directory of a config with no `staging_dir` and no usable local repository (S3 only): a
    private directory of the backup's state directory, the same for every run, so that the next backup (and
    `check`) finds what a killed one left there; never a fresh temporary directory, which nothing would ever
    look at again."""
    return Path(cfg.state_dir()) / "staging"


def live_backup_ids(lock_dir: Path) -> set[str]:
    """The backup ids recorded in the backup locks a process holds now. OSError when a lock cannot be read
    (then nothing may be called stale: its backup could be alive)."""
    ids: set[str] = set()
    if not lock_dir.is_dir():
        return ids
    for path in sorted(lock_dir.glob("backup-*.lock")):
        if not LockFile.is_held(path):
            continue
        record = LockFile.read_holder(path) or {}
        bid = record.get("last_backup_id")
        if isinstance(bid, str):
            ids.add(bid)
    return ids


def _size(path: Path) -> int:
    total = 0
    if path.is_file() and not path.is_symlink():
        return path.lstat().st_size
    for f in path.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.lstat().st_size
        except OSError:
            continue
    return total


def find_stale(staging: Path, lock_dir: Path) -> list[Stale]:
    """Entries of `staging` that no live backup owns (their backup id is not in a lock held now). OSError when
    the staging directory or a lock cannot be read (another user's)."""
    try:
        names = sorted(p.name for p in staging.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    live = live_backup_ids(lock_dir)  # read after the listing: an entry listed was made after its id was recorded
    out = []
    for name in names:
        m = _ENTRY.match(name)
        if m is None or m.group(1) in live:
            continue
        out.append(Stale(staging / name, m.group(1), _size(staging / name)))
    return out


def remove_stale(staging: Path, lock_dir: Path) -> list[Stale]:
    """Remove the stale entries (call it holding a backup lock whose id is recorded); what was removed."""
    removed = []
    for s in find_stale(staging, lock_dir):
        if s.path.is_symlink() or s.path.is_file():
            s.path.unlink(missing_ok=True)
        else:
            shutil.rmtree(s.path, ignore_errors=True)
        if not s.path.exists():
            removed.append(s)
    return removed


def remove_stale_logged(staging: Path, lock_dir: Path, log: logging.Logger) -> None:
    """`remove_stale`, each entry removed (or a staging directory that cannot be looked at) said in `log`."""
    try:
        removed = remove_stale(staging, lock_dir)
    except OSError as e:
        log.warning("could not look for stale staging in %s: %s", staging, e)
        return
    for st in removed:
        log.warning("removed stale staging %s (%.1f MB, backup %s): left by a backup that did not finish "
                    "(killed?)", st.path, st.size / 1e6, st.backup_id)

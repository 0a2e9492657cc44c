"""A repository is hostile input, the repository side (issue 14, item 6): directory modes, the repository
marker, the config's permissions, stale staging, acknowledged WAL. The parts that need no server."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from steps.repository.store import LocalStore


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_local_repository_directories_are_0750_at_every_level(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: Path.mkdir(parents=True) made the parents 0755 with it
    try:
        store = LocalStore(tmp_path / "backups" / "repo")
        store.check_access()
        store.put_bytes("clusters/1/logical/db/20260101T000000Z/manifest.json", b"{}")
    finally:
        os.umask(old)
    made = [tmp_path / "backups", tmp_path / "backups/repo"]
    p = tmp_path / "backups/repo"
    for part in ["clusters", "1", "logical", "db", "20260101T000000Z"]:
        p = p / part
        made.append(p)
    assert {str(d.relative_to(tmp_path)): oct(_mode(d)) for d in made} == {
        str(d.relative_to(tmp_path)): "0o750" for d in made}

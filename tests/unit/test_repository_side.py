"""A repository is hostile input, the repository side (issue 14, item 6): directory modes, the repository
marker, the config's permissions, stale staging, acknowledged WAL. The parts that need no server."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from runbook.errors import UsageError
from steps.repository.config import load_repository_config
from steps.repository.store import LocalStore
from tests.conftest import run_cli


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


GOOD_CONFIG = "version: 1\nlocal: {path: /var/backups/postgresql}\n"


@pytest.mark.parametrize(("mode", "who"), [(0o666, "its group and every user"), (0o660, "its group"),
                                           (0o642, "every user")])
def test_a_repository_config_others_can_write_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    cfg = tmp_path / "repository.yaml"
    cfg.write_text(GOOD_CONFIG)
    os.chmod(cfg, mode)
    r = run_cli("backups", "-c", str(cfg))
    assert r.returncode != 0
    assert f"writable by {who} (mode {mode:04o})" in r.stderr, r.stderr
    assert f"chmod 0640 {cfg}" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(UsageError, match="writable by"):
        load_repository_config(cfg)
    os.chmod(cfg, 0o640)
    load_repository_config(cfg)


def test_a_repository_config_owned_by_another_user_is_refused(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    cfg = tmp_path / "repository.yaml"
    cfg.write_text(GOOD_CONFIG)
    os.chmod(cfg, 0o640)
    nobody = pwd.getpwnam("nobody")
    os.chown(cfg, nobody.pw_uid, 0)
    with pytest.raises(UsageError, match=f"owned by {nobody.pw_name}, not by root, who reads it") as e:
        load_repository_config(cfg)
    assert e.value.hint and f"chown root:postgres {cfg}" in e.value.hint
    os.chown(cfg, 0, nobody.pw_gid)  # root:group, 0640: what the docs say
    load_repository_config(cfg)
    # The reading user may own it (a user's own backups): as that user (its uid, as seen by the check).
    os.chown(cfg, nobody.pw_uid, nobody.pw_gid)
    monkeypatch.setattr(os, "geteuid", lambda: nobody.pw_uid)
    load_repository_config(cfg)


@pytest.mark.parametrize("name", ["dbname=victim", "postgresql:///victim", "host=/elsewhere dbname=x",
                                  "it's", "back\\slash", " spaced ", "app"])
def test_a_database_name_is_passed_to_libpq_tools_as_a_name(name: str) -> None:
    from psycopg.conninfo import conninfo_to_dict

    from steps.pg.tools import dbname_option

    opt = dbname_option(name)
    assert opt.startswith("--dbname=")
    assert conninfo_to_dict(opt.removeprefix("--dbname=")) == {"dbname": name}  # libpq's own parser


def test_stale_staging_is_what_no_held_backup_lock_names(tmp_path: Path) -> None:
    from steps.backup.lock import BackupLock
    from steps.backup.staging import find_stale, remove_stale

    staging, locks = tmp_path / ".staging", tmp_path / "locks"
    for name in ("app-20260101T000000Z", "app-20250101T000000Z", "base-20250101T000000Z", "notes"):
        (staging / name / "dump").mkdir(parents=True)
        (staging / name / "dump" / "toc.dat").write_bytes(b"x" * 100)
    live = BackupLock.take(locks, "h:5432/app")
    live.record("20260101T000000Z")
    done = BackupLock.take(locks, "h:5432/other")
    done.record("20250101T000000Z")
    done.release()  # its record stays in the file, but nobody holds it: its id is no longer live
    try:
        assert [(s.path.name, s.size) for s in find_stale(staging, locks)] == [
            ("app-20250101T000000Z", 100), ("base-20250101T000000Z", 100)]
        assert [s.path.name for s in remove_stale(staging, locks)] == ["app-20250101T000000Z",
                                                                       "base-20250101T000000Z"]
        assert sorted(p.name for p in staging.iterdir()) == ["app-20260101T000000Z", "notes"]
    finally:
        live.release()
    assert [s.path.name for s in find_stale(staging, locks)] == ["app-20260101T000000Z"]

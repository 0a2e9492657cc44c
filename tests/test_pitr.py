"""Base backups and point-in-time recovery against real PostgreSQL 15 clusters (1 MB WAL segments).

The primary archives its WAL into the repository; `runbook basebackup` runs as a non-superuser with
REPLICATION; the `pitr` action runs as the engine runs it (`python -m steps pitr`, JSON on stdin) and
restores into a new data directory, where the rows are checked.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.pitr_cluster import Primary, make_primary, restored_psql, write_rows

_n = itertools.count(1)


@pytest.fixture(scope="session")
def pitr_template(pg_base: Path) -> Path:
    from tests.pgcluster import initdb

    tpl = pg_base / "pitr-template" / "data"
    initdb(tpl, "--wal-segsize=1")
    return tpl


def _venv_runbook(request: pytest.FixtureRequest) -> str | None:
    """`runbook` in a virtual environment the server's user can run (tests/server_venv.py), for wal-push and
    wal-fetch; None: archive with cp (until both commands are in the package)."""
    return None


@pytest.fixture
def primary(pg_base: Path, pitr_template: Path, request: pytest.FixtureRequest) -> Iterator[Primary]:
    dest = pg_base / f"pitr{next(_n)}"
    dest.mkdir()
    p = make_primary(pitr_template, dest, venv_runbook=_venv_runbook(request))
    try:
        yield p
    finally:
        p.stop_restored()
        p.crash()


def pitr(args: dict[str, object], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "steps", "pitr"], input=json.dumps(args), capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def outputs(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    out = {}
    for line in proc.stderr.splitlines():
        if line.startswith("[event] "):
            ev = json.loads(line[8:])
            if ev["type"] == "output":
                out[ev["name"]] = ev["value"]
    return out


def basebackup(p: Primary) -> dict[str, object]:
    r = run_cli("basebackup", "-c", str(p.config), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "readable in local" in r.stdout
    (bdir,) = (p.repo / "clusters" / p.sysid / "base").iterdir()
    return dict(json.loads((bdir / "manifest.json").read_text()))


def notes(pgdata: Path) -> list[str]:
    out = restored_psql(pgdata, "select coalesce(string_agg(note, ',' order by id), '') from events")
    return out.split(",") if out else []


def test_basebackup_as_non_superuser_then_pitr_to_a_time(primary: Primary, tmp_path: Path) -> None:
    assert primary.psql("select rolsuper from pg_roles where rolname = 'backup_user'") == "f"
    before_backup = write_rows(primary, 3, "pre")
    m = basebackup(primary)
    assert m["kind"] == "base" and m["timeline"] == 1 and m["wal_segment_size"] == 1024 * 1024
    assert m["cluster"]["system_identifier"] == primary.sysid  # type: ignore[index]
    names = {o["path"] for o in m["objects"]}  # type: ignore[attr-defined]
    assert names == {"base.tar.zst", "backup_manifest"}
    kept = write_rows(primary, 5, "kept", pause=0.05)
    target = primary.psql("select now()")
    lost = write_rows(primary, 5, "lost")
    primary.switch_wal()
    primary.crash()

    pgdata = primary.cluster.datadir.parent / "restored"
    r = pitr(primary.pitr_args(pgdata, target=target, target_kind="time"))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = notes(pgdata)
    assert rows == before_backup + kept and not set(lost) & set(rows)
    out = outputs(r)
    assert out["timeline"] == 2 and restored_psql(pgdata, "select pg_is_in_recovery()") == "f"
    point = datetime.fromisoformat(str(out["recovery_point"]))
    last_kept = datetime.fromisoformat(restored_psql(pgdata, "select max(at) from events").replace(" ", "T"))
    assert last_kept <= point <= datetime.fromisoformat(target.replace(" ", "T"))
    assert out["data_directory"] == str(pgdata) and float(str(out["replay_s"])) >= 0 and out["lsn"]
    assert oct(pgdata.stat().st_mode & 0o777) == "0o700"
    auto = (pgdata / "postgresql.auto.conf").read_text()
    assert "restore_command" not in auto and "recovery_target" not in auto and "archive_mode = 'off'" in auto
    assert not (pgdata / "recovery.signal").exists()

    # the catalogue shows the base backup
    cat = run_cli("backups", "-c", str(primary.config), "--json")
    assert cat.returncode == 0, cat.stderr
    base = json.loads(cat.stdout)["base_backups"]
    assert [b["backup_id"] for b in base] == [m["backup_id"]] and base[0]["level"] == "readable"


def test_pitr_to_a_named_restore_point_and_refusals(primary: Primary) -> None:
    basebackup(primary)
    kept = write_rows(primary, 4, "kept")
    primary.psql("select pg_create_restore_point('before-the-mistake')")
    lost = write_rows(primary, 4, "lost")
    primary.switch_wal()
    ended = datetime.now(UTC)
    primary.crash()
    base = primary.cluster.datadir.parent

    # a time without a zone is refused before anything is touched (bad arguments: exit 2)
    r = pitr(primary.pitr_args(base / "r0", target="2026-11-25 10:00:00", target_kind="time"))
    assert r.returncode == 2 and "no time zone" in r.stderr
    # a target before the only base backup ended
    early = (ended - timedelta(hours=1)).isoformat()
    r = pitr(primary.pitr_args(base / "r1", target=early, target_kind="time"))
    assert r.returncode == 1 and "target before the backup ends" in r.stderr, r.stderr
    assert not (base / "r1").exists()
    # a target beyond the archived WAL: recovery ends before reaching it
    late = (ended + timedelta(hours=1)).isoformat()
    r = pitr(primary.pitr_args(base / "r2", target=late, target_kind="time"))
    assert r.returncode == 1 and "target beyond the archived WAL" in r.stderr, r.stdout + r.stderr
    # a non-empty data directory is refused
    (base / "r3").mkdir()
    (base / "r3" / "PG_VERSION").write_text("15\n")
    r = pitr(primary.pitr_args(base / "r3", target_kind="latest"))
    assert r.returncode == 1 and "is not empty" in r.stderr

    pgdata = base / "r4"
    r = pitr(primary.pitr_args(pgdata, target="before-the-mistake", target_kind="name"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert notes(pgdata) == kept and outputs(r)["timeline"] == 2
    assert not set(lost) & set(notes(pgdata))


def test_pitr_to_latest_replays_everything_archived(primary: Primary) -> None:
    basebackup(primary)
    rows = write_rows(primary, 20, "row")
    primary.switch_wal()
    primary.crash()
    pgdata = primary.cluster.datadir.parent / "latest"
    r = pitr(primary.pitr_args(pgdata, target_kind="latest"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert notes(pgdata) == rows
    assert outputs(r)["timeline"] == 2

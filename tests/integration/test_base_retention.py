"""Retention of base backups and of the WAL they need, on a real archive: `basebackup` applies it to the local
repository after a success, `runbook prune` to every repository; a kept base backup never loses its WAL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import run_cli
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    make_primary,
    next_dir,
    notes,
    outputs,
    pitr,
    pitr_template_fixture,
    server_runbook_fixture,
    write_rows,
)


def _segments(wal: Path) -> set[str]:
    return {p.name[:24] for p in wal.iterdir() if len(p.name) >= 24 and ".history" not in p.name
            and ".backup" not in p.name and ".partial" not in p.name}


def test_only_wal_older_than_the_oldest_kept_base_backup_goes(pg_base: Path, pitr_template: Path,
                                                              server_runbook: str) -> None:
    p = make_primary(pitr_template, next_dir(pg_base), venv_runbook=server_runbook,
                     config_lines=("retention: {keep_last: 2, keep_days: 0}",))
    try:
        manifests = []
        for i in range(3):
            write_rows(p, 3, f"b{i}")
            p.switch_wal()
            r = run_cli("basebackup", "-c", str(p.config), timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            manifests.append(json.loads(sorted((p.repo / "clusters" / p.sysid / "base").glob("*/manifest.json"))[-1]
                                        .read_text()))
        kept = sorted(d.name for d in (p.repo / "clusters" / p.sysid / "base").iterdir())
        assert kept == [m["backup_id"] for m in manifests[1:]]  # keep_last 2: the oldest went
        left = _segments(p.wal_dir)
        oldest_start = manifests[1]["start_wal"]
        assert min(left) == oldest_start  # everything before the oldest kept start is gone, nothing after
        assert all(s >= oldest_start for s in left)
        # the WAL ledgers that sign only deleted files went with them; those of kept files stayed (the PITR below)
        ledgers = list((p.repo / "clusters" / p.sysid / "wal-ledger").glob("*.json"))
        assert ledgers and not [f.name for f in ledgers if not any(
            ".history" in n or n[8:24] >= oldest_start[8:] for n, _, _ in json.loads(f.read_text())["files"])]
        assert all(f.with_name(f.name + ".sig").exists() for f in ledgers)
        assert not [s for s in (p.repo / "clusters" / p.sysid / "wal-ledger").glob("*.sig")
                    if not s.with_name(s.name.removesuffix(".sig")).exists()]
        # the kept backups are whole: `runbook backups` lists both as readable, and a PITR from the older works
        cat = json.loads(run_cli("backups", "-c", str(p.config), "--json").stdout)
        assert [b["level"] for b in cat["base_backups"]] == ["readable", "readable"]
        # prune again: nothing more to delete
        r = run_cli("prune", "-c", str(p.config))
        assert r.returncode == 0 and "deleted 0" in r.stdout, r.stdout + r.stderr
        rows = write_rows(p, 2, "after")
        p.switch_wal()
        p.crash()
        pgdata = p.cluster.datadir.parent / "restored"
        r = pitr(p.pitr_args(pgdata, target_kind="latest", backup_id=manifests[1]["backup_id"]))
        assert r.returncode == 0, r.stdout + r.stderr
        assert notes(pgdata)[-2:] == rows and outputs(r)["backup_id"] == manifests[1]["backup_id"]
        # a target before the oldest kept backup's end is now out of reach
        early = datetime.fromisoformat(manifests[0]["stopped_at"]).astimezone(UTC).isoformat()
        r = pitr(p.pitr_args(p.cluster.datadir.parent / "r2", target=early))
        assert r.returncode == 1 and "target before the backup ends" in r.stderr
    finally:
        p.stop_restored()
        p.crash()


def test_a_broken_archive_command_fails_the_base_backup_in_bounded_time(pg_base: Path, pitr_template: Path,
                                                                       server_runbook: str) -> None:
    """-X none relies on the archive: when archiving is broken the server waits for ever; we do not."""
    import time

    p = make_primary(pitr_template, next_dir(pg_base), venv_runbook=server_runbook,
                     config_lines=("basebackup: {wal_wait_s: 2}",))
    try:
        p.psql("ALTER SYSTEM SET archive_command = 'false'")
        p.psql("SELECT pg_reload_conf()")
        t0 = time.monotonic()
        r = run_cli("basebackup", "-c", str(p.config), timeout=120)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "archiving is not working" in r.stderr
        assert time.monotonic() - t0 < 40
        assert not list((p.repo / "clusters").glob("*/base/*/manifest.json"))
        status = json.loads((p.config.parent / "state" / "basebackup-status.json").read_text())
        assert status["status"] == "failed" and status["kind"] == "base"
    finally:
        p.crash()

"""`runbook status` ("would we make it now?") against a real archiving PostgreSQL 15 primary and its repository.

Before any backup: red. After a logical and a base backup with WAL archived: RPO green. After verify-backup
and a drill: the RTO verdict comes from the measured drill and the projected restore; a drill whose measured
RTO missed the target is red. 31 days later (the injected clock): the drill is stale. A repository that
cannot be read: exit 3, never "all good".
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import run_cli
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    archiving_primary_fixture,
    pitr_template_fixture,
    serve_app,
    server_runbook_fixture,
    write_rows,
)

RUNBOOK = """
version: 1
name: Status test runbook
targets: {rto: 2h, rpo: 5m}
scenarios:
  restore-latest: {help: the newest logical backup}
steps:
  - id: tell
    title: Tell the stakeholders
    run: "true"
    confirm: none
  - id: restore
    title: Restore (live only; the projection counts it from verify-backup)
    action: restore-logical
    modes: [live]
    with: {backup_dir: /nonexistent, db: app}
  - id: back
    title: Service back
    run: "true"
    confirm: none
    rto_end: true
"""


def status(config: Path, runbook: Path, state: Path, *more: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    r = run_cli("status", str(runbook), "-c", str(config), "--state-dir", str(state), "--json", *more, timeout=120)
    assert r.returncode in (0, 1, 2, 3), r.stdout + r.stderr
    return r.returncode, json.loads(r.stdout)


def test_status_from_no_backup_to_proven_to_stale(archiving_primary: Primary, tmp_path: Path) -> None:
    p = archiving_primary
    serve_app(p, "create table items(id int primary key, name text); "
                 "insert into items select g, 'item ' || g from generate_series(1, 500) g")
    runbook = tmp_path / "runbook.yaml"
    runbook.write_text(textwrap.dedent(RUNBOOK).lstrip())
    state = tmp_path / "state"

    # 1. before any backup: red on both counts
    code, s = status(p.config, runbook, state)
    assert code == 2 and s["verdict"] == "red", s
    assert s["rpo"]["verdict"] == "red" and s["rpo"]["exposure_s"] is None
    assert any("no readable backup" in r for r in s["rto"]["reasons"])
    assert s["cluster"]["reachable"] is True and s["cluster"]["system_identifier"] == p.sysid

    # 2. a logical and a base backup, WAL archived: the RPO is green; the RTO is not proven yet (warning)
    r = run_cli("backup", "-c", str(p.config), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("basebackup", "-c", str(p.config), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    write_rows(p, 3, "after")
    p.switch_wal()
    code, s = status(p.config, runbook, state)
    assert s["rpo"]["verdict"] == "ok", s["rpo"]
    assert s["rpo"]["newest_wal"]["name"] and s["rpo"]["exposure_s"] < 300 and s["rpo"]["archive_timeout_s"] == 60
    assert s["backups"]["logical"]["readable"]["db"] == "app" and s["backups"]["logical"]["restored"] is None
    assert s["backups"]["base"]["readable"] is not None
    assert code == 1 and s["rto"]["verdict"] == "warning", s["rto"]
    assert any("never drilled" in r for r in s["rto"]["reasons"])
    assert any("no verified test restore" in r for r in s["rto"]["reasons"])

    # 3. a verified test restore and a drill whose measured RTO missed the target: red, from the measured time
    r = run_cli("verify-backup", "-c", str(p.config), "--scratch-dir", str(p.home / "scratch"), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    three_hours_ago = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    drill = run_cli("run", str(runbook), "--mode", "drill", "--headless", "--yes", "--state-dir", str(state),
                    "--incident-start", three_hours_ago, timeout=60)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    code, s = status(p.config, runbook, state)
    assert code == 2 and s["rto"]["verdict"] == "red", s["rto"]
    assert any("the last drill took 3.0 h" in r for r in s["rto"]["reasons"])
    proj = s["projected_rto"]["restore-latest"]
    assert proj["restore_s"] > 0 and "verify-backup of logical backup" in proj["basis"] and proj["total_s"] < 7200

    # 4. a drill that met the target: all good, exit 0
    drill = run_cli("run", str(runbook), "--mode", "drill", "--headless", "--yes", "--state-dir", str(state),
                    timeout=60)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    code, s = status(p.config, runbook, state)
    assert (code, s["verdict"]) == (0, "ok"), s
    (d,) = s["drills"]
    assert d["scenario"] == "restore-latest" and d["rto_s"] < 60 and d["stale"] is False
    line = run_cli("status", str(runbook), "-c", str(p.config), "--state-dir", str(state), "--one-line")
    assert line.returncode == 0 and line.stdout.startswith("would we make it now? OK")
    human = run_cli("status", str(runbook), "-c", str(p.config), "--state-dir", str(state))
    assert "Would we make it now? OK" in human.stdout and "projected RTO of restore-latest" in human.stdout

    # 5. 31 days later (the injected clock): the drill is stale, and so is the archive
    later = (datetime.now(UTC) + timedelta(days=31)).isoformat()
    code, s = status(p.config, runbook, state, "--now", later)
    (d,) = s["drills"]
    assert d["stale"] is True and d["age_days"] >= 31
    assert any("stale after 30 days" in r for r in s["rto"]["reasons"])
    assert s["rpo"]["verdict"] == "red" and code == 2


def test_an_unreachable_repository_is_exit_3_never_all_good(tmp_path: Path) -> None:
    cfg = tmp_path / "repo.yaml"
    cfg.write_text("version: 1\ncluster: {host: /nonexistent, port: 5432}\n"
                   "s3: {bucket: nowhere, endpoint_url: 'http://127.0.0.1:9', region: us-east-1, max_attempts: 1, "
                   "connect_timeout_s: 1, read_timeout_s: 1}\n")
    r = run_cli("status", "-c", str(cfg), "--state-dir", str(tmp_path / "state"), "--json",
                env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "PGCONNECT_TIMEOUT": "2"}, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    s = json.loads(r.stdout)
    assert s["verdict"] == "could not run" and "s3 repository cannot be read" in s["error"]
    assert s["repositories"]["s3"]["ok"] is False
    r = run_cli("status", "-c", str(cfg), "--state-dir", str(tmp_path / "state"),
                env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "PGCONNECT_TIMEOUT": "2"}, timeout=120)
    assert r.returncode == 3 and "Traceback" not in r.stderr and "COULD NOT RUN" in r.stdout
    # a missing config is exit 3 as well
    r = run_cli("status", "-c", str(tmp_path / "nope.yaml"), "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["verdict"] == "could not run"

"""`runbook status --all` over a fleet directory, against a real archiving PostgreSQL 15 primary.

Three configs and the cluster directories of their repositories:
- `a`: the primary and its repository, backed up, test-restored (verify-backup) and drilled: ok;
- `b`: the same primary for another database, never backed up on its own nor test-restored: warning;
- `c`: the same primary with a repository its archive_command does not write to, the newest WAL there two hours
  old: red (archiving stale), and that repository also holds a second cluster directory with nothing in it: a line
  of its own, red;
- `d`: a config that cannot be read: its line says why, the others still show, and the fleet exits 3.
The table fits 80 columns; the JSON says the same; the OpenMetrics text is read back by prometheus_client.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from runbook.cli.fleet import COL_W, NAME_W, VERDICT_W
from tests.conftest import run_cli
from tests.integration.test_status import RUNBOOK
from tests.support.pgcluster import config_as_documented
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    archiving_primary_fixture,
    pitr_template_fixture,
    serve_app,
    server_runbook_fixture,
    write_rows,
)

FAKE_SYSID = "7000000000000000001"


def _ok(r: object) -> None:
    assert r.returncode == 0, r.stdout + r.stderr  # type: ignore[attr-defined]


def test_fleet_of_three_one_red_one_broken(archiving_primary: Primary, tmp_path: Path) -> None:
    p = archiving_primary
    dest = p.home
    text, a_text = serve_app(p, "create table items(id int primary key); insert into items select generate_series(1, 200)")
    base = f"cluster: {{host: {dest}, port: 5432, user: backup_user}}"
    _ok(run_cli("backup", "-c", str(p.config), timeout=120))
    _ok(run_cli("basebackup", "-c", str(p.config), timeout=120))
    write_rows(p, 3, "after")
    p.switch_wal()

    # the fleet's directory holds the config archive_command uses (the server's user reads it there)
    fleet = dest / "fleet"
    fleet.mkdir(mode=0o755)
    # c: a copy of the repository that archiving no longer reaches, its newest WAL two hours old
    stale = tmp_path / "stale-repo"
    shutil.copytree(p.repo, stale)
    two_hours_ago = time.time() - 7200
    for f in (stale / "clusters" / p.sysid / "wal").iterdir():
        os.utime(f, (two_hours_ago, two_hours_ago))
    (stale / "clusters" / FAKE_SYSID / "wal").mkdir(parents=True)  # a second cluster directory, empty
    (fleet / "a.yaml").write_text(a_text)
    config_as_documented(fleet / "a.yaml")
    p.psql(f"alter system set archive_command = '{p.runbook_exe} wal-push -c {fleet / 'a.yaml'} %p'")
    p.psql("select pg_reload_conf()")
    (fleet / "b.yaml").write_text(text.replace(base, base[:-1] + ", databases: [postgres]}"))
    (fleet / "c.yaml").write_text(a_text.replace(f"local: {{path: {p.repo}}}", f"local: {{path: {stale}}}"))
    (fleet / "d.yaml").write_text("version: 1\nclustr: {host: nowhere}\n")

    _ok(run_cli("verify-backup", "-c", str(fleet / "a.yaml"), "--scratch-dir", str(dest / "scratch"), timeout=180))
    runbook = tmp_path / "runbook.yaml"
    runbook.write_text(textwrap.dedent(RUNBOOK).lstrip())
    state = tmp_path / "state"
    _ok(run_cli("run", str(runbook), "--mode", "drill", "--headless", "--yes", "--state-dir", str(state),
                timeout=60))
    write_rows(p, 2, "later")
    p.switch_wal()  # archived into a's repository, not into c's

    def status_all(*more: str) -> tuple[int, str, str]:
        r = run_cli("status", str(runbook), "--all", "-c", str(fleet), "--state-dir", str(state), *more,
                    env={"COLUMNS": "80"}, timeout=120)
        assert "Traceback" not in r.stderr, r.stderr
        return r.returncode, r.stdout, r.stderr

    # the table: one line per cluster, 80 columns, the broken config named, exit 3 (the worst)
    code, out, _ = status_all()
    assert code == 3, out
    lines = out.splitlines()
    assert all(len(ln) <= 80 for ln in lines), out
    rows = {ln.split()[0]: ln for ln in lines[3:-1]}
    assert set(rows) == {"a", "b", "c", "d", f"c/{FAKE_SYSID}"[:6] + "…" + f"c/{FAKE_SYSID}"[-7:]}, out
    at = NAME_W + 1 + 4 * (COL_W + 1)  # the verdict column

    def verdict(row: str) -> str:
        return row[at:at + VERDICT_W].strip()

    assert verdict(rows["a"]) == "ok" and rows["a"].rstrip().endswith("ok"), rows["a"]
    assert verdict(rows["b"]) == "WARN", rows["b"]
    assert verdict(rows["c"]) == "RED" and "a disaster now loses up to" in rows["c"], rows["c"]
    assert "ERROR" in rows["d"] and 'unknown key "clustr"' in rows["d"], rows["d"]

    # the same in JSON
    code, out, _ = status_all("--json")
    doc = json.loads(out)
    assert code == 3 and doc["verdict"] == "could not run" and doc["schema"] == 1
    by = {c["name"]: c for c in doc["clusters"]}
    assert [by[n]["verdict"] for n in ("a", "b", "c", "d", f"c/{FAKE_SYSID}")] == \
        ["ok", "warning", "red", "could not run", "red"]
    a = by["a"]
    assert a["reachable"] is True and a["cluster_dir"] == p.sysid and a["rpo_exposure_s"] < 300
    assert a["newest_verified_restore"]["kind"] == "logical" and a["newest_verified_restore"]["age_s"] < 600
    assert a["last_drill"]["scenario"] == "restore-latest" and a["last_drill"]["age_s"] < 600
    assert 0 < a["projected_rto_s"] < 7200
    assert by["b"]["newest_verified_restore"] is None
    assert any("no verified test restore" in r for r in by["b"]["reasons"]), by["b"]["reasons"]
    assert not any(r.startswith("red:") for r in by["b"]["reasons"]), by["b"]["reasons"]
    assert 7000 < by["c"]["rpo_exposure_s"] < 7600 and by["c"]["cluster_dir"] == p.sysid
    assert by["c"]["reasons"][0].startswith("red: a disaster now loses up to 2.0 h of data")
    assert any("archived_wal" in r and "not hold it" in r for r in by["c"]["reasons"]), by["c"]["reasons"]
    assert by[f"c/{FAKE_SYSID}"]["reachable"] is None and by[f"c/{FAKE_SYSID}"]["cluster_dir"] == FAKE_SYSID
    assert "unknown key" in by["d"]["error"]

    # OpenMetrics, read back by Prometheus's own client; without the broken config the fleet is red: exit 2
    (fleet / "d.yaml").unlink()
    code, out, _ = status_all("--format", "openmetrics")
    assert code == 2
    families = {f.name: f for f in text_string_to_metric_families(out)}
    verdicts = {s.labels["cluster"]: s.value for s in families["runbook_verdict"].samples}
    assert verdicts == {"a": 0, "b": 1, "c": 2, f"c/{FAKE_SYSID}": 2}
    exposure = {s.labels["cluster"]: s.value for s in families["runbook_rpo_exposure_seconds"].samples}
    assert exposure["a"] < 300 and 7000 < exposure["c"] < 7600
    assert {s.labels["config"] for s in families["runbook_verdict"].samples} == \
        {str(fleet / f"{n}.yaml") for n in "abc"}
    assert families["runbook_fleet_verdict"].samples[0].value == 2

    # a fleet of one config: ok, exit 0
    r = run_cli("status", str(runbook), "--all", "-c", str(fleet / "a.yaml"), "--state-dir", str(state), "--json")
    assert r.returncode == 0 and [c["name"] for c in json.loads(r.stdout)["clusters"]] == ["a"], r.stdout

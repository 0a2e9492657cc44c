"""`runbook status` projects a PITR's RTO with the replay of every WAL segment archived since the base backup,
at the replay rate a base verify-backup measured (the server's own redo timing), against a real archiving
PostgreSQL 15 primary and its repository. A replay too short to tell a rate is said, never guessed."""

from __future__ import annotations

import json
import textwrap
from datetime import timedelta
from pathlib import Path

from steps.repository import layout
from steps.repository.manifest import VerificationRecord, to_json
from tests.conftest import run_cli
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    pitr_template_fixture,
    primary_fixture,
    server_runbook_fixture,
    write_rows,
)
from tests.support.signing import sign_file

RUNBOOK = """
version: 1
name: Replay projection runbook
targets: {rto: 2h, rpo: 5m}
scenarios:
  pitr: {help: point-in-time recovery}
steps:
  - id: pitr
    action: pitr
    modes: [live]
    with: {config: /nonexistent, pgdata: /nonexistent, target_kind: latest}
  - id: back
    run: "true"
    confirm: none
    rto_end: true
"""


def _status(p: Primary, runbook: Path, state: Path) -> dict:  # type: ignore[type-arg]
    r = run_cli("status", str(runbook), "-c", str(p.config), "--state-dir", str(state), "--json", timeout=120)
    assert r.returncode in (0, 1, 2), r.stdout + r.stderr
    return dict(json.loads(r.stdout))


def test_the_pitr_projection_counts_the_wal_replay(primary: Primary, tmp_path: Path) -> None:
    p = primary
    r = run_cli("basebackup", "-c", str(p.config), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("verify-backup", "-c", str(p.config), "--kind", "base", "--scratch-dir", str(p.home / "scratch"), "--json",
                timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    verified = json.loads(r.stdout)
    # The server's own redo timing, read from its log: some WAL (the backup's own) was redone.
    assert verified["wal_replayed_bytes"] is not None and verified["wal_replayed_bytes"] > 0, verified
    assert verified["wal_replay_s"] is not None and verified["wal_replay_s"] >= 0
    (bdir,) = (p.repo / "clusters" / p.sysid / "base").iterdir()
    records = [VerificationRecord.model_validate_json(f.read_bytes())
               for f in (bdir / layout.VERIFICATIONS).glob("*.json")]
    (real,) = [rec for rec in records if rec.level == "restored"]
    assert real.wal_replayed_bytes == verified["wal_replayed_bytes"]

    # A day of writes, in miniature: segments archived after the base backup (1 MB each in this cluster).
    for i in range(4):
        write_rows(p, 20, f"after-{i}")
        p.switch_wal()
    runbook = tmp_path / "runbook.yaml"
    runbook.write_text(textwrap.dedent(RUNBOOK).lstrip())
    s = _status(p, runbook, tmp_path / "state")
    proj = s["projected_rto"]["pitr"]
    wal = proj["wal_since_base"]
    assert wal["segments"] >= 5 and wal["bytes"] == wal["segments"] * (1 << 20), wal
    assert wal["to"] == s["rpo"]["newest_wal"]["name"]
    # The backup's own replay was a few kB: no rate is claimed from it, and the projection says so.
    assert "is NOT counted" in proj["basis"] and "too little to measure a rate" in proj["basis"], proj
    assert "wal_replay_s" not in proj
    assert any("the WAL replay time is not known" in reason for reason in s["rto"]["reasons"])

    # A later verify-backup measured a longer replay (64 MB in 2 s): the projection adds the WAL since the
    # base backup at that rate, and nothing else changes.
    measured = real.model_copy(update={"checked_at": real.checked_at + timedelta(minutes=1),
                                       "wal_replayed_bytes": 64 << 20, "wal_replay_s": 2.0})
    (bdir / layout.VERIFICATIONS / "later.json").write_bytes(to_json(measured))
    sign_file(p.repo, (bdir / layout.VERIFICATIONS / "later.json").relative_to(p.repo).as_posix())
    s2 = _status(p, runbook, tmp_path / "state")
    proj2 = s2["projected_rto"]["pitr"]
    expected = wal["bytes"] / ((64 << 20) / 2.0)
    assert abs(proj2["wal_replay_s"] - round(expected, 1)) < 0.11, proj2
    assert abs(proj2["restore_s"] - (proj["restore_s"] + expected)) < 0.2, (proj, proj2)
    assert "33.6 MB/s measured by verify-backup" in proj2["basis"]
    assert not any("the WAL replay time is not known" in reason for reason in s2["rto"]["reasons"])

"""The projected RTO learns every step's duration from the runs of every host: a run's summary in the
repository's runs/ carries its steps' outcomes and durations, and `runbook status` counts them even when this
host's state directory holds no run at all."""

from __future__ import annotations

import json
from pathlib import Path

from runbook.history import expected_durations
from steps.repository.run_summaries import from_summary, read_summaries, summary, write
from steps.repository.signing import Trust, load_private_key, load_public_keys
from steps.repository.store import LocalStore
from tests.conftest import run_cli
from tests.support.journals import JournalBuilder
from tests.support.signing import make_keys, signing_yaml

RUNBOOK = """
version: 1
name: Projection test runbook
targets: {rto: 2h, rpo: 5m}
scenarios:
  restore-latest: {help: the newest logical backup}
steps:
  - id: tell
    run: "true"
    confirm: none
  - id: restore
    action: restore-logical
    modes: [live]
    with: {backup_dir: /nonexistent, db: app}
  - id: back
    run: "true"
    confirm: none
    rto_end: true
"""


def other_hosts_drill() -> JournalBuilder:
    b = JournalBuilder(["tell", "back"])
    b.events[0]["runbook"]["name"] = "Projection test runbook"
    b.shown(0, "tell").ran(0, 10, "tell").shown(10, "back").ran(10, 15, "back", rto_end=True)
    return b.finish(15)


def test_a_summary_carries_each_steps_outcome_and_duration() -> None:
    st = other_hosts_drill().state()
    back = from_summary(json.loads(json.dumps(summary(st))))
    assert expected_durations([back], {}) == {"tell": 600.0, "back": 300.0}
    assert from_summary({"run_id": "old", "runbook": "x"}).steps == {}  # summaries from before: no steps


def test_status_projects_from_another_hosts_run(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    private, public = make_keys(tmp_path)
    trust = Trust.of(load_public_keys([public]))
    assert write([LocalStore(repo)], other_hosts_drill().state(), load_private_key(private)) == []
    assert [r.run_id for r in read_summaries([LocalStore(repo)], trust)] == ["r1"]
    cfg = tmp_path / "repository.yaml"
    cfg.write_text(f"version: 1\ncluster: {{host: /nonexistent, port: 5432, user: u, databases: [app]}}\n"
                   f"local: {{path: {repo}}}\nbackup: {{state_dir: {tmp_path / 'backup-state'}}}\n"
                   + signing_yaml(tmp_path, private=False))
    runbook = tmp_path / "runbook.yaml"
    runbook.write_text(RUNBOOK)
    empty = tmp_path / "state"  # this host never ran it
    r = run_cli("status", str(runbook), "-c", str(cfg), "--state-dir", str(empty), "--json", "--no-cluster")
    assert r.returncode in (1, 2), r.stdout + r.stderr
    projected = json.loads(r.stdout)["projected_rto"]["restore-latest"]
    assert projected["other_steps_s"] == 900.0 and projected["unknown_steps"] == []

"""Game days of scenario 1: each fault of steps/sandbox/faults/logical.py played unattended by the scripted operator
(tests/support/operator.py) against a real sandbox, once handled and once not: what the tool showed, the fault's
evidence and handled judgements over the run's journal, the record, and that nothing of the fault reached the
operator before the debrief.

One sandbox for the module (its cluster initialised once), rebuilt by each demo."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import Exit
from steps.sandbox.build import DB, Sandbox
from steps.sandbox.faults import FAULTS, registry
from steps.sandbox.faults.record import all_game_days, for_run, ledger_for_run
from tests.conftest import ROOT, run_cli
from tests.support.operator import Play, ScriptedOperator, assert_debrief, assert_no_leak, fault_words, points
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (reprotect's archive_command)


class Day:
    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base = base
        self.sb = Sandbox(base / "sandbox")
        self.state = base / "state"
        self.runbook = base / "runbook.yaml"
        shutil.copyfile(ROOT / "runbook.yaml", self.runbook)
        self.op = ScriptedOperator(self.state, env=env, timeout=600)

    def play(self, fault: str, answers: dict | None = None, seed: int = 11, **kw: object) -> Play:
        return self.op.demo(self.runbook, self.sb.base, faults=[fault], seed=seed, answers=answers,
                            operator="trainee", **kw)  # type: ignore[arg-type]

    def record(self, play: Play):  # noqa: ANN201
        assert play.run_id is not None, play.output[-3000:]
        gd = for_run(self.sb.base, play.run_id)
        assert gd is not None and ledger_for_run(self.state, play.run_id) == gd
        return gd


@pytest.fixture(scope="module")
def day(server_runbook: str) -> Iterator[Day]:  # noqa: F811
    base = make_base_dir("runbook-gameday-")
    d = Day(base, {"RUNBOOK_SERVER_RUNBOOK": server_runbook})
    try:
        yield d
    finally:
        run_cli("demo", "--down", "--dir", str(d.sb.base), "--runbook", str(d.runbook), "--state-dir", str(d.state),
                timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _fault(name: str):  # noqa: ANN202
    registry()
    return FAULTS[name]


def _no_leak(fault: str, *plays: Play) -> None:
    assert_no_leak(plays, fault_words(_fault(fault)) + ["game-day fault", "injected"])


def _debrief(play: Play, fault: str):  # noqa: ANN202
    return assert_debrief(play, _fault(fault))


# ---- corrupt-newest-backup ------------------------------------------------------------------------------------


def test_corrupt_newest_backup_not_handled(day: Day) -> None:
    play = day.play("corrupt-newest-backup")  # --yes: the fetch fails, the run ends failed
    assert play.code == Exit.RUN_FAILED, play.output[-3000:]
    gd = day.record(play)
    (inj,) = gd.injected
    facts = inj["facts"]
    assert facts["backup_id"] > facts["previous_backup_id"]
    assert "sha256 of clusters/" in play.stdout and facts["object"] in play.stdout  # the damaged object, named
    assert f"the previous verified backup is {facts['previous_backup_id']}" in play.stdout
    assert f"--set backup_id={facts['previous_backup_id']}" in play.stdout
    f = _fault("corrupt-newest-backup")
    events = play.events()
    assert f.evidence_event is not None and f.evidence_event(events) is not None
    assert f.handled is not None and not f.handled(events)
    assert gd.baseline["backup_id"] == facts["backup_id"] and gd.baseline["rows_lost"] == 50
    assert [e for e in events if e["type"] == "game-day"] == [
        {**[e for e in events if e["type"] == "game-day"][0], "game_id": gd.game_id, "seed": 11}]
    _no_leak("corrupt-newest-backup", play)
    d = _debrief(play, "corrupt-newest-backup")  # stopped at the failed fetch: nothing done about it
    assert d.faults[0].acted_at is None and d.faults[0].handled is False and not d.restored
    assert points(d) == {"detect": 20, "recover": 30, "data": 20, "mistakes": 0} and d.score == 30
    assert "acted on: never" in play.debrief() and "handled: NO" in play.debrief()


def test_corrupt_newest_backup_handled_with_the_previous_backup_and_a_larger_loss(day: Day) -> None:
    first = day.play("corrupt-newest-backup", answers={"fetch": ["confirm", {"wait": 0.5},
                                                                   {"set": {"backup_id": "PREVIOUS"}}]})
    assert first.code == Exit.LEFT_OPEN, first.output[-3000:]
    facts = day.record(first).injected[0]["facts"]
    prev = facts["previous_backup_id"]
    second = day.op.resume(first.run_id, sets={"backup_id": prev}, answers={"fetch": ["retry"]},
                           confirms={"restore": DB})
    assert second.code == 0, second.output[-3000:]
    assert second.outputs("fetch")["backup_id"] == prev
    gd = day.record(second)
    rows_lost = second.outputs("verify")["rows_lost"]
    assert rows_lost == gd.baseline["rows_lost"] + facts["rows_written_between"]  # the larger data loss
    report = second.report()
    assert f"| Rows lost | {rows_lost} (counted by step verify) |" in report  # the report shows the larger loss
    assert f"recovered to {second.outputs('fetch')['snapshot_time']}" in second.stdout
    # The same seed damaged the same object after the same writes as the day before (test above).
    days = [g for g in all_game_days(day.sb.base) if g.faults == ["corrupt-newest-backup"] and g.seed == 11]
    assert len(days) == 2
    assert days[0].injected[0]["facts"]["object"] == days[1].injected[0]["facts"]["object"]
    assert days[0].injected[0]["facts"]["rows_written_between"] == facts["rows_written_between"]
    f = _fault("corrupt-newest-backup")
    events = second.events()
    assert f.handled is not None and f.handled(events)
    seen = f.evidence_event(events)  # type: ignore[misc]
    assert seen is not None
    _no_leak("corrupt-newest-backup", first, second)
    assert first.debrief() == ""  # left open: nothing told yet
    d = _debrief(second, "corrupt-newest-backup")
    (fd,) = d.faults
    assert fd.handled is True and fd.reaction_s is not None
    assert fd.acted == "left the run to act outside it (the operator stopped to change parameters (backup_id) " \
        "(--answers))"
    assert d.retried == ["fetch"] and d.mistakes == [] and d.restored
    assert d.rows_lost == rows_lost and d.baseline_rows_lost == gd.baseline["rows_lost"]
    # the previous backup is older than the newest a clean run restores: more data lost, as a share of the RPO
    assert d.window_s is not None and d.baseline_rpo_s is not None and d.window_s > d.baseline_rpo_s
    data = math.ceil(round(20 * (d.window_s - d.baseline_rpo_s) / 300, 6))
    assert points(d) == {"detect": 2 * int(fd.reaction_s // 60), "recover": 0, "data": data, "mistakes": 0}
    assert 1 <= data < 20 and d.score == 100 - sum(points(d).values())


# ---- target-database-exists -----------------------------------------------------------------------------------


def test_target_database_exists_not_handled(day: Day) -> None:
    play = day.play("target-database-exists", answers={"provision": [{"skip": "looks fine"}]},
                    extra=[])
    # The check failed; the operator skipped it; the restore refuses to write over the database: the run fails.
    assert play.code == Exit.RUN_FAILED, play.output[-3000:]
    assert f"check database {DB} absent: failed" in play.stdout and "restore refuses to write over it" in play.stdout, \
        play.output[-3000:]
    assert "--set restore_db=NEW_NAME" in play.stdout
    assert f"database {DB} exists on" in play.stdout and "nothing was restored" in play.stdout
    gd = day.record(play)
    assert sorted(gd.injected[0]["facts"]["tables"]) == gd.injected[0]["facts"]["tables"]
    f = _fault("target-database-exists")
    events = play.events()
    assert f.evidence_event(events) is not None  # type: ignore[misc]
    assert not f.handled(events)  # type: ignore[misc]
    left = day.sb.server.psql("select string_agg(tablename, ',' order by tablename) from pg_tables "
                              "where schemaname = 'public'", db=DB)
    assert left.split(",") == gd.injected[0]["facts"]["tables"]  # nothing was written over it
    _no_leak("target-database-exists", play)
    d = _debrief(play, "target-database-exists")  # acted (a skip), wrongly: not handled
    assert d.faults[0].acted.startswith("skipped step provision (looks fine)") and d.faults[0].handled is False
    assert d.skipped == [("provision", "looks fine")] and not d.restored
    assert points(d) == {"detect": 20, "recover": 30, "data": 20, "mistakes": 0} and d.score == 30


def test_target_database_exists_handled_under_a_new_name(day: Day) -> None:
    first = day.play("target-database-exists", answers={"provision": [{"set": {"restore_db": "assetflow_restored"}}]})
    assert first.code == Exit.LEFT_OPEN, first.output[-3000:]
    second = day.op.resume(first.run_id, sets={"restore_db": "assetflow_restored"}, answers={"provision": ["retry"]},
                           confirms={"restore": DB})
    assert second.code == 0, second.output[-3000:]
    assert second.outputs("restore")["restored_db"] == "assetflow_restored"
    at_backup = json.loads((day.sb.base / "at-backup.json").read_text())
    assert day.sb.table_facts("assetflow_restored") == at_backup
    assert second.outputs("reprotect")["logical_backup_id"]
    f = _fault("target-database-exists")
    assert f.handled(second.events())  # type: ignore[misc]
    _no_leak("target-database-exists", first, second)
    d = _debrief(second, "target-database-exists")
    assert d.faults[0].handled is True and d.faults[0].acted.startswith("left the run to act outside it (the "
                                                                        "operator stopped to change parameters")
    assert d.retried == ["provision"] and d.restored and d.mistakes == []
    assert points(d)["data"] == 0  # the newest backup restored, under another name: what a clean run loses
    assert d.score == 100 - points(d)["detect"] and points(d)["detect"] == 2 * int((d.faults[0].reaction_s or 0) // 60)


# ---- s3-unreachable -------------------------------------------------------------------------------------------


def test_s3_unreachable_not_handled(day: Day) -> None:
    play = day.play("s3-unreachable")  # --yes: the recovery reads the local copy; re-protection fails, left failed
    assert play.code == Exit.RUN_FAILED, play.output[-3000:]
    assert play.outputs("fetch")["source"] == "local"
    assert "check s3 repository: warning" in play.stdout and "cannot reach the S3 endpoint" in play.stdout
    assert "the s3 repository cannot be reached" in play.stdout  # reprotect, at once
    gd = day.record(play)
    endpoint = gd.injected[0]["facts"]["endpoint"]
    assert endpoint.startswith("http://127.0.0.1:") and endpoint in play.stdout
    f = _fault("s3-unreachable")
    events = play.events()
    assert f.evidence_event(events) is not None  # type: ignore[misc]
    assert not f.handled(events)  # type: ignore[misc]
    started = [e for e in events if e["type"] == "step-started" and e["step"] == "reprotect"]
    finished = [e for e in events if e["type"] == "step-finished" and e["step"] == "reprotect"]
    assert finished[0]["status"] == "failed" and finished[0]["duration_s"] < 60 and started
    _no_leak("s3-unreachable", play)
    d = _debrief(play, "s3-unreachable")  # the service is back (from the local copy); re-protection failed
    assert d.restored and d.status == "failed" and d.faults[0].handled is False
    assert points(d) == {"detect": 20, "recover": 0, "data": 0, "mistakes": 0} and d.score == 80


def test_s3_unreachable_handled_from_the_local_copy(day: Day) -> None:
    play = day.play("s3-unreachable", answers={
        "reprotect": ["confirm", {"skip": "off-site S3 copy down: ticket raised, re-protect when it answers"}]})
    assert play.code == 0, play.output[-3000:]
    assert play.outputs("fetch")["source"] == "local"
    at_backup = json.loads((day.sb.base / "at-backup.json").read_text())
    assert day.sb.table_facts(DB) == at_backup
    f = _fault("s3-unreachable")
    assert f.handled(play.events())  # type: ignore[misc]
    _no_leak("s3-unreachable", play)
    d = _debrief(play, "s3-unreachable")
    assert d.faults[0].handled is True and d.faults[0].acted.startswith("skipped step reprotect (off-site S3 copy down")
    assert d.skipped == [("reprotect", "off-site S3 copy down: ticket raised, re-protect when it answers")]
    assert points(d)["data"] == 0 and points(d)["recover"] == 0 and d.mistakes == []


# ---- the trainer's view and the seed ------------------------------------------------------------------------


def test_reveal_names_the_fault_after_the_run(day: Day) -> None:
    play = day.play("s3-unreachable", seed=5, answers={"reprotect": ["confirm", {"skip": "off-site down"}]})
    assert play.code == 0, play.output[-3000:]
    shown = day.op.reveal(play.run_id, day.sb.base)
    f = _fault("s3-unreachable")
    assert f"FAULT {f.name}: {f.title}" in shown and f.handling in shown and "seed 5" in shown
    assert "operator trainee" in shown and "--fault s3-unreachable --seed 5" in shown
    assert "demo: game day debrief (score " in shown and "Fault      s3-unreachable" in shown  # the same debrief
    assert "game day debrief" not in shown.split("FAULT s3-unreachable")[0]  # after the record, not instead
    run_cli("demo", "--down", "--dir", str(day.sb.base), timeout=120)
    r = run_cli("demo", "--reveal", play.run_id, "--dir", str(day.sb.base), "--state-dir", str(day.state))
    assert r.returncode == 0 and f"FAULT {f.name}" in r.stdout  # from the ledger: the sandbox is gone

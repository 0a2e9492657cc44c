"""Game day `wrong-target-time` (scenario pitr): the target time the operator is given is after the wrong DROP.
The recovery "succeeds" and the verify step's expected-tables check catches the missing table, naming the recovery
point. Handled: the operator finds the right moment (the demo's account of the disaster) and recovers again in the
same run (`resume --redo-from pitr --set target_time=...`), the first attempt moved aside. Not handled: the failed
check is skipped and the run completes without the table."""

from __future__ import annotations

import re

from steps.sandbox.build import DB
from steps.sandbox.faults import registry
from steps.sandbox.faults._pitr_common import at, first
from steps.sandbox.faults.record import for_run
from tests.support.gameday_pitr import (
    PitrGame,
    game_fixture,  # noqa: F401 - the game day
    left_open,
)
from tests.support.operator import (
    assert_debrief,
    assert_handled,
    assert_no_leak,
    assert_not_handled,
    assert_scored,
    assert_skipped,
    fault_words,
    points,
    reaction_points,
)
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv

FAULT = registry()["wrong-target-time"]
BEFORE = re.compile(r"the moment just before it: (\S+)")


def _has_table(game: PitrGame) -> bool:
    return game.sb.server.psql("select count(*) from pg_tables where tablename = 'maintenance_records'", db=DB) == "1"


def test_handled_the_recovery_is_redone_to_the_moment_before_the_drop(game: PitrGame) -> None:
    play = game.demo(FAULT.name, answers={"verify-pitr": ["stop"]})
    assert left_open(play), play.output[-5000:]
    gd = for_run(game.sb.base, play.run_id)
    assert gd is not None
    facts = gd.injected[0]["facts"]
    events = play.events()
    assert first(events, "step-finished", step="pitr", statuses=("succeeded",)) is not None  # it "succeeded"
    missing = first(events, "step-check", step="verify-pitr", name="table maintenance_records exists",
                    statuses=("failed",))
    assert missing is not None and "missing at the recovery point" in missing["hint"]
    assert "--redo-from pitr --set target_time=" in missing["hint"]
    assert not _has_table(game)
    right = BEFORE.findall(play.stdout)[-1]  # the demo's account of the disaster: what the operator reads
    assert right == facts["right_target_time"] != facts["target_time_given"]

    again = game.op.resume(play.run_id, sets={"target_time": right}, answers={"pitr": ["confirm"]},
                           extra=["--redo-from", "pitr"])
    assert again.code == 0, again.output[-5000:]
    events = again.events()
    assert again.status() == "completed"
    assert _has_table(game) and int(game.sb.server.psql("select count(*) from maintenance_records", db=DB)) > 0
    moved = first(events, "step-check", step="pitr", name="earlier attempt moved aside")
    assert moved is not None
    aside = [p for p in game.sb.base.iterdir() if p.name.startswith(f"{game.sb.pitr_datadir.name}.attempt-")
             and p.is_dir()]
    assert len(aside) == 1 and (aside[0] / "PG_VERSION").exists()  # kept, not deleted
    reopened = first(events, "steps-reopened")
    assert reopened is not None and reopened["steps"][:2] == ["pitr", "verify-pitr"]
    reached = [e["value"] for e in events if e.get("type") == "step-output" and e.get("step") == "pitr"
               and e.get("name") == "recovery_point"]
    assert len(reached) == 2 and reached[1] <= right < reached[0]
    assert FAULT.evidence_event is not None and FAULT.handled is not None
    shown = FAULT.evidence_event(events)
    assert shown is not None and shown == at(missing) < at(reopened)
    assert FAULT.handled(events)
    assert_no_leak([play, again], fault_words(FAULT))
    assert play.debrief() == ""  # left open: nothing told yet
    d = assert_debrief(again, FAULT)
    (fd,) = d.faults
    assert fd.evidence_at is not None and abs(fd.evidence_at.timestamp() - at(missing)) < 1e-3
    assert fd.acted == "left the run to act outside it (the operator stopped (--answers))" and fd.handled is True
    # the steps walked again by --redo-from are the steps retried
    assert_handled(again, d, retried=reopened["steps"])
    # recovered to just before the DROP, what a clean run reaches (the demo's target): the window is measured
    assert_scored(d, detect=reaction_points(fd))


def test_not_handled_the_failed_check_is_skipped_and_the_table_stays_lost(game: PitrGame) -> None:
    play = game.demo(FAULT.name, answers={"verify-pitr": [{"skip": "the recovery said it succeeded"}]})
    assert play.code == 0, play.output[-5000:]
    assert not _has_table(game)
    d = assert_not_handled(play, FAULT)
    # acted on the failed check, wrongly (a skip): not handled; the service is back, but without the table: the
    # recovery point is after the loss, so no window can be claimed and the data points are all lost
    assert_skipped(play, d, "verify-pitr", "the recovery said it succeeded")
    assert d.restored and d.status == "completed"
    assert d.window_s is None and d.window_problem is not None and "after the loss" in d.window_problem
    assert points(d) == {"detect": 20, "recover": 0, "data": 20, "mistakes": 0} and d.score == 60

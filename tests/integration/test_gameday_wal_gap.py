"""Game day `wal-gap` (scenario pitr): a WAL segment after the base backup is deleted from the sandbox's archive.
The tool names the gap from the archive's listing before anything is stopped (provision-pitr), the replay ends at
it with the best reachable point named; handled, the operator recovers to that point (target latest, accept_gap)
and the rows of the lost segment and after are missing; not handled, the run fails at pitr."""

from __future__ import annotations

from runbook.errors import Exit
from steps.sandbox.build import DB
from steps.sandbox.faults import registry
from steps.sandbox.faults._pitr_common import at, first
from steps.sandbox.faults.record import for_run
from tests.support.gameday_pitr import (
    PitrGame,
    game_fixture,  # noqa: F401 - the game day
)
from tests.support.operator import (
    assert_debrief,
    assert_handled,
    assert_no_leak,
    assert_not_handled,
    assert_scored,
    fault_words,
    points,
    reaction_points,
)
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv

FAULT = registry()["wal-gap"]


def test_handled_the_recovery_goes_to_the_best_reachable_point(game: PitrGame) -> None:
    play = game.demo(FAULT.name, answers={"pitr": ["confirm", {"set": {"target_kind": "latest",
                                                                      "accept_gap": "true"}}]})
    assert play.code == Exit.LEFT_OPEN, play.output[-5000:]
    gd = for_run(game.sb.base, play.run_id)
    assert gd is not None
    facts = gd.injected[0]["facts"]
    events = play.events()
    # the listing named the gap before the broken server was stopped
    listed = first(events, "step-check", step="provision-pitr", name="WAL continuity", statuses=("warning",))
    stopped = first(events, "step-started", step="stop-server")
    assert listed is not None and stopped is not None and at(listed) < at(stopped)
    assert facts["removed_segment"] in listed["hint"] and "best reachable point" in listed["hint"]
    # the replay ended at the gap: named, with the best reachable point and the way to it
    failed = first(events, "step-finished", step="pitr", statuses=("failed",))
    assert failed is not None
    assert "target beyond the archived WAL" in play.stdout and "best reachable point" in play.stdout, \
        failed["detail"] + play.stdout[-6000:]
    assert "--set target_kind=latest" in play.stdout
    second = game.op.resume(play.run_id, sets=play.sets_asked(), answers={"pitr": ["retry"]})
    assert second.code == 0, second.output[-5000:]
    events = second.events()
    assert second.status() == "completed"
    assert first(events, "step-check", step="pitr", name="earlier attempt moved aside") is not None
    assert first(events, "step-check", step="pitr", name="gap in the WAL accepted") is not None
    # recovered up to the gap: the first batch is there, the second (in the lost segment) and the DROP are not
    assert int(game.sb.server.psql("select count(*) from maintenance_records", db=DB)) > 0
    batches = game.sb.server.psql("select detail->>'batch', count(*) from audit_log where actor = 'app' "
                                  "group by 1 order by 1", db=DB)
    assert batches == f"1|{facts['rows_per_batch']}"
    assert not game.sb.server.psql("select 1 from audit_log where actor = 'writer' limit 1", db=DB)
    assert FAULT.evidence_event is not None and FAULT.handled is not None
    shown = FAULT.evidence_event(events)
    assert shown is not None and shown == at(listed)
    assert FAULT.handled(events)
    assert_no_leak([play, second], fault_words(FAULT))
    assert play.debrief() == ""  # left open: nothing told yet
    d = assert_debrief(second, FAULT)
    (fd,) = d.faults
    # the evidence is the listing's warning; the operator acted when the replay stopped at the gap: they stopped
    # to change the target (the answers' `set`), which is leaving the run to act outside it
    assert fd.evidence_at is not None and abs(fd.evidence_at.timestamp() - at(listed)) < 1e-3
    assert fd.acted_at is not None and fd.acted_at.timestamp() >= at(failed)
    assert fd.acted.startswith("left the run to act outside it (the operator stopped to change parameters")
    assert "target_kind" in fd.acted and "accept_gap" in fd.acted and fd.handled is True
    assert_handled(second, d, retried=["pitr"])
    # recovered to the gap, not to the target a clean run reaches: the second batch and after are lost too
    assert d.window_s is not None and d.baseline_rpo_s is not None and d.window_s > d.baseline_rpo_s
    assert assert_scored(d, detect=reaction_points(fd)) >= 1


def test_not_handled_the_run_fails_at_the_gap(game: PitrGame) -> None:
    play = game.demo(FAULT.name)
    assert play.code == Exit.RUN_FAILED, play.output[-5000:]
    assert "target beyond the archived WAL" in play.stdout
    d = assert_not_handled(play, FAULT)  # --yes stopped at the pitr step short of its target: nothing done about it
    (fd,) = d.faults
    assert fd.acted_at is None and fd.handled is False and not d.restored and d.status == "failed"
    assert "acted on: never" in play.debrief() and "handled: NO" in play.debrief()
    assert points(d) == {"detect": 20, "recover": 30, "data": 20, "mistakes": 0} and d.score == 30

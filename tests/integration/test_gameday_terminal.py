"""Game day `terminal-dies` (scenario pitr): SIGHUP reaches the demo's process (the front end driving the run) a
second into the pitr step. The step goes on under its supervisor and records its result; handled, the operator
re-attaches with `runbook resume RUN_ID` and finishes, the step never run twice; not handled, the run stays open."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from runbook.executor import StepProcess
from runbook.gameday import load_debrief
from runbook.state import load_state, step_dir
from steps.sandbox.build import DB
from steps.sandbox.faults import registry
from steps.sandbox.faults._pitr_common import at, first
from tests.conftest import run_cli
from tests.support.gameday_pitr import PitrGame, pitr_game
from tests.support.operator import Play, assert_debrief, assert_no_leak, fault_words, points
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv

FAULT = registry()["terminal-dies"]


@pytest.fixture
def game(server_runbook: str) -> Iterator[PitrGame]:  # noqa: F811
    with pitr_game(server_runbook, "hangup") as g:
        yield g


def _hung_up(game: PitrGame) -> Play:
    play = game.demo(FAULT.name)
    assert play.code == -signal.SIGHUP, play.output[-5000:]  # the front end died mid-restore
    assert play.run_id is not None
    # It died while the pitr step ran (how far the step got in its second depends on the machine's load).
    shown = play.stdout.rsplit("Point-in-time recovery into a new data directory", 1)
    assert len(shown) == 2 and "running attempt 1" in shown[1], play.stdout[-3000:]
    return play


def _wait_for_the_step(game: PitrGame, run_id: str, timeout: float = 300) -> str:
    """The pitr step, left to its supervisor: its state once it stops running."""
    st = load_state(game.state, run_id)
    proc = StepProcess.attach(step_dir(game.state / "runs" / run_id, "pitr", st.steps["pitr"].attempt))
    deadline = time.monotonic() + timeout
    while (state := proc.state()) == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    return state


def _re_attached(play: Play, again: Play) -> None:
    """The debrief of a run re-attached after the hang-up: the evidence is the resume that found the step under
    its supervisor, which is the operator acting on it at once; nothing retried; scored rule by rule."""
    assert play.debrief() == ""  # the front end died: no debrief, the run is open
    d = assert_debrief(again, FAULT)
    (fd,) = d.faults
    resumed = first(again.events(), "run-resumed")
    assert resumed is not None and fd.evidence_at is not None and fd.acted_at is not None
    assert abs(fd.evidence_at.timestamp() - at(resumed)) < 1e-3 and fd.acted_at == fd.evidence_at
    assert fd.acted.startswith("resumed the run") and fd.reaction_s == 0 and fd.handled is True
    assert "evidence shown " in again.debrief() and "acted on " in again.debrief()
    assert d.retried == [] and d.skipped == [] and d.mistakes == [] and d.restored and d.status == "completed"
    assert d.baseline_rto_s is None  # no clean drill in this state directory: the RTO is judged by its target
    assert d.window_s is not None and d.baseline_rpo_s is not None
    extra = d.window_s - d.baseline_rpo_s
    data = 0 if extra <= 0 else min(20, math.ceil(round(20 * extra / 300, 6)))
    assert points(d) == {"detect": 0, "recover": 0, "data": data, "mistakes": 0}
    assert d.score == 100 - data


def test_handled_the_operator_re_attaches_and_finishes(game: PitrGame) -> None:
    play = _hung_up(game)
    st = load_state(game.state, play.run_id)
    assert st.status == "open" and st.steps["pitr"].status.value == "running"
    again = game.op.resume(play.run_id)
    assert again.code == 0, again.output[-5000:]
    events = again.events()
    assert again.status() == "completed"
    assert [e["attempt"] for e in events if e.get("type") == "step-started" and e.get("step") == "pitr"] == [1]
    assert "still running" in again.stdout or "ended while nobody watched" in again.stdout
    assert int(game.sb.server.psql("select count(*) from maintenance_records", db=DB)) > 0
    assert FAULT.evidence_event is not None and FAULT.handled is not None
    assert FAULT.evidence_event(events) is not None and FAULT.handled(events)
    assert first(events, "run-resumed") is not None
    assert_no_leak([play, again], fault_words(FAULT))
    _re_attached(play, again)


def test_not_handled_the_step_ends_under_its_supervisor_and_the_run_stays_open(game: PitrGame) -> None:
    play = _hung_up(game)
    assert _wait_for_the_step(game, play.run_id) == "finished"  # it went on, and its outcome was recorded
    assert (game.sb.pitr_datadir / "PG_VERSION").exists()
    runs = run_cli("runs", "--json", "--state-dir", str(game.state))
    (row,) = [r for r in json.loads(runs.stdout) if r.get("run_id") == play.run_id]
    assert row["status"] == "open"
    events = play.events()
    assert FAULT.evidence_event is not None and FAULT.handled is not None
    assert FAULT.evidence_event(events) is None and not FAULT.handled(events)
    assert_no_leak([play], fault_words(FAULT))
    # never re-attached: the run is open, so there is no debrief yet (it may still be resumed) and none printed
    assert play.debrief() == "" and load_debrief(game.state, load_state(game.state, play.run_id), datetime.now(UTC)) \
        is None


def test_handled_in_scenario_1_the_restore_is_re_attached_and_finished(game: PitrGame) -> None:
    play = game.demo(FAULT.name, scenario="restore-latest")
    assert play.code == -signal.SIGHUP, play.output[-5000:]
    assert play.run_id is not None and first(play.events(), "step-started", step="restore") is not None
    assert not first(play.events(), "step-finished", step="restore")  # the front end died before it ended
    again = game.op.resume(play.run_id)
    assert again.code == 0, again.output[-5000:]
    events = again.events()
    assert [e["attempt"] for e in events if e.get("type") == "step-started" and e.get("step") == "restore"] == [1]
    assert FAULT.evidence_event is not None and FAULT.handled is not None
    assert FAULT.evidence_event(events) is not None and FAULT.handled(events)
    assert int(game.sb.server.psql("select count(*) from assets", db=DB)) > 0
    assert_no_leak([play, again], fault_words(FAULT))
    _re_attached(play, again)

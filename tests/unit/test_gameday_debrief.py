"""The game-day debrief and its score (runbook.gameday), on hand-written journals of several shapes: every rule of
the score (docs/game-days.md) moves it by the points written there, and nothing is told of a run still open."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from runbook.gameday import (
    GameDayError,
    clean_rto,
    debrief,
    debrief_lines,
    debrief_markdown,
    first_action,
    load_debrief,
    mistakes,
)
from runbook.report import render_markdown
from runbook.report_html import render_html
from steps.sandbox.faults import Fault, GameContext
from steps.sandbox.faults.record import GameDay, append_ledger
from tests.support.journals import T0, JournalBuilder, at

GAME_ID = "gd-20261125T030000Z-abcd"


def _epoch(minutes: float) -> float:
    return (T0 + timedelta(minutes=minutes)).timestamp()


def _fetch_failed(events: list[dict[str, Any]]) -> float | None:
    """The evidence of the test fault: the first failed attempt of step fetch."""
    from runbook.clock import parse_iso

    for e in events:
        if e["type"] == "step-finished" and e.get("step") == "fetch" and e.get("status") == "failed":
            return parse_iso(e["ts"]).timestamp()
    return None


def _fetch_succeeded(events: list[dict[str, Any]]) -> bool:
    return any(e["type"] == "step-finished" and e.get("step") == "fetch" and e.get("status") == "succeeded"
               for e in events)


def _noop(sb: Any, ctx: GameContext) -> dict[str, Any]:
    return {}


BAD_BACKUP = Fault(name="bad-backup", title="The newest backup is damaged", scenarios=("restore-latest",),
                   story="one object of the newest dump was overwritten", evidence="fetch fails its sha256 check",
                   handling="retry the fetch with the previous backup", phase="after-backup", inject=_noop,
                   evidence_event=_fetch_failed, handled=_fetch_succeeded)
SILENT = Fault(name="silent", title="A fault that never bites here", scenarios=("restore-latest",), story="nothing",
               evidence="never", handling="nothing", phase="build", inject=_noop,
               evidence_event=lambda events: None, handled=None)
FAULTS = {f.name: f for f in (BAD_BACKUP, SILENT)}


def game(faults: tuple[str, ...] = ("bad-backup",), **baseline: Any) -> GameDay:
    return GameDay(game_id=GAME_ID, seed=7, scenario="restore-latest", faults=list(faults), operator="alice",
                   created_at=at(-5), run_id="r1",
                   injected=[{"name": n, "at": at(-4), "facts": {"object": "dump/3001.dat"}} for n in faults],
                   baseline=baseline or {"rpo_s": 60.0, "rto_s": 120.0, "rows_lost": 50})


def drill(*, react: float = 0.5, retry_fails: bool = False, snapshot_s: float = 120,
          refused: int = 0, end: str = "completed") -> JournalBuilder:
    """fetch fails at minute 2 (the evidence); the operator retries `react` minutes later; the retry succeeds
    (or fails the same way); the recovery point is `snapshot_s` before the loss; the service is back at 6."""
    b = JournalBuilder(["fetch", "restore", "service"], run_start=1)
    b.add(1, "game-day", game_id=GAME_ID, seed=7)
    b.shown(1, "fetch").ran(1.0, 2.0, "fetch", status="failed", exit_code=1, detail="exit 1")
    b.add(2 + react, "retry-requested", step="fetch")
    if retry_fails:
        b.ran(2 + react, 2 + react + 0.1, "fetch", attempt=2, status="failed", exit_code=1, detail="exit 1")
        b.add(2 + react + 0.2, "run-finished", status="aborted", detail="gave up")
        return b
    b.ran(2 + react, 3 + react, "fetch", attempt=2)
    b.output(3 + react, "fetch", "snapshot_time", (T0 - timedelta(seconds=snapshot_s)).isoformat())
    b.shown(3 + react, "restore", kind="action")
    for _ in range(refused):
        b.add(3 + react, "confirm-refused", step="restore", how="typed at the prompt", reason="typed value did not match")
    b.ran(3 + react, 5 + react, "restore")
    b.manual(5 + react, 6 + react, "service", rto_end=True)
    if end:
        b.finish(6 + react, end)
    return b


def points(d: Any) -> dict[str, int]:
    return {x.rule: x.points for x in d.deductions}


def test_a_quick_clean_handling_loses_only_the_time_and_data_beyond_the_clean_run() -> None:
    st = drill().state()
    d = debrief(st, game(), FAULTS, T0 + timedelta(hours=1))
    (f,) = d.faults
    assert f.evidence_at is not None and f.evidence_at.timestamp() == _epoch(2)
    assert f.acted_at is not None and f.acted_at.timestamp() == _epoch(2.5)
    assert f.acted == "retried step fetch" and f.reaction_s == 30 and f.handled is True
    assert d.retried == ["fetch"] and d.skipped == [] and d.mistakes == []
    assert d.rto_s == 6.5 * 60 and d.window_s == 120
    # RTO 6:30 against the clean 2:00: 4 full minutes; 60 s more data than the clean 60 s: ceil(20*60/300) = 4
    assert points(d) == {"detect": 0, "recover": 4, "data": 4, "mistakes": 0}
    assert d.score == 92


@pytest.mark.parametrize(("react", "detect"), [(0.99, 0), (1.0, 2), (7.5, 14), (10, 20), (30, 20)])
def test_detect_costs_two_points_a_full_minute_from_the_evidence_to_the_first_action(react: float, detect: int) -> None:
    d = debrief(drill(react=react).state(), game(), FAULTS, T0 + timedelta(hours=1))
    assert points(d)["detect"] == detect


def test_a_fault_shown_and_never_acted_on_costs_the_whole_detect_share() -> None:
    b = JournalBuilder(["fetch", "restore"], run_start=1)
    b.add(1, "game-day", game_id=GAME_ID, seed=7)
    b.shown(1, "fetch").ran(1, 2, "fetch", status="failed", exit_code=1, detail="exit 1")
    b.finish(3, "failed", "step fetch failed: exit 1")  # headless, no operator: stopped at the failure
    d = debrief(b.state(), game(), FAULTS, T0 + timedelta(hours=1))
    assert d.faults[0].acted_at is None and d.faults[0].handled is False
    assert not d.restored and d.window_s is None
    assert points(d) == {"detect": 20, "recover": 30, "data": 20, "mistakes": 0}
    assert d.score == 30
    texts = [ln.text for ln in debrief_lines(d)]
    assert "acted on: never" in texts and "service not restored" in " ".join(texts)


def test_mistakes_refused_confirmations_a_retry_failing_the_same_way_an_abort() -> None:
    d = debrief(drill(refused=2).state(), game(), FAULTS, T0 + timedelta(hours=1))
    assert len(d.mistakes) == 2 and all("typed confirmation refused at step restore" in m for m in d.mistakes)
    assert points(d)["mistakes"] == 20
    st = drill(retry_fails=True).state()
    found = mistakes(st.events)
    assert found[0].startswith("step fetch retried and failed the same way (exit 1")
    assert found[1].startswith("the run was aborted (gave up")
    d = debrief(st, game(), FAULTS, T0 + timedelta(hours=1))
    # the fetch never succeeded: the fault was not handled (its `handled`), the whole detect share
    assert points(d) == {"detect": 20, "recover": 30, "data": 20, "mistakes": 20}
    assert d.score == 10


def test_a_retry_that_fails_differently_is_no_mistake() -> None:
    b = JournalBuilder(["fetch"], run_start=0)
    b.shown(0, "fetch").ran(0, 1, "fetch", status="failed", exit_code=1, detail="exit 1")
    b.add(2, "retry-requested", step="fetch").ran(2, 3, "fetch", attempt=2, status="failed", exit_code=2,
                                                  detail="exit 2")
    assert mistakes(b.state().events) == []


def test_mistakes_cap_at_thirty() -> None:
    d = debrief(drill(refused=5).state(), game(), FAULTS, T0 + timedelta(hours=1))
    assert len(d.mistakes) == 5 and points(d)["mistakes"] == 30


@pytest.mark.parametrize(("snapshot_s", "data"), [(60, 0), (30, 0), (61, 1), (120, 4), (360, 20), (3600, 20)])
def test_data_lost_beyond_the_clean_run_as_a_share_of_the_rpo_target(snapshot_s: float, data: int) -> None:
    d = debrief(drill(snapshot_s=snapshot_s).state(), game(), FAULTS, T0 + timedelta(hours=1))
    assert points(d)["data"] == data


def test_a_missed_rto_target_costs_the_whole_recover_share() -> None:
    b = drill()
    b.events[0]["targets"] = {"rto_s": 300.0, "rpo_s": 300.0}  # 5 minutes: the 6:30 recovery misses it
    d = debrief(b.state(), game(), FAULTS, T0 + timedelta(hours=1))
    assert points(d)["recover"] == 30


def test_without_a_clean_rto_the_recovery_time_is_not_scored_and_says_so() -> None:
    d = debrief(drill().state(), game(rpo_s=60.0), FAULTS, T0 + timedelta(hours=1))
    assert points(d)["recover"] == 0 and "no clean baseline" in d.deductions[1].why
    assert "(no clean baseline)" in " ".join(ln.text for ln in debrief_lines(d))


def test_a_fault_that_never_bit_costs_nothing_and_an_unregistered_one_is_named() -> None:
    d = debrief(drill().state(), game(("silent", "gone-fault")), FAULTS, T0 + timedelta(hours=1))
    silent, gone = d.faults
    assert silent.evidence_at is None and silent.timed and not gone.known
    assert points(d)["detect"] == 0
    texts = [ln.text for ln in debrief_lines(d)]
    assert "evidence: the tool never showed it in this run" in texts
    assert "gone-fault: gone-fault (no longer in the registry)" in texts


def test_the_first_action_is_the_operators_not_the_tools() -> None:
    b = drill(react=3)
    events = b.state().events
    # between the evidence (2) and the retry (5): an automatic retry and a check are not the operator's
    events.insert(5, {"seq": 0, "ts": at(2.1), "type": "step-started", "step": "fetch", "attempt": 2})
    events.insert(5, {"seq": 0, "ts": at(2.2), "type": "step-check", "step": "fetch", "name": "x", "status": "ok"})
    assert first_action(events, _epoch(2)) == (_epoch(5), "retried step fetch")
    events.insert(5, {"seq": 0, "ts": at(3.5), "type": "run-detached", "reason": "stdin closed", "step": "fetch"})
    assert first_action(events, _epoch(2)) == (_epoch(5), "retried step fetch")  # not the operator's doing
    events.insert(6, {"seq": 0, "ts": at(3.6), "type": "run-detached", "reason": "the operator quit the TUI",
                      "step": "fetch"})
    assert first_action(events, _epoch(2)) == (_epoch(3.6), "left the run to act outside it (the operator quit "
                                                            "the TUI)")
    assert first_action(events, _epoch(3.7)) == (_epoch(5), "retried step fetch")
    del events[5:7]
    events[5:5] = [{"seq": 0, "ts": at(4), "type": "run-resumed", "operator": {}},
                   {"seq": 0, "ts": at(4), "type": "params-set", "params": {"backup_id": "20261124T020000Z"}},
                   {"seq": 0, "ts": at(4), "type": "steps-reopened", "from_step": "fetch", "steps": ["fetch"]}]
    assert first_action(events, _epoch(2)) == (
        _epoch(4), "resumed the run; changed backup_id (--set); walked again from step fetch")


def test_the_score_rules_appear_in_the_debrief_lines_and_the_markdown() -> None:
    d = debrief(drill().state(), game(), FAULTS, T0 + timedelta(hours=1))
    lines = debrief_lines(d)
    assert lines[0].label == "Game day" and GAME_ID in lines[0].text and "seed 7" in lines[0].text
    text = "\n".join(f"{ln.label} {ln.text}" for ln in lines)
    assert "Fault bad-backup: The newest backup is damaged" in text
    assert "what was done: one object of the newest dump was overwritten" in text
    assert "acted on 03:02:30 UTC (+0:01:30 into the run): retried step fetch, 0:00:30 after the evidence" in text
    assert "RTO 0:06:30, clean run 0:02:00 (+0:04:30)" in text
    assert "Data lost window 0:02:00, clean run 0:01:00 (+0:01:00)" in text
    assert "Score 92/100" in text and "recover −4 of 30" in text and "data −4 of 20" in text
    md = "\n".join(debrief_markdown(d))
    assert "## Game day debrief" in md and "**Score: 92/100**" in md


def _ledger(tmp_path: Any, g: GameDay) -> Any:
    append_ledger(tmp_path, g)
    return tmp_path


def test_load_debrief_only_for_an_ended_game_day(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from steps.sandbox import faults as fx

    fx.registry()
    monkeypatch.setattr(fx, "FAULTS", dict(FAULTS))
    now = T0 + timedelta(hours=1)
    open_run = drill(end="").add(7, "run-detached", reason="the operator quit", step=None).state()
    assert load_debrief(tmp_path, open_run, now) is None  # still open: nothing told
    with pytest.raises(GameDayError, match="not in .*gamedays.jsonl"):
        load_debrief(tmp_path, drill().state(), now)
    _ledger(tmp_path, game(rpo_s=60.0))
    d = load_debrief(tmp_path, drill().state(), now, runs=[])
    assert d is not None and d.score == 96  # no clean RTO anywhere: recover not scored
    plain = JournalBuilder(["fetch"]).finish(1).state()
    assert load_debrief(tmp_path, plain, now) is None  # not a game day


def test_the_clean_baseline_rto_is_the_fastest_clean_drill_of_the_scenario() -> None:
    st = drill().state()

    def run(rid: str, minutes: float, *, game_day: bool = False, mode: str = "drill", scenario: str = "restore-latest",
            status: str = "completed") -> Any:
        b = JournalBuilder(["s"], mode=mode, scenario=scenario, run_start=0)
        if game_day:
            b.add(0, "game-day", game_id=GAME_ID, seed=1)
        b.manual(0, minutes, "s", rto_end=True).finish(minutes, status)
        r = b.state()
        r.run_id = rid
        return r

    runs = [run("a", 9), run("b", 3, game_day=True), run("c", 2, mode="rehearsal"), run("d", 1, scenario="pitr"),
            run("e", 5), run("f", 4, status="aborted"), st, ("broken", "unreadable")]
    assert clean_rto(runs, st) == 300.0


def test_reports_carry_the_debrief_section_only_when_given() -> None:
    st = drill().state()
    now = T0 + timedelta(hours=1)
    assert "Game day debrief" not in render_markdown(st, {}, now)
    assert "bad-backup" not in render_markdown(st, {}, now) and "bad-backup" not in render_html(st, {}, now)
    d = debrief(st, game(), FAULTS, now)
    md = render_markdown(st, {}, now, debrief=d)
    assert "## Game day debrief" in md and "bad-backup" in md and "**Score: 92/100**" in md
    html = render_html(st, {}, now, debrief=d)
    assert '<section id="debrief"><h2>Game day debrief</h2>' in html and "92/100" in html and "bad-backup" in html


def test_the_worked_example_of_docs_game_days() -> None:
    """docs/game-days.md, "A worked example": the same journal gives the same lines and 82."""
    from tests.conftest import ROOT

    d = debrief(drill(refused=1).state(), game(), FAULTS, T0 + timedelta(hours=1))
    assert points(d) == {"detect": 0, "recover": 4, "data": 4, "mistakes": 10} and d.score == 82
    page = (ROOT / "docs" / "game-days.md").read_text()
    for line in debrief_lines(d):
        if line.label == "Score" or line.text.startswith(("detect", "recover", "data", "mistakes")):
            assert line.text in page, line.text


def test_a_recovery_point_reached_but_no_service_restored_brings_no_data_back() -> None:
    b = JournalBuilder(["fetch", "restore", "service"], run_start=1)
    b.shown(1, "fetch").ran(1, 2, "fetch")
    b.output(2, "fetch", "snapshot_time", (T0 - timedelta(seconds=60)).isoformat())
    b.shown(2, "restore").ran(2, 3, "restore", status="failed", exit_code=1, detail="exit 1")
    b.finish(4, "aborted", "out of time")
    d = debrief(b.state(), game(), FAULTS, T0 + timedelta(hours=1))
    assert d.window_s == 60 and not d.restored  # measured, yet nothing was brought back
    # the test fault did not bite (the fetch never failed): nothing to detect
    assert points(d) == {"detect": 0, "recover": 30, "data": 20, "mistakes": 10}
    assert d.score == 40


def test_a_fault_judge_that_fails_on_a_journal_is_said_not_raised() -> None:
    def broken(events: list[dict[str, Any]]) -> float | None:
        return float(events[0]["no-such-key"])

    bad = Fault(name="bad-judge", title="A fault whose judge fails", scenarios=("restore-latest",), story="s",
                evidence="e", handling="h", phase="build", inject=_noop, evidence_event=broken, handled=None)
    d = debrief(drill().state(), game(("bad-judge",)), {"bad-judge": bad}, T0 + timedelta(hours=1))
    (f,) = d.faults
    assert f.evidence_at is None and not f.timed and f.problem is not None and "KeyError" in f.problem
    assert points(d)["detect"] == 0
    assert any(ln.alarm and "its judge of the journal failed (KeyError" in ln.text for ln in debrief_lines(d))

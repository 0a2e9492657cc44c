"""The report's facts (RTO, RPO, step spans) and its Markdown form.

The RPO needs a step output (`recovery_point`, `snapshot_time`) that only built-in actions produce, so
those tests fold a hand-made event list through the real `runbook.state.fold`; the RTO and the
Markdown are also checked on a real run of the engine.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runbook.events import StepStatus
from runbook.report import (
    end_story,
    event_detail,
    event_text,
    render_markdown,
    rpo_facts,
    rto_facts,
    step_spans,
)
from runbook.report_html import render_html
from tests.conftest import run_cli
from tests.support.journals import T0, JournalBuilder, at, logical_drill

# ---- RPO ---------------------------------------------------------------------------------------------


def test_rpo_of_a_logical_backup_says_plainly_it_cannot_meet_five_minutes() -> None:
    st = logical_drill().state()
    rpo = rpo_facts(st)
    assert rpo is not None
    assert rpo.recovery_point == T0 - timedelta(hours=9)
    assert rpo.source_step == "fetch" and rpo.source_output == "snapshot_time"
    assert rpo.data_lost_at == T0 and rpo.data_lost_is_incident_start
    assert rpo.window_s == 9 * 3600
    assert rpo.target_s == 300 and rpo.verdict == "missed"
    assert rpo.logical  # the producing step's action is fetch-latest-backup
    assert rpo.rows_lost == 42 and rpo.rows_lost_step == "verify"
    warning = rpo.logical_warning
    assert warning is not None
    assert "logical backup alone cannot meet a 5-minute RPO" in warning and "`pitr`" in warning


def test_rpo_uses_data_lost_at_and_prefers_recovery_point_over_snapshot_time() -> None:
    b = JournalBuilder(["restore"], data_lost_at=-30)  # the data went bad half an hour before the incident
    b.shown(1, "restore").ran(1, 5, "restore")
    b.output(4, "restore", "snapshot_time", at(-120))
    b.output(4, "restore", "recovery_point", at(-33))
    b.output(4, "restore", "kind", "logical")
    st = b.finish(6).state()
    rpo = rpo_facts(st)
    assert rpo is not None
    assert rpo.source_output == "recovery_point" and rpo.window_s == 3 * 60
    assert not rpo.data_lost_is_incident_start and rpo.data_lost_at == T0 - timedelta(minutes=30)
    assert rpo.verdict == "met"
    assert rpo.logical  # output kind == logical
    assert rpo.logical_warning is not None and "5-minute" in rpo.logical_warning


def test_pitr_recovery_point_is_not_called_logical_and_the_last_one_wins() -> None:
    b = JournalBuilder(["base", "replay"], scenario="pitr", rpo=600)
    b.shown(1, "base").ran(1, 2, "base").output(2, "base", "snapshot_time", at(-600))
    b.shown(2, "replay").ran(2, 9, "replay").output(9, "replay", "recovery_point", at(-4))
    rpo = rpo_facts(b.finish(10).state())
    assert rpo is not None
    assert rpo.source_step == "replay" and rpo.window_s == 240 and rpo.verdict == "met"
    assert not rpo.logical and rpo.logical_warning is None
    assert rpo.rows_lost is None


def test_no_recovery_point_means_no_rpo_section() -> None:
    b = JournalBuilder(["a"])
    st = b.shown(0, "a").ran(0, 1, "a", rto_end=True).finish(1).state()
    assert rpo_facts(st) is None
    md = render_markdown(st, {}, T0 + timedelta(hours=1))
    assert "## RPO" not in md and "## RTO" in md


def test_unreadable_recovery_point_is_reported_not_guessed() -> None:
    b = JournalBuilder(["a"])
    st = b.shown(0, "a").ran(0, 1, "a").output(1, "a", "recovery_point", "yesterday at noon").finish(1).state()
    rpo = rpo_facts(st)
    assert rpo is not None and rpo.recovery_point is None and rpo.window_s is None
    assert rpo.problem is not None and "yesterday at noon" in rpo.problem
    md = render_markdown(st, {}, T0)
    assert "The RPO could not be measured" in md


def test_markdown_gains_the_rpo_section() -> None:
    st = logical_drill().state()
    md = render_markdown(st, {"fetch": "Fetch the newest backup"}, T0 + timedelta(hours=2))
    rpo_part = md.split("## RPO", 1)[1].split("## Steps", 1)[0]
    assert "| Target | 0:05:00 |" in rpo_part
    assert "| Data-loss window | 9:00:00 — **missed** |" in rpo_part
    assert "output snapshot_time of step fetch, a logical backup" in rpo_part
    assert "(the incident start)" in rpo_part
    assert "| Rows lost | 42 (counted by step verify) |" in rpo_part
    assert "> This recovery point is a logical backup" in rpo_part and "scenario 2 (`pitr`" in rpo_part


# ---- RTO and spans -----------------------------------------------------------------------------------


def test_rto_stops_at_service_restored_not_at_run_closed() -> None:
    st = logical_drill().state()
    rto = rto_facts(st, T0 + timedelta(days=3))
    assert rto.achieved_s == 66 * 60 and rto.restored and rto.restored_step == "switch-over"
    assert rto.closed_after_s == 90 * 60
    assert rto.verdict == "met" and rto.target_s == 7200
    md = render_markdown(st, {}, T0 + timedelta(days=3))
    assert "| Achieved | 1:06:00 (service restored) — **met** |" in md
    assert "(1:30:00 after the incident start)" in md


def test_rto_missed_and_not_yet_decided() -> None:
    b = JournalBuilder(["a", "b"], rto=3600)
    b.shown(0, "a").ran(0, 70, "a", rto_end=True)
    assert rto_facts(b.state(), T0 + timedelta(hours=5)).verdict == "missed"
    b = JournalBuilder(["a", "b"], rto=3600)
    b.shown(0, "a").ran(0, 10, "a")  # still open: the clock runs to `now`
    open_rto = rto_facts(b.state(), T0 + timedelta(minutes=20))
    assert open_rto.verdict == "not yet decided" and open_rto.achieved_s == 20 * 60 and not open_rto.restored
    assert rto_facts(b.state(), T0 + timedelta(minutes=61)).verdict == "missed"


def test_step_spans_start_when_shown_for_manual_steps_and_at_the_first_attempt() -> None:
    st = logical_drill().state()
    spans = {s.step_id: s for s in step_spans(st, T0 + timedelta(hours=3))}
    assert set(spans) == set(st.order)
    assert spans["communicate"].start == T0 + timedelta(minutes=20)  # manual: from step-awaiting
    assert spans["provision"].start == T0 + timedelta(minutes=24.1)  # the first of two attempts
    assert spans["provision"].end == T0 + timedelta(minutes=27)
    assert spans["provision"].failed_attempts == ((T0 + timedelta(minutes=24.1), T0 + timedelta(minutes=25.5)),)
    assert spans["isolate"].start == T0 + timedelta(minutes=23.2)  # a run step: from its start, not when shown
    assert spans["maintenance-off"].status == StepStatus.skipped
    b = JournalBuilder(["a", "b", "c"])
    b.shown(0, "a").ran(0, 1, "a").shown(1, "b").add(1, "step-started", step="b", attempt=1, command="sleep")
    now = T0 + timedelta(minutes=9)
    spans2 = {s.step_id: s for s in step_spans(b.state(), now)}
    assert spans2["b"].open and spans2["b"].end == now and "c" not in spans2


def test_markdown_report_of_a_real_run(write_runbook, state_dir: Path) -> None:
    path = write_runbook("""
        version: 1
        name: t
        targets: {rto: 1h, rpo: 5m}
        steps:
          - {id: a, run: "echo a", confirm: none}
          - {id: back, title: "Service | back", run: "echo b", confirm: none, rto_end: true}
          - {id: c, run: "echo c", confirm: none}
    """)
    r = run_cli("run", str(path), "--headless", "--yes", "--mode", "drill", "--state-dir", str(state_dir),
                "--incident-start", (datetime.now(UTC) - timedelta(minutes=10)).isoformat())
    assert r.returncode == 0, r.stdout + r.stderr
    (run_id,) = [p.name for p in (state_dir / "runs").iterdir()]
    # The report command the run prints works as shown, from anywhere (it names the state dir it was given).
    shown = next(line.split("report:", 1)[1].strip() for line in r.stdout.splitlines() if "report:" in line)
    assert shown == f"runbook report {run_id} --state-dir {state_dir}"
    assert run_cli(*shlex.split(shown)[1:], cwd=state_dir).returncode == 0
    rep = run_cli("report", run_id, "--format", "md", "--state-dir", str(state_dir))
    assert rep.returncode == 0, rep.stderr
    assert "**mode**: DRILL" in rep.stdout
    assert "| Target | 1:00:00 |" in rep.stdout and "(service restored) — **met**" in rep.stdout
    assert "(step back)" in rep.stdout and "Service \\| back" in rep.stdout
    assert "## RPO" not in rep.stdout  # shell steps report no recovery point


def test_a_short_window_from_a_logical_backup_is_met_but_the_warning_stays_honest() -> None:
    b = JournalBuilder(["fetch"])
    b.shown(0, "fetch", kind="action", command="fetch-latest-backup {}").ran(0, 1, "fetch")
    b.output(1, "fetch", "snapshot_time", (T0 - timedelta(seconds=0.8)).isoformat())
    rpo = rpo_facts(b.finish(2).state())
    assert rpo is not None and rpo.verdict == "met" and rpo.logical
    assert rpo.logical_warning is not None
    assert "cannot meet a 5-minute RPO" in rpo.logical_warning
    assert "met the target only because the data was lost 0.8 s after the backup" in rpo.logical_warning
    md = render_markdown(b.state(), {}, T0)
    assert "| Data-loss window | 0.8 s — **met** |" in md


# ---- a front end's error -----------------------------------------------------------------------------


def test_a_front_end_error_is_on_the_timeline_and_changes_nothing_in_the_run() -> None:
    b = JournalBuilder(["restore"]).shown(1, "restore")
    before = b.state()
    b.add(2, "frontend-error", step="restore", source="tui", where="action_go", error="RuntimeError",
          message="the confirm path broke", hint="", log="tui-error.log")
    b.add(3, "frontend-error", step=None, source="tui", where="action_note", error="RunbookError",
          message="notes are refused", hint="add it later", log="")
    st = b.state()
    assert st.status == "open" and not st.closed
    assert st.steps["restore"].status == before.steps["restore"].status == StepStatus.awaiting
    assert st.notes == [] and st.steps["restore"].notes == []
    first, second = st.events[-2:]
    assert event_text(first) == "front end error; run stays open"
    assert event_detail(first) == "RuntimeError: the confirm path broke"
    assert event_detail(second) == "RunbookError: notes are refused — hint: add it later"


def test_an_engine_error_is_named_on_the_timeline_with_its_detail() -> None:
    b = JournalBuilder(["restore"]).shown(1, "restore")
    b.add(2, "engine-error", step="restore", detail="OSError: disk full")
    (last,) = b.state().events[-1:]
    assert event_text(last) == "engine error; run stays open"
    assert event_detail(last) == "OSError: disk full"


# ---- verdicts check their own premises ---------------------------------------------------------------


def test_a_recovery_point_after_the_data_loss_is_impossible_never_met() -> None:
    """The reproduced case: a drill whose sandbox was rebuilt under it restored a backup taken after the loss;
    the report said "data-loss window 0.0 s — MET"."""
    b = JournalBuilder(["fetch"], data_lost_at=10)
    b.shown(10, "fetch", kind="action", command="fetch-latest-backup {}").ran(10, 11, "fetch")
    b.output(11, "fetch", "snapshot_time", (T0 + timedelta(minutes=10, seconds=30)).isoformat())
    st = b.finish(12).state()
    rpo = rpo_facts(st)
    assert rpo is not None and rpo.impossible and rpo.verdict == "impossible" and rpo.window_s is None
    assert rpo.problem is not None and "after the moment data was lost" in rpo.problem
    md = render_markdown(st, {}, T0 + timedelta(hours=1))
    rpo_section = md.split("## RPO")[1].split("## Steps")[0]
    assert "**RPO: impossible, not met**" in rpo_section and "— **met**" not in rpo_section
    html = render_html(st, {}, T0 + timedelta(hours=1))
    assert "RPO: impossible, not met." in html and '<div class="verdict bad">impossible</div>' in html


def test_a_backup_of_another_cluster_than_expected_is_impossible_never_met() -> None:
    """A recovery point before the loss proves nothing when the backup is of another cluster (a sandbox
    rebuilt during the drill, two servers sharing a repository)."""
    b = JournalBuilder(["fetch"], data_lost_at=10, params={"source_cluster": "7400000000000000001"})
    b.shown(1, "fetch", kind="action", command="fetch-latest-backup {}").ran(1, 2, "fetch")
    b.output(2, "fetch", "snapshot_time", (T0 + timedelta(minutes=9)).isoformat())
    b.output(2, "fetch", "cluster", "7499999999999999999")
    st = b.finish(12).state()
    rpo = rpo_facts(st)
    assert rpo is not None and rpo.impossible and rpo.verdict == "impossible" and rpo.window_s is None
    assert rpo.problem is not None and "of cluster 7499999999999999999, not of cluster 7400000000000000001" \
        in rpo.problem
    md = render_markdown(st, {}, T0 + timedelta(hours=1))
    assert "**RPO: impossible, not met**" in md and "— **met**" not in md.split("## RPO")[1].split("## Steps")[0]
    (story,) = [line for line in end_story(st, T0) if line.alarm]
    assert story.text.startswith("RPO IMPOSSIBLE, not met")
    # The same run with the expected cluster restored: an ordinary verdict.
    b2 = JournalBuilder(["fetch"], data_lost_at=10, params={"source_cluster": "7400000000000000001"})
    b2.shown(1, "fetch", kind="action", command="fetch-latest-backup {}").ran(1, 2, "fetch")
    b2.output(2, "fetch", "snapshot_time", (T0 + timedelta(minutes=9)).isoformat())
    b2.output(2, "fetch", "cluster", "7400000000000000001")
    ok = rpo_facts(b2.finish(12).state())
    assert ok is not None and not ok.impossible and ok.verdict == "met" and ok.window_s == 60


def test_a_recovery_point_at_the_very_moment_of_the_loss_is_still_a_zero_window() -> None:
    b = JournalBuilder(["fetch"], data_lost_at=10)
    b.shown(10, "fetch", kind="action", command="fetch-latest-backup {}").ran(10, 11, "fetch")
    b.output(11, "fetch", "snapshot_time", (T0 + timedelta(minutes=10)).isoformat())
    rpo = rpo_facts(b.finish(12).state())
    assert rpo is not None and not rpo.impossible and rpo.window_s == 0 and rpo.verdict == "met"


def test_a_service_back_before_the_incident_started_is_an_impossible_rto() -> None:
    b = JournalBuilder(["a"], run_start=0)
    b.events[0]["incident_start"] = at(30)  # a wrong --incident-start, or a clock that went backwards
    b.shown(1, "a").ran(1, 2, "a", rto_end=True)
    st = b.finish(3).state()
    rto = rto_facts(st, T0 + timedelta(hours=1))
    assert rto.verdict == "impossible" and rto.problem is not None and "before the incident start" in rto.problem
    md = render_markdown(st, {}, T0 + timedelta(hours=1))
    assert "— **impossible**" in md and "**The RTO cannot be trusted**" in md and "**met**" not in md


def test_a_rehearsal_step_marked_failed_then_skipped_is_reported_as_marked() -> None:
    """The reproduced case: a step marked failed in a rehearsal showed up as "skipped"."""
    b = JournalBuilder(["restore", "verify"], mode="rehearsal")
    b.shown(1, "restore")
    b.add(3, "step-finished", step="restore", status="failed", detail="rehearsed: marked failed", duration_s=120,
          rehearsal=True, note="the dump was on the wrong disk")
    b.add(4, "step-skipped", step="restore", reason="go on without it: tabletop")
    b.shown(4, "verify").add(5, "step-finished", step="verify", status="succeeded", detail="rehearsed: marked "
                                                                                        "succeeded", duration_s=60,
                                                                                        rehearsal=True)
    st = b.finish(6).state()
    md = render_markdown(st, {}, T0 + timedelta(hours=1))
    row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "failed, then" in row and "skipped" in row
    assert "rehearsed: marked failed; skipped: go on without it: tabletop" in row
    assert "note: the dump was on the wrong disk" in row
    html = render_html(st, {}, T0 + timedelta(hours=1))
    assert "failed, then" in html
    assert "note: the dump was on the wrong disk" in html


def test_the_end_of_a_run_tells_the_recovery_point_the_window_and_the_rows_lost() -> None:
    st = logical_drill().state()
    story = end_story(st, T0 + timedelta(hours=2))
    lines = [s.text for s in story]
    snapshot = (T0 - timedelta(hours=9)).isoformat()
    assert lines[0] == f"recovered to {snapshot} (step fetch); data-loss window 9:00:00 (target 5 min): missed"
    assert lines[1] == "rows lost: 42 (step verify)"
    assert [s.alarm for s in story] == [True, False]  # the window missed the target: red
    b = JournalBuilder(["fetch"], data_lost_at=10)
    b.shown(10, "fetch").ran(10, 11, "fetch").output(11, "fetch", "snapshot_time", at(10.5))
    (impossible,) = end_story(b.finish(12).state(), T0)
    assert impossible.alarm and impossible.text.startswith("RPO IMPOSSIBLE, not met: the recovery point")

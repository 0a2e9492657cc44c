"""The RTO clock and its projection: elapsed from the incident start, remaining, projected finish, verdict;
and the expected step durations the projection is made of (runbook.history)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runbook.events import StepStatus
from runbook.history import expected_durations
from runbook.rto import rto_clock
from runbook.state import RunState, StepState

T0 = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


def state(**kw: object) -> RunState:
    st = RunState(run_id="r", targets={"rto_s": 3600.0}, incident_start=T0, started_at=T0 + timedelta(minutes=5))
    for k, v in kw.items():
        setattr(st, k, v)
    return st


def test_elapsed_runs_from_the_incident_start_not_the_run_start() -> None:
    c = rto_clock(state(), T0 + timedelta(minutes=30), {}, [])
    assert c.elapsed_s == 1800 and c.remaining_s == 1800 and c.fraction == 0.5 and c.level == "green"


def test_the_projection_adds_what_the_steps_left_are_expected_to_take() -> None:
    now = T0 + timedelta(minutes=20)
    c = rto_clock(state(), now, {"restore": 1200.0, "verify": 300.0}, ["restore", "verify"])
    assert c.projected_s == 1200 + 1200 + 300 and c.unknown_steps == 0 and c.verdict == "on track"
    late = rto_clock(state(), now, {"restore": 3000.0}, ["restore", "switch"])
    assert late.projected_s == 1200 + 3000 and late.unknown_steps == 1 and late.verdict == "at risk"


def test_nothing_known_about_the_steps_left_means_no_projection() -> None:
    c = rto_clock(state(), T0 + timedelta(minutes=10), {}, ["a", "b"])
    assert c.projected_s is None and c.unknown_steps == 2 and c.verdict == "unknown"


def test_the_clock_stops_when_the_service_is_back() -> None:
    back = state(rto_end_at=T0 + timedelta(minutes=70))
    c = rto_clock(back, T0 + timedelta(hours=5), {"x": 10.0}, ["x"])
    assert c.stopped and c.elapsed_s == 4200 and c.verdict == "missed" and c.level == "red"
    in_time = rto_clock(state(rto_end_at=T0 + timedelta(minutes=50)), T0 + timedelta(hours=5), {}, [])
    assert in_time.verdict == "met"


def test_amber_from_three_quarters_of_the_target() -> None:
    assert rto_clock(state(), T0 + timedelta(minutes=44), {}, []).level == "green"
    assert rto_clock(state(), T0 + timedelta(minutes=45), {}, []).level == "amber"


def run(mode: str, **durations: float) -> RunState:
    st = RunState(run_id=f"r-{mode}-{len(durations)}", mode=mode)
    st.steps = {k: StepState(id=k, status=StepStatus.succeeded, duration_s=v) for k, v in durations.items()}
    return st


def test_expected_durations_are_medians_of_real_successes_over_the_declared_ones() -> None:
    runs = [run("drill", restore=100), run("live", restore=300), run("drill", restore=200),
            run("rehearsal", restore=1, verify=1)]
    failed = run("drill", verify=999)
    failed.steps["verify"].status = StepStatus.failed
    rehearsed = run("drill", notify=5)
    rehearsed.steps["notify"].rehearsed = True
    got = expected_durations([*runs, failed, rehearsed], {"restore": 50.0, "verify": 60.0, "notify": 30.0})
    assert got == {"restore": 200.0, "verify": 60.0, "notify": 30.0}


def test_a_service_back_before_the_incident_start_is_impossible_and_red() -> None:
    back = state(rto_end_at=T0 - timedelta(minutes=5))  # a wrong --incident-start, or a clock gone backwards
    c = rto_clock(back, T0 + timedelta(hours=1), {}, [])
    assert c.impossible and c.verdict == "impossible" and c.level == "red" and c.elapsed_s == 0

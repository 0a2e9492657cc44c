"""`runbook runs`: each run's measured RTO, and the last good live or drill run per scenario (stale ones).

The staleness rule is a pure function with an injected `now` (31 days later: stale); the command line is
checked on real runs made by the real CLI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runbook.errors import Exit
from runbook.staleness import Drill, is_good_drill, last_good_drills
from runbook.state import RunState, fold, list_runs
from tests.conftest import run_cli
from tests.support.journals import JournalBuilder

T0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
NAME = "AssetFlow PostgreSQL disaster recovery"


def run(run_id: str, *, scenario: str = "restore-latest", mode: str = "drill", status: str = "completed",
        day: float = 0, minutes: float = 40) -> RunState:
    """A folded run that started `day` days after T0 and closed `minutes` later, its RTO stopping there."""
    b = JournalBuilder(["a"], mode=mode, scenario=scenario)
    b.shown(0, "a").ran(0, minutes, "a", rto_end=status == "completed",
                        status="succeeded" if status == "completed" else "failed")
    b.finish(minutes, status=status)
    shift = timedelta(days=day)
    for e in b.events:
        for key in ("ts", "incident_start", "data_lost_at"):
            if key in e:
                e[key] = (datetime.fromisoformat(e[key]) + shift).isoformat()
    return fold(run_id, b.events)


def test_a_good_drill_is_fresh_for_30_days_then_stale() -> None:
    runs = [run("r1")]
    ended = T0 + timedelta(minutes=40)
    fresh = last_good_drills(runs, ended + timedelta(days=1))[(NAME, "restore-latest")]
    assert fresh == Drill(NAME, "restore-latest", "r1", "drill", 2400.0, 7200.0, ended, 1.0, stale=False)
    assert fresh.age_text == "1 day"
    assert not last_good_drills(runs, ended + timedelta(days=29, hours=23))[(NAME, "restore-latest")].stale
    late = last_good_drills(runs, ended + timedelta(days=31))[(NAME, "restore-latest")]
    assert late.stale and late.run_id == "r1" and late.age_days == 31 and late.age_text == "31 days"


def test_only_completed_live_or_drill_runs_count_and_the_newest_wins() -> None:
    runs: list[RunState | tuple[str, str]] = [
        run("old-live", mode="live", day=0),
        run("newer-drill", day=10, minutes=55),
        run("rehearsal", mode="rehearsal", day=20),
        run("failed", status="failed", day=25),
        ("broken-run", "the journal was damaged"),
    ]
    assert [is_good_drill(r) for r in runs if isinstance(r, RunState)] == [True, True, False, False]
    d = last_good_drills(runs, T0 + timedelta(days=30))[(NAME, "restore-latest")]
    assert d.run_id == "newer-drill" and d.rto_s == 55 * 60 and not d.stale
    assert round(d.age_days or 0) == 20


def test_scenarios_without_a_good_run_are_stale() -> None:
    runs = [run("r1"), run("pitr-rehearsal", scenario="pitr", mode="rehearsal")]
    drills = last_good_drills(runs, T0 + timedelta(days=2), scenarios={NAME: ["restore-latest", "pitr"],
                                                                         "Other runbook": ["default"]})
    assert list(drills) == [(NAME, "pitr"), (NAME, "restore-latest"), ("Other runbook", "default")]
    assert drills[(NAME, "pitr")].stale and drills[(NAME, "pitr")].run_id is None
    assert drills[(NAME, "pitr")].age_text == "never"
    assert drills[("Other runbook", "default")].stale
    assert not drills[(NAME, "restore-latest")].stale
    # without a runbook file, only what was seen in runs
    assert set(last_good_drills(runs, T0)) == {(NAME, "pitr"), (NAME, "restore-latest")}


RUNBOOK = """
    version: 1
    name: Drilled
    targets: {rto: 1h}
    scenarios:
      one: {help: first}
      two: {help: second}
      three: {help: third}
    steps:
      - {id: a, run: "echo a", confirm: none, rto_end: true}
      - {id: b, run: "echo b", confirm: none}
"""


def test_runs_lists_rto_and_the_last_good_drill_per_scenario(write_runbook, state_dir: Path) -> None:
    path = write_runbook(RUNBOOK)
    base = ["--headless", "--yes", "--state-dir", str(state_dir)]
    for scenario, mode in [("one", "drill"), ("two", "rehearsal")]:
        r = run_cli("run", str(path), "--scenario", scenario, "--mode", mode, *base)
        assert r.returncode == 0, r.stdout + r.stderr
    drill_id = next(x.run_id for x in list_runs(state_dir) if isinstance(x, RunState) and x.scenario == "one")

    r = run_cli("runs", str(path), "--json", "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    by_scenario = {row["scenario"]: row for row in rows}
    one, two, three = by_scenario["one"], by_scenario["two"], by_scenario["three"]
    assert one["run_id"] == drill_id and one["rto_verdict"] == "met" and one["rto_s"] < 60
    assert one["last_good"]["run_id"] == drill_id and one["last_good"]["age_days"] < 1 and not one["stale"]
    assert two["mode"] == "rehearsal" and two["last_good"] is None and two["stale"]  # a rehearsal proves nothing
    assert three == {"run_id": None, "runbook": "Drilled", "scenario": "three", "status": "never run",
                     "last_good": None, "stale": True}

    r = run_cli("runs", str(path), "--state-dir", str(state_dir))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    run_line = next(ln for ln in lines if ln.startswith(drill_id))
    assert "of 1:00:00 (met)" in run_line
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("Last successful"))):]
    one_line = next(ln for ln in table if " one " in ln)
    assert drill_id in one_line and "today" in one_line and "STALE" not in one_line
    assert "never" in next(ln for ln in table if " two " in ln) and "STALE" in next(ln for ln in table if " two " in ln)
    assert "STALE" in next(ln for ln in table if " three " in ln)

    # without the file: only the scenarios that were run
    r = run_cli("runs", "--json", "--state-dir", str(state_dir))
    assert {row["scenario"] for row in json.loads(r.stdout)} == {"one", "two"}


def test_runs_with_an_invalid_runbook_file_is_a_clear_error(write_runbook, state_dir: Path) -> None:
    path = write_runbook("version: 1\nname: x\nsteps: [{id: a}]\n", name="bad.yaml")
    r = run_cli("runs", str(path), "--state-dir", str(state_dir))
    assert r.returncode == Exit.CANNOT_RUN and "bad.yaml" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("runs", "--state-dir", str(state_dir))
    assert r.returncode == 0 and "no runs" in r.stdout

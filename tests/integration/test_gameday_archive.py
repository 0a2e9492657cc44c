"""Game day `archive-broken` (scenario pitr): the primary's archive_command failing for days. `runbook status` is red
before the drill, the runbook's assess step shows it, the PITR cannot reach the target time; played by the
scripted operator once not handled and once handled (recovering to what the archive holds)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import Exit
from steps.sandbox.build import Sandbox
from steps.sandbox.faults import FAULTS, registry
from steps.sandbox.faults.record import for_run
from tests.conftest import ROOT, run_cli
from tests.support.operator import (
    ScriptedOperator,
    assert_debrief,
    assert_no_leak,
    data_points,
    fault_words,
    points,
    reaction_points,
)
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (archive_command)


@pytest.fixture(scope="module")
def place(server_runbook: str) -> Iterator[tuple[Path, ScriptedOperator]]:  # noqa: F811
    base = make_base_dir("runbook-gameday-archive-")
    shutil.copyfile(ROOT / "runbook.yaml", base / "runbook.yaml")
    op = ScriptedOperator(base / "state", env={"RUNBOOK_SERVER_RUNBOOK": server_runbook}, timeout=600)
    try:
        yield base, op
    finally:
        run_cli("demo", "--down", "--dir", str(base / "sandbox"), "--runbook", str(base / "runbook.yaml"),
                "--state-dir", str(base / "state"), timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _fault():  # noqa: ANN202
    registry()
    return FAULTS["archive-broken"]


def test_archive_broken_not_handled(place: tuple[Path, ScriptedOperator]) -> None:
    base, op = place
    sb = Sandbox(base / "sandbox")
    play = op.demo(base / "runbook.yaml", sb.base, scenario="pitr", faults=["archive-broken"], seed=3)
    assert play.code == Exit.RUN_FAILED, play.output[-3000:]
    gd = for_run(sb.base, play.run_id)  # type: ignore[arg-type]
    assert gd is not None
    days = gd.injected[0]["facts"]["days"]
    checks = {e["name"]: e for e in play.of_type("step-check", "assess")}
    assert checks["rpo"]["status"] == "failed"
    assert [e["status"] for e in play.of_type("step-finished", "assess")] == ["succeeded"]  # it shows, not decides
    assert play.outputs("assess")["verdict"] == "red"
    assert f"loses up to {days}" in checks["rpo"]["hint"] and "pg_stat_archiver: archiving is failing" in \
        checks["rpo"]["hint"]
    assert "target beyond the archived WAL" in play.stdout  # the pitr step, short of its target
    # `runbook status` on the sandbox: red, the archive days old.
    st = run_cli("status", "-c", str(sb.config), str(base / "runbook.yaml"), "--state-dir", str(op.state_dir),
                 "--no-cluster")
    assert st.returncode == 2, st.stdout + st.stderr
    assert f"{days}." in st.stdout and "days of data" in st.stdout
    f = _fault()
    events = play.events()
    assert f.evidence_event(events) is not None  # type: ignore[misc]
    assert not f.handled(events)  # type: ignore[misc]
    assert_no_leak([play], fault_words(f))
    d = assert_debrief(play, f)  # --yes stopped at the pitr that fell short: nothing done about it
    assert d.faults[0].acted_at is None and d.faults[0].handled is False and not d.restored
    assert points(d) == {"detect": 20, "recover": 30, "data": 20, "mistakes": 0} and d.score == 30


def test_archive_broken_handled_by_recovering_what_the_archive_holds(place: tuple[Path, ScriptedOperator]) -> None:
    base, op = place
    sb = Sandbox(base / "sandbox")
    first = op.demo(base / "runbook.yaml", sb.base, scenario="pitr", faults=["archive-broken"], seed=4,
                    answers={"pitr": ["confirm", {"note": "archive ends days ago: recovering to its end"},
                                      {"set": {"target_kind": "latest"}}]})
    assert first.code == Exit.LEFT_OPEN, first.output[-3000:]
    new_dir = str(sb.base / "pgdata-pitr-latest")
    second = op.resume(first.run_id, sets={"target_kind": "latest", "pgdata": new_dir},  # type: ignore[arg-type]
                       answers={"pitr": ["retry"]}, confirms={"pitr": new_dir})
    assert second.code == 0, second.output[-3000:]
    assert "check recovery ended: ok" in second.stdout
    f = _fault()
    events = second.events()
    assert f.handled(events)  # type: ignore[misc]
    assert_no_leak([first, second], fault_words(f))
    assert first.debrief() == ""  # left open: nothing told yet
    d = assert_debrief(second, f)
    (fd,) = d.faults
    assert fd.handled is True and fd.acted == "wrote a note at step pitr" and d.retried == ["pitr"] and d.restored
    # the note came seconds after the assess step showed the archive's age; what the archive lacked is data lost
    assert points(d)["detect"] == reaction_points(fd) and d.mistakes == []
    assert d.window_s is not None and d.baseline_rpo_s is not None and d.window_s > d.baseline_rpo_s
    assert points(d)["data"] == data_points(d)
    assert d.score == 100 - sum(points(d).values())

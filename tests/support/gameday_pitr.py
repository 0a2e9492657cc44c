"""A PITR game day for one test: a sandbox directory, a copy of the shipped runbook (the demo writes its profile
beside it), a state directory, and the scripted operator (tests/support/operator.py) that plays it with the server
venv for archive_command/restore_command; `demo --down` and the directory removed afterwards."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runbook.errors import Exit
from steps.sandbox.build import Sandbox
from tests.conftest import ROOT, run_cli
from tests.support.operator import Play, ScriptedOperator
from tests.support.pgcluster import make_base_dir


@dataclass
class PitrGame:
    op: ScriptedOperator
    runbook: Path
    sb: Sandbox
    state: Path

    def demo(self, fault: str, answers: dict[str, list[Any]] | None = None, seed: int = 20,
             scenario: str = "pitr") -> Play:
        return self.op.demo(self.runbook, self.sb.base, scenario=scenario, faults=[fault], seed=seed, files=5,
                            answers=answers)


@contextmanager
def pitr_game(server_runbook: str, name: str) -> Iterator[PitrGame]:
    base = make_base_dir(f"runbook-gameday-{name}-")
    sb = Sandbox(base / "sandbox")
    runbook = base / "runbook.yaml"
    shutil.copyfile(ROOT / "runbook.yaml", runbook)
    state = base / "state"
    op = ScriptedOperator(state, env={"RUNBOOK_SERVER_RUNBOOK": server_runbook}, timeout=400)
    try:
        yield PitrGame(op, runbook, sb, state)
    finally:
        down = run_cli("demo", "--down", "--dir", str(sb.base), "--state-dir", str(state), timeout=120)
        if down.returncode != 0:
            sb.down()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(name="game")
def game_fixture(server_runbook: str, request: pytest.FixtureRequest) -> Iterator[PitrGame]:
    """The PITR game day of one test, named after its module (test_gameday_NAME). A module imports it with
    the server venv's fixture (tests.support.pitr_cluster.server_runbook_fixture)."""
    with pitr_game(server_runbook, request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_gameday_")) as g:
        yield g


def left_open(play: Play) -> bool:
    return play.code == Exit.LEFT_OPEN


def assert_changed_and_retried(play: Play, again: Play, fault: Any, param: str) -> float:
    """A fault found by provision-pitr's check, handled by stopping to change `param` (`play`, left open) and
    retrying the step on resume (`again`, finished): the evidence shown before the retry, the debrief told only
    at the end, with the evidence timed, the action named, and the score rule by rule. Returns when the evidence
    was shown."""
    from steps.sandbox.faults._pitr_common import at, first
    from tests.support.operator import assert_debrief, assert_handled, assert_scored, reaction_points

    events = again.events()
    assert fault.evidence_event is not None and fault.handled is not None
    shown = fault.evidence_event(events)
    retried = first(events, "retry-requested", step="provision-pitr")
    assert shown is not None and retried is not None and shown < at(retried)
    assert fault.handled(events)
    assert play.debrief() == ""  # left open: nothing told yet
    d = assert_debrief(again, fault)
    (fd,) = d.faults
    assert fd.evidence_at is not None and abs(fd.evidence_at.timestamp() - shown) < 1e-3
    assert fd.acted == f"left the run to act outside it (the operator stopped to change parameters ({param}) " \
        "(--answers))" and fd.handled is True
    assert_handled(again, d, retried=["provision-pitr"])
    # refused before anything was restored, then recovered to the target a clean run reaches
    assert_scored(d, detect=reaction_points(fd))
    return float(shown)

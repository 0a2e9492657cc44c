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


def left_open(play: Play) -> bool:
    return play.code == Exit.LEFT_OPEN

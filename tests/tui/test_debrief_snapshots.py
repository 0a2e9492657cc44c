"""Snapshots of the game day's debrief (the summary's `d`), at 80x24 and 160x50, everything fixed as in
test_snapshots.py: the clock, the run id, the operator, the time zone, the state directory; the game day's record
and its fault made here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runbook.clock import parse_iso
from runbook.tui.debrief_screen import DebriefScreen
from runbook.tui.summary_screen import SummaryScreen
from steps.sandbox import faults as fx
from steps.sandbox.faults import Fault, GameContext
from steps.sandbox.faults.record import GameDay, append_ledger
from tests.tui.conftest import until
from tests.tui.test_snapshots import (  # noqa: F401 - the fixtures that fix what the snapshots hold
    SIZES,
    SUMMARY_RUNBOOK,
    _skip_and_give,
    same_everywhere,
    state_dir,
)

GAME = {"game_id": "gd-20261125T025500Z-5eed", "seed": 4711}


def _skipped_pitr(events: list[dict[str, Any]]) -> float | None:
    return next((parse_iso(e["ts"]).timestamp() for e in events
                 if e["type"] == "step-awaiting" and e.get("step") == "pitr"), None)


def _noop(sb: Any, ctx: GameContext) -> dict[str, Any]:
    return {}


@pytest.fixture
def game_day(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    fx.registry()
    fault = Fault(name="wal-gap", title="a WAL segment is missing from the archive", scenarios=("pitr",),
                  story="one archived WAL segment after the base backup was removed from the sandbox's repository",
                  evidence="step pitr stops short of its target and names the missing segment",
                  handling="recover to the best reachable point it offers, and report the larger data loss",
                  phase="after-backup", inject=_noop, evidence_event=_skipped_pitr,
                  handled=lambda events: any(e["type"] == "step-skipped" and e.get("step") == "pitr" for e in events))
    monkeypatch.setattr(fx, "FAULTS", {fault.name: fault})
    append_ledger(state_dir, GameDay(game_id=GAME["game_id"], seed=4711, scenario="pitr", faults=[fault.name],
                                     operator="trainee", created_at="2026-11-25T02:55:00+00:00",
                                     baseline={"rpo_s": 60.0, "rto_s": 1800.0}))


@SIZES
def test_the_debrief_after_the_summary(snap_compare: Any, make_app: Any, game_day: None,
                                       size: tuple[int, int]) -> None:
    app, engine = make_app(SUMMARY_RUNBOOK, frozen=True, mode="drill", game_day=GAME)

    async def before(pilot: Any) -> None:
        await _skip_and_give(app, engine, pilot)
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DebriefScreen))

    assert snap_compare(app, terminal_size=size, run_before=before)

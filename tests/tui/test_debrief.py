"""The game day's debrief in the cockpit: after the summary of a game-day run that ended (d), at 80x24; nothing
of the fault on the run screen before it, and no debrief (nor its key) for a run that is not a game day."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runbook.clock import parse_iso
from runbook.tui.debrief_screen import DebriefScreen
from runbook.tui.modals import TypedConfirmModal
from runbook.tui.run_screen import RunScreen
from runbook.tui.summary_screen import SummaryScreen
from steps.sandbox import faults as fx
from steps.sandbox.faults import Fault, GameContext
from steps.sandbox.faults.record import GameDay, append_ledger
from tests.tui.conftest import types, until, waiting_on

GAME = {"game_id": "gd-20261125T030000Z-beef", "seed": 11}
FAULT = "tui-damaged-dump"

RUNBOOK = """
    version: 1
    name: t
    params:
      flag: {default: ""}
      db_name: {default: app_db}
    steps:
      - id: fetch
        run: test -e {{ flag }} || { echo "sha256 mismatch in 3001.dat"; exit 1; }
      - id: restore
        argv: [echo, restoring, "{{ db_name }}"]
        confirm: {typed: "{{ db_name }}"}
"""


def _fetch_failed(events: list[dict[str, Any]]) -> float | None:
    return next((parse_iso(e["ts"]).timestamp() for e in events
                 if e["type"] == "step-finished" and e.get("step") == "fetch" and e.get("status") == "failed"), None)


def _noop(sb: Any, ctx: GameContext) -> dict[str, Any]:
    return {}


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Fault:
    fx.registry()
    f = Fault(name=FAULT, title="The newest dump is damaged", scenarios=("restore-latest",),
              story="one object overwritten", evidence="fetch fails its sha256 check", handling="retry the fetch",
              phase="after-backup", inject=_noop, evidence_event=_fetch_failed,
              handled=lambda events: any(e["type"] == "step-finished" and e.get("step") == "fetch"
                                         and e.get("status") == "succeeded" for e in events))
    monkeypatch.setattr(fx, "FAULTS", {FAULT: f})
    return f


def screen_text(app: Any) -> str:
    return str(app.export_screenshot()).replace("&#160;", " ")


async def test_a_game_day_ends_on_its_debrief_at_80x24(make_app, state_dir: Path, tmp_path: Path, fault) -> None:
    flag = tmp_path / "fixed"
    append_ledger(state_dir, GameDay(game_id=GAME["game_id"], seed=11, scenario="default", faults=[FAULT],
                                     operator="alice", created_at="2026-11-25T02:59:00+00:00",
                                     baseline={"rpo_s": 1.0}))
    app, engine = make_app(RUNBOOK, mode="drill", sets={"flag": str(flag)}, game_day=GAME)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "fetch", "confirm"))
        await pilot.press("r")
        await until(pilot, waiting_on(app, "fetch", "failed"))
        assert FAULT not in screen_text(app) and "damaged" not in screen_text(app)  # the operator is not told
        flag.touch()
        await pilot.press("t")  # retry: the operator acts on the evidence
        await until(pilot, waiting_on(app, "restore", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press(*"app", "enter")  # a wrong typed value: refused, a mistake
        await until(pilot, lambda: "confirm-refused" in types(engine))
        assert isinstance(app.screen, RunScreen) and FAULT not in screen_text(app)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press(*"app_db", "enter")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        summary = app.screen
        assert summary.debrief is not None
        assert f"score {summary.debrief.score}/100: press d for the debrief" in screen_text(app)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, DebriefScreen))
        d = app.screen.debrief
        # the retry came within a minute of the failure (detect 0), one refused confirmation (10), no recovery
        # point reported (data 20), restored with no clean run to compare (recover 0)
        assert {x.rule: x.points for x in d.deductions} == {"detect": 0, "recover": 0, "data": 20, "mistakes": 10}
        assert d.score == 70
        shown = screen_text(app)
        assert "Game day debrief" in shown and "70/100" in shown
        assert f"{FAULT}: The newest dump is damaged" in shown
        title = app.screen.query_one("#debrief-title")
        assert title.region.y == 0 and title.region.right <= 80
        assert app.screen.query_one("#debrief").region.bottom <= 23  # above the footer, scrolls within 24 rows
        await pilot.press("end")
        await pilot.pause(0.1)
        assert "mistakes −10 of 30" in screen_text(app)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))


async def test_a_run_that_is_no_game_day_has_no_debrief(make_app) -> None:
    app, engine = make_app(RUNBOOK.replace('test -e {{ flag }} || { echo "sha256 mismatch in 3001.dat"; exit 1; }', "echo fetched"), mode="drill")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, waiting_on(app, "fetch", "confirm"))
        await pilot.press("r")
        await until(pilot, waiting_on(app, "restore", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, TypedConfirmModal))
        await pilot.press(*"app_db", "enter")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert app.screen.debrief is None and "Game day" not in screen_text(app)
        await pilot.press("d")
        await pilot.pause(0.2)
        assert isinstance(app.screen, SummaryScreen)

"""An error in a worker (a key's action, the consumer of the engine's events) is never lost: the operator
sees it in a modal, the journal records it, and the run stays open and resumable."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import Static

from runbook.errors import RunbookError
from runbook.events import StepStatus
from runbook.tui.modals import ErrorModal, TextModal
from runbook.tui.run_screen import RunScreen
from runbook.tui.summary_screen import SummaryScreen
from tests.tui.conftest import journal, types, until, waiting_on

ONE_STEP = """
    version: 1
    name: t
    steps:
      - id: hello
        run: echo hello
"""


def error_text(app: Any) -> str:
    screen = app.screen
    assert isinstance(screen, ErrorModal)
    return f"{screen.title_text}\n{screen.query_one('#error-body', Static).content}"


async def test_an_unexpected_error_in_a_key_action_is_shown_journaled_and_the_run_stays_open(
        make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    app, engine = make_app(ONE_STEP)
    real_confirm = engine.confirm

    async def broken_confirm(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the confirm path broke")

    monkeypatch.setattr(engine, "confirm", broken_confirm)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, waiting_on(app, "hello", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ErrorModal))
        text = error_text(app)
        assert "Unexpected error" in text
        assert "RuntimeError: the confirm path broke" in text
        assert f"runbook resume {engine.run_id}" in text
        assert "Traceback" not in text

        (entry,) = [e for e in journal(engine) if e["type"] == "frontend-error"]
        assert entry["error"] == "RuntimeError" and entry["message"] == "the confirm path broke"
        assert entry["source"] == "tui" and entry["where"] == "action_go" and entry["step"] == "hello"
        log = engine.ctx.rdir / entry["log"]
        assert "Traceback" in log.read_text() and "the confirm path broke" in log.read_text()

        # Nothing closed: the app runs, the run is open, the step still waits for the operator.
        assert app.is_running and app.return_value is None
        assert engine.finished is None and not engine.state.closed
        assert "run-finished" not in types(engine) and "run-detached" not in types(engine)
        assert engine.state.steps["hello"].status == StepStatus.awaiting

        await pilot.press("enter")  # OK
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        monkeypatch.setattr(engine, "confirm", real_confirm)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert engine.state.steps["hello"].status == StepStatus.succeeded


async def test_a_runbook_error_shows_its_message_and_hint_without_a_traceback(
        make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    app, engine = make_app(ONE_STEP)

    async def refused_note(text: str) -> None:
        raise RunbookError("notes are refused right now", hint="write it down on paper and add it later")

    monkeypatch.setattr(engine, "note", refused_note)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, waiting_on(app, "hello", "confirm"))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        await pilot.press(*"DBA paged", "enter")
        await until(pilot, lambda: isinstance(app.screen, ErrorModal))
        text = error_text(app)
        assert "notes are refused right now" in text
        assert "hint: write it down on paper and add it later" in text
        assert "RunbookError" not in text and "Traceback" not in text
        assert f"runbook resume {engine.run_id}" in text

        (entry,) = [e for e in journal(engine) if e["type"] == "frontend-error"]
        assert entry["message"] == "notes are refused right now"
        assert entry["hint"] == "write it down on paper and add it later"
        assert entry["log"] == ""
        assert not (engine.ctx.rdir / "tui-error.log").exists()
        assert app.is_running and engine.finished is None and not engine.state.closed


async def test_a_failed_event_consumer_is_reported_and_started_again(
        make_app, monkeypatch: pytest.MonkeyPatch) -> None:
    app, engine = make_app("""
        version: 1
        name: t
        steps:
          - {id: one, run: echo one}
          - {id: two, run: echo two}
    """)
    real_on_event = RunScreen._on_event
    failed: list[str] = []

    def on_event_failing_once(self: RunScreen, e: Any) -> None:
        if type(e).__name__ == "StepFinished" and not failed:
            failed.append(e.step_id)
            raise ValueError("could not draw the result")
        real_on_event(self, e)

    monkeypatch.setattr(RunScreen, "_on_event", on_event_failing_once)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, waiting_on(app, "one", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ErrorModal))
        assert "ValueError: could not draw the result" in error_text(app)
        (entry,) = [e for e in journal(engine) if e["type"] == "frontend-error"]
        assert entry["where"] == "consume" and entry["error"] == "ValueError"
        assert failed == ["one"]
        await pilot.press("enter")
        # The new consumer follows the run: the next step is shown and runs, the run completes.
        await until(pilot, waiting_on(app, "two", "confirm"))
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert engine.state.status == "completed"

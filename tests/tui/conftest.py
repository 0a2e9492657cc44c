"""TUI fixtures: an engine over a small runbook, the app around it, and helpers that wait instead of sleeping."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runbook.clock import Clock, FrozenClock
from runbook.engine import Engine
from runbook.journal import read_journal
from runbook.session import RunOptions, open_new_run
from runbook.tui import run_screen
from runbook.tui.app import RunbookApp

FROZEN_AT = datetime(2026, 11, 25, 3, 42, 10, tzinfo=UTC)
INCIDENT = "2026-11-25T03:00:00+00:00"


@pytest.fixture(autouse=True)
def short_key_guard(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Most tests press keys right after a step appears; the guard has its own test with the real delay."""
    if "real_guard" not in request.keywords:
        monkeypatch.setattr(run_screen, "ARM_DELAY_S", 0.0)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This host's local time is UTC for the test, whatever the machine says (the screens show local times)."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def relative_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A relative state directory (the test runs in its temporary directory): paths on screen are the same on
    every machine, and as long as an operator's."""
    monkeypatch.chdir(tmp_path)
    d = Path("var/lib/runbook")
    d.mkdir(parents=True)
    return d


@pytest.fixture
def make_app(tmp_path: Path, state_dir: Path) -> Callable[..., tuple[RunbookApp, Engine]]:
    def make(text: str, *, mode: str = "live", frozen: bool = False, **kw: Any) -> tuple[RunbookApp, Engine]:
        path = tmp_path / "rb.yaml"
        path.write_text(textwrap.dedent(text).lstrip())
        clock: Clock = FrozenClock(FROZEN_AT) if frozen else Clock()
        opts = RunOptions(runbook_path=path, mode=mode, incident_start=INCIDENT if frozen else None, **kw)
        engine = open_new_run(opts, clock, state_dir=state_dir)
        return RunbookApp(clock=clock, state_dir=state_dir, engine=engine), engine

    return make


async def until(pilot: Any, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait (the app keeps running) until `predicate()` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def journal(engine: Engine) -> list[dict[str, Any]]:
    return read_journal(engine.ctx.rdir / "journal.jsonl").events


def types(engine: Engine) -> list[str]:
    return [e["type"] for e in journal(engine)]


def waiting_on(app: RunbookApp, step: str, wait: str | None = None) -> Callable[[], bool]:
    def check() -> bool:
        screen = app.screen
        w = getattr(screen, "waiting", None)
        return w is not None and w.step_id == step and (wait is None or w.wait.value == wait)

    return check

"""Snapshots of the watch cockpit (`runbook watch`), at 80x24 (a laptop over SSH) and 160x50, like the driver's
screens in test_snapshots.py: a run in the middle of its restore step, followed read-only, and the same run
once its driver went silent. Everything on them is fixed: the clock, the run id, the operator, the time zone,
and a relative state directory."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from runbook.clock import FrozenClock
from runbook.tui import watch_screen
from runbook.tui.watch_screen import WatchApp, WatchScreen, WatchSummaryScreen
from runbook.watching import open_local
from tests.support.watched import RUN_ID, HandDriver
from tests.tui.conftest import FROZEN_AT, relative_state_dir, until

SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 50)], ids=["80x24", "160x50"])


pytestmark = pytest.mark.usefixtures("utc")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return relative_state_dir(tmp_path, monkeypatch)


def _restoring(state_dir: Path) -> tuple[HandDriver, FrozenClock]:
    """A drill started at 03:20 (the incident at 03:00), in its restore step at 03:42:10."""
    clock = FrozenClock(FROZEN_AT - timedelta(minutes=22, seconds=10))
    d = HandDriver(state_dir, clock)
    d.at(20).manual("tell", acked=2)
    d.at(23).finished("tell", duration_s=180)
    d.at(24).run("fetch", "fetch-latest-backup --dest /var/tmp/restore")
    d.output("fetch", "picked 20261124T180000Z")
    d.at(33).event("step-output", step="fetch", name="snapshot_time", value="2026-11-24T18:00:00+00:00")
    d.at(35).finished("fetch", duration_s=660)
    d.at(36).run("restore", "pg_restore --dbname assetflow_prod --jobs=4 --exit-on-error")
    d.output("restore", "pg_restore: creating TABLE public.assets", "pg_restore: processing item 3105 TABLE DATA loans")
    clock.advance(FROZEN_AT - clock.now())
    return d, clock


@SIZES
def test_watching_a_restore(snap_compare: Any, state_dir: Path, size: tuple[int, int]) -> None:
    d, clock = _restoring(state_dir)
    app = WatchApp(open_local(state_dir, RUN_ID, clock=clock), poll_s=0.05)

    async def before(pilot: Any) -> None:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and
                    "pg_restore: processing item 3105 TABLE DATA loans" in app.screen._lines)
        await pilot.pause(0.3)

    try:
        assert snap_compare(app, terminal_size=size, run_before=before)
    finally:
        d.release()


@SIZES
def test_watching_a_silent_driver(snap_compare: Any, state_dir: Path, size: tuple[int, int],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    d, clock = _restoring(state_dir)
    holder = d.lock_path.read_text()
    d.release()  # the driver's process is gone; the lock file still names it
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    d.lock_path.write_text(holder.replace(f'"pid": {os.getpid()}', f'"pid": {p.pid}'))
    clock.advance(timedelta(minutes=4))
    shown = watch_screen.banner_text

    def same_pid(view: Any) -> tuple[str, str]:  # the gone pid differs from run to run: shown as 99999
        text, cls = shown(view)
        return text.replace(f"pid {p.pid}", "pid 99999"), cls

    monkeypatch.setattr(watch_screen, "banner_text", same_pid)
    app = WatchApp(open_local(state_dir, RUN_ID, clock=clock), poll_s=0.05)

    async def before(pilot: Any) -> None:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.query_one("#watch-banner")
                    .has_class("silent"))
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=size, run_before=before)


@SIZES
def test_watching_the_end(snap_compare: Any, state_dir: Path, size: tuple[int, int]) -> None:
    d, clock = _restoring(state_dir)
    d.at(58).finished("restore", duration_s=1320)
    d.event("step-skipped", step="verify", reason="drill: checked by hand")
    d.at(59).close("completed")
    app = WatchApp(open_local(state_dir, RUN_ID, clock=clock), poll_s=0.05)

    async def before(pilot: Any) -> None:
        await until(pilot, lambda: isinstance(app.screen, WatchSummaryScreen))
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=size, run_before=before)

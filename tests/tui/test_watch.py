"""The watch cockpit through Textual's pilot: it replays the journal so far, follows what the driver writes next,
turns into the summary when the run ends, says when the driver went silent, binds no key that would change the
run, and leaves the run directory and its lock exactly as they were."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from textual.widgets import Static

from runbook.clock import FrozenClock
from runbook.journal import read_journal
from runbook.tui.run_screen import RunScreen
from runbook.tui.watch_screen import WatchApp, WatchScreen, WatchSummaryScreen
from runbook.watching import SourceStatus, WatchedRun, open_local
from tests.support.watched import RUN_ID, HandDriver, flocks_on, tree
from tests.tui.conftest import FROZEN_AT, until

POLL = 0.05


pytestmark = pytest.mark.usefixtures("utc")  # the banner's times are this host's local time


def _text(app: WatchApp, selector: str) -> str:
    """What a Static shows, as plain text (a Text, or a renderable such as the header's, printed)."""
    content = app.screen.query_one(selector, Static).content
    if isinstance(content, (str, Text)):
        return str(content)
    console = Console(width=app.size.width, file=io.StringIO(), color_system=None)
    with console.capture() as cap:
        console.print(content)
    return cap.get()


def _driving(state_dir: Path, *, told: bool = True) -> tuple[FrozenClock, HandDriver]:
    """The clock stopped at FROZEN_AT and a driver at 03:20 in the tell step's checklist: told, both items acked
    and the step finished at 03:23 (3 min); else one item acked, the step still running."""
    clock = FrozenClock(FROZEN_AT)
    d = HandDriver(state_dir, clock)
    if told:
        d.at(20).manual("tell", acked=2)
        d.at(23).finished("tell", duration_s=180)
    else:
        d.at(20).manual("tell", acked=1)
    return clock, d


def _app(state_dir: Path, clock: FrozenClock, given: str = RUN_ID) -> WatchApp:
    return WatchApp(open_local(state_dir, given, clock=clock), poll_s=POLL)


async def test_replays_the_journal_so_far_then_follows_the_driver(state_dir: Path) -> None:
    clock, d = _driving(state_dir)
    d.at(24).run("fetch", "fetch-latest-backup --dest /var/tmp/restore")
    d.output("fetch", "listing s3://backups/assetflow/", "picked 20261124T180000Z")
    app = _app(state_dir, clock, given=RUN_ID[:12])  # a unique prefix names the run
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.running == "fetch")
        screen = app.screen
        assert isinstance(screen, WatchScreen)
        steps = _text(app, "#steps")
        assert "✓  1 Tell stakeholders" in steps and "▶  2 Fetch the newest backup" in steps
        assert "·  3 Restore" in steps
        assert "picked 20261124T180000Z" in screen._lines and screen._lines[0] == "── fetch: attempt 1 ──"
        assert "$ fetch-latest-backup --dest /var/tmp/restore" in _text(app, "#command")
        banner = _text(app, "#watch-banner")
        assert banner.startswith("WATCHING — read-only, driven by oncall@db-recovery-1 since ")
        header = _text(app, "#header")
        assert "RTO 0:24:00 of 2:00:00" in header and "DRILL" in header  # the clock stands at 03:24
        # the projection: 24 min so far, and the expected 10 + 30 + 3 min of the steps left (the runbook's)
        assert "1:36:00 left · projected 1:07:00 on track" in header
        assert "oncall@db-recovery-1 drives" in _text(app, "#hint")

        # the driver goes on: new output, a named output, the step's end, the next step shown
        d.output("fetch", "downloaded 1.2 GB")
        await until(pilot, lambda: "downloaded 1.2 GB" in screen._lines)
        d.at(33).event("step-output", step="fetch", name="snapshot_time", value="2026-11-24T18:00:00+00:00")
        await until(pilot, lambda: "→ snapshot_time = 2026-11-24T18:00:00+00:00" in screen._lines)
        assert "snapshot_time" in _text(app, "#facts")
        d.at(35).finished("fetch", duration_s=660)
        d.event("step-awaiting", step="restore", command="pg_restore --dbname assetflow_prod", kind="run")
        await until(pilot, lambda: screen.focus_step == "restore")
        assert screen.running is None and "✓  2 Fetch the newest backup" in _text(app, "#steps")
        assert "Waiting for oncall@db-recovery-1 to run or skip this step" in _text(app, "#hint")
        assert "DANGER" in _text(app, "#step-title")
        assert "$ pg_restore --dbname assetflow_prod" in _text(app, "#command")
    d.release()


async def test_the_end_of_the_run_shows_the_summary(state_dir: Path) -> None:
    clock, d = _driving(state_dir)
    app = _app(state_dir, clock)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.focus_step == "tell")
        d.at(40).event("step-skipped", step="fetch", reason="drill: no backup here")
        for sid in ("restore", "verify"):
            d.event("step-skipped", step=sid, reason="drill")
        d.at(41).close("completed")
        await until(pilot, lambda: isinstance(app.screen, WatchSummaryScreen) and bool(app.screen.query("#summary-body")))
        body = _text(app, "#summary-body")
        assert "COMPLETED" in body and "RTO" in body and "0:41:00 of 2:00:00" in body
        assert "fetch: drill: no backup here" in body
        assert "press w" not in body and f"runbook report {RUN_ID}" in body
        assert "the run has ended (completed)" in _text(app, "#watch-banner")
        keys = set(app.screen._bindings.key_to_bindings)
        assert "w" not in keys  # no report written from here: a watcher writes nothing
        await pilot.press("w")
        assert not (d.rdir / "report.md").exists()
        await pilot.press("q")
    assert app.return_value == 0


async def test_a_run_that_has_ended_opens_on_its_summary(state_dir: Path) -> None:
    clock, d = _driving(state_dir)
    d.at(30).close("aborted")
    app = _app(state_dir, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchSummaryScreen) and bool(app.screen.query("#summary-body")))
        assert "ABORTED" in _text(app, "#summary-body")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


async def test_a_silent_driver_is_said_with_since_when(state_dir: Path) -> None:
    """The driver's process dies mid-run (its claim stays in the lock file, its pid is gone): the banner turns to
    SILENT with the time it was last heard, and back when a driver holds the run again."""
    clock, d = _driving(state_dir, told=False)
    app = _app(state_dir, clock)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.focus_step == "tell")
        assert "SILENT" not in _text(app, "#watch-banner")
        holder = d.lock_path.read_text()
        d.release()  # the driver's process ends without closing the run: the file still names it ...
        dead = _dead_pid()
        d.lock_path.write_text(holder.replace(f'"pid": {os.getpid()}', f'"pid": {dead}'))  # ... with a gone pid
        clock.advance(timedelta(minutes=3))
        await until(pilot, lambda: "SILENT" in _text(app, "#watch-banner"))
        banner = _text(app, "#watch-banner")
        assert "the driver oncall@db-recovery-1 is SILENT: nothing heard since 03:20:00 (0:03:00 ago)" in banner
        assert f"pid {dead}" in banner and "gone" in banner
        assert app.screen.query_one("#watch-banner").has_class("silent")
        assert app.view.last_status.silent_s == 180  # the last event was journaled at 03:20, it is 03:23
        # a resume takes the run up again: the lock names a live process, the journal the new driver
        d.lock_path.write_text(holder)
        await until(pilot, lambda: "SILENT" not in _text(app, "#watch-banner"))


async def test_no_key_changes_the_run_and_nothing_is_written(state_dir: Path) -> None:
    clock, d = _driving(state_dir)
    d.at(24).run("fetch", "fetch-latest-backup")
    d.output("fetch", "working")
    before = tree(state_dir)
    events = read_journal(d.rdir / "journal.jsonl").events
    app = _app(state_dir, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and "working" in app.screen._lines)
        keys = set(app.screen._bindings.key_to_bindings)
        assert keys == {"q", "o", "w", "j", "a", "question_mark"}  # a: approve, only when a step waits for it
        driver_keys = {b.key for b in RunScreen.BINDINGS if hasattr(b, "key")}  # type: ignore[union-attr]
        assert {"r", "s", "c", "n", "t", "e", "d", "f"} <= driver_keys  # what the driver has, the watcher not
        assert flocks_on(d.lock_path) == 1  # the driver's, and no other
        for key in ("r", "s", "a", "c", "n", "t", "e", "d", "f", "enter", "space", "y"):
            await pilot.press(key)
        await pilot.press("o")
        await pilot.press("o")
        await pilot.press("w")
        await pilot.press("j")
        await until(pilot, lambda: not isinstance(app.screen, WatchScreen))
        await pilot.press("escape")
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, WatchScreen))
        assert flocks_on(d.lock_path) == 1
        await pilot.press("q")
    assert app.return_value == 0
    assert read_journal(d.rdir / "journal.jsonl").events == events
    assert tree(state_dir) == before  # byte for byte, modes and times: the watcher wrote nothing
    d.release()


async def test_several_watchers_at_once(state_dir: Path) -> None:
    clock, d = _driving(state_dir, told=False)
    first, second = _app(state_dir, clock), _app(state_dir, clock)
    async with first.run_test(size=(80, 24)) as p1, second.run_test(size=(160, 50)) as p2:
        for app, pilot in ((first, p1), (second, p2)):
            await until(pilot, lambda app=app: isinstance(app.screen, WatchScreen) and app.screen.focus_step == "tell")
        d.at(22).event("item-acked", step="tell", index=1, item="Page the service owner", how="key r")
        d.finished("tell")
        d.at(23).run("fetch", "fetch-latest-backup")
        for app, pilot in ((first, p1), (second, p2)):
            await until(pilot, lambda app=app: app.screen.running == "fetch")
            assert "✓  1 Tel" in _text(app, "#steps")
    d.release()



async def test_a_journal_edited_under_the_watcher_stops_it_and_says_where(state_dir: Path) -> None:
    """A note full of markup is shown as text; a journal line changed after it was written stops the following,
    the banner naming the line (the watcher shows nothing the chain does not vouch for)."""
    clock, d = _driving(state_dir, told=False)
    app = _app(state_dir, clock)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.focus_step == "tell")
        d.event("note", step="tell", text="[bold]disk [/] busy [link=x]")
        await until(pilot, lambda: any(n.message == "\\[bold]disk \\[/] busy \\[link=x]" for n in app._notifications))
        path = d.rdir / "journal.jsonl"
        lines = path.read_bytes().split(b"\n")
        seq = len(lines)  # the line the driver writes next
        d.event("item-acked", step="tell", index=1, item="Page the service owner", how="key r")
        data = path.read_bytes()
        path.write_bytes(data.replace(b'"index":1', b'"index":0'))
        await until(pilot, lambda: "stopped following" in _text(app, "#watch-banner"))
        banner = _text(app, "#watch-banner")
        assert f"journal.jsonl:{seq}: this line was changed after it was written" in banner
        assert app.screen.query_one("#watch-banner").has_class("broken")
        assert app.view.state.steps["tell"].acked == [0]  # the edited line was not applied
    d.release()


class Relayed:
    """Another EventSource than a local run directory (the way a repository's mirror plugs in): it hands over the
    events of a journal written elsewhere, as many as it was given so far, and knows no run directory here."""

    def __init__(self, events: list[dict[str, object]]) -> None:
        self.events = events
        self.given = 0
        self.shown = 0

    def describe(self) -> str:
        return "run 20261125T031000Z-restore-latest-5eed via a relay"

    def poll(self) -> list[dict[str, object]]:
        new = self.events[self.shown:self.given]
        self.shown = self.given
        return new

    def status(self) -> SourceStatus:
        ended = self.shown == len(self.events)
        return SourceStatus(ended=ended, last_heard=None, silent_s=None, note="" if ended else "relayed")


async def test_another_source_plugs_in_without_a_run_directory(state_dir: Path) -> None:
    clock, d = _driving(state_dir)
    d.at(24).run("fetch", "fetch-latest-backup")
    d.at(30).finished("fetch", duration_s=360)
    for sid in ("restore", "verify"):
        d.event("step-skipped", step=sid, reason="drill")
    d.at(31).close("completed")
    relay = Relayed(read_journal(d.rdir / "journal.jsonl").events)
    relay.given = 8  # up to fetch's start
    view = WatchedRun(relay, runbook=d.runbook, clock=clock)
    app = WatchApp(view, poll_s=POLL)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.running == "fetch")
        assert "relayed" in _text(app, "#watch-banner") and "✓  1 Tell stakeholders" in _text(app, "#steps")
        await pilot.press("j")  # no journal file on this host: said, nothing opened
        await pilot.pause(0.1)
        assert isinstance(app.screen, WatchScreen)
        relay.given = len(relay.events)
        await until(pilot, lambda: isinstance(app.screen, WatchSummaryScreen) and bool(app.screen.query("#summary-body")))
        body = _text(app, "#summary-body")
        assert "COMPLETED" in body and "not on this host: run 20261125T031000Z-restore-latest-5eed via a relay" in body
        assert f"runbook report {RUN_ID}, on the host that ran it" in body
    d.release()


def _awaiting_approval(state_dir: Path, clock: FrozenClock, driver_uid: int) -> tuple[HandDriver, dict[str, object]]:
    """The driver waits for another operator's approval of `restore` (a danger step), as the engine writes it:
    the journal's approval-awaited, the pending approval (its command with secrets masked) and `requests/`."""
    from runbook.requests import command_hash, ensure_requests_dir, write_pending

    d = HandDriver(state_dir, clock, mode="live")
    d.at(20).manual("tell", acked=2)
    d.at(23).finished("tell", duration_s=180)
    d.at(24).run("fetch", "echo fetched")
    d.at(25).finished("fetch")
    shown = "pg_restore --dbname assetflow_prod --jobs=4 --exit-on-error --password ******"
    d.at(26).event("step-awaiting", step="restore", command=shown, kind="run")
    digest = command_hash(RUN_ID, "restore", shown, None)
    d.event("approval-awaited", step="restore", command_hash=digest)
    ensure_requests_dir(d.rdir)
    pending: dict[str, object] = {
        "run_id": RUN_ID, "step": "restore", "title": "Restore into the new database", "command": shown,
        "items": None, "hash": digest, "nonce": "ab" * 8, "mode": "live",
        "driver": {"user": "oncall", "uid": driver_uid, "host": "db-recovery-1"}, "since": "2026-11-25T03:26:00Z"}
    write_pending(d.rdir, pending)
    return d, pending


async def test_a_watcher_approves_with_the_a_key_through_the_verified_path(state_dir: Path) -> None:
    """Another operator watching presses a: the command with its values (the secret masked), the step id typed,
    and the request lands in requests/ where the driver's check (runbook.requests.check_approval) accepts it.
    A wrong id approves nothing."""
    from runbook.requests import Request, check_approval, read_requests
    from runbook.tui.modals import TextModal

    clock = FrozenClock(FROZEN_AT)
    driver_uid = os.geteuid() + 1  # the driver is another user than this watcher
    d, pending = _awaiting_approval(state_dir, clock, driver_uid)
    app = _app(state_dir, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.waiting is not None
                    and app.screen.waiting.step_id == "restore")
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        modal = app.screen
        assert modal.command is not None and "--password ******" in modal.command
        assert "pg_restore --dbname assetflow_prod" in modal.command
        for ch in "fetch":  # the wrong step id
            await pilot.press(ch)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, WatchScreen))
        assert read_requests(d.rdir) == []  # nothing was sent
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, TextModal))
        for ch in "restore":
            await pilot.press(ch)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, WatchScreen))
        await pilot.press("q")
    got = read_requests(d.rdir)
    assert len(got) == 1 and isinstance(got[0], Request)
    req = got[0]
    assert req.kind == "approve" and req.uid == os.geteuid()
    assert check_approval(req, run_id=RUN_ID, step_id="restore", nonce=str(pending["nonce"]),
                          expected_hash=str(pending["hash"]), driver_uid=driver_uid) is None
    d.release()


async def test_the_drivers_own_user_cannot_approve_from_the_watch_cockpit(state_dir: Path) -> None:
    clock = FrozenClock(FROZEN_AT)
    d, _ = _awaiting_approval(state_dir, clock, os.geteuid())
    app = _app(state_dir, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, WatchScreen) and app.screen.waiting is not None
                    and app.screen.waiting.step_id == "restore")
        await pilot.press("a")
        await pilot.pause(0.2)
        assert isinstance(app.screen, WatchScreen)  # no dialog: refused at once
        said = [n.message for n in app._notifications]
        assert any("the driver cannot approve their own step" in m for m in said), said
        await pilot.press("q")
    assert not list((d.rdir / "requests").iterdir())
    d.release()

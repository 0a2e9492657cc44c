"""`runbook watch` and `runbook serve` from the command line, against a real driver (`runbook run --headless` in
its own process): watchers in text mode follow it to its end, the browser view renders in headless Chromium behind
its token, and wrong run ids or a missing terminal are refused before anything starts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from runbook.journal import read_journal
from tests.conftest import ROOT, run_cli
from tests.support.browser import chromium
from tests.support.watched import RealDriver


def _watch_headless(state_dir: Path, given: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "runbook", "watch", given, "--headless", "--state-dir",
                             str(state_dir)], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TZ": "UTC"})


def test_two_headless_watchers_follow_a_real_run_to_its_end(tmp_path: Path, state_dir: Path) -> None:
    driver = RealDriver(tmp_path, state_dir, chunks=8, pause=0.25)
    try:
        run_id = driver.run_id()
        watchers = [_watch_headless(state_dir, run_id[:15]), _watch_headless(state_dir, run_id)]
        outs = [w.communicate(timeout=90) for w in watchers]
        assert driver.wait() == 0
    finally:
        driver.stop()
    events = read_journal(state_dir / "runs" / run_id / "journal.jsonl").events
    for w, (out, err) in zip(watchers, outs, strict=True):
        assert w.returncode == 0, err
        lines = out.splitlines()
        assert lines[0].startswith(f"watching run {run_id} in ") and "read-only" in lines[0]
        # every journal event, one line each; the restore's output lines between its start and its end
        assert sum(1 for ln in lines if re.match(r"\d\d:\d\d:\d\d  ", ln)) == len(events)
        chunks = [ln.strip() for ln in lines if "restored chunk" in ln]
        assert chunks == [f"| restored chunk {i}" for i in range(1, 9)]
        started = next(i for i, ln in enumerate(lines) if "2/3 restore  started" in ln)
        finished = next(i for i, ln in enumerate(lines) if "2/3 restore  finished: succeeded" in ln)
        assert started < lines.index("          | restored chunk 1") < finished
        assert "-- the run has ended: completed" in lines
        assert any(ln.startswith("   RTO ") and "service restored" in ln for ln in lines)


def test_an_unknown_or_ambiguous_run_id_is_refused(state_dir: Path) -> None:
    for rid in ("20261125T0310Z-a-1111", "20261125T0310Z-a-2222"):
        (state_dir / "runs" / rid).mkdir(parents=True)
        (state_dir / "runs" / rid / "journal.jsonl").write_text("")
    for command in ("watch", "serve"):
        r = run_cli(command, "nope", "--headless" if command == "watch" else "--port=0", "--state-dir", str(state_dir))
        assert r.returncode == 3 and "no run nope under" in r.stderr and "runbook runs" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
        r = run_cli(command, "20261125", "--state-dir", str(state_dir))
        assert r.returncode == 3 and "names 2 runs" in r.stderr and "give more of the run id" in r.stderr


def test_the_cockpit_needs_a_terminal(tmp_path: Path, state_dir: Path) -> None:
    (state_dir / "runs" / "r1").mkdir(parents=True)
    (state_dir / "runs" / "r1" / "journal.jsonl").write_text("")
    r = run_cli("watch", "r1", "--state-dir", str(state_dir))
    assert r.returncode == 3 and "needs a terminal" in r.stderr and "--headless" in r.stderr


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a loopback URL the test made
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def test_serve_shows_the_cockpit_in_chromium_behind_its_token(tmp_path: Path, state_dir: Path) -> None:
    driver = RealDriver(tmp_path, state_dir, chunks=400, pause=0.25)  # the restore runs while the browser looks
    server: subprocess.Popen[str] | None = None
    try:
        run_id = driver.run_id()
        server = subprocess.Popen([sys.executable, "-m", "runbook", "serve", run_id, "--state-dir", str(state_dir)],
                                  cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        assert server.stdout is not None
        said = [server.stdout.readline() for _ in range(2)]
        match = re.search(r"(http://127\.0\.0\.1:(\d+)/)\?token=([A-Za-z0-9_-]{32})", said[1])
        assert said[0].startswith(f"serving the watch cockpit of run {run_id}") and match, said
        base, port, token = match.group(1), match.group(2), match.group(3)
        url = f"{base}?token={token}"
        # no token, a wrong one, the websocket without it: refused, and no cockpit
        for wrong in (base, f"{base}?token=", f"{base}?token={token[:-1]}x", f"{base}ws/x", f"{base}ws/{token}x"):
            status, body = _get(wrong)
            assert status == 403 and "needs the token" in body, (wrong, status)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"ws://127.0.0.1:{port}/ws/not-the-token")
            assert refused.value.status == 403
        status, page = _get(url)
        assert status == 200 and f"ws://127.0.0.1:{port}/ws/{token}" in page
        async with chromium(tmp_path) as browser:
            await browser.open(f"{base}?token=nope")
            await _until(lambda: browser.body_text(), "needs the token")
            assert await browser.terminal_text() is None  # no terminal on the refused page
            await browser.open(url)
            # the whole screen drawn (a resize to the browser's window redraws it in pieces)
            shown = await browser.wait_for_terminal(
                "WATCHING — read-only, driven by ", "✓  1 Warm up the standby", "▶  2 Restore the database",
                "·  3 Verify the rows", "DRILL", "of 1:00:00", "restored chunk", "q Quit")
        lines = shown.splitlines()
        assert any("RTO 0:0" in ln and "of 1:00:00" in ln and "DRILL" in ln for ln in lines)
        assert any("✓  1 Warm up the standby" in ln for ln in lines)
        assert any("▶  2 Restore the database" in ln for ln in lines)
        assert any("·  3 Verify the rows" in ln for ln in lines)
        assert "Run/confirm" not in shown and "Skip" not in shown and "q Quit" in shown
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            finally:
                with_children_gone(server.pid)
        driver.stop()
    assert server.returncode == 0


def with_children_gone(pgid: int, timeout: float = 10) -> None:
    """Every process of the server's session (each browser's `runbook watch`) ends with it; killed if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError("a served cockpit outlived `runbook serve`")


async def _until(get: object, text: str, timeout: float = 20) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    shown = ""
    while time.monotonic() < deadline:
        shown = await get()  # type: ignore[operator]
        if text in shown:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; the page says: {shown!r}")


def test_a_damaged_journal_is_refused_naming_the_line(tmp_path: Path, state_dir: Path) -> None:
    from datetime import UTC, datetime

    from runbook.clock import FrozenClock
    from runbook.journal import Journal

    rdir = state_dir / "runs" / "r1"
    j = Journal(rdir / "journal.jsonl", FrozenClock(datetime(2026, 11, 25, 3, 0, tzinfo=UTC)))
    j.append("run-started", run_id="r1", runbook={"name": "x"}, scenario="s", mode="drill", steps=["a"])
    j.append("note", text="fine")
    j.append("note", text="also fine")
    j.close()
    path = rdir / "journal.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"text":"fine"', b'"text":"edited"'))
    for args in (("--headless",), ()):
        r = run_cli("watch", "r1", *args, "--state-dir", str(state_dir))
        assert r.returncode == 3 and "journal.jsonl:2: this line was changed after it was written" in r.stderr
        assert "Traceback" not in r.stderr


def test_the_text_watcher_says_when_the_driver_goes_silent_and_comes_back(state_dir: Path) -> None:
    import io
    from datetime import UTC, datetime, timedelta

    from runbook.cli.watch import WatchPrinter
    from runbook.clock import FrozenClock
    from runbook.watching import open_local
    from tests.support.watched import RUN_ID, HandDriver

    clock = FrozenClock(datetime(2026, 11, 25, 3, 20, tzinfo=UTC))
    d = HandDriver(state_dir, clock)
    d.manual("tell", acked=1)
    out = io.StringIO()
    view = open_local(state_dir, RUN_ID, clock=clock)
    printer = WatchPrinter(view, out)
    printer.events(view.update())
    printer.liveness()
    holder = d.lock_path.read_text()
    d.release()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    d.lock_path.write_text(holder.replace(f'"pid": {os.getpid()}', f'"pid": {gone.pid}'))
    clock.advance(timedelta(minutes=2))
    for _ in range(3):  # said once, not at every poll
        printer.events(view.update())
        printer.liveness()
    d.lock_path.write_text(holder)
    printer.events(view.update())
    printer.liveness()
    lines = out.getvalue().splitlines()
    silent = [ln for ln in lines if "SILENT" in ln]
    assert len(silent) == 1 and silent[0].startswith("-- the driver oncall@db-recovery-1 is SILENT: nothing heard "
                                                     "since ") and "(0:02:00 ago)" in silent[0]
    assert f"pid {gone.pid}" in silent[0] and lines[-1] == "-- the driver is back"

"""End to end in real terminals (tmux, 80x24): a sandbox drill driven headless in one terminal (`runbook demo
--headless --yes`), `runbook watch` in another, following the steps as they go, to the summary."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from runbook.journal import read_journal
from steps.sandbox.build import Sandbox
from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (archive/restore_command)
from tests.tui.test_tmux import Tmux, tmux  # noqa: F401 - the fixture


def test_a_watcher_follows_a_sandbox_drill_at_80x24(tmux: Tmux, tmp_path: Path, server_runbook: str) -> None:  # noqa: F811
    base = make_base_dir("runbook-tmux-watch-")
    sb = Sandbox(base / "sandbox")
    state = base / "state"
    runbook = base / "runbook.yaml"
    shutil.copyfile(ROOT / "runbook.yaml", runbook)
    watcher = Tmux(tmp_path / "watch.sock")
    drive = (f"cd {ROOT} && RUNBOOK_SERVER_RUNBOOK={server_runbook} {sys.executable} -m runbook demo --headless --yes "
             f"--runbook {runbook} --dir {sb.base} --state-dir {state} --files 5; echo $? > {tmp_path / 'exit'}; "
             "sleep 60")
    try:
        tmux("new-session", "-d", "-x", "80", "-y", "24", drive)
        runs = state / "runs"
        deadline = time.monotonic() + 240
        while not (runs.is_dir() and any(runs.iterdir())):  # the sandbox is built, the disaster struck
            assert time.monotonic() < deadline, f"the drill opened no run; its terminal:\n{tmux.screen()}"
            time.sleep(0.2)
        run_id = next(runs.iterdir()).name
        watcher("new-session", "-d", "-x", "80", "-y", "24",
                f"cd {ROOT} && {sys.executable} -m runbook watch {run_id[:16]} --state-dir {state}; sleep 60")
        watcher.wait_for("read-only", timeout=30)
        seen_titles: list[str] = []  # the panel's "N/M title" as the watcher shows the run going on
        running = False
        deadline = time.monotonic() + 300
        while True:
            screen = watcher.screen()
            if "the run has ended" in screen:
                break
            assert time.monotonic() < deadline, f"the watcher never saw the end; it shows:\n{screen}"
            m = re.search(r"│ (\d+/\d+) ", screen)
            if m and (not seen_titles or seen_titles[-1] != m.group(1)):
                seen_titles.append(m.group(1))
            running = running or ("▶ running" in screen and "drives. This screen only" in screen)
            assert "WATCHING — read-only" in screen or "WATCHED" in screen, screen
            time.sleep(0.1)
        summary = watcher.screen()
        assert "COMPLETED" in summary and "RTO" in summary and "the run has ended (completed)" in summary
        assert running, "the watcher never showed a step running"
        assert len(seen_titles) >= 3, seen_titles  # it followed the steps one after the other
        numbers = [int(t.split("/")[0]) for t in seen_titles]
        assert numbers == sorted(numbers), seen_titles
        exit_file = tmp_path / "exit"  # the driver closes its run, then its demo reports and exits
        deadline = time.monotonic() + 120
        while not exit_file.exists():
            assert time.monotonic() < deadline, f"the drill never exited; its terminal:\n{tmux.screen()}"
            time.sleep(0.2)
        assert exit_file.read_text().strip() == "0"
        events = read_journal(runs / run_id / "journal.jsonl").events
        assert events[-1]["type"] == "run-finished" and events[-1]["status"] == "completed"
        watcher.keys("q")
    finally:
        subprocess.run(["tmux", "-S", str(watcher.sock), "kill-server"], capture_output=True)
        subprocess.run(["tmux", "-S", str(tmux.sock), "kill-server"], capture_output=True)
        run_cli("demo", "--down", "--dir", str(sb.base), timeout=120)
        shutil.rmtree(base, ignore_errors=True)

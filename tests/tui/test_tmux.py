"""End to end: the real app in a real terminal (tmux, private socket, 80x24), driven by keystrokes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.journal import read_journal
from tests.conftest import ROOT


class Tmux:
    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.sock), *args], check=True, capture_output=True,
                              text=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p")

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        self("send-keys", *keys)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: run `make test` (scripts/setup.sh installs it)")
    t = Tmux(tmp_path / "tmux.sock")
    yield t
    subprocess.run(["tmux", "-S", str(t.sock), "kill-server"], capture_output=True)


def start_live_run(tmux: Tmux, rb: Path, state_dir: Path, exit_file: Path) -> None:
    """`runbook run` in the real terminal (80x24), started from its form: a live run, its target typed first
    (these runbooks name none: "live"); its exit code lands in `exit_file`, read by `exit_code`."""
    cmd = (f"cd {ROOT} && {sys.executable} -m runbook run {rb} --state-dir {state_dir}; "
           f"echo $? > {exit_file}; sleep 30")
    tmux("new-session", "-d", "-x", "80", "-y", "24", cmd)
    tmux.wait_for("Start the run")
    tmux.keys("C-s")
    tmux.wait_for("Start a LIVE run")
    tmux.keys("live", "Enter")
    tmux.wait_for("marks the next item done")


def exit_code(exit_file: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while not exit_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return exit_file.read_text().strip()


def test_walk_a_small_runbook_in_a_real_terminal(tmux: Tmux, tmp_path: Path, state_dir: Path) -> None:
    rb = tmp_path / "rb.yaml"
    rb.write_text(textwrap.dedent("""
        version: 1
        name: Tmux drill
        params:
          db_name: {default: app_db}
        steps:
          - id: tell
            title: Tell people
            manual: [Post in the incident channel]
          - id: hello
            title: Say hello
            run: echo hello-from-{{ db_name }}
    """).lstrip())
    exit_file = tmp_path / "exit"
    start_live_run(tmux, rb, state_dir, exit_file)
    time.sleep(0.9)  # run keys are ignored for 750 ms after a step appears
    tmux.keys("r")
    shown = tmux.wait_for("runs this step")
    assert "$ echo hello-from-app_db" in shown
    time.sleep(0.9)
    tmux.keys("r")
    shown = tmux.wait_for("COMPLETED")
    assert "RTO" in shown
    tmux.keys("w")
    tmux.wait_for("Report written")
    tmux.keys("q")
    assert exit_code(exit_file) == "0"
    (run_dir,) = (state_dir / "runs").iterdir()
    events = read_journal(run_dir / "journal.jsonl").events
    kinds = [e["type"] for e in events]
    assert kinds.count("item-acked") == 1 and kinds[-1] == "run-finished"
    assert events[-1]["status"] == "completed"
    out = (run_dir / "steps" / "hello" / "1" / "output.log").read_text()
    assert "hello-from-app_db" in out
    assert (run_dir / "report.md").exists()
    assert "<html" in (run_dir / "report.html").read_text()  # w writes both, and says where


def test_quitting_a_run_in_the_middle_says_how_to_go_on(tmux: Tmux, tmp_path: Path, state_dir: Path) -> None:
    """`q` during a run leaves it open: the terminal then says which run, its status and the exact `runbook
    resume` line (with --state-dir, not the default here); before, it printed nothing and exited 4."""
    rb = tmp_path / "rb.yaml"
    rb.write_text(textwrap.dedent("""
        version: 1
        name: Tmux leave
        steps:
          - id: tell
            title: Tell people
            manual: [Post in the incident channel]
          - id: hello
            run: echo hello
    """).lstrip())
    exit_file = tmp_path / "exit"
    start_live_run(tmux, rb, state_dir, exit_file)
    tmux.keys("q")
    assert exit_code(exit_file) == "4"
    (run_dir,) = (state_dir / "runs").iterdir()
    tmux.wait_for("go on with:")
    shown = tmux("capture-pane", "-p", "-J")  # -J: lines the 80 columns wrapped, joined again
    assert f"run {run_dir.name}: detached, it stays open" in shown
    assert f"runbook resume {run_dir.name} --state-dir {state_dir}" in shown

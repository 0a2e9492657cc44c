"""A game day end to end in a real terminal (tmux, 80x24): `runbook demo --fault s3-unreachable` walked with
keystrokes. Nothing of the fault is on any screen until the run ended; the failed re-protection is skipped with a
reason; the summary offers the debrief, `d` shows it at 80x24 naming the fault and the score."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from runbook.journal import read_journal
from steps.sandbox.build import DB, Sandbox
from steps.sandbox.faults import FAULTS, registry
from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (reprotect's archive_command)
from tests.tui.test_tmux import Tmux, exit_code, tmux  # noqa: F401 - the tmux fixture

FAULT = "s3-unreachable"
REASON = "off-site copy down: ticket raised"


def _walk(tmux: Tmux, words: list[str], timeout: float = 240) -> str:  # noqa: F811
    """r on each step and item (after the 750 ms guard), the database's name typed where asked, a failed step
    skipped with a reason; every screen before the summary free of the fault's words. Returns the summary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = tmux.screen()
        for w in words:
            assert w.lower() not in shown.lower(), f"{w!r} on the operator's screen before the debrief:\n{shown}"
        if "Write report" in shown:  # the summary's footer
            return shown
        if "Why is it skipped" in shown:
            tmux("send-keys", "-l", REASON)
            tmux.keys("Enter")
            _gone(tmux, "t retry · s skip")  # the next step is shown before the next key
        elif "t retry · s skip" in shown:  # the failed step's key line (a toast says "Step failed" too)
            tmux.keys("s")
            tmux.wait_for("Why is it skipped")
            continue
        elif "Anything else runs nothing" in shown:
            tmux("send-keys", "-l", DB)
            tmux.keys("Enter")
        elif "r marks the next item done" in shown or "r runs this step" in shown or "r then type" in shown:
            tmux.keys("r")
        time.sleep(0.9)
    raise AssertionError(f"the game day did not reach its summary in {timeout:g} s; the screen:\n{tmux.screen()}")


def _gone(tmux: Tmux, text: str, timeout: float = 20) -> None:  # noqa: F811
    deadline = time.monotonic() + timeout
    while text in tmux.screen():
        assert time.monotonic() < deadline, f"{text!r} stayed on the screen:\n{tmux.screen()}"
        time.sleep(0.1)


def test_a_game_day_in_a_real_terminal_ends_on_its_debrief(tmux: Tmux, tmp_path: Path,  # noqa: F811
                                                           server_runbook: str) -> None:  # noqa: F811
    registry()
    fault = FAULTS[FAULT]
    base = make_base_dir("runbook-tmux-gameday-")
    sb = Sandbox(base / "sandbox")
    state = base / "state"
    runbook = base / "runbook.yaml"  # a copy: the demo writes its profile beside it
    shutil.copyfile(ROOT / "runbook.yaml", runbook)
    exit_file = tmp_path / "exit"
    cmd = (f"cd {ROOT} && RUNBOOK_SERVER_RUNBOOK={server_runbook} {sys.executable} -m runbook demo --fault {FAULT} "
           f"--seed 5 --operator trainee --runbook {runbook} --dir {sb.base} --state-dir {state} --files 5; "
           f"echo $? > {exit_file}; sleep 30")
    try:
        tmux("new-session", "-d", "-x", "80", "-y", "24", cmd)
        tmux.wait_for("Start the run", timeout=180)
        tmux.keys("C-s")
        tmux.wait_for("marks the next item done")
        summary = _walk(tmux, [fault.name, fault.title])
        assert "COMPLETED" in summary and "press d for the debrief" in summary
        tmux.keys("d")
        tmux.wait_for("Game day debrief")
        deadline = time.monotonic() + 20  # the screen is painted in parts: read it once its footer is there too
        while True:
            shown = tmux.screen()
            lines = shown.rstrip("\n").splitlines()
            if (lines and "Back" in lines[-1]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "Game day debrief · score" in lines[0] and "/100" in lines[0]  # the title, first, with the score
        assert "Fault" in shown and f"{fault.name}:" in shown and "Back" in lines[-1]  # the footer's keys in sight
        tmux.keys("b")
        tmux.wait_for("Write report")
        tmux.keys("q")
        assert exit_code(exit_file, timeout=30) == "0"
        (rdir,) = (state / "runs").iterdir()
        events = read_journal(rdir / "journal.jsonl").events
        skipped = [(e["step"], e["reason"]) for e in events if e["type"] == "step-skipped"]
        assert ("reprotect", REASON) in skipped and {r for _, r in skipped} == {REASON}
        assert fault.handled is not None and fault.handled(events)
        r = run_cli("report", rdir.name, "--state-dir", str(state))
        assert "## Game day debrief" in r.stdout and "handled: yes" in r.stdout
    finally:
        subprocess.run(["tmux", "-S", str(tmux.sock), "kill-server"], capture_output=True)
        run_cli("demo", "--down", "--dir", str(sb.base), timeout=120)
        shutil.rmtree(base, ignore_errors=True)

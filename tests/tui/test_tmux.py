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
from steps.sandbox.build import Sandbox
from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (archive/restore_command)


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


# ---- scenario 2 in a real terminal at 80x24, to the end ---------------------------------------------------


def _outputs(state_dir: Path) -> dict[tuple[str, str], object]:
    (run_dir,) = (state_dir / "runs").iterdir()
    return {(e["step"], e["name"]): e["value"] for e in read_journal(run_dir / "journal.jsonl").events
            if e["type"] in ("step-output", "value-provided")}


def _on_one_line(text: str, screen: str) -> bool:
    return any(text in line for line in screen.splitlines())


def _drive_to_the_summary(tmux: Tmux, pgdata: str, state_dir: Path, timeout: float = 180) -> tuple[str, str]:
    """Walk the drill as an operator would: r on each step and checklist item (after the 750 ms guard), the
    PITR step's data directory typed into its dialog; fail on a failed or interrupted step. From the moment
    the PITR step reports its recovery point, the point must appear whole on one line of the screen within
    5 s, and stay on every screen after that. Returns the recovery point and the summary screen."""
    deadline = time.monotonic() + timeout
    point, known_at, seen = "", 0.0, False
    while time.monotonic() < deadline:
        shown = tmux.screen()
        if not point and ("pitr", "recovery_point") in (outs := _outputs(state_dir)):
            point, known_at = str(outs[("pitr", "recovery_point")]), time.monotonic()
        if point and not seen:
            seen = _on_one_line(point, shown)
            assert seen or time.monotonic() - known_at < 5, f"recovery point {point} not on one line:\n{shown}"
        elif seen:
            assert _on_one_line(point, shown), f"the recovery point {point} left the screen:\n{shown}"
        if "Write report" in shown:  # the summary's footer
            assert seen, f"the summary came before the recovery point was shown:\n{shown}"
            return point, shown
        if "Step failed" in shown or "Interrupted:" in shown:
            raise AssertionError(f"the drill stopped on a step; the screen:\n{shown}")
        if "Anything else runs nothing" in shown:  # the typed confirmation of the PITR step
            tmux("send-keys", "-l", pgdata)
            tmux.keys("Enter")
        elif "r marks the next item done" in shown or "r runs this step" in shown or "r then type" in shown:
            tmux.keys("r")
        time.sleep(0.9)  # run keys are ignored for 750 ms after the step changes
    raise AssertionError(f"the drill did not reach its summary in {timeout:g} s; the screen:\n{tmux.screen()}")


def test_a_pitr_drill_at_80x24_keeps_the_recovery_point_readable_to_the_summary(
        tmux: Tmux, tmp_path: Path, server_runbook: str) -> None:  # noqa: F811
    """`runbook demo --scenario pitr` in tmux at 80x24, walked to the end with keystrokes: once the PITR step
    has reported its recovery point, every later screen shows it whole on one line (nothing to scroll
    sideways), and so does the summary. Before, the output pane cut it at `AssetFlow PITR (run 2026…-pitr-`."""
    base = make_base_dir("runbook-tmux-pitr-")  # the server's user must reach the sandbox
    sb = Sandbox(base / "sandbox")
    state = base / "state"
    runbook = base / "runbook.yaml"  # a copy: the demo writes its profile beside it, never into the checkout
    shutil.copyfile(ROOT / "runbook.yaml", runbook)
    exit_file = tmp_path / "exit"
    cmd = (f"cd {ROOT} && RUNBOOK_SERVER_RUNBOOK={server_runbook} {sys.executable} -m runbook demo --scenario pitr "
           f"--runbook {runbook} --dir {sb.base} --state-dir {state} --files 5; echo $? > {exit_file}; sleep 30")
    try:
        tmux("new-session", "-d", "-x", "80", "-y", "24", cmd)
        tmux.wait_for("Start the run", timeout=180)  # the sandbox is built, the disaster struck: the form
        tmux.keys("C-s")  # a drill: no typed target
        tmux.wait_for("marks the next item done")
        point, summary = _drive_to_the_summary(tmux, str(sb.pitr_datadir), state)
        assert point.startswith("20") and len(point) >= 25, point  # a full ISO 8601 time, microseconds and zone
        assert "COMPLETED" in summary
        assert _on_one_line(f"recovered to {point} (step pitr)", summary), summary
        tmux.keys("q")
        assert exit_code(exit_file, timeout=20) == "0"
        events = read_journal(next((state / "runs").iterdir()) / "journal.jsonl").events
        assert events[-1]["type"] == "run-finished" and events[-1]["status"] == "completed"
    finally:
        subprocess.run(["tmux", "-S", str(tmux.sock), "kill-server"], capture_output=True)
        run_cli("demo", "--down", "--dir", str(sb.base), timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _pane(tmux: Tmux, target: str) -> str:
    return tmux("capture-pane", "-p", "-t", target)


def _wait_pane(tmux: Tmux, target: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = _pane(tmux, target)
        if text in shown:
            return shown
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {target}; the screen:\n{_pane(tmux, target)}")


def test_take_over_between_two_terminals(tmux: Tmux, tmp_path: Path) -> None:
    """Two terminals at 80x24: the second takes the run over mid-step (typing the run id's last 4 characters);
    the step goes on, re-attached; the first cockpit says who took over and only watches from then on."""
    base = make_base_dir("runbook-tmux-handover-")
    try:
        rb = base / "rb.yaml"
        rb.write_text(textwrap.dedent("""
            version: 1
            name: Tmux hand-over
            steps:
              - id: slow
                title: Restore (slow)
                run: for i in $(seq 1 60); do echo tick $i; sleep 0.5; done
                confirm: none
              - id: tell
                manual: [Tell the stakeholders]
        """).lstrip())
        state = base / "state"
        a_exit, b_exit = base / "a.exit", base / "b.exit"
        tmux("new-session", "-d", "-s", "a", "-x", "80", "-y", "24",
             f"cd {ROOT} && {sys.executable} -m runbook run {rb} --mode drill --state-dir {state}; "
             f"echo $? > {a_exit}; sleep 30")
        _wait_pane(tmux, "a", "Start the run")
        tmux.keys("-t", "a", "C-s")
        _wait_pane(tmux, "a", "tick 2")
        run_id = next((state / "runs").iterdir()).name
        tmux("new-session", "-d", "-s", "b", "-x", "80", "-y", "24",
             f"cd {ROOT} && {sys.executable} -m runbook take-over {run_id} --state-dir {state}; "
             f"echo $? > {b_exit}; sleep 30")
        _wait_pane(tmux, "b", "characters")
        tmux.keys("-t", "b", run_id[-4:], "Enter")
        a = _wait_pane(tmux, "a", "TAKEN OVER by", timeout=10)
        assert "WATCHING" in a and "read-only" in a
        _wait_pane(tmux, "b", "re-attached")
        _wait_pane(tmux, "b", "marks the next item done", timeout=60)  # the step ended under its new driver
        _wait_pane(tmux, "a", "Tell the stakeholders")
        tmux.keys("-t", "a", "r")  # no key of the old cockpit changes the run
        time.sleep(1.0)  # past the new driver's key guard (750 ms after its step changed)
        tmux.keys("-t", "b", "r")
        _wait_pane(tmux, "b", "COMPLETED", timeout=20)
        _wait_pane(tmux, "a", "COMPLETED", timeout=10)  # the old cockpit followed the run to its end
        events = read_journal(state / "runs" / run_id / "journal.jsonl").events
        kinds = [e["type"] for e in events]
        assert kinds.count("handover") == 1 and "step-reattached" in kinds
        assert [e.get("how") for e in events if e["type"] == "item-acked"] == ["key r in the TUI"]
        assert kinds.count("item-acked") == 1
        tmux.keys("-t", "a", "q")
        assert exit_code(a_exit) == "0"  # it ended completed, under its new driver
    finally:
        shutil.rmtree(base, ignore_errors=True)

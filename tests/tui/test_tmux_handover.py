"""End to end in real terminals (tmux, 80x24): a hand-over across hosts through the repository. Terminal A drives
a drill in its cockpit; terminal B, "another host" (its own HOME, state directory, repository config and key,
sharing only the repository directory), runs `runbook take-over -c` and types the run id's last 4 characters
while A's step runs. B says the step runs on A; A hands over when it ends, its cockpit turns into a watcher
through the repository with the banner naming B and "another host"; B's cockpit drives the run to its end, and
A's watcher follows it there."""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from pathlib import Path

from runbook.journal import read_journal
from tests.conftest import ROOT
from tests.support.pgcluster import make_base_dir
from tests.support.signing import make_keys
from tests.tui.test_tmux import Tmux, _wait_pane, exit_code, tmux  # noqa: F401 - the fixture


def _wait_joined(term: Tmux, target: str, text: str, timeout: float) -> str:
    """`_wait_pane` for a long line the terminal wrapped (tmux joins it back: capture-pane -J)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = term("capture-pane", "-p", "-J", "-t", target)
        if text in shown:
            return shown
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {target}; the screen:\n{term('capture-pane', '-p', '-t', target)}")


def test_take_over_from_another_host_between_two_terminals(tmux: Tmux, tmp_path: Path) -> None:  # noqa: F811
    base = make_base_dir("runbook-tmux-remote-")
    try:
        repo = base / "repo"
        keys = {n: make_keys(base, n) for n in ("a", "b")}
        trusted = ", ".join(str(pub) for _, pub in keys.values())
        cfg, env = {}, {}
        for n, (private, _) in keys.items():
            cfg[n] = base / f"{n}.yaml"
            cfg[n].write_text(f"version: 1\nlocal: {{path: {repo}}}\nsigning: {{private_key: {private}, "
                              f"public_keys: [{trusted}]}}\n")
            home = base / f"home-{n}"
            home.mkdir()
            env[n] = f"HOME={home} XDG_CONFIG_HOME={home / '.config'} XDG_STATE_HOME={home / '.state'}"
        rb = base / "rb.yaml"
        rb.write_text(textwrap.dedent("""
            version: 1
            name: Tmux remote hand-over
            target: "db-host:5432/app"
            repository: "{{ repository }}"
            params:
              repository: {type: path}
            steps:
              - id: slow
                title: Restore (slow)
                run: for i in $(seq 1 30); do echo tick $i; sleep 0.5; done
                confirm: none
              - id: tell
                manual: [Tell the stakeholders]
        """).lstrip())
        a_state, b_state = base / "a-state", base / "b-state"
        a_exit, b_exit = base / "a.exit", base / "b.exit"
        tmux("new-session", "-d", "-s", "a", "-x", "80", "-y", "24",
             f"cd {ROOT} && {env['a']} {sys.executable} -m runbook run {rb} --mode drill --set repository={cfg['a']} "
             f"--state-dir {a_state}; echo $? > {a_exit}; sleep 30")
        _wait_pane(tmux, "a", "Start the run")
        tmux.keys("-t", "a", "C-s")
        _wait_pane(tmux, "a", "tick 2")
        run_id = next((a_state / "runs").iterdir()).name
        deadline = time.monotonic() + 20
        while not (repo / "runs" / run_id / "live.json").exists():  # the mirror's first round (every second)
            assert time.monotonic() < deadline, "the run is not mirrored"
            time.sleep(0.1)
        tmux("new-session", "-d", "-s", "b", "-x", "80", "-y", "24",
             f"cd {ROOT} && {env['b']} {sys.executable} -m runbook take-over -c {cfg['b']} {run_id} "
             f"--state-dir {b_state}; echo $? > {b_exit}; sleep 30")
        _wait_pane(tmux, "b", "characters")
        tmux.keys("-t", "b", run_id[-4:], "Enter")
        said = _wait_joined(tmux, "b", "the run is handed over when it ends", timeout=20)  # the step runs on A
        assert "cannot be supervised from here" in said
        a = _wait_pane(tmux, "a", "TAKEN OVER by", timeout=30)
        assert "another host" in " ".join(a.split()) and "read-only" in a
        _wait_pane(tmux, "b", "marks the next item done", timeout=30)  # B's cockpit, at the manual step
        time.sleep(1.0)  # past the new driver's key guard (750 ms after its step changed)
        tmux.keys("-t", "b", "r")
        _wait_pane(tmux, "b", "COMPLETED", timeout=20)
        _wait_pane(tmux, "a", "COMPLETED", timeout=20)  # the old cockpit followed the run there, through the repository
        a_events = read_journal(a_state / "runs" / run_id / "journal.jsonl").events
        b_events = read_journal(b_state / "runs" / run_id / "journal.jsonl").events
        assert [e["type"] for e in a_events][-2:] == ["handed-over", "run-detached"]
        assert b_events[: len(a_events)] == a_events
        assert [e["step"] for e in b_events if e["type"] == "step-started"] == ["slow"]  # run once, on A
        assert [e.get("how") for e in b_events if e["type"] == "item-acked"] == ["key r in the TUI"]
        assert b_events[-1]["type"] == "run-finished" and b_events[-1]["status"] == "completed"
        tmux.keys("-t", "a", "q")
        assert exit_code(a_exit) == "0"
        tmux.keys("-t", "b", "q")
        assert exit_code(b_exit) == "0"
    finally:
        shutil.rmtree(base, ignore_errors=True)

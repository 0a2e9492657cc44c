"""The incident room with real processes: a headless driver, a second operator who is another OS user
(`postgres`, through runuser), and two sessions racing to take a run over."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import Exit
from runbook.journal import read_journal
from runbook.requests import PENDING, REQUESTS
from tests.conftest import ROOT
from tests.support.pgcluster import PG_USER, make_base_dir
from tests.support.server_venv import ServerVenv, server_venv  # noqa: F401 - a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="another OS user is reached with runuser (root)")

DANGER = """\
version: 1
name: incident room
steps:
  - id: slow
    run: for i in $(seq 1 {ticks}); do echo tick $i; sleep 0.5; done
    confirm: none
  - id: drop
    title: Drop the old database
    run: echo dropping {{{{ db }}}}
    danger: true
params:
  db: {{default: old_db}}
"""


@pytest.fixture
def room() -> Iterator[Path]:
    """A state directory other local users can reach (the approver must read the pending approval)."""
    base = make_base_dir("runbook-room-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}


def _driver(base: Path, *args: str, ticks: int = 1) -> subprocess.Popen[str]:
    rb = base / "rb.yaml"
    rb.write_text(DANGER.format(ticks=ticks))
    os.chmod(rb, 0o644)
    return subprocess.Popen(
        [sys.executable, "-m", "runbook", "run", str(rb), "--headless", "--state-dir", str(base / "state"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)


def _cli(*args: str, user: str | None = None, runbook: str | None = None, timeout: float = 60,
         ) -> subprocess.CompletedProcess[str]:
    cmd = [runbook, *args] if runbook else [sys.executable, "-m", "runbook", *args]
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd="/")


def _run_id(base: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = list((base / "state" / "runs").glob("*")) if (base / "state" / "runs").is_dir() else []
        if runs and (runs[0] / "journal.jsonl").exists():
            return runs[0].name
        time.sleep(0.05)
    raise AssertionError("the driver started no run")


def _events(base: Path, run_id: str) -> list[dict]:
    return read_journal(base / "state" / "runs" / run_id / "journal.jsonl").events


def _wait_for(pred, timeout: float = 20, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in time: {what}")
        time.sleep(0.05)


def _pending(base: Path, run_id: str) -> dict:
    path = base / "state" / "runs" / run_id / PENDING
    _wait_for(path.exists, what="the pending approval")
    return json.loads(path.read_text())


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


def test_another_user_approves_and_the_driver_runs_the_step(room: Path, server_venv: ServerVenv) -> None:  # noqa: F811
    drv = _driver(room, "--mode", "drill", "--approver-policy", "other", "--yes", "--confirm", "drop=drop")
    try:
        run_id = _run_id(room)
        pending = _pending(room, run_id)
        assert pending["command"] == "echo dropping old_db"
        # the driver's own user cannot approve: refused before anything is written, and named
        own = _cli("approve", run_id, "drop", "--yes", "--state-dir", str(room / "state"))
        assert own.returncode == Exit.CANNOT_RUN, own.stdout + own.stderr
        assert "the driver cannot approve their own step" in own.stderr and "root" in own.stderr
        # another OS user, from their own session, with their own install of the tool
        ok = _cli("approve", run_id, "drop", "--yes", "--state-dir", str(room / "state"), user=PG_USER,
                  runbook=str(server_venv.runbook))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "echo dropping old_db" in ok.stdout and "accepted" in ok.stdout
        out, _ = drv.communicate(timeout=60)
    finally:
        _stop(drv)
    assert drv.returncode == 0, out
    assert "waiting for approval by another operator" in out
    evs = _events(room, run_id)
    drop = [e for e in evs if e.get("step") == "drop" and e["type"] in ("approval-awaited", "approved",
                                                                        "step-confirmed", "step-started")]
    assert [e["type"] for e in drop] == ["approval-awaited", "approved", "step-confirmed", "step-started"]
    assert drop[1]["approver"] == PG_USER and drop[1]["command_hash"] == pending["hash"]
    report = _cli("report", run_id, "--state-dir", str(room / "state"))
    assert f"| drop | {PG_USER}@{socket.gethostname()} |" in report.stdout  # the approver's host named


def test_stale_hostile_and_own_requests_are_refused_and_nothing_runs(room: Path) -> None:
    drv = _driver(room, "--mode", "drill", "--approver-policy", "other", "--yes", "--confirm", "drop=drop")
    try:
        run_id = _run_id(room)
        pending = _pending(room, run_id)
        requests = room / "state" / "runs" / run_id / REQUESTS
        assert oct(requests.stat().st_mode & 0o7777) == oct(0o1733)
        body = {"kind": "approve", "run_id": run_id, "step": "drop", "nonce": pending["nonce"]}
        write = ("import json, os, sys; p = sys.argv[1]; fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "
                 "0o644); os.write(fd, sys.argv[2].encode()); os.close(fd)")
        # a step that has changed since the approver saw it: the hash of another command
        stale = {**body, "hash": "0" * 64}
        r = subprocess.run(["runuser", "-u", PG_USER, "--", "/usr/bin/python3", "-c", write,
                            str(requests / "approve-stale.json"), json.dumps(stale)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        _wait_for(lambda: any(e["type"] == "approval-refused" for e in _events(room, run_id)), what="stale refused")
        # a planted symbolic link to a file the driver can read and the approver cannot: never followed
        r = subprocess.run(["runuser", "-u", PG_USER, "--", "ln", "-s", "/etc/shadow", str(requests / "x.json")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        _wait_for(lambda: any(e["type"] == "request-refused" for e in _events(room, run_id)), what="link refused")
        # the approver cannot list the requests, nor touch the journal
        ls = subprocess.run(["runuser", "-u", PG_USER, "--", "ls", str(requests)], capture_output=True, text=True)
        assert ls.returncode != 0
        cat = subprocess.run(["runuser", "-u", PG_USER, "--", "cat", str(requests.parent / "journal.jsonl")],
                             capture_output=True, text=True)
        assert cat.returncode != 0
        # the driver's own user writing the request file itself: refused too
        (requests / "approve-own.json").write_text(json.dumps({**body, "hash": pending["hash"]}))
        _wait_for(lambda: sum(e["type"] == "approval-refused" for e in _events(room, run_id)) == 2, what="own")
        time.sleep(0.5)
        assert drv.poll() is None  # still waiting
    finally:
        out = _stop(drv)
    evs = _events(room, run_id)
    refused = [e for e in evs if e["type"] == "approval-refused"]
    assert "changed since the approver saw it" in refused[0]["reason"] and refused[0]["approver"] == PG_USER
    assert "driver's own user" in refused[1]["reason"]
    link = [e for e in evs if e["type"] == "request-refused"]
    assert "symbolic link" in link[0]["reason"] or "plain file" in link[0]["reason"], link
    assert "root:" not in json.dumps(evs)  # nothing of /etc/shadow was read
    assert not [e for e in evs if e["type"] in ("approved", "step-started") and e.get("step") == "drop"], out


def test_two_take_overs_race_one_wins_the_other_is_told_who(room: Path) -> None:
    drv = _driver(room, "--mode", "drill", "--yes", "--confirm", "drop=drop", ticks=16)
    try:
        run_id = _run_id(room)
        _wait_for(lambda: any(e["type"] == "step-started" for e in _events(room, run_id)), what="slow started")
        args = [sys.executable, "-m", "runbook", "take-over", run_id, "--yes", "--headless", "--confirm",
                "drop=drop", "--state-dir", str(room / "state")]
        t1 = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
        t2 = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
        outs = {p.pid: p.communicate(timeout=90) for p in (t1, t2)}
        first, _ = drv.communicate(timeout=30)
    finally:
        for p in (drv,):
            _stop(p)
    codes = {t1.pid: t1.returncode, t2.pid: t2.returncode}
    winners = [pid for pid, rc in codes.items() if rc == 0]
    losers = [pid for pid, rc in codes.items() if rc == Exit.LOCKED]
    assert len(winners) == 1 and len(losers) == 1, (codes, outs)
    winner, loser = winners[0], losers[0]
    assert "was taken over by root@" in outs[loser][1] and f"(pid {winner})" in outs[loser][1], outs[loser]
    assert drv.returncode == Exit.LEFT_OPEN and "taken over by" in first
    evs = _events(room, run_id)
    handover = [e for e in evs if e["type"] == "handover"]
    assert len(handover) == 1
    assert handover[0]["from"]["pid"] == drv.pid and handover[0]["to"]["pid"] == winner
    types = [e["type"] for e in evs]
    # the step kept running under its supervisor and was re-attached, never run twice
    assert types.count("step-started") == 2 and "step-reattached" in types
    assert [e["step"] for e in evs if e["type"] == "step-started"] == ["slow", "drop"]
    assert types[-1] == "run-finished" and evs[-1]["status"] == "completed"
    report = _cli("report", run_id, "--state-dir", str(room / "state"), "--format", "html")
    assert report.stdout.count('class="driver-band"') == 2


def test_a_headless_driver_at_a_prompt_lets_go_without_a_key(room: Path) -> None:
    """The old driver sits at a prompt (stdin open, nobody typing): a take-over ends it at once, exit 4."""
    rb = room / "rb.yaml"
    rb.write_text("version: 1\nname: prompt\nsteps:\n  - id: ask\n    run: echo asked\n")
    drv = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(rb), "--mode", "drill", "--headless",
                            "--state-dir", str(room / "state")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT)
    try:
        run_id = _run_id(room)
        _wait_for(lambda: any(e["type"] == "step-awaiting" for e in _events(room, run_id)), what="the prompt")
        t = _cli("take-over", run_id, "--yes", "--headless", "--state-dir", str(room / "state"))
        drv.wait(timeout=5)  # stdin stays open: no end of file, no key
        out = drv.stdout.read() if drv.stdout else ""
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait()
        for f in (drv.stdin, drv.stdout):
            if f:
                f.close()
    assert t.returncode == 0, t.stdout + t.stderr
    assert drv.returncode == Exit.LEFT_OPEN and "taken over by root@" in out, out
    assert [e["type"] for e in _events(room, run_id)].count("step-started") == 1  # run once, by the new driver


def test_an_operator_alone_is_told_the_way_out_and_it_works(room: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody to approve: the waiting driver names the command that goes on without the two-person rule; after an
    interrupt, that resume runs the step and the journal records the policy change."""
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # the driver's lines reach the pipe as they are printed
    # A terminal's Ctrl-C reaches a process whose SIGINT is not ignored; a test runner may have inherited it
    # ignored (a background job of a shell), and an ignored SIGINT stays ignored across exec.
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        proc = _driver(room, "--yes", "--confirm", "drop=drop")
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout is not None
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "nobody else on call" in "".join(seen) and "(journaled)" in line:
                break
        out = "".join(seen)
        assert "nobody else on call" in out, out
        run_id = _run_id(room)
        way_out = f"runbook resume {run_id} --state-dir {room / 'state'} --approver-policy none"
        assert way_out in " ".join(out.split())
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert not any(e["type"] == "step-finished" and e.get("step") == "drop" for e in _events(room, run_id))
    resumed = _cli("resume", run_id, "--state-dir", str(room / "state"), "--approver-policy", "none", "--headless",
                   "--yes", "--confirm", "drop=drop")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "dropping old_db" in resumed.stdout
    events = _events(room, run_id)
    policy = next(i for i, e in enumerate(events) if e["type"] == "approver-policy")
    dropped = next(i for i, e in enumerate(events) if e["type"] == "step-finished" and e.get("step") == "drop")
    assert policy < dropped

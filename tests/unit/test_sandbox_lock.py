"""The sandbox's lock (steps.sandbox.lock) and the per-user default sandbox directory: no PostgreSQL needed."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from runbook.errors import LockHeld
from runbook.loader import load_runbook
from runbook.lock import Holder, RunLock
from steps.repository.recovery_lock import lock_key, normalised_address
from steps.sandbox import build
from steps.sandbox.build import Sandbox
from steps.sandbox.lock import SandboxLock, lock_path, running, sandbox_target, take, unfinished
from tests.conftest import ROOT


@pytest.fixture
def rb():
    return load_runbook(ROOT / "runbook.yaml")


def _run_lock(state: Path, rb, sb: Sandbox, run_id: str) -> RunLock:
    holder = Holder(run_id=run_id, user="alice", host=socket.gethostname(), pid=os.getpid(), since="now",
                    target=sandbox_target(rb, sb))
    lock, _ = RunLock.take(state, rb.name, holder.target, holder, run_closed=lambda r: False)
    return lock


def test_the_lock_sits_beside_the_sandbox_and_names_its_holder_and_run(tmp_path: Path) -> None:
    sb = Sandbox(tmp_path / "sb")
    mine = SandboxLock(sb.base)
    assert mine.path == lock_path(sb.base) == tmp_path / "sb.lock"
    mine.acquire()
    try:
        mine.set_run("20260101T000000Z-restore-latest-abcd")
        record = SandboxLock.read_holder(mine.path)
        assert record is not None and record["pid"] == os.getpid() and record["sandbox"] == str(sb.base)
        assert record["run_id"] == "20260101T000000Z-restore-latest-abcd"
        with pytest.raises(LockHeld) as e:  # a second open of the file is refused like another process
            SandboxLock(sb.base).acquire()
        text = str(e.value)
        assert f"pid {os.getpid()}" in text and "run 20260101T000000Z-restore-latest-abcd" in text
        assert "runbook resume 20260101T000000Z-restore-latest-abcd" in text and "runbook demo --down" in text
        assert "kernel releases" in text  # a crashed holder does not block forever
    finally:
        mine.release()
    SandboxLock(sb.base).acquire()  # let go: free again
    assert not sb.base.exists()  # taking the lock touches nothing in the sandbox


def test_a_held_run_lock_on_the_sandbox_target_refuses_and_is_named(tmp_path: Path, rb) -> None:
    sb, state = Sandbox(tmp_path / "sb"), tmp_path / "state"
    assert running(sb, rb, state) is None
    run_lock = _run_lock(state, rb, sb, "run-B")
    try:
        lock = SandboxLock(sb.base)
        with pytest.raises(LockHeld) as e:
            take(lock, sb, rb, state)
        assert "run run-B by alice" in str(e.value) and "runbook resume run-B" in str(e.value)
        assert not lock.held  # refused: let go again
    finally:
        run_lock.release()
    lock = SandboxLock(sb.base)
    take(lock, sb, rb, state)
    lock.release()


def test_a_tui_drill_holding_the_sandbox_is_named_by_its_run_lock(tmp_path: Path, rb) -> None:
    sb, state = Sandbox(tmp_path / "sb"), tmp_path / "state"
    holder = SandboxLock(sb.base)
    holder.acquire()  # its record has no run id (the TUI opens the run itself)
    run_lock = _run_lock(state, rb, sb, "run-T")
    try:
        with pytest.raises(LockHeld) as e:
            take(SandboxLock(sb.base), sb, rb, state)
        assert f"pid {os.getpid()}, run run-T" in str(e.value)
    finally:
        run_lock.release()
        holder.release()


def test_a_repository_lock_naming_a_live_process_refuses(tmp_path: Path, rb) -> None:
    sb, state = Sandbox(tmp_path / "sb"), tmp_path / "state"
    obj = sb.repo / lock_key(normalised_address(sandbox_target(rb, sb)))
    obj.parent.mkdir(parents=True)
    record = {"run_id": "run-R", "user": "bob", "host": socket.gethostname(), "pid": os.getpid(), "since": "now"}
    obj.write_text(json.dumps(record))
    found = running(sb, rb, state)
    assert found is not None and found[0]["run_id"] == "run-R"
    obj.write_text(json.dumps({**record, "pid": 2**22 + 12345}))  # its runner is gone: not running ...
    assert running(sb, rb, state) is None
    refusal = unfinished(sb, rb, state)  # ... but unfinished: rebuilding would pull the rug from under it
    assert refusal is not None and "runbook resume run-R" in str(refusal) and "--break-lock" in str(refusal)


def test_a_run_left_open_on_the_sandbox_is_unfinished(tmp_path: Path, rb) -> None:
    sb, state = Sandbox(tmp_path / "sb"), tmp_path / "state"
    assert unfinished(sb, rb, state) is None
    run_lock = _run_lock(state, rb, sb, "run-U")
    run_lock.release()  # its runner is gone; its claim stays (no journal here: not known as closed)
    refusal = unfinished(sb, rb, state)
    assert refusal is not None and "run run-U" in str(refusal)
    assert running(sb, rb, state) is None


def test_the_default_sandbox_is_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNBOOK_SANDBOX_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(build.os, "geteuid", lambda: 1000)
    assert build.default_dir() == tmp_path / "xdg" / "runbook" / "sandbox"
    monkeypatch.setattr(build.os, "geteuid", lambda: 0)
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setattr(build, "current_user", lambda: "root")
    assert build.default_dir() == Path("/var/tmp/runbook-sandbox-root")
    monkeypatch.setenv("SUDO_USER", "alice")
    assert build.default_dir() == Path("/var/tmp/runbook-sandbox-alice")
    monkeypatch.setenv("RUNBOOK_SANDBOX_DIR", str(tmp_path / "mine"))
    assert build.default_dir() == tmp_path / "mine"

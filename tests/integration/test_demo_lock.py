"""The sandbox is one operator's: while a `runbook demo` drill uses it, a second `demo` (a build) and
`demo --down` are refused before they touch anything, naming the holder; the first drill completes unharmed.

One drill serves every assertion: the second demo is started while the first builds, `--down` once the
first's run is open (its run id is then named).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import Exit
from steps.sandbox.build import DB, Sandbox
from tests.conftest import ROOT, run_cli
from tests.support.pgcluster import make_base_dir
from tests.support.pitr_cluster import server_runbook_fixture  # noqa: F401 - the server venv (reprotect's archive_command)


class Lines:
    """A child's stdout, read line by line in a thread, waited on for a pattern."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.cv:
                self.lines.append(line)
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.thread.is_alive()):
                    raise AssertionError(f"{text!r} not seen in the first demo's output:\n{''.join(self.lines)[-4000:]}")
                self.cv.wait(min(left, 0.5))

    @property
    def text(self) -> str:
        with self.cv:
            return "".join(self.lines)


@pytest.fixture(scope="module")
def contended(server_runbook: str) -> Iterator[dict[str, object]]:  # noqa: F811
    base = make_base_dir("runbook-demo-lock-")
    sb = Sandbox(base / "sandbox")
    state = base / "state"
    runbook = base / "runbook.yaml"  # a copy: the profile is written beside it, never into the checkout
    shutil.copyfile(ROOT / "runbook.yaml", runbook)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120", "RUNBOOK_SERVER_RUNBOOK": server_runbook}
    cmd = ["demo", "--headless", "--yes", "--runbook", str(runbook), "--dir", str(sb.base), "--state-dir", str(state),
           "--files", "5"]
    first = subprocess.Popen([sys.executable, "-m", "runbook", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=env, cwd=ROOT)
    out = Lines(first)
    facts: dict[str, object] = {"sb": sb, "state": state, "first_pid": first.pid}
    try:
        out.wait_for("building the sandbox", 60)
        facts["second"] = run_cli(*cmd, timeout=120, env={"RUNBOOK_SERVER_RUNBOOK": server_runbook})
        run_line = out.wait_for("· run ", 300)  # the drill's run is open: its run id is known
        facts["run_id"] = run_line.rsplit("· run ", 1)[1].strip()
        facts["down"] = run_cli("demo", "--down", "--runbook", str(runbook), "--dir", str(sb.base), "--state-dir",
                                str(state), timeout=120)
        facts["first_rc"] = first.wait(timeout=400)
        out.thread.join(timeout=10)
        facts["first_out"] = out.text
        yield facts
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        run_cli("demo", "--down", "--dir", str(sb.base), timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_a_second_demo_is_refused_naming_the_holder(contended) -> None:
    second = contended["second"]
    text = second.stdout + second.stderr
    assert second.returncode == Exit.LOCKED, text
    assert f"pid {contended['first_pid']}" in text, text
    assert "runbook demo --down" in text and "wait" in text, text
    assert "building the sandbox" not in second.stdout  # refused before touching anything


def test_down_is_refused_while_the_drill_holds_the_sandbox(contended) -> None:
    down = contended["down"]
    text = down.stdout + down.stderr
    assert down.returncode == Exit.LOCKED, text
    assert f"pid {contended['first_pid']}" in text and str(contended["run_id"]) in text, text
    assert f"runbook resume {contended['run_id']}" in text, text
    assert "sandbox removed" not in text


def test_the_first_drill_completes_unharmed(contended) -> None:
    sb: Sandbox = contended["sb"]  # type: ignore[assignment]
    assert contended["first_rc"] == 0, str(contended["first_out"])[-5000:]
    assert "demo: measured RTO" in str(contended["first_out"])
    at_backup = json.loads((sb.base / "at-backup.json").read_text())
    assert sb.table_facts(DB) == at_backup  # the backup it took is the one it restored
    (run_dir,) = (Path(str(contended["state"])) / "runs").iterdir()
    assert run_dir.name == contended["run_id"]

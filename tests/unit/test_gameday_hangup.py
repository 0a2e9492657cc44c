"""Game day `terminal-dies`: its hang-up reaches the demo even when the demo was started with SIGHUP ignored
(`nohup`, some shells): otherwise the fault never happens and the game is scored "not handled". A real child
process, a real signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

CHILD = """
import random, signal, sys, time
from pathlib import Path
from steps.sandbox.faults import GameContext
from steps.sandbox.faults.terminal_dies import inject
signal.signal(signal.SIGHUP, signal.SIG_IGN if sys.argv[2] == "ignored" else signal.SIG_DFL)
ctx = GameContext(scenario="restore-latest", seed=1, rng=random.Random(1), state_dir=Path(sys.argv[1]), run_id="r1")
inject(None, ctx)
time.sleep(20)
print("still here", flush=True)
"""


def _demo_like(tmp_path: Path, disposition: str) -> subprocess.CompletedProcess[str]:
    journal = tmp_path / "runs" / "r1" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"type": "step-started", "step": "restore", "attempt": 1}) + "\n")
    return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), disposition], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[2])


def test_the_hang_up_ends_a_demo_that_ignored_sighup(tmp_path: Path) -> None:
    r = _demo_like(tmp_path, "ignored")
    assert r.returncode == -signal.SIGHUP, r.stdout + r.stderr
    assert "still here" not in r.stdout


def test_the_hang_up_ends_a_demo_with_the_default_disposition(tmp_path: Path) -> None:
    r = _demo_like(tmp_path, "default")
    assert r.returncode == -signal.SIGHUP, r.stdout + r.stderr

"""`runbook resume RUN_ID --redo-from STEP`: a step that succeeded with a wrong value (a recovery to the wrong
target) is walked again in the same run, with the value corrected by `--set`, each step confirmed again and
journaled; the corrected value is kept for the next resume."""

from __future__ import annotations

import json
from pathlib import Path

from runbook.errors import Exit
from runbook.journal import read_journal
from tests.conftest import run_cli

RUNBOOK = """
    version: 1
    name: t
    params:
      target: {help: what to recover to, default: wrong}
    steps:
      - {id: prepare, run: "echo prepared", confirm: none}
      - id: recover
        env: {TARGET: "{{ target }}", OUT: "OUTDIR"}
        run: 'echo "$TARGET" >> "$OUT/recovered"; echo "recovered to $TARGET"'
        confirm: {typed: "{{ target }}"}
      - id: verify
        env: {OUT: "OUTDIR"}
        run: 'test "$(tail -1 "$OUT/recovered")" = right || { echo "the table is missing at $(tail -1 "$OUT/recovered")" >&2; exit 1; }'
        confirm: none
      - {id: done, run: "echo all good", confirm: none}
"""


def _events(state: Path, run_id: str) -> list[dict]:
    return read_journal(state / "runs" / run_id / "journal.jsonl").events


def test_a_step_redone_with_a_corrected_value_finishes_the_same_run(write_runbook, state_dir: Path,
                                                                    tmp_path: Path) -> None:
    path = write_runbook(RUNBOOK.replace("OUTDIR", str(tmp_path)))
    first = run_cli("run", str(path), "--headless", "--yes", "--confirm", "recover=wrong", "--state-dir",
                    str(state_dir))
    assert first.returncode == Exit.RUN_FAILED, first.stdout + first.stderr
    assert "the table is missing at wrong" in first.stdout
    (run_id,) = [p.name for p in (state_dir / "runs").iterdir()]

    # not reached, unknown, refused with a clear message and nothing journaled
    for step, said in (("done", "has not run yet"), ("nope", "no step 'nope'")):
        r = run_cli("resume", run_id, "--redo-from", step, "--headless", "--yes", "--state-dir", str(state_dir))
        assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not [e for e in _events(state_dir, run_id) if e["type"] == "steps-reopened"]

    # the typed confirmation is asked again, with the corrected value
    again = run_cli("resume", run_id, "--redo-from", "recover", "--set", "target=right", "--confirm",
                    "recover=right", "--headless", "--yes", "--state-dir", str(state_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    assert (tmp_path / "recovered").read_text().split() == ["wrong", "right"]
    events = _events(state_dir, run_id)
    (reopened,) = [e for e in events if e["type"] == "steps-reopened"]
    assert reopened["from_step"] == "recover" and reopened["steps"] == ["recover", "verify"]
    (changed,) = [e for e in events if e["type"] == "params-set"]
    assert changed["params"] == {"target": "right"}
    started = [(e["step"], e["attempt"]) for e in events if e["type"] == "step-started"]
    assert started == [("prepare", 1), ("recover", 1), ("verify", 1), ("recover", 2), ("verify", 2), ("done", 1)]
    confirmed = [e for e in events if e["type"] == "step-confirmed" and e["step"] == "recover"]
    assert len(confirmed) == 2 and all(e["typed"] for e in confirmed)
    assert events[-1]["type"] == "run-finished" and events[-1]["status"] == "completed"
    saved = json.loads((state_dir / "runs" / run_id / "params.json").read_text())
    assert saved["values"]["target"] == "right"  # a later resume goes on with the corrected value
    rep = run_cli("report", run_id, "--state-dir", str(state_dir))
    assert rep.returncode == 0 and "resume --redo-from" in rep.stdout


def test_a_step_still_running_under_its_supervisor_is_never_redone_under_itself(write_runbook, state_dir: Path,
                                                                                 tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    path = write_runbook(f"""
        version: 1
        name: t
        steps:
          - {{id: first, run: "echo first", confirm: none}}
          - {{id: long, run: "sleep 4; touch {tmp_path}/long-done", confirm: none}}
    """)
    runner = subprocess.Popen([sys.executable, "-m", "runbook", "run", str(path), "--headless", "--yes",
                               "--state-dir", str(state_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 20
    run_id = None
    while run_id is None and time.monotonic() < deadline:
        for d in (state_dir / "runs").glob("*") if (state_dir / "runs").exists() else []:
            try:
                if any(e["type"] == "step-started" and e["step"] == "long" for e in _events(state_dir, d.name)):
                    run_id = d.name
            except Exception:  # noqa: BLE001 - the journal is being written
                pass
        time.sleep(0.1)
    assert run_id is not None
    os.kill(runner.pid, signal.SIGKILL)  # the terminal dies; the step runs on
    runner.wait()
    r = run_cli("resume", run_id, "--redo-from", "first", "--headless", "--yes", "--state-dir", str(state_dir))
    assert r.returncode != 0 and "step long is running" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not [e for e in _events(state_dir, run_id) if e["type"] == "steps-reopened"]
    done = run_cli("resume", run_id, "--headless", "--yes", "--state-dir", str(state_dir), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "long-done").exists()
    assert len([e for e in _events(state_dir, run_id) if e["type"] == "step-started" and e["step"] == "long"]) == 1

"""The full unattended drill, timed by its parts (run by hand, not a test).

    .venv/bin/python bench/drill_bench.py [--scales 1,50] [--repeat 2]

For each sandbox size: `runbook demo --headless --yes`, then, from the run's journal and its steps'
outputs: the RTO (incident start to service restored), the run's wall time, the time inside PostgreSQL's
own tools (pg_restore, ANALYZE, CREATE DATABASE and globals as timed by restore-logical; the fetch's
transfer and sha256 check), and what the tool adds beyond them: the engine's own overhead (wall time
outside any step process) and, until the service is back (the `rto_end` step), the other steps (checks,
attachments, switch-over, notifications). What follows the service's return (re-protection: a base backup,
a logical backup, `check`) is shown apart: it is not in the RTO.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runbook.journal import read_journal  # noqa: E402


def _t(s: str) -> datetime:
    return datetime.fromisoformat(s)


def one_drill(base: Path, scale: int) -> dict[str, float]:
    sb, state = base / "sandbox", base / f"state-{time.monotonic_ns()}"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runbook", "demo", "--headless", "--yes", "--dir", str(sb),
                           "--state-dir", str(state), "--scale", str(scale)], cwd=ROOT, capture_output=True, text=True)
    total = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"drill failed:\n{proc.stdout[-3000:]}\n{proc.stderr}")
    (run_dir,) = (state / "runs").iterdir()
    events = read_journal(run_dir / "journal.jsonl").events
    start, end = _t(events[0]["ts"]), _t(events[-1]["ts"])
    incident = _t(events[0]["incident_start"])
    restored = next(_t(e["ts"]) for e in events if e["type"] == "step-finished" and e.get("rto_end"))
    out = {(e["step"], e["name"]): e["value"] for e in events if e["type"] == "step-output"}
    durations = {e["step"]: e["duration_s"] for e in events if e["type"] == "step-finished" and "exit_code" in e}
    restore_all = float(out[("restore", "duration_s")])
    pg_tools = float(out[("restore", "restore_s")]) + float(out[("restore", "analyze_s")])
    fetch = durations["fetch"]
    wall = (end - start).total_seconds()
    in_steps = sum(durations.values())
    size = json.loads((sb / "at-backup.json").read_text())
    rows = sum(t["rows"] for t in size.values())
    to_service = (restored - start).total_seconds()
    return {
        "rows": rows, "demo_total_s": total, "rto_s": (restored - incident).total_seconds(), "run_wall_s": wall,
        "run_to_service_s": to_service, "after_service_s": wall - to_service,
        "fetch_s": fetch, "pg_restore_analyze_s": pg_tools, "restore_action_s": restore_all,
        "steps_sum_s": in_steps, "engine_overhead_s": wall - in_steps,
        "tool_added_to_service_s": to_service - fetch - restore_all,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="1,50")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="runbook-drill-bench-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        for scale in (int(s) for s in args.scales.split(",")):
            runs = [one_drill(base, scale) for _ in range(args.repeat)]
            print(f"\nscale {scale}: {int(runs[0]['rows']):,} rows, {args.repeat} drills")
            print("| part | min | median |\n|---|---|---|")
            for key in runs[0]:
                if key == "rows":
                    continue
                xs = [r[key] for r in runs]
                print(f"| {key} | {min(xs):.2f} s | {statistics.median(xs):.2f} s |")
            subprocess.run([sys.executable, "-m", "runbook", "demo", "--down", "--dir", str(base / "sandbox")],
                           cwd=ROOT, capture_output=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""bench/compare.py, issue 16's comparison table, at its --quick size on its cheapest path: the table comes out
with figures measured in this run (the bench builds its own PostgreSQL 15 cluster and moto S3 server); whether
they meet the goals is not asserted (a benchmark's figures are not a test's), only that they are real and agree
with each other. And its bad input: a clear error, no traceback.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
COMPARE = ROOT / "bench" / "compare.py"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(COMPARE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def cells(text: str, first: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {first}"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_quick_backup_row_is_measured(tmp_path: Path) -> None:
    md = tmp_path / "table.md"
    proc = run("--quick", "--only", "backup", "--repeat", "1", "--markdown", str(md))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = md.read_text()
    assert text in proc.stdout  # what it printed is what it wrote
    assert re.search(r"^machine: \d+ cores, [\d.]+ GiB RAM, PostgreSQL 15\.\d+", text, re.M)
    assert "command: `" in text and "bench/compare.py --quick --only backup --repeat 1 --markdown" in text
    assert "QUICK size" in text

    path, product, refs, ratio, goal, met = cells(text, "daily backup incl. checks")
    ours = float(re.fullmatch(r"(\d+\.\d\d) s", product)[1])  # type: ignore[index]
    plan, plain = (float(x) for x in re.findall(r"(\d+\.\d\d) s", refs))
    assert ours > 0 and plan > 0 and plain > 0
    to_plan, to_plain = (float(x) for x in re.fullmatch(r"(\d+\.\d\d)x the plan; (\d+\.\d\d)x the plain dump",
                                                        ratio).groups())  # type: ignore[union-attr]
    # The ratios are the figures' own (to the rounding of the seconds shown).
    assert abs(to_plan - ours / plan) <= 0.05 * to_plan + 0.02
    assert abs(to_plain - ours / plain) <= 0.05 * to_plain + 0.02
    assert goal == "≤ 0.35x the plan and ≤ 1.15x the plain dump"
    assert met == "met" or met.startswith("not met (")
    assert (met == "met") == (to_plan <= 0.35 and to_plain <= 1.15)
    # Only the path asked for; each job run once, its measurements listed.
    assert "restore incl." not in text and "archive_command" not in text
    for job in ("backup: plan, pg_dump -F c \\| gzip", "backup: runbook backup (all parts)",
                "backup: pg_dump -Fd -j2 -Z1 (bare)"):
        _name, runs, lo, mid = cells(text, job)
        assert runs == "1" and lo == mid and float(mid.removesuffix(" s")) > 0


def test_bad_input_is_named_without_traceback(tmp_path: Path) -> None:
    bad_path = run("--only", "everything", timeout=30)
    assert bad_path.returncode == 2 and "--only" in bad_path.stderr and "backup" in bad_path.stderr
    no_repeat = run("--quick", "--repeat", "0", timeout=30)
    assert no_repeat.returncode == 1 and "--repeat must be at least 1, not 0" in no_repeat.stderr
    no_dir = run("--quick", "--only", "backup", "--markdown", str(tmp_path / "no" / "t.md"), timeout=30)
    assert no_dir.returncode == 1 and f"no directory {tmp_path / 'no'}" in no_dir.stderr
    for proc in (bad_path, no_repeat, no_dir):
        assert "Traceback" not in proc.stderr and proc.stdout == ""

"""`runbook verify-backup` against a plain `pg_restore -j2`, side by side in one run (by hand, not a test).

    .venv/bin/python bench/verify_bench.py [--scale 10] [--text-mb 200] [--repeat 3]

Builds the backup benchmark's database (bench/backup_bench.py: pgbench at --scale plus --text-mb of text-like
rows) in a throwaway PostgreSQL 15 cluster, takes one `runbook backup` into a local repository, then,
alternating each repeat:

verify   `runbook verify-backup --json`: its parts from the JSON (fetch: every object copied out of the
         repository with its sha256 checked; scratch: initdb and start of the throwaway cluster, made while
         the fetch runs; restore: globals and `pg_restore -j2`; checks: expected tables, every table's row
         count, smoke queries; cleanup: the scratch cluster stopped and removed) and its total wall time, the
         command's start included;
plain    the same dump restored by `pg_restore -j2 --create` straight from the repository into a running
         cluster (no fetch, no checks, no scratch cluster to make).

Prints min and median of each, and the goal's ratio: verify-backup's total against 1.1 x the plain restore
plus verify-backup's own checks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backup_bench import ROLE, build, source_cluster  # noqa: E402

from tests.support.pgcluster import PG_BIN, clone_cluster  # noqa: E402
from tests.support.signing import signing_yaml  # noqa: E402

PY = sys.executable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--text-mb", type=int, default=200, help="text-like data to add, in MB on disk (about)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    base, work, tpl, c = source_cluster("runbook-verify-bench-")
    (base / "t").mkdir()
    target = clone_cluster(tpl, base / "t")  # where the plain pg_restore goes
    target.start()
    try:
        env = {**os.environ, **c.env}
        build(c, env, args.scale, args.text_mb)
        cfg = work / "repo.yaml"
        cfg.write_text(
            f"version: 1\ncluster: {{host: {c.socket_dir}, port: {c.port}, user: {ROLE}, databases: [bench]}}\n"
            f"local: {{path: {work / 'repo'}}}\nbackup: {{state_dir: {work / 'state'}, jobs: 2}}\n"
            "checks: {expect_tables: [pgbench_accounts, docs], smoke: ['select count(*) > 0 from docs']}\n"
            + signing_yaml(work))
        t0 = time.monotonic()
        subprocess.run([PY, "-m", "runbook", "backup", "-c", str(cfg)], env=env, check=True, capture_output=True)
        print(f"backup: {time.monotonic() - t0:.1f} s", flush=True)
        (dump,) = (work / "repo").glob("clusters/*/logical/bench/*/dump")
        scratch = base / "scratch"
        scratch.mkdir()
        os.chmod(scratch, 0o755)
        times: dict[str, list[float]] = {}

        def rec(name: str, secs: float) -> None:
            times.setdefault(name, []).append(secs)

        for i in range(args.repeat):
            order = ["verify", "plain"] if i % 2 == 0 else ["plain", "verify"]
            for what in order:
                if what == "verify":
                    t0 = time.monotonic()
                    r = subprocess.run([PY, "-m", "runbook", "verify-backup", "-c", str(cfg), "--scratch-dir",
                                        str(scratch), "--json"], env=env, capture_output=True, text=True)
                    wall = time.monotonic() - t0
                    out = json.loads(r.stdout)
                    if r.returncode != 0:
                        raise SystemExit(f"verify-backup failed: {r.stdout}\n{r.stderr}")
                    rec("verify total (wall)", wall)
                    for k in ("fetch_s", "scratch_s", "restore_s", "checks_s", "cleanup_s", "total_s"):
                        rec(f"verify {k[:-2]}", out["timings"].get(k, 0.0))
                else:
                    target.psql("drop database if exists bench")
                    t0 = time.monotonic()
                    subprocess.run([str(PG_BIN / "pg_restore"), "-h", str(target.socket_dir), "-p", str(target.port),
                                    "-U", "postgres", "-j2", "--create", "--exit-on-error", "-d", "postgres",
                                    "--no-owner", str(dump)], check=True, capture_output=True)
                    rec("plain pg_restore -j2", time.monotonic() - t0)
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)

        print(f"\n{'':28} {'min':>8} {'median':>8}")
        for k, v in times.items():
            print(f"{k:28} {min(v):8.1f} {statistics.median(v):8.1f}")
        med = {k: statistics.median(v) for k, v in times.items()}
        plain, checks, total = med["plain pg_restore -j2"], med["verify checks"], med["verify total (wall)"]
        goal = 1.1 * plain + checks
        print(f"\nverify-backup restore / plain pg_restore: {med['verify restore'] / plain:.2f}x")
        print(f"verify-backup total {total:.1f} s against the goal 1.1 x plain + checks = {goal:.1f} s: "
              f"{total / (plain + checks):.2f}x plain + checks ({'met' if total <= goal else 'NOT met'})")
        fixed = total - med["verify restore"] - checks
        print(f"outside the restore and checks: {fixed:.1f} s = fetch {med['verify fetch']:.1f} s and scratch cluster "
              f"{med['verify scratch']:.1f} s (in parallel), stop and removal {med['verify cleanup']:.1f} s, "
              f"process start {total - med['verify total']:.1f} s, the rest (catalogue, lock, record) "
              f"{med['verify total'] - max(med['verify fetch'], med['verify scratch']) - med['verify restore'] - checks - med['verify cleanup']:.1f} s")
    finally:
        c.stop()
        target.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

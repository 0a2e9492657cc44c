"""Scenario 1's restore, side by side with the plan's procedure and plain `pg_restore -j2` (run by hand, not a test).

    .venv/bin/python bench/restore_bench.py [--scale 50] [--text-mb 800] [--repeat 3] [--no-s3] [--fsync]
                                            [--tables N] [--baseline-tree DIR]

Builds one database (the backup bench's data: pgbench at --scale plus --text-mb of text-like rows) in a
throwaway PostgreSQL 15 cluster, starts moto's S3 server on 127.0.0.1, takes one `runbook backup` (local + S3),
the plan's `pg_dump -F c | gzip` and a plain `pg_dump -Fd -j2 -Z1`, then, each repeat in a rotated order, each
into a fresh database dropped afterwards:

plan        the plan's procedure: `gunzip` then a single-job `pg_restore`;
plain       `pg_restore -j2` of the plain directory dump (no fetch, no check, no ANALYZE): the floor;
two steps   ours as the runbook runs it: `fetch-latest-backup` (every sha256 checked, into a private directory),
            then `restore-logical` on the fetched directory (globals, pg_restore -j2, ANALYZE), from local and
            from S3;
before      with --baseline-tree, the two steps run from another source tree (an export of an older commit:
            before/after in one run).

Prints min and median of each, the busy CPU seconds of the machine while it ran, and ratios to the plan and to
plain `pg_restore -j2`; ours also by part (fetch, pg_restore, ANALYZE: wall time inside it).
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from backup_bench import (  # noqa: E402
    CPU,
    PY,
    ROLE,
    ROOT,
    Runs,
    add_common_args,
    build,
    run_rotated,
    sh,
    source_cluster,
    start_s3,
    timed,
    write_config,
)

from tests.support.pgcluster import PG_BIN, Cluster, as_server_user  # noqa: E402

PLAN = "restore: plan, gunzip then pg_restore (1 job)"


def plain_label(jobs: int) -> str:
    return f"restore: plain pg_restore -j{jobs} (-Fd -Z1; no fetch, check, ANALYZE)"


def two_steps_label(source: str, who: str = "ours") -> str:
    return f"restore: {who}, two steps from {source}: fetch-latest-backup + restore-logical"


def events_of(stderr: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for ln in stderr.splitlines():
        if ln.startswith("[event] ") and '"output"' in ln:
            e = json.loads(ln[8:])
            out[e["name"]] = e["value"]
    return out


def action(name: str, args: dict[str, object], env: dict[str, str], tree: Path = ROOT) -> dict[str, object]:
    """Run the step `name` (python -m steps NAME) with its JSON arguments from the source tree; its outputs."""
    res = subprocess.run([PY, "-m", "steps", name], env=env, cwd=tree, capture_output=True, text=True,
                         input=json.dumps(args))
    if res.returncode != 0:
        raise SystemExit(f"{name} failed ({res.returncode}): {res.stdout[-3000:]}{res.stderr[-2000:]}")
    return events_of(res.stderr)


def prepare(c: Cluster, env: dict[str, str], work: Path, cfg: Path, jobs: int) -> tuple[Path, Path]:
    """What the restores start from, made once unless already there: a `runbook backup` into cfg's
    repositories, the plan's `pg_dump -F c | gzip` (work/plan.dump.gz) and a plain `pg_dump -Fd -jN -Z1`
    (work/d1). Returns (plan file, plain dump directory)."""
    env_bk = {**env, "PGUSER": ROLE}
    plan, fd1 = work / "plan.dump.gz", work / "d1"
    if not (cfg.parent / cfg.stem / "state" / "backup-status.json").exists():
        subprocess.run([PY, "-m", "runbook", "backup", "-c", str(cfg)], env=env, cwd=ROOT, check=True,
                       capture_output=True)
    if not plan.exists():
        sh(f"{PG_BIN}/pg_dump -F c -d bench | gzip > {plan}", env_bk)
    if not (fd1 / "toc.dat").exists():
        shutil.rmtree(fd1, ignore_errors=True)
        sh(f"{PG_BIN}/pg_dump -Fd -j{jobs} -Z1 -d bench -f {fd1}", env_bk)
    return plan, fd1


def restore_jobs(runs: Runs, c: Cluster, env: dict[str, str], work: Path, cfg: Path, jobs: int,
                 sources: list[str], baseline_tree: Path | None = None) -> list[Callable[[], None]]:
    """The restores to run side by side (see the module's docstring), each into a fresh database dropped after."""
    plan, fd1 = prepare(c, env, work, cfg, jobs)
    dest = work / "fetched"

    def fresh(db: str, create: bool = True) -> None:
        c.psql(f"drop database if exists {db}")
        if create:
            c.psql(f"create database {db} template template0")

    def the_plan() -> None:
        fresh("r_plan")
        runs.rec(PLAN, timed(lambda: sh(f"gunzip -c {plan} > {work}/plan.dump && {PG_BIN}/pg_restore -d r_plan "
                                        f"{work}/plan.dump", env)))
        fresh("r_plan", create=False)
        os.unlink(work / "plan.dump")

    def plain() -> None:
        fresh("r_plain")
        runs.rec(plain_label(jobs), timed(lambda: sh(f"{PG_BIN}/pg_restore -j{jobs} -d r_plain {fd1}", env)))
        fresh("r_plain", create=False)

    def two_steps(source: str, tree: Path = ROOT) -> Callable[[], None]:
        who = "ours" if tree == ROOT else "before (baseline tree)"

        def run() -> None:
            shutil.rmtree(dest, ignore_errors=True)
            fresh("r_ours", create=False)
            parts: dict[str, float] = {}

            def both() -> None:
                t0 = time.monotonic()
                got = action("fetch-latest-backup", {"config": str(cfg), "db": "bench", "dest": str(dest),
                                                     "from": source}, env, tree)
                parts["fetch"] = time.monotonic() - t0
                out = action("restore-logical", {"backup_dir": got["backup_dir"], "db": "r_ours", "jobs": jobs},
                             env, tree)
                parts["pg_restore"] = float(out["restore_s"])  # type: ignore[arg-type]
                parts["analyze"] = float(out["analyze_s"])  # type: ignore[arg-type]

            runs.rec(two_steps_label(source, who), timed(both))
            for k, v in parts.items():
                runs.rec(f"  {who} {source} two steps: {k}", v)
            fresh("r_ours", create=False)
        run.__name__ = f"two_steps_{source}" if tree == ROOT else f"baseline_{source}"
        return run

    out = [the_plan, plain] + [two_steps(s) for s in sources]
    if baseline_tree is not None:
        out += [two_steps(s, baseline_tree.resolve()) for s in sources]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--baseline-tree", type=Path, help="also run the two steps from this source tree (before/after)")
    ap.add_argument("--tables", type=int, default=0,
                    help="also this many small tables (a key, an index, 10 rows each): a schema of many objects")
    ap.add_argument("--fsync", action="store_true",
                    help="run the server with fsync on (the test clusters run with fsync off: commits cost no flush)")
    args = ap.parse_args()

    base, work, _tpl, c = source_cluster("runbook-restore-bench-")
    server = None
    try:
        env = {**os.environ, **c.env}
        if args.fsync:  # the test clusters start with -c fsync=off: start it again without
            c.stop()
            opts = f"-c listen_addresses='' -c unix_socket_directories='{c.socket_dir}' -c port={c.port}"
            subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(c.datadir), "-l",
                                           str(c.datadir / "server.log"), "-o", opts, "-w", "start"]),
                           check=True, capture_output=True)
            print(f"server fsync: {c.psql('show fsync')}", flush=True)
        build(c, env, args.scale, args.text_mb)
        for lo in range(0, args.tables, 500):
            c.psql("".join(f"create table small_{i}(id int primary key, v text); create index on small_{i}(v); "
                           f"insert into small_{i} select g, g::text from generate_series(1, 10) g; "
                           for i in range(lo, min(lo + 500, args.tables))), "bench")
        endpoint = ""
        if not args.no_s3:
            server, endpoint = start_s3(env)
        cfg = write_config(work, c, "ours", endpoint, args.jobs)
        runs = Runs()
        sources = ["local"] + ([] if args.no_s3 else ["s3"])
        run_rotated(restore_jobs(runs, c, env, work, cfg, args.jobs, sources, args.baseline_tree), args.repeat)

        plan_s = runs.median(PLAN)
        plain_s = runs.median(plain_label(args.jobs))
        size = c.psql("select pg_size_pretty(pg_database_size('bench'))")
        print(f"\n{args.repeat} repeats (order rotated), pgbench scale {args.scale} + ~{args.text_mb} MB text ({size}), "
              f"{os.cpu_count()} cores, jobs {args.jobs}, S3 {'off' if args.no_s3 else 'moto on 127.0.0.1'}\n")
        print(f"| {'job (parts of ours indented: wall time inside it)':80} | {'min s':>6} | {'median s':>8} "
              f"| {'CPU s':>6} | {'/ plan':>6} | {'/ plain':>7} |")
        print(f"|{'-' * 82}|{'-' * 8}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 9}|")
        for name, xs in runs.times.items():
            med = statistics.median(xs)
            top = not name.startswith("  ")
            cpu = f"{statistics.median(CPU[name]):.1f}" if name in CPU else ""
            r1 = f"{med / plan_s:.2f}x" if top else ""
            r2 = f"{med / plain_s:.2f}x" if top else ""
            print(f"| {name:80} | {min(xs):6.1f} | {med:8.1f} | {cpu:>6} | {r1:>6} | {r2:>7} |")
        print("\nCPU s: busy CPU seconds of the whole machine (all cores, /proc/stat) while the job ran: the server, "
              "the tools, S3 (moto, in this process) and other load; on 2 cores a job cannot take less than CPU s / 2.")
    finally:
        c.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The daily backup and the logical restore, side by side with the plan's pipeline (run by hand, not a test).

    .venv/bin/python bench/backup_bench.py [--scale 50] [--text-mb 1000] [--repeat 3] [--no-s3]

Builds one database (pgbench at --scale plus --text-mb of text-like rows: words from a vocabulary, gzip
ratio about 4x) in a throwaway PostgreSQL 15 cluster, starts moto's S3 server on 127.0.0.1, then, in one
run and alternating each repeat:

backup   the plan's `pg_dump -F c | gzip` (with pipefail), `runbook backup` (local + S3: dump, row counts,
         globals, pg_restore checks, publish, re-read; parts from its status JSON), and bare
         `pg_dump -Fc -Z1` / `pg_dump -Fd -j2 -Z1` (the format choice);
restore  the plan's `gunzip` then single-job `pg_restore`, `fetch-latest-backup` from S3, `restore-logical`
         (its pg_restore and ANALYZE apart), and `pg_restore -j2` from `-Fc -Z1` (the format choice).

Prints min and median of each, sizes, and ratios to the plan. An S3 server on the same 2 cores measures
itself as much as us: its parts are shown separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.pgcluster import PG_BIN, Cluster, clone_cluster, initdb, make_base_dir  # noqa: E402
from tests.support.signing import signing_yaml  # noqa: E402

PY = sys.executable
ROLE = "backup_user"


def sh(cmd: str, env: dict[str, str]) -> None:
    subprocess.run(["bash", "-c", f"set -euo pipefail; {cmd}"], env=env, check=True, stdout=subprocess.DEVNULL)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(c: Cluster, env: dict[str, str], scale: int, text_mb: int) -> None:
    c.psql(f"create role {ROLE} login in role pg_read_all_data")
    c.psql("create database bench")
    t0 = time.monotonic()
    subprocess.run([str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale), "bench"], env=env, check=True,
                   capture_output=True)
    c.psql("""create table docs(id bigserial primary key, title text, body text, created timestamptz default now());
              create table vocab as select row_number() over () as i, w from
                (select distinct substr(md5(g::text), 1, 3 + mod(g, 8)) w from generate_series(1, 3000) g) s;""",
           "bench")
    rows = text_mb * 700  # ~1.4 kB per row on disk
    step = 50_000
    for lo in range(0, rows, step):
        c.psql(f"""insert into docs(title, body)
                   select 'document ' || g, (select string_agg(w, ' ') from vocab
                                             where i in (select 1 + (random() * 2999)::int + 0 * g
                                                         from generate_series(1, 160)))
                   from generate_series({lo + 1}, {min(lo + step, rows)}) g""", "bench")
    c.psql("vacuum analyze", "bench")
    size = c.psql("select pg_size_pretty(pg_database_size('bench'))")
    print(f"built: pgbench scale {scale} + {rows} text rows = {size} in {time.monotonic() - t0:.0f} s", flush=True)


def source_cluster(prefix: str) -> tuple[Path, Path, Path, Cluster]:
    """A base directory, its world-writable `work/`, an initdb template and a started cluster made from it."""
    base = make_base_dir(prefix)
    work = base / "work"
    work.mkdir()
    os.chmod(work, 0o777)
    tpl = base / "tpl" / "data"
    initdb(tpl)
    (base / "c").mkdir()
    c = clone_cluster(tpl, base / "c")
    c.start()
    return base, work, tpl, c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--text-mb", type=int, default=200, help="text-like data to add, in MB on disk (about)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-s3", action="store_true", help="local repository only")
    args = ap.parse_args()

    base, work, _tpl, c = source_cluster("runbook-backup-bench-")
    server = None
    try:
        env = {**os.environ, **c.env}
        build(c, env, args.scale, args.text_mb)
        s3_conf = ""
        if not args.no_s3:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            env.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
            import boto3

            boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                         aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
            s3_conf = f"s3: {{bucket: bench, prefix: af, endpoint_url: 'http://{host}:{port}'}}\n"
        cfg = work / "repo.yaml"
        cfg.write_text(
            f"version: 1\ncluster: {{host: {c.socket_dir}, port: {c.port}, user: {ROLE}, databases: [bench]}}\n"
            f"local: {{path: {work / 'repo'}}}\n{s3_conf}"
            f"backup: {{state_dir: {work / 'state'}, jobs: {args.jobs}}}\nretention: {{keep_last: 2, keep_days: 0}}\n"
            + signing_yaml(work))
        env_bk = {**env, "PGUSER": ROLE}
        times: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}

        def rec(name: str, secs: float) -> None:
            times.setdefault(name, []).append(secs)

        plan, fc1, fd1, dest = work / "plan.dump.gz", work / "c1.dump", work / "d1", work / "fetched"
        fetched: dict[str, object] = {}
        out: dict[str, float] = {}
        for r in range(args.repeat):
            print(f"repeat {r + 1}/{args.repeat}", flush=True)
            rec("backup: plan, pg_dump -F c | gzip", timed(lambda: sh(
                f"{PG_BIN}/pg_dump -F c -d bench | gzip > {plan}", env_bk)))
            sizes["backup: plan, pg_dump -F c | gzip"] = du(plan)

            proc = None

            def ours() -> None:
                nonlocal proc
                proc = subprocess.run([PY, "-m", "runbook", "backup", "-c", str(cfg)], env=env, cwd=ROOT,
                                      capture_output=True, text=True)

            rec("backup: runbook backup (all parts)", timed(ours))
            assert proc is not None
            if proc.returncode != 0:
                raise SystemExit(f"runbook backup failed: {proc.stderr[-3000:]}")
            st = json.loads((work / "state" / "backup-status.json").read_text())["targets"]["bench"]
            t = st["timings"]
            sizes["backup: runbook backup (all parts)"] = st["size_bytes"]
            rec("  of which pg_dump -Fd -j2 -Z1 (+ row counts)", t["pg_dump_s"])
            rec("  of which globals + sha256 of the dump", t["globals_s"] + t["hash_s"])
            rec("  of which verify: pg_restore --list, -f /dev/null", t["check_s"])
            rec("  of which publish local (link, re-read)", t["publish_local_s"])
            if "publish_s3_s" in t:
                rec("  of which publish S3 (upload)", t["publish_s3_upload_s"])
                rec("  of which publish S3 (re-read sha256)", t["publish_s3_reread_s"])

            rec("backup: pg_dump -Fc -Z1 (bare)", timed(lambda: sh(f"{PG_BIN}/pg_dump -Fc -Z1 -d bench -f {fc1}", env_bk)))
            sizes["backup: pg_dump -Fc -Z1 (bare)"] = du(fc1)
            shutil.rmtree(fd1, ignore_errors=True)
            rec("backup: pg_dump -Fd -j2 -Z1 (bare)", timed(lambda: sh(
                f"{PG_BIN}/pg_dump -Fd -j{args.jobs} -Z1 -d bench -f {fd1}", env_bk)))
            sizes["backup: pg_dump -Fd -j2 -Z1 (bare)"] = du(fd1)

            # Restores: each into a fresh database, dropped afterwards.
            def fresh(db: str) -> None:
                c.psql(f"drop database if exists {db}")

            fresh("r_plan")
            c.psql("create database r_plan template template0")
            rec("restore: plan, gunzip then pg_restore (1 job)", timed(lambda: sh(
                f"gunzip -c {plan} > {work}/plan.dump && {PG_BIN}/pg_restore -d r_plan {work}/plan.dump", env)))
            fresh("r_plan")

            shutil.rmtree(dest, ignore_errors=True)
            fetched.clear()

            def fetch() -> None:
                res = subprocess.run([PY, "-m", "steps", "fetch-latest-backup"], env=env, cwd=ROOT, capture_output=True,
                                     text=True, input=json.dumps({"config": str(cfg), "db": "bench", "dest": str(dest),
                                                                  "from": "local" if args.no_s3 else "s3"}))
                if res.returncode != 0:
                    raise SystemExit(f"fetch failed: {res.stdout[-2000:]}{res.stderr[-2000:]}")
                fetched.update({json.loads(ln[8:])["name"]: json.loads(ln[8:])["value"]
                                for ln in res.stderr.splitlines() if ln.startswith("[event] ") and '"output"' in ln})

            rec("restore: fetch-latest-backup (S3, sha256 while streaming)" if not args.no_s3 else
                "restore: fetch-latest-backup (local)", timed(fetch))
            fresh("r_ours")
            out.clear()

            def restore() -> None:
                res = subprocess.run([PY, "-m", "steps", "restore-logical"], env=env, cwd=ROOT, capture_output=True,
                                     text=True, input=json.dumps({"backup_dir": fetched["backup_dir"], "db": "r_ours",
                                                                  "jobs": args.jobs}))
                if res.returncode != 0:
                    raise SystemExit(f"restore-logical failed: {res.stdout[-3000:]}")
                for ln in res.stderr.splitlines():
                    if ln.startswith("[event] ") and '"output"' in ln:
                        e = json.loads(ln[8:])
                        out[e["name"]] = e["value"]

            rec("restore: restore-logical (all parts)", timed(restore))
            rec("  of which pg_restore -j2 --exit-on-error", float(out["restore_s"]))
            rec("  of which ANALYZE (vacuumdb -j2)", float(out["analyze_s"]))
            fresh("r_ours")
            c.psql("create database r_fc template template0")
            rec("restore: pg_restore -j2 from -Fc -Z1 (bare)", timed(lambda: sh(
                f"{PG_BIN}/pg_restore -j{args.jobs} -d r_fc {fc1}", env)))
            fresh("r_fc")
            c.psql("create database r_fd template template0")
            rec("restore: pg_restore -j1 from -Fd -Z1 (bare)", timed(lambda: sh(
                f"{PG_BIN}/pg_restore -j1 -d r_fd {fd1}", env)))
            fresh("r_fd")

        plan_b = statistics.median(times["backup: plan, pg_dump -F c | gzip"])
        plan_r = statistics.median(times["restore: plan, gunzip then pg_restore (1 job)"])
        print(f"\n{args.repeat} repeats, pgbench scale {args.scale} + ~{args.text_mb} MB text, "
              f"{os.cpu_count()} cores, jobs {args.jobs}, S3 {'off' if args.no_s3 else 'moto on 127.0.0.1'}\n")
        print(f"| {'job':58} | {'min s':>7} | {'median s':>8} | {'size MB':>8} | {'plan / this':>11} |")
        print(f"|{'-' * 60}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 13}|")
        for name, xs in times.items():
            med = statistics.median(xs)
            ref = plan_b if name.startswith("backup") else plan_r if name.startswith("restore") else None
            ratio = f"{ref / med:.2f}x" if ref and med else ""
            size = f"{sizes[name] / 1e6:.0f}" if name in sizes else ""
            print(f"| {name:58} | {min(xs):7.1f} | {med:8.1f} | {size:>8} | {ratio:>11} |")
    finally:
        c.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

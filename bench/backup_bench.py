"""The daily backup and the logical restore, side by side with the plan's pipeline (run by hand, not a test).

    .venv/bin/python bench/backup_bench.py [--scale 50] [--text-mb 1000] [--repeat 3] [--no-s3]
                                           [--backup-only] [--baseline-tree DIR] [--encrypted]

Builds one database (pgbench at --scale plus --text-mb of text-like rows: words from a vocabulary, gzip
ratio about 4x) in a throwaway PostgreSQL 15 cluster, starts moto's S3 server on 127.0.0.1, then, in one
run, each repeat in a rotated order:

backup   the plan's `pg_dump -F c | gzip` (with pipefail), `runbook backup` (local + S3: dump, row counts,
         globals, pg_restore checks, publish, re-read; its parts from its status JSON), and bare
         `pg_dump -Fc -Z1` / `pg_dump -Fd -j2 -Z1` (the format choice; the plain dump is the floor);
         with --baseline-tree, also `runbook backup` run from another source tree (an export of an older
         commit: before/after in one run), into its own repository;
restore  (unless --backup-only) the plan's `gunzip` then single-job `pg_restore`, `fetch-latest-backup` from
         S3, `restore-logical` (its pg_restore and ANALYZE apart), and `pg_restore -j2` from `-Fc -Z1`.
--encrypted  also `runbook backup` into repositories that encrypt (local and S3, `encrypt: true`, one age
         recipient), and its fetch (decrypting while it streams) and restore: the restore's ratio to the same
         restore unencrypted is printed at the end (issue 17: at most 1.1x).

Prints min and median of each, sizes, and ratios: to the plan (plan / this: above 1 is faster than the plan)
and to the plain `pg_dump -Fd -j2 -Z1` (this / plain: the price of checking and copying). An S3 server on the
same 2 cores measures itself as much as us: its parts are shown separately. A part is wall time inside the
backup; with the pipeline the parts overlap, so they do not add up to the whole.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
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


CPU: dict[str, list[float]] = {}  # job -> busy CPU seconds of the whole machine while it ran
_last_cpu = [0.0]


def busy_cpu_s() -> float:
    """Busy CPU seconds of the machine so far (/proc/stat: every state but idle and iowait), all cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def rusage_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


SPLIT: dict[str, list[tuple[float, float]]] = {}  # job -> (CPU s of the tools it ran, CPU s of moto)
_last_split = [(0.0, 0.0)]


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of fn; its CPU seconds go to _last_cpu (the machine) and _last_split: the child processes it
    waited for (the tools, and for `runbook backup` everything it ran: pg_dump, pg_restore) and this process
    (moto's server runs in it: the S3 side)."""
    c0, k0, m0 = busy_cpu_s(), rusage_s(resource.RUSAGE_CHILDREN), rusage_s(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    fn()
    _last_cpu[0] = busy_cpu_s() - c0
    _last_split[0] = (rusage_s(resource.RUSAGE_CHILDREN) - k0, rusage_s(resource.RUSAGE_SELF) - m0)
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
    ap.add_argument("--backup-only", action="store_true", help="skip the restores")
    ap.add_argument("--baseline-tree", type=Path, help="also run `runbook backup` from this source tree (before/after)")
    ap.add_argument("--encrypted", action="store_true", help="also back up into encrypting repositories, and "
                    "fetch and restore from there")
    args = ap.parse_args()

    base, work, _tpl, c = source_cluster("runbook-backup-bench-")
    server = None
    try:
        env = {**os.environ, **c.env}
        build(c, env, args.scale, args.text_mb)
        endpoint = ""
        if not args.no_s3:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            env.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
            import boto3

            endpoint = f"http://{host}:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")

        def config(name: str, encrypted: bool = False) -> Path:
            s3_conf = f"s3: {{bucket: bench, prefix: {name}, endpoint_url: '{endpoint}'}}\n" if endpoint else ""
            enc = ""
            if encrypted:  # local and S3 encrypt (S3 by default once recipients are set); this host also reads
                from steps.crypto.age import generate_identity

                secret, recipient = generate_identity()
                key = work / "keys" / "restore.agekey"
                key.parent.mkdir(mode=0o700, exist_ok=True)
                key.write_text(secret + "\n")
                key.chmod(0o600)
                enc = f"encryption: {{recipients: [{recipient}], identity_files: [{key}]}}\n"
            path = work / f"{name}.yaml"
            path.write_text(
                f"version: 1\ncluster: {{host: {c.socket_dir}, port: {c.port}, user: {ROLE}, databases: [bench]}}\n"
                f"local: {{path: {work / name / 'repo'}, encrypt: {'true' if encrypted else 'false'}}}\n{s3_conf}"
                f"backup: {{state_dir: {work / name / 'state'}, jobs: {args.jobs}}}\n{enc}"
                "retention: {keep_last: 2, keep_days: 0}\n" + signing_yaml(work))
            return path

        cfg = config("ours")
        cfg_base = config("baseline") if args.baseline_tree else None
        cfg_enc = config("encrypted", encrypted=True) if args.encrypted else None
        env_bk = {**env, "PGUSER": ROLE}
        times: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}

        def rec(name: str, secs: float) -> None:
            times.setdefault(name, []).append(secs)
            if not name.startswith("  "):
                CPU.setdefault(name, []).append(_last_cpu[0])
                SPLIT.setdefault(name, []).append(_last_split[0])

        plan, fc1, fd1, dest = work / "plan.dump.gz", work / "c1.dump", work / "d1", work / "fetched"
        fetched: dict[str, object] = {}
        out: dict[str, float] = {}
        PLAN = "backup: plan, pg_dump -F c | gzip"
        PLAIN = f"backup: pg_dump -Fd -j{args.jobs} -Z1 (bare)"

        def the_plan() -> None:
            rec(PLAN, timed(lambda: sh(f"{PG_BIN}/pg_dump -F c -d bench | gzip > {plan}", env_bk)))
            sizes[PLAN] = du(plan)

        def runbook_backup(label: str, tree: Path, conf: Path) -> Callable[[], None]:
            def run() -> None:
                proc = None

                def ours() -> None:
                    nonlocal proc
                    proc = subprocess.run([PY, "-m", "runbook", "backup", "-c", str(conf)], env=env, cwd=tree,
                                          capture_output=True, text=True)

                rec(label, timed(ours))
                assert proc is not None
                if proc.returncode != 0:
                    raise SystemExit(f"runbook backup ({tree}) failed: {proc.stderr[-3000:]}")
                st = json.loads((conf.parent / conf.stem / "state" / "backup-status.json").read_text())
                st = st["targets"]["bench"]
                sizes[label] = st["size_bytes"]
                if tree == ROOT and conf == cfg:  # ours: its parts
                    for key, secs in st["timings"].items():
                        rec(f"  {key}", secs)
            run.__name__ = "ours" if tree == ROOT and conf == cfg else "encrypted" if conf == cfg_enc else "baseline"
            return run

        def bare_fc() -> None:
            rec("backup: pg_dump -Fc -Z1 (bare)", timed(lambda: sh(f"{PG_BIN}/pg_dump -Fc -Z1 -d bench -f {fc1}", env_bk)))
            sizes["backup: pg_dump -Fc -Z1 (bare)"] = du(fc1)

        def bare_fd() -> None:
            shutil.rmtree(fd1, ignore_errors=True)
            rec(PLAIN, timed(lambda: sh(f"{PG_BIN}/pg_dump -Fd -j{args.jobs} -Z1 -d bench -f {fd1}", env_bk)))
            sizes[PLAIN] = du(fd1)
            # What the read check costs on its own (it must decompress every table): part of the floor.
            rec("reference: pg_restore -f /dev/null of the plain dump (alone)",
                timed(lambda: sh(f"{PG_BIN}/pg_restore -f /dev/null {fd1}", env)))

        jobs = [the_plan, runbook_backup("backup: runbook backup (all parts)", ROOT, cfg), bare_fc, bare_fd]
        if args.baseline_tree is not None and cfg_base is not None:
            jobs.append(runbook_backup("backup: runbook backup, baseline tree (all parts)",
                                       args.baseline_tree.resolve(), cfg_base))
        ENC_BACKUP = "backup: runbook backup, encrypted local + S3 (all parts)"
        if cfg_enc is not None:
            jobs.append(runbook_backup(ENC_BACKUP, ROOT, cfg_enc))
        for r in range(args.repeat):
            order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
            print(f"repeat {r + 1}/{args.repeat}: " + ", ".join(j.__name__ for j in order), flush=True)
            for job in order:
                job()
            if args.backup_only:
                continue

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

            def fetch_from(conf: Path) -> Callable[[], None]:
                def fetch() -> None:
                    shutil.rmtree(dest, ignore_errors=True)
                    fetched.clear()
                    res = subprocess.run([PY, "-m", "steps", "fetch-latest-backup"], env=env, cwd=ROOT,
                                         capture_output=True, text=True,
                                         input=json.dumps({"config": str(conf), "db": "bench", "dest": str(dest),
                                                           "from": "local" if args.no_s3 else "s3"}))
                    if res.returncode != 0:
                        raise SystemExit(f"fetch failed: {res.stdout[-2000:]}{res.stderr[-2000:]}")
                    fetched.update({json.loads(ln[8:])["name"]: json.loads(ln[8:])["value"]
                                    for ln in res.stderr.splitlines() if ln.startswith("[event] ") and '"output"' in ln})
                return fetch

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

            where = "local" if args.no_s3 else "S3"
            rec(f"restore: fetch-latest-backup ({where}, sha256 while streaming)", timed(fetch_from(cfg)))
            fresh("r_ours")
            out.clear()
            rec("restore: restore-logical (all parts)", timed(restore))
            rec("  of which pg_restore -j2 --exit-on-error", float(out["restore_s"]))
            rec("  of which ANALYZE (vacuumdb -j2)", float(out["analyze_s"]))
            fresh("r_ours")
            if cfg_enc is not None:  # the same database from the encrypting repositories
                rec(f"restore: fetch-latest-backup encrypted ({where}, decrypting while streaming)",
                    timed(fetch_from(cfg_enc)))
                out.clear()
                rec("restore: restore-logical of the encrypted backup (all parts)", timed(restore))
                rec("  of which pg_restore -j2 --exit-on-error (encrypted)", float(out["restore_s"]))
                fresh("r_ours")
            c.psql("create database r_fc template template0")
            rec("restore: pg_restore -j2 from -Fc -Z1 (bare)", timed(lambda: sh(
                f"{PG_BIN}/pg_restore -j{args.jobs} -d r_fc {fc1}", env)))
            fresh("r_fc")
            c.psql("create database r_fd template template0")
            rec("restore: pg_restore -j1 from -Fd -Z1 (bare)", timed(lambda: sh(
                f"{PG_BIN}/pg_restore -j1 -d r_fd {fd1}", env)))
            fresh("r_fd")

        plan_b = statistics.median(times[PLAN])
        plain_b = statistics.median(times[PLAIN])
        plan_r = statistics.median(times.get("restore: plan, gunzip then pg_restore (1 job)", [0.0]))
        size = c.psql("select pg_size_pretty(pg_database_size('bench'))")
        print(f"\n{args.repeat} repeats (order rotated), pgbench scale {args.scale} + ~{args.text_mb} MB text ({size}), "
              f"{os.cpu_count()} cores, jobs {args.jobs}, S3 {'off' if args.no_s3 else 'moto on 127.0.0.1'}\n")
        print(f"| {'job (parts of ours indented: wall time, overlapping)':58} | {'min s':>7} | {'median s':>8} "
              f"| {'CPU s':>6} | {'tools':>6} | {'S3':>5} | {'size MB':>8} | {'this / plan':>11} | {'this / plain':>12} |")
        print(f"|{'-' * 60}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 7}|{'-' * 10}|{'-' * 13}|{'-' * 14}|")
        for name, xs in times.items():
            med = statistics.median(xs)
            is_backup = name.startswith("backup")
            ref = plan_b if is_backup else plan_r if name.startswith("restore") else None
            ratio = f"{med / ref:.2f}x" if ref and med else ""
            to_plain = f"{med / plain_b:.2f}x" if is_backup and plain_b else ""
            size_mb = f"{sizes[name] / 1e6:.0f}" if name in sizes else ""
            cpu = f"{statistics.median(CPU[name]):.1f}" if name in CPU else ""
            tools = f"{statistics.median(t for t, _ in SPLIT[name]):.1f}" if name in SPLIT else ""
            s3 = f"{statistics.median(m for _, m in SPLIT[name]):.1f}" if name in SPLIT else ""
            print(f"| {name:58} | {min(xs):7.1f} | {med:8.1f} | {cpu:>6} | {tools:>6} | {s3:>5} | {size_mb:>8} "
                  f"| {ratio:>11} | {to_plain:>12} |")
        if cfg_enc is not None:
            med = {k: statistics.median(v) for k, v in times.items()}
            enc_b, ours_b = med.get(ENC_BACKUP), med.get("backup: runbook backup (all parts)")
            fetch_plain = next((v for k, v in med.items() if k.startswith("restore: fetch-latest-backup (")), None)
            fetch_enc = next((v for k, v in med.items() if k.startswith("restore: fetch-latest-backup encrypted")),
                             None)
            rest_plain = med.get("restore: restore-logical (all parts)")
            rest_enc = med.get("restore: restore-logical of the encrypted backup (all parts)")
            if enc_b and ours_b:
                print(f"\nencrypted backup: {enc_b / ours_b:.2f}x the unencrypted one, {enc_b / plan_b:.2f}x the plan's "
                      f"pg_dump -F c | gzip ({'faster' if enc_b < plan_b else 'SLOWER'} than the plan)")
            if fetch_plain and fetch_enc and rest_plain and rest_enc:
                print(f"encrypted restore (fetch + restore-logical): {fetch_enc + rest_enc:.1f} s vs "
                      f"{fetch_plain + rest_plain:.1f} s unencrypted: {(fetch_enc + rest_enc) / (fetch_plain + rest_plain):.2f}x "
                      f"(fetch alone {fetch_enc / fetch_plain:.2f}x; goal: at most 1.1x)")
        print("\nCPU s: busy CPU seconds of the whole machine (all cores, /proc/stat) while the job ran: the server, "
              "the tools, S3 (moto) and any other load; on 2 cores a job cannot take less than CPU s / 2. tools: "
              "of which the processes the job ran (pg_dump, gzip, pg_restore; for runbook backup the tool itself and "
              "all it ran); S3: of which moto's server (in the bench's own process). The rest is PostgreSQL's "
              "server and other load.")
    finally:
        c.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

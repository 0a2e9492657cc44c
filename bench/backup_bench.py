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
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.support.pgcluster import PG_BIN, Cluster, clone_cluster, initdb, make_base_dir  # noqa: E402
from tests.support.s3server import ACCESS_KEY, SECRET_KEY  # noqa: E402
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


def s3_env(env: dict[str, str]) -> None:
    """Credentials for the bench's S3 server into env (what `runbook backup` and the steps read)."""
    env.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"})


def start_s3(env: dict[str, str]) -> tuple[Any, str]:
    """moto's S3 server on 127.0.0.1 (in this process) with a bucket `bench`; env gets credentials for it."""
    from wal_bench import start_s3 as start

    s3_env(env)
    return start()


def write_config(work: Path, c: Cluster, name: str, endpoint: str, jobs: int, encrypted: bool = False) -> Path:
    """A repository config NAME.yaml in work: the cluster's database `bench`, a local repository under
    work/NAME, S3 (prefix NAME) when endpoint is set, the dump's jobs, signing keys. With `encrypted`, the local
    and the S3 repository encrypt to one age recipient whose identity this host holds (it also restores)."""
    s3_conf = f"s3: {{bucket: bench, prefix: {name}, endpoint_url: '{endpoint}'}}\n" if endpoint else ""
    enc = ""
    if encrypted:
        from steps.crypto.age import generate_identity

        secret, recipient = generate_identity()
        key = work / "keys" / f"{name}.agekey"
        key.parent.mkdir(mode=0o700, exist_ok=True)
        key.write_text(secret + "\n")
        key.chmod(0o600)
        enc = f"encryption: {{recipients: [{recipient}], identity_files: [{key}]}}\n"
    path = work / f"{name}.yaml"
    path.write_text(
        f"version: 1\ncluster: {{host: {c.socket_dir}, port: {c.port}, user: {ROLE}, databases: [bench]}}\n"
        f"local: {{path: {work / name / 'repo'}, encrypt: {'true' if encrypted else 'false'}}}\n{s3_conf}"
        f"backup: {{state_dir: {work / name / 'state'}, jobs: {jobs}}}\n{enc}"
        "retention: {keep_last: 2, keep_days: 0}\n" + signing_yaml(work))
    return path


class Runs:
    """What a bench measured: wall seconds per job (parts of a job are named with two leading spaces), and for
    whole jobs the machine's busy CPU seconds and the (tools, S3 server) split; sizes in bytes."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.sizes: dict[str, int] = {}

    def rec(self, name: str, secs: float) -> None:
        self.times.setdefault(name, []).append(secs)
        if not name.startswith("  "):
            CPU.setdefault(name, []).append(_last_cpu[0])
            SPLIT.setdefault(name, []).append(_last_split[0])

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def run_rotated(jobs: list[Callable[[], None]], repeat: int) -> None:
    """Each job once per repeat, the order rotated by one each time: no job always runs first (or after the same)."""
    for r in range(repeat):
        order = jobs[r % len(jobs):] + jobs[:r % len(jobs)]
        print(f"repeat {r + 1}/{repeat}: " + ", ".join(j.__name__ for j in order), flush=True)
        for job in order:
            job()


PLAN = "backup: plan, pg_dump -F c | gzip"
OURS = "backup: runbook backup (all parts)"


def plain_label(jobs: int) -> str:
    return f"backup: pg_dump -Fd -j{jobs} -Z1 (bare)"


def job_plan(runs: Runs, env_bk: dict[str, str], plan: Path) -> Callable[[], None]:
    """The plan's pipeline, `pg_dump -F c | gzip` (with pipefail), into the file plan."""
    def the_plan() -> None:
        runs.rec(PLAN, timed(lambda: sh(f"{PG_BIN}/pg_dump -F c -d bench | gzip > {plan}", env_bk)))
        runs.sizes[PLAN] = du(plan)
    return the_plan


def job_runbook_backup(runs: Runs, label: str, tree: Path, conf: Path, env: dict[str, str],
                       parts: bool = True) -> Callable[[], None]:
    """`runbook backup -c conf` run from the source tree `tree`; for ours (ROOT, with `parts`) its parts from its
    status JSON."""
    def run() -> None:
        proc = None

        def ours() -> None:
            nonlocal proc
            proc = subprocess.run([PY, "-m", "runbook", "backup", "-c", str(conf)], env=env, cwd=tree,
                                  capture_output=True, text=True)

        runs.rec(label, timed(ours))
        assert proc is not None
        if proc.returncode != 0:
            raise SystemExit(f"runbook backup ({tree}) failed: {proc.stderr[-3000:]}")
        st = json.loads((conf.parent / conf.stem / "state" / "backup-status.json").read_text())
        st = st["targets"]["bench"]
        runs.sizes[label] = st["size_bytes"]
        if tree == ROOT and parts:  # ours: its parts
            for key, secs in st["timings"].items():
                runs.rec(f"  {key}", secs)
    run.__name__ = ("ours" if parts else "encrypted") if tree == ROOT else "baseline"
    return run


def job_bare_fd(runs: Runs, env_bk: dict[str, str], fd1: Path, jobs: int,
                read_check: bool = True) -> Callable[[], None]:
    """The plain `pg_dump -Fd -jN -Z1` into fd1 (no check, no copy: the floor), and with read_check what the
    read check costs on its own (`pg_restore -f /dev/null` of it: it must decompress every table)."""
    def bare_fd() -> None:
        shutil.rmtree(fd1, ignore_errors=True)
        runs.rec(plain_label(jobs), timed(lambda: sh(f"{PG_BIN}/pg_dump -Fd -j{jobs} -Z1 -d bench -f {fd1}", env_bk)))
        runs.sizes[plain_label(jobs)] = du(fd1)
        if read_check:
            runs.rec("reference: pg_restore -f /dev/null of the plain dump (alone)",
                     timed(lambda: sh(f"{PG_BIN}/pg_restore -f /dev/null {fd1}", env_bk)))
    return bare_fd


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The options the backup and restore benches share: the database built (build), the repeats, the jobs, S3."""
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--text-mb", type=int, default=200, help="text-like data to add, in MB on disk (about)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-s3", action="store_true", help="local repository only")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
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
            server, endpoint = start_s3(env)
        cfg = write_config(work, c, "ours", endpoint, args.jobs)
        cfg_base = write_config(work, c, "baseline", endpoint, args.jobs) if args.baseline_tree else None
        cfg_enc = write_config(work, c, "encrypted", endpoint, args.jobs, encrypted=True) if args.encrypted else None
        env_bk = {**env, "PGUSER": ROLE}
        runs = Runs()
        times, sizes, rec = runs.times, runs.sizes, runs.rec
        plan, fc1, fd1, dest = work / "plan.dump.gz", work / "c1.dump", work / "d1", work / "fetched"
        fetched: dict[str, object] = {}
        out: dict[str, float] = {}
        PLAIN = plain_label(args.jobs)

        def bare_fc() -> None:
            rec("backup: pg_dump -Fc -Z1 (bare)", timed(lambda: sh(f"{PG_BIN}/pg_dump -Fc -Z1 -d bench -f {fc1}", env_bk)))
            sizes["backup: pg_dump -Fc -Z1 (bare)"] = du(fc1)

        jobs = [job_plan(runs, env_bk, plan), job_runbook_backup(runs, OURS, ROOT, cfg, env), bare_fc,
                job_bare_fd(runs, env_bk, fd1, args.jobs)]
        if args.baseline_tree is not None and cfg_base is not None:
            jobs.append(job_runbook_backup(runs, "backup: runbook backup, baseline tree (all parts)",
                                           args.baseline_tree.resolve(), cfg_base, env))
        ENC_BACKUP = "backup: runbook backup, encrypted local + S3 (all parts)"
        if cfg_enc is not None:
            jobs.append(job_runbook_backup(runs, ENC_BACKUP, ROOT, cfg_enc, env, parts=False))
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

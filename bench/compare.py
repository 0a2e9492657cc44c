"""Issue 16's table in one command: the product beside the plain PostgreSQL tools and the peers, on the same data
in one run (by hand, not a timed test).

    .venv/bin/python bench/compare.py [--scale 50] [--text-mb 1000] [--repeat 3] [--segments 43]
                                      [--only PATH ...] [--quick] [--markdown FILE]

Run as root for the WAL paths (their servers and commands run as `postgres`, from a venv that user can run).
One throwaway PostgreSQL 15 cluster holds the data (pgbench at --scale plus --text-mb of text-like rows), one
moto S3 server on 127.0.0.1 serves every S3 path over HTTP. Then, path by path, each method `--repeat` times in
an order rotated by one each repeat (the functions of backup_bench, restore_bench and wal_bench):

backup          `runbook backup` to the local repository and S3 (dump, checks, copies re-read) beside the plan's
                `pg_dump -F c | gzip` and the plain `pg_dump -Fd -j2 -Z1`;
restore-local   fetch-latest-backup (sha256 checks) then restore-logical, from the local repository / from S3,
restore-s3      beside the plan's `gunzip` then single-job `pg_restore`, and plain `pg_restore -j2`;
archive-local   `runbook wal-push` (asynchronous) per 16 MB segment, one process per segment as PostgreSQL runs
archive-s3      it, beside `cp` + `sync`, pgBackRest's asynchronous `archive-push` (local repository, and S3
                over HTTPS: its client speaks TLS only) and `barman-cloud-wal-archive` (S3 over HTTP); ours to
                S3 over HTTP and over HTTPS;
replay-local    PITR replay of --segments segments through `runbook wal-fetch` (read-ahead) as restore_command,
replay-s3       beside `cp`, pgBackRest's asynchronous `archive-get` (local, and S3 over HTTPS) and
                `barman-cloud-wal-restore` (S3 over HTTP).
HTTPS: a second listener of the same moto (the same buckets) with a self-signed certificate made for the run,
verified by both clients (pgBackRest's repo1-storage-ca-file, ours AWS_CA_BUNDLE).

The peers run when installed (Debian's `pgbackrest` and `barman-cli-cloud`); a peer that cannot run says why.
Prints the machine, the command line and the table (the product, the references measured in the same run,
the ratio, issue 16's goal, met or not), then every measurement (min and median); --markdown writes the same.
--quick is a small size for development (a few minutes); its figures say nothing about the goals.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import backup_bench as bb  # noqa: E402
import restore_bench as rb  # noqa: E402
import wal_bench as wb  # noqa: E402

from tests.support.pgcluster import PG_BIN, as_server_user  # noqa: E402
from tests.support.server_venv import build_server_venv  # noqa: E402

ROOT = bb.ROOT
PATHS = ["backup", "restore-local", "restore-s3", "archive-local", "archive-s3", "replay-local", "replay-s3"]
REFERENCE = {"scale": 50, "text_mb": 1000, "repeat": 3, "segments": 43}  # issue 16's reference size
QUICK = {"scale": 2, "text_mb": 30, "repeat": 2, "segments": 6}
PGBR_S3 = "pgBackRest S3: not run (its client speaks TLS only; moto serves HTTP here)"


@dataclass
class Row:
    path: str
    product: str
    references: str
    ratio: str
    goal: str
    met: str


def verdict(checks: list[tuple[str, float, float]]) -> str:
    """'met' when every (what, value, limit) has value <= limit, else which are not."""
    failed = [f"{what} {value:.2f}x > {limit:.2f}x" for what, value, limit in checks if value > limit]
    return "met" if not failed else "not met (" + "; ".join(failed) + ")"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def machine() -> str:
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    pg = subprocess.run([str(PG_BIN / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    parts = [f"{os.cpu_count()} cores", f"{mem / 1024 / 1024:.1f} GiB RAM", pg.replace("postgres (PostgreSQL) ",
                                                                                         "PostgreSQL ")]
    if wb.PGBACKREST:
        parts.append(subprocess.run([wb.PGBACKREST, "version"], capture_output=True, text=True).stdout.strip())
    else:
        parts.append("pgBackRest not installed")
    if wb.BARMAN_PUSH:
        out = subprocess.run([wb.BARMAN_PUSH, "--version"], capture_output=True, text=True)
        parts.append((out.stdout or out.stderr).strip())
    else:
        parts.append("barman-cloud not installed")
    return ", ".join(parts)


def command_line() -> str:
    def rel(p: str) -> str:  # the checkout's paths relative to it: the command as run from its top
        return os.path.relpath(p, ROOT) if Path(os.path.abspath(p)).is_relative_to(ROOT) else p
    return shlex.join([rel(sys.executable), rel(sys.argv[0]), *sys.argv[1:]])


def backup_row(runs: bb.Runs, jobs: int) -> Row:
    ours, plan, plain = runs.median(bb.OURS), runs.median(bb.PLAN), runs.median(bb.plain_label(jobs))
    return Row("daily backup incl. checks, local + S3 copy", f"{ours:.2f} s",
               f"the plan's `pg_dump -F c \\| gzip` {plan:.2f} s; plain `pg_dump -Fd -j{jobs} -Z1` {plain:.2f} s "
               f"(no check, no copy: {plain / plan:.2f}x the plan)",
               f"{ours / plan:.2f}x the plan; {ours / plain:.2f}x the plain dump",
               "≤ 0.35x the plan and ≤ 1.15x the plain dump",
               verdict([("the plan", ours / plan, 0.35), ("the plain dump", ours / plain, 1.15)]))


def restore_row(runs: bb.Runs, jobs: int, source: str) -> Row:
    ours, plan, plain = (runs.median(rb.two_steps_label(source)), runs.median(rb.PLAN),
                         runs.median(rb.plain_label(jobs)))
    fetch = med(runs.times[f"  ours {source} two steps: fetch"])
    where = "local" if source == "local" else "S3"
    return Row(f"restore incl. fetch and sha256 checks, from {where}", f"{ours:.2f} s (fetch {fetch:.2f} s)",
               f"the plan's `gunzip` then `pg_restore` {plan:.2f} s; plain `pg_restore -j{jobs}` {plain:.2f} s "
               f"({plain / plan:.2f}x the plan)",
               f"{ours / plan:.2f}x the plan; {ours / plain:.2f}x plain `pg_restore -j{jobs}`",
               f"≤ 0.66x the plan: no slower than plain `pg_restore -j{jobs}`",
               verdict([("the plan", ours / plan, 0.66), (f"pg_restore -j{jobs}", ours / plain, 1.0)]))


def archive_rows(results: dict[str, tuple[list[float], list[float]]], paths: list[str]) -> list[Row]:
    ms = {m: med(times) for m, (times, _rates) in results.items()}
    cp = ms["cp + sync (floor)"]
    rows = []
    if "archive-local" in paths:
        ours = ms["ours: local-async"]
        refs = [f"`cp` + `sync` {cp:.0f} ms"]
        pgbr = ms.get("pgbackrest local-async")
        if pgbr is not None:
            refs.append(f"pgBackRest async {pgbr:.0f} ms (sync {ms['pgbackrest local']:.0f} ms)")
            ratio = f"{ours / pgbr:.2f}x pgBackRest async; {ours / cp:.2f}x `cp` + `sync`"
            met = verdict([("pgBackRest async", ours / pgbr, 1.0)])
        else:
            refs.append("pgBackRest not installed")
            ratio, met = f"{ours / cp:.2f}x `cp` + `sync`", "not judged: no pgBackRest"
        rows.append(Row("`archive_command`, local repository, per 16 MB segment (async)", f"{ours:.0f} ms",
                        "; ".join(refs), ratio, "≤ pgBackRest async", met))
    if "archive-s3" in paths:
        ours = ms["ours: s3-async"]
        refs = [f"`cp` + `sync` {cp:.0f} ms"]
        ratios = []
        ours_tls, pgbr = ms.get("ours: s3-async-tls"), ms.get(wb.PGBR_S3_ASYNC)
        product = f"{ours:.0f} ms over HTTP"
        if ours_tls is not None and pgbr is not None:
            product += f"; {ours_tls:.0f} ms over HTTPS"
            refs.append(f"pgBackRest async over HTTPS {pgbr:.0f} ms")
            ratios.append(f"{ours_tls / pgbr:.2f}x pgBackRest async (both over HTTPS)")
            met = verdict([("pgBackRest async, both over HTTPS", ours_tls / pgbr, 1.0)])
        else:
            refs.append("pgBackRest not installed" if not wb.PGBACKREST else PGBR_S3)
            met = "not judged: no pgBackRest over S3"
        barman = ms.get(wb.BARMAN_PUSH_LABEL)
        if barman is not None:
            refs.append(f"`barman-cloud-wal-archive` over HTTP (no compression) {barman:.0f} ms")
            ratios.append(f"{ours / barman:.2f}x barman-cloud (both over HTTP)")
        else:
            refs.append("barman-cloud not installed")
        ratios.append(f"{ours / cp:.2f}x `cp` + `sync`")
        rows.append(Row("`archive_command`, S3, per 16 MB segment (async)", product, "; ".join(refs),
                        "; ".join(ratios), "ahead of pgBackRest on the same transport", met))
    return rows


def replay_rows(results: dict[str, list[float]], depths: dict[str, list[str]], paths: list[str],
                segments: int) -> list[Row]:
    s = {m: med(xs) for m, xs in results.items()}
    cp = s[wb.REPLAY_CP]
    rows = []
    for path, method, goal in (("replay-local", wb.REPLAY_LOCAL, 1.1), ("replay-s3", wb.REPLAY_S3, 1.2)):
        if path not in paths:
            continue
        ours = s[method]
        refs = [f"`cp` {cp:.2f} s"]
        if path == "replay-local":
            pgbr = s.get(wb.REPLAY_PGBR)
            refs.append(f"pgBackRest async {pgbr:.2f} s ({pgbr / cp:.2f}x `cp`)" if pgbr is not None
                        else "pgBackRest not installed")
        else:
            pgbr = s.get(wb.REPLAY_PGBR_S3)
            refs.append(f"pgBackRest async over HTTPS {pgbr:.2f} s ({pgbr / cp:.2f}x `cp`)" if pgbr is not None
                        else PGBR_S3 if wb.PGBACKREST else "pgBackRest not installed")
            barman = s.get(wb.BARMAN_GET_LABEL)
            refs.append(f"`barman-cloud-wal-restore` {barman:.2f} s ({barman / cp:.2f}x `cp`)" if barman is not None
                        else "barman-cloud not installed")
        depth = " ".join(depths.get(method, [])) or "-"
        where = "local" if path == "replay-local" else "S3"
        rows.append(Row(f"replay of {segments} segments through `restore_command`, {where}, read-ahead",
                        f"{ours:.2f} s (read-ahead depth at the end: {depth})", "; ".join(refs),
                        f"{ours / cp:.2f}x `cp`", f"≤ {goal}x `cp`", verdict([("`cp`", ours / cp, goal)])))
    return rows


def render(rows: list[Row], header: list[str], details: list[tuple[str, int, float, float, str]]) -> str:
    out = [*header, "",
           "| path | the product | the reference(s) measured in the same run | ratio | goal (issue 16) | met |",
           "|---|---|---|---|---|---|"]
    out += [f"| {r.path} | {r.product} | {r.references} | {r.ratio} | {r.goal} | {r.met} |" for r in rows]
    out += ["", "Every measurement (medians of the repeats; a job's parts indented):", "",
            "| job | runs | min | median |", "|---|---|---|---|"]
    out += [f"| {name.replace('|', chr(92) + '|')} | {n} | {lo:.{2 if unit == 's' else 0}f} {unit} | {mid:.{2 if unit == 's' else 0}f} {unit} |"
            for name, n, lo, mid, unit in details]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, help=f"pgbench scale (default {REFERENCE['scale']}; --quick {QUICK['scale']})")
    ap.add_argument("--text-mb", type=int, help="text-like data to add, MB on disk, about "
                    f"(default {REFERENCE['text_mb']}; --quick {QUICK['text_mb']})")
    ap.add_argument("--repeat", type=int, help=f"repeats of each method (default {REFERENCE['repeat']}; "
                    f"--quick {QUICK['repeat']})")
    ap.add_argument("--segments", type=int, help="16 MB WAL segments pushed and replayed "
                    f"(default {REFERENCE['segments']}; --quick {QUICK['segments']})")
    ap.add_argument("--jobs", type=int, default=2, help="dump and restore jobs (default 2)")
    ap.add_argument("--only", choices=PATHS, action="append", metavar="PATH",
                    help=f"only this path (repeatable): {', '.join(PATHS)}")
    ap.add_argument("--quick", action="store_true", help="a small size for development (a few minutes)")
    ap.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table (and machine, command) here")
    args = ap.parse_args()
    size = QUICK if args.quick else REFERENCE
    for key, value in size.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        elif getattr(args, key) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be at least 1, not {getattr(args, key)}")
    paths = [p for p in PATHS if p in (args.only or PATHS)]
    wal_paths = [p for p in paths if p.startswith(("archive", "replay"))]
    if wal_paths and os.geteuid() != 0:
        raise SystemExit(f"run as root for {', '.join(wal_paths)}: their servers and commands run as postgres "
                         "(or choose other paths with --only)")
    if args.markdown is not None and not args.markdown.parent.is_dir():
        raise SystemExit(f"--markdown {args.markdown}: no directory {args.markdown.parent}")

    t_start = time.monotonic()
    print(f"machine: {machine()}", flush=True)
    print(f"command: {command_line()}", flush=True)
    rows: list[Row] = []
    details: list[tuple[str, int, float, float, str]] = []
    data_note = ""
    phases: dict[str, float] = {}  # minutes each part of the run took, for the next run's planning
    mark = [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        phases[name] = (now - mark[0]) / 60
        mark[0] = now

    s3_server, url = wb.start_s3()
    servers = [s3_server]
    wb._S3_RESET = wb._s3_reset_factory(url)
    work_dirs: list[Path] = []
    try:
        if {"backup", "restore-local", "restore-s3"} & set(paths):
            base, work, _tpl, c = bb.source_cluster("runbook-compare-")
            work_dirs.append(base)
            try:
                env = {**os.environ, **c.env}
                bb.build(c, env, args.scale, args.text_mb)
                phase("data")
                bb.s3_env(env)
                on_disk = c.psql("select pg_size_pretty(pg_database_size('bench'))")
                data_note = f"pgbench scale {args.scale} + ~{args.text_mb} MB text ({on_disk} on disk)"
                cfg = bb.write_config(work, c, "ours", url, args.jobs)
                env_bk = {**env, "PGUSER": bb.ROLE}
                if "backup" in paths:
                    runs = bb.Runs()
                    bb.run_rotated([bb.job_plan(runs, env_bk, work / "plan.dump.gz"),
                                    bb.job_runbook_backup(runs, bb.OURS, ROOT, cfg, env),
                                    bb.job_bare_fd(runs, env_bk, work / "d1", args.jobs, read_check=False)],
                                   args.repeat)
                    rows.append(backup_row(runs, args.jobs))
                    phase("backup")
                    details += [(n, len(xs), min(xs), med(xs), "s") for n, xs in runs.times.items()]
                sources = [s for s, p in (("local", "restore-local"), ("s3", "restore-s3")) if p in paths]
                if sources:
                    runs = bb.Runs()
                    bb.run_rotated(rb.restore_jobs(runs, c, env, work, cfg, args.jobs, sources), args.repeat)
                    rows += [restore_row(runs, args.jobs, s) for s in sources]
                    phase("restore")
                    details += [(n, len(xs), min(xs), med(xs), "s") for n, xs in runs.times.items()]
            finally:
                c.stop()
        if wal_paths:
            base = Path(tempfile.mkdtemp(prefix="runbook-compare-wal-", dir="/var/tmp"))
            os.chmod(base, 0o755)
            work_dirs.append(base)
            venv_dir = base / "venv"
            venv_dir.mkdir()
            runbook = str(build_server_venv(ROOT, venv_dir).runbook)
            spool = base / "spool"
            spool.mkdir()
            wb.chown_server_user(spool)
            tls: tuple[str, Path] | None = None
            if {"archive-s3", "replay-s3"} & set(wal_paths) and wb.PGBACKREST:  # its S3 client speaks TLS only
                tls_server, tls_url, cert = wb.start_tls_s3(base)
                servers.append(tls_server)
                tls = (tls_url, cert)
            cfgs = wb.write_configs(base, url, spool, tls[0] if tls else None)
            phase("server venv")
            try:
                archive = [p for p in wal_paths if p.startswith("archive")]
                if archive:
                    src, corpus = wb.make_corpus(base, args.segments, init_scale=min(args.scale, 10))
                    try:
                        only = [m for p, m in (("archive-local", "local-async"), ("archive-s3", "s3-async"))
                                if p in archive]
                        results, _firsts = wb.measure_push(base, src, corpus, runbook, cfgs, args.repeat, only,
                                                           url=url if "archive-s3" in archive else None,
                                                           tls=tls if "archive-s3" in archive else None)
                    finally:
                        src.stop()
                    rows += archive_rows(results, archive)
                    phase("archive_command")
                    details += [(f"archive_command: {m}", len(t), min(t), med(t), "ms") for m, (t, _r) in results.items()]
                replay = [p for p in wal_paths if p.startswith("replay")]
                if replay:
                    source = wb.prepare_replay(base, runbook, cfgs, args.segments,
                                               url if "replay-s3" in replay else None, init_scale=min(args.scale, 10),
                                               tls=tls if "replay-s3" in replay else None)
                    wanted = [m for p, m in (("replay-local", wb.REPLAY_LOCAL), ("replay-s3", wb.REPLAY_S3))
                              if p in replay]
                    wanted += [m for p, m in (("replay-local", wb.REPLAY_PGBR), ("replay-s3", wb.BARMAN_GET_LABEL),
                                              ("replay-s3", wb.REPLAY_PGBR_S3)) if p in replay]  # the peers
                    results_r, depths = wb.measure_replay(base, runbook, cfgs, source, args.repeat, wanted=wanted)
                    rows += replay_rows(results_r, depths, replay, source.segments)
                    phase("replay")
                    details += [(f"replay: {m}", len(t), min(t), med(t), "s") for m, t in results_r.items()]
            finally:
                for pid_file in base.glob("*/data/postmaster.pid"):  # servers an error left running
                    subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(pid_file.parent), "-m",
                                                   "immediate", "-w", "stop"]), capture_output=True)
                wb.stop_workers(spool)
    finally:
        for server in servers:
            server.stop()
        for d in work_dirs:
            shutil.rmtree(d, ignore_errors=True)

    took = time.monotonic() - t_start
    label = "QUICK size (--quick: for development; says nothing about the goals)" if args.quick else "size as given"
    header = [f"machine: {machine()}",
              f"command: `{command_line()}`",
              f"run: {time.strftime('%Y-%m-%d %H:%M %Z')}, {took / 60:.1f} min ("
              + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + f"); {label}; "
              + (f"data: {data_note}; " if data_note else "")
              + (f"{args.segments} WAL segments of 16 MB; " if wal_paths else "")
              + f"{args.repeat} repeats, order rotated; S3: moto on 127.0.0.1 over HTTP, on the same cores"]
    text = render(rows, header, details)
    print("\n" + text, flush=True)
    if args.markdown is not None:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

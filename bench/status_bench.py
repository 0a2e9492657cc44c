"""`runbook status --all` over a generated fleet, against one `runbook status` (by hand, not a test).

    .venv/bin/python bench/status_bench.py [--clusters 20] [--repeat 3]

Builds a throwaway PostgreSQL 15 cluster with a small database, takes one signed `runbook backup` and one
`runbook verify-backup` (so every line has a verified restore to project from), then a fleet directory of
--clusters repository configs, each with its own copy of that repository, all naming the running cluster (so every
line really connects, queries and reads its repository). Times, alternating each repeat:

one      `runbook status -c CONFIG --json` of one cluster (the command's start included);
all      `runbook status --all -c DIR --json` of the whole fleet (the command's start included);
*cpu     the CPU time (user + system) of those commands and their children: what a busy machine cannot inflate;
serial   the fleet gathered in this process one line after another (steps.proof.fleet, threads=1);
threads  the same with the default threads (what `all` does, without the interpreter's start).

Prints min and median of each, the fleet's verdict counts, and the goal: `all` under 2 s for 20 clusters.

`--engine pgbackrest`: the cluster archives through `pgbackrest archive-push` into a posix repository (stanza
bench), its base backup is `runbook basebackup` (pgbackrest backup), and every line of the fleet reads pgBackRest
(`info --output=json`, `repo-ls` of its archive) besides its own copy of the product's repository (the logical
backup and its verified restore). The base backups have no verified restore (verify-backup of a pgBackRest backup
is not run here): the lines are warnings for it; what is measured is what reading pgBackRest costs a line.
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
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from backup_bench import ROLE, source_cluster  # noqa: E402

from tests.support.signing import signing_yaml  # noqa: E402

PY = sys.executable
GOAL_S = 2.0
RUNBOOK = """
version: 1
name: status bench
targets: {rto: 2h, rpo: 5m}
scenarios:
  restore-latest: {help: the newest logical backup}
steps:
  - {id: tell, title: Tell the stakeholders, run: "true", confirm: none}
  - id: restore
    action: restore-logical
    modes: [live]
    with: {backup_dir: /nonexistent, db: app}
  - {id: back, title: Service back, run: "true", confirm: none, rto_end: true}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running and the fleet in place (to look)")
    ap.add_argument("--engine", choices=["own", "pgbackrest"], default="own",
                    help="the physical engine of every line (pgbackrest: Debian's package, installed)")
    args = ap.parse_args()

    base, work, _tpl, c = source_cluster("runbook-status-bench-")
    try:
        env = {**os.environ, **c.env}
        c.psql(f"create role {ROLE} login replication; grant pg_read_all_data to {ROLE}")
        c.psql("create database app")
        c.psql("create table items(id int primary key, name text); "
               "insert into items select g, 'item ' || g from generate_series(1, 1000) g", "app")
        repo = work / "repo"
        text = (f"version: 1\ncluster: {{host: {c.socket_dir}, port: {c.port}, user: {ROLE}, databases: [app]}}\n"
                f"local: {{path: {repo}}}\nbackup: {{state_dir: {work / 'state'}}}\n"
                "checks: {expect_tables: [items], smoke: ['select count(*) > 0 from items']}\n"
                + signing_yaml(work))
        cfg = work / "repo.yaml"
        cfg.write_text(text)
        scratch = base / "scratch"
        scratch.mkdir()
        os.chmod(scratch, 0o755)
        cmds = [["backup", "-c", str(cfg)], ["verify-backup", "-c", str(cfg), "--scratch-dir", str(scratch)]]
        if args.engine == "pgbackrest":
            text += pgbackrest_engine(work, c)
            cfg.write_text(text)
            cmds.append(["basebackup", "-c", str(cfg), "--type", "full"])
        for cmd in cmds:
            r = subprocess.run([PY, "-m", "runbook", *cmd], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"runbook {cmd[0]} failed: {r.stdout}\n{r.stderr}")
        fleet = work / "fleet"
        fleet.mkdir()
        for i in range(args.clusters):
            shutil.copytree(repo, work / f"repo-{i:02}")
            (fleet / f"cluster-{i:02}.yaml").write_text(text.replace(f"path: {repo}}}", f"path: {work / f'repo-{i:02}'}}}"))
        runbook = work / "runbook.yaml"
        runbook.write_text(textwrap.dedent(RUNBOOK).lstrip())
        state = work / "runs"
        common = ["--state-dir", str(state), "--json"]
        times: dict[str, list[float]] = {}
        counts: dict[str, int] = {}
        first: dict[str, list[str]] = {"reasons": []}

        def cli(*argv: str) -> dict[str, object]:
            t0, ru0 = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
            r = subprocess.run([PY, "-m", "runbook", "status", str(runbook), *argv, *common], env=env,
                               capture_output=True, text=True)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            name = "all" if "--all" in argv else "one"
            times.setdefault(name, []).append(time.monotonic() - t0)
            times.setdefault(f"{name} cpu", []).append(ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime)
            if r.returncode == 3 or not r.stdout.startswith("{"):
                raise SystemExit(f"status could not run: {r.stdout}\n{r.stderr}")
            doc: dict[str, object] = json.loads(r.stdout)
            return doc

        def in_process(threads: int) -> None:
            from steps.proof.fleet import gather_fleet

            os.environ.update(c.env)
            t0 = time.monotonic()
            f = gather_fleet(fleet, runbook, explicit_file=True, state_dir=state, threads=threads)
            times.setdefault("serial" if threads == 1 else "threads", []).append(time.monotonic() - t0)
            assert len(f.lines) == args.clusters and f.exit_code != 3, f.as_json()

        for i in range(args.repeat):
            jobs = [lambda: cli("-c", str(fleet / "cluster-00.yaml")), lambda: cli("--all", "-c", str(fleet)),
                    lambda: in_process(1), lambda: in_process(8)]
            for job in jobs if i % 2 == 0 else reversed(jobs):
                doc = job()
                if isinstance(doc, dict) and "counts" in doc:
                    counts = doc["counts"]  # type: ignore[assignment]
                    first = doc["clusters"][0]  # type: ignore[index]
        print(f"status over {args.clusters} clusters (each its own repository copy, all on one live cluster; engine "
              f"{args.engine}); {args.repeat} repeats")
        print(f"{'':10} {'min s':>8} {'median s':>9}")
        for name in ("one", "one cpu", "all", "all cpu", "serial", "threads"):
            t = times[name]
            print(f"{name:10} {min(t):8.2f} {statistics.median(t):9.2f}")
        best = min(times["all"])
        print(f"verdicts of the fleet: {counts}; the first line's reasons: {first['reasons'][:3]}")
        print(f"status --all, {args.clusters} clusters: {best:.2f} s (min), goal < {GOAL_S:g} s: "
              f"{'met' if best < GOAL_S else 'NOT met'} (CPU {min(times['all cpu']):.2f} s; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); per cluster {best / args.clusters * 1000:.0f} ms; "
              f"serial/threads {min(times['serial']) / min(times['threads']):.1f}x")
    finally:
        if args.keep:
            print(f"kept: {work} (fleet/, runbook.yaml, runs/); stop with: pg_ctl -D {c.datadir} stop")
        else:
            c.stop()
            shutil.rmtree(base, ignore_errors=True)


def pgbackrest_engine(work: Path, c: object) -> str:
    """Archiving through pgBackRest (a posix repository under work/pgbr, stanza bench, the server restarted with
    archive_mode on), the stanza made; the config's lines that switch the engine."""
    from tests.support.pgcluster import PG_BIN, as_server_user, chown_server_user

    exe = shutil.which("pgbackrest")
    if exe is None:
        raise SystemExit("--engine pgbackrest: pgbackrest is not installed (apt-get install pgbackrest)")
    d = work / "pgbr"
    for sub in ("repo", "log", "lock"):
        (d / sub).mkdir(parents=True)
    conf = d / "pgbackrest.conf"
    datadir, sock, port = c.datadir, c.socket_dir, c.port  # type: ignore[attr-defined]
    conf.write_text(f"[global]\nrepo1-path={d / 'repo'}\nlog-path={d / 'log'}\nlock-path={d / 'lock'}\n"
                    "log-level-console=warn\nrepo1-retention-full=2\nstart-fast=y\ncompress-type=lz4\n"
                    f"[bench]\npg1-path={datadir}\npg1-socket-path={sock}\npg1-port={port}\n")
    chown_server_user(d)
    os.chmod(d / "repo", 0o700)
    c.psql("alter system set archive_mode = on")  # type: ignore[attr-defined]
    c.psql(f"alter system set archive_command = '{exe} --config={conf} --stanza=bench archive-push %p'")  # type: ignore[attr-defined]
    subprocess.run(as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-l", str(datadir / "server.log"),
                                   "-w", "restart", "-m", "fast"]), check=True, capture_output=True)
    r = subprocess.run(as_server_user([exe, f"--config={conf}", "--stanza=bench", "stanza-create"]),
                       capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        raise SystemExit(f"pgbackrest stanza-create failed: {r.stdout}{r.stderr}")
    return f"engine: pgbackrest\npgbackrest: {{stanza: bench, config: {conf}}}\n"


if __name__ == "__main__":
    main()

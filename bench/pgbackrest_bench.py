"""PITR and verify-backup with pgBackRest as the engine, measured side by side in one run (by hand, not a test).

    .venv/bin/python bench/pgbackrest_bench.py [--scale 10] [--wal-seconds 15] [--repeat 3]

Run as root (the servers and pgBackRest run as `postgres`). One PostgreSQL 15 primary holds a pgbench database
(--scale) and archives every WAL segment twice: `pgbackrest archive-push` into a posix pgBackRest repository and
`runbook wal-push` into the product's own repository (from a venv the server's user can run). One full backup by
each engine (`pgbackrest backup`, `runbook basebackup`), then --wal-seconds of pgbench writes to replay, the
target (a time), a few seconds more, the archive waited for, the primary stopped. Then, --repeat times, in an
order rotated by one each repeat, the same recovery to the target into a new data directory:

- **pitr (pgbackrest)**: the product's `pitr` action with `engine: pgbackrest` (`python -m steps pitr`, as a
  runbook step runs it): info, the choice of the set, the refusals, `pgbackrest restore`, `pg_ctl start`, the
  replay watched to promotion, the recovery settings removed, the report;
- **by hand**: what an operator types: `pgbackrest restore --set=... --type=time --target=...
  --target-action=promote --archive-mode=off` (the same port and socket as recovery options), `pg_ctl -w start`,
  then `select pg_is_in_recovery()` until false;
- **pitr (own engine)**: the same action with the product's own engine (`runbook wal-fetch`).

Then `runbook verify-backup --kind base` with each engine, --repeat times, rotated. Prints the machine, the
table (median and min seconds, the tool's overhead over the plain commands, the goal "under 5 s", met or not,
the ratio of the engines), then the parts each run reported (restore, replay).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steps.engines.pgbackrest.runner import argv, run  # noqa: E402
from steps.engines.pgbackrest.settings import settings_from  # noqa: E402
from steps.pg.server import Server, as_server, give_to_server  # noqa: E402
from steps.pg.tools import PG_BIN  # noqa: E402
from steps.repository.config import load_repository_config  # noqa: E402
from steps.sandbox.build import Sandbox  # noqa: E402
from tests.support.signing import signing_yaml  # noqa: E402

STANZA = "bench"
PGBR, HAND, OWN = "pitr (pgbackrest)", "by hand (pgbackrest restore + pg_ctl)", "pitr (own engine)"
V_PGBR, V_OWN = "verify-backup (pgbackrest)", "verify-backup (own engine)"


def psql(srv: Server, sql: str) -> str:
    return srv.psql(sql)


def setup(work: Path, exe: str, scale: int, wal_seconds: float) -> tuple[Path, Path, str, str]:
    """The primary, both archives and both base backups, the writes to replay; returns (own config, pgBackRest
    config, the pgBackRest label, the target time)."""
    srv = Server(work / "p" / "data", work / "p" / "run")
    srv.initdb()
    for d in ("repo", "records", "pgbr/repo", "pgbr/log", "pgbr/lock", "state"):
        (work / d).mkdir(parents=True, mode=0o700)
    for d in ("repo", "pgbr"):
        give_to_server(work / d)
    (work / "spool").mkdir(mode=0o700)
    give_to_server(work / "spool")  # wal-fetch's read-ahead workers, gone soon after the last recovery
    common = (f"cluster: {{host: {srv.socket_dir}, port: {srv.port}, user: backup_user, databases: [postgres], "
              f"data_directory: {srv.datadir}}}\nbackup: {{state_dir: {work / 'state'}}}\n"
              f"wal: {{spool_dir: {work / 'spool'}, worker_idle_s: 5}}\n" + signing_yaml(work))
    own = work / "own.yaml"
    own.write_text(f"version: 1\nlocal: {{path: {work / 'repo'}}}\n" + common)
    pgbr = work / "pgbr.yaml"
    pgbr.write_text(
        f"version: 1\nlocal: {{path: {work / 'records'}}}\n" + common +
        f"engine: pgbackrest\npgbackrest:\n  stanza: {STANZA}\n  options:\n"
        f"    repo1-path: {work / 'pgbr/repo'}\n    repo1-retention-full: 9\n    lock-path: {work / 'pgbr/lock'}\n"
        f"    log-path: {work / 'pgbr/log'}\n    log-level-file: 'off'\n    start-fast: true\n"
        f"    compress-type: lz4\n    pg1-path: {srv.datadir}\n    pg1-socket-path: {srv.socket_dir}\n"
        f"    pg1-port: {srv.port}\n")
    for c in (own, pgbr):
        os.chmod(c, 0o644)
    s = settings_from(load_repository_config(pgbr)[0])
    push = " ".join(argv(replace(s, user=None), "archive-push"))
    srv.start("archive_mode=on", "wal_level=replica", "archive_timeout=60", "max_wal_size=2GB",
              f"archive_command='{push} %p && {exe} wal-push -c {own} %p'")
    psql(srv, "CREATE ROLE backup_user LOGIN REPLICATION; GRANT pg_read_all_data TO backup_user")
    run(s, "stanza-create", timeout=300)
    t0 = time.monotonic()
    subprocess.run([f"{PG_BIN}/pgbench", "-h", str(srv.socket_dir), "-U", "postgres", "-i", "-q", "-s", str(scale),
                    "postgres"], check=True, capture_output=True)
    psql(srv, "CHECKPOINT")
    size = psql(srv, "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
    print(f"  pgbench --scale {scale}: {size} ({time.monotonic() - t0:.0f} s)", flush=True)
    t0 = time.monotonic()
    run(s, "backup", "--type=full", timeout=3600)
    print(f"  pgbackrest backup --type=full: {time.monotonic() - t0:.1f} s", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runbook", "basebackup", "-c", str(own), "--quiet"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"runbook basebackup failed: {proc.stdout}{proc.stderr}")
    print(f"  runbook basebackup: {time.monotonic() - t0:.1f} s", flush=True)
    subprocess.run([f"{PG_BIN}/pgbench", "-h", str(srv.socket_dir), "-U", "postgres", "-c", "2", "-T",
                    str(int(wal_seconds)), "postgres"], check=True, capture_output=True)
    time.sleep(1.1)
    target = psql(srv, "SELECT clock_timestamp()")
    time.sleep(0.5)
    subprocess.run([f"{PG_BIN}/pgbench", "-h", str(srv.socket_dir), "-U", "postgres", "-c", "2", "-T", "3",
                    "postgres"], check=True, capture_output=True)
    seg = psql(srv, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 300
    while psql(srv, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[:24] < seg:
        if time.monotonic() > deadline:
            raise SystemExit(f"{seg} was not archived; see {srv.log}")
        time.sleep(0.2)
    wal = psql(srv, "SELECT pg_size_pretty(pg_current_wal_lsn() - '0/0'::pg_lsn)")
    print(f"  {wal_seconds:.0f} s of pgbench writes after the backups (WAL position {wal}); target {target}",
          flush=True)
    srv.stop("fast")
    label = json.loads(run(s, "info", "--output=json").stdout)[0]["backup"][-1]["label"]
    return own, pgbr, label, target


def new_dir(work: Path, name: str) -> Path:
    d = work / "r" / name
    d.mkdir(parents=True, mode=0o755)
    give_to_server(d)  # the restored server's socket goes there
    return d / "data"


def stop(pgdata: Path) -> None:
    if (pgdata / "postmaster.pid").exists():
        subprocess.run(as_server([f"{PG_BIN}/pg_ctl", "-D", str(pgdata), "-m", "immediate", "-w", "stop"]),
                       capture_output=True)
    shutil.rmtree(pgdata.parent, ignore_errors=True)


def by_action(config: Path, pgdata: Path, target: str, exe: str | None) -> tuple[float, dict[str, object]]:
    args = {"config": str(config), "target_kind": "time", "target": target, "pgdata": str(pgdata),
            "socket_dir": str(pgdata.parent), "port": 5440, **({"runbook_exe": exe} if exe else {})}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "steps", "pitr"], input=json.dumps(args), capture_output=True,
                          text=True, cwd=ROOT)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pitr failed:\n{proc.stdout}\n{proc.stderr}")
    outs: dict[str, object] = {}
    for line in proc.stderr.splitlines():
        if line.startswith("[event] "):
            ev = json.loads(line[8:])
            if ev["type"] == "output":
                outs[ev["name"]] = ev["value"]
    return took, outs


def by_hand(pgbr: Path, pgdata: Path, label: str, target: str) -> tuple[float, dict[str, object]]:
    """pgbackrest restore, pg_ctl start, pg_is_in_recovery() until false: the plain commands."""
    from steps.engines.pgbackrest.restore import restore_settings

    s = restore_settings(settings_from(load_repository_config(pgbr)[0]))
    t0 = time.monotonic()
    pgdata.mkdir(mode=0o700)
    give_to_server(pgdata)
    run(s, "restore", f"--pg1-path={pgdata}", f"--set={label}", "--type=time", f"--target={target}",
        "--target-action=promote", "--archive-mode=off", "--recovery-option=port=5440",
        f"--recovery-option=unix_socket_directories={pgdata.parent}", "--recovery-option=listen_addresses=",
        timeout=3600)
    restored = time.monotonic() - t0
    log = pgdata.parent / "server.log"
    subprocess.run(as_server([f"{PG_BIN}/pg_ctl", "-D", str(pgdata), "-l", str(log), "-w", "start"]), check=True,
                   capture_output=True)
    while True:
        q = subprocess.run(as_server([f"{PG_BIN}/psql", "-h", str(pgdata.parent), "-p", "5440", "-U", "postgres",
                                      "-XAtqc", "select pg_is_in_recovery()"]), capture_output=True, text=True)
        if q.returncode == 0 and q.stdout.strip() == "f":
            break
        time.sleep(0.2)
    took = time.monotonic() - t0
    return took, {"restore_s": round(restored, 1), "replay_s": round(took - restored, 1)}


def verify(config: Path, work: Path) -> float:
    scratch = work / "scratch"
    scratch.mkdir(mode=0o755, exist_ok=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "runbook", "verify-backup", "-c", str(config), "--kind", "base",
                           "--scratch-dir", str(scratch)], capture_output=True, text=True)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"verify-backup -c {config.name} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return took


def machine() -> str:
    mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
    pg = subprocess.run([f"{PG_BIN}/postgres", "--version"], capture_output=True, text=True).stdout.strip()
    pgbr = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores, {mem / 1024 / 1024:.1f} GiB RAM, {pg.replace('postgres (PostgreSQL) ', 'PostgreSQL ')}, {pgbr}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale (10 ≈ 150 MB)")
    ap.add_argument("--wal-seconds", type=float, default=15, help="seconds of pgbench writes to replay")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if shutil.which("pgbackrest") is None:
        raise SystemExit("pgbackrest is not installed: apt-get install pgbackrest")
    work = Path(tempfile.mkdtemp(prefix="runbook-pgbr-bench-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    print(f"machine: {machine()}\ncommand: {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)
    times: dict[str, list[float]] = {}
    parts: dict[str, list[dict[str, object]]] = {}
    try:
        exe = os.environ.get("RUNBOOK_SERVER_RUNBOOK") or Sandbox(work / "venv-home").server_runbook(
            say=lambda s: print(f"  {s}", flush=True))
        own, pgbr, label, target = setup(work, exe, a.scale, a.wal_seconds)
        methods = [PGBR, HAND, OWN]
        for r in range(a.repeat):
            order = methods[r % 3:] + methods[:r % 3]
            for m in order:
                pgdata = new_dir(work, f"{r}-{methods.index(m)}")
                try:
                    if m == PGBR:
                        took, outs = by_action(pgbr, pgdata, target, None)
                    elif m == HAND:
                        took, outs = by_hand(pgbr, pgdata, label, target)
                    else:
                        took, outs = by_action(own, pgdata, target, exe)
                finally:
                    stop(pgdata)
                times.setdefault(m, []).append(took)
                parts.setdefault(m, []).append(outs)
                print(f"  repeat {r + 1}: {m}: {took:.2f} s", flush=True)
            for v, config in ([(V_PGBR, pgbr), (V_OWN, own)] if r % 2 == 0 else [(V_OWN, own), (V_PGBR, pgbr)]):
                took = verify(config, work)
                times.setdefault(v, []).append(took)
                print(f"  repeat {r + 1}: {v}: {took:.2f} s", flush=True)
    finally:
        for d in [*work.glob("*/data"), *work.glob("r/*/data")]:
            subprocess.run(as_server([f"{PG_BIN}/pg_ctl", "-D", str(d), "-m", "immediate", "stop"]), capture_output=True)
        time.sleep(6)  # wal-fetch's idle read-ahead workers end (worker_idle_s) before their venv goes
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nPITR to a time {a.wal_seconds:.0f} s of pgbench writes after the backup (scale {a.scale}), "
          f"{a.repeat} runs each, rotated")
    print(f"  {'method':42} {'median s':>9} {'min s':>7}")
    for k in (PGBR, HAND, OWN, V_PGBR, V_OWN):
        print(f"  {k:42} {med[k]:9.2f} {min(times[k]):7.2f}")
    # The overhead per repeat (the two ran one after the other in it), then its median: steadier than the
    # difference of two medians on a shared machine.
    paired = statistics.median(a_ - h for a_, h in zip(times[PGBR], times[HAND], strict=True))
    print("\n  | what | figure | goal | met |")
    print("  |---|---|---|---|")
    print(f"  | the tool's overhead over plain pgbackrest restore + pg_ctl (median of the per-repeat differences) "
          f"| {paired:+.2f} s (medians {med[PGBR]:.2f} s / {med[HAND]:.2f} s = {med[PGBR] / med[HAND]:.2f}x; "
          f"minima {min(times[PGBR]) - min(times[HAND]):+.2f} s) | under 5 s | {'met' if paired < 5 else 'NOT met'} |")
    print(f"  | PITR, own engine / pgBackRest engine | {med[OWN] / med[PGBR]:.2f}x | (side by side) | |")
    print(f"  | verify-backup, own engine / pgBackRest engine | {med[V_OWN] / med[V_PGBR]:.2f}x | (side by side) | |")
    print("\nparts (median of what each run reported)")
    for k in (PGBR, HAND, OWN):
        keys = sorted({n for o in parts[k] for n in o if n in ("replay_s", "restore_s")})
        print(f"  {k:42} " + ", ".join(
            f"{n} {statistics.median(float(o[n]) for o in parts[k] if n in o):.1f}" for n in keys))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

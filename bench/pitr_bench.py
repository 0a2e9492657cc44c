"""Base backups and PITR, measured side by side in one run (by hand, not a test).

    .venv/bin/python bench/pitr_bench.py [--scale 30] [--repeat 2] [--rpo-seconds 75] [--skip-rpo]

(1) Compression, chosen by measurement: plain `pg_basebackup -Ft -X none --manifest-checksums=SHA256` with
    each compression (none, server-lz4, server-zstd:level=1, client-lz4, client-zstd:level=1, client-gzip:1),
    time and size; then decompressing and checking every file against backup_manifest (what `readable` costs).
(2) `runbook basebackup` (pg_basebackup + streamed check + WAL check + publish locally) against plain
    `pg_basebackup` with the same compression: the tool's overhead, by part.
(3) Measured RPO: a primary with archive_timeout=60 archiving through `runbook wal-push`, a steady stream of
    acknowledged writes (one every 100 ms), then kill -9 of the postmaster and its data directory destroyed;
    PITR to latest into a new data directory; RPO = newest acknowledged write - newest recovered write.
    Goal: under 60 s (the plan asks for 5 minutes).
Data: pgbench at --scale plus a table of compressible text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steps.backup.basetar import check_tars, parse_server_manifest, tar_files  # noqa: E402
from steps.pg.server import Server, as_server, give_to_server  # noqa: E402
from steps.pg.tools import PG_BIN  # noqa: E402
from steps.sandbox.build import Sandbox  # noqa: E402
from tests.support.signing import signing_yaml  # noqa: E402

COMPRESSIONS = ["none", "server-lz4", "server-zstd:level=1", "client-lz4", "client-zstd:level=1", "client-gzip:1"]


def sysid(datadir: Path) -> str:
    return str(int.from_bytes((datadir / "global" / "pg_control").read_bytes()[:8], "little"))


def make_primary(base: Path, runbook_exe: str, scale: int, archive_timeout: int = 60) -> tuple[Server, Path]:
    srv = Server(base / "data", base / "run")
    srv.initdb()
    repo = base / "repo"
    repo.mkdir()
    give_to_server(repo)
    config = base / "repository.yaml"
    config.write_text("version: 1\n"
                      f"cluster: {{host: {srv.socket_dir}, port: {srv.port}, user: backup_user}}\n"
                      f"local: {{path: {repo}}}\n"
                      f"backup: {{state_dir: {base / 'state'}}}\n" + signing_yaml(base))
    os.chmod(config, 0o644)
    srv.start("archive_mode=on", "wal_level=replica", f"archive_timeout={archive_timeout}",
              f"archive_command='{runbook_exe} wal-push -c {config} %p'", "max_wal_size=2GB")
    srv.psql("CREATE ROLE backup_user LOGIN REPLICATION; GRANT pg_read_all_data TO backup_user")
    if scale:
        subprocess.run([f"{PG_BIN}/pgbench", "-h", str(srv.socket_dir), "-U", "postgres", "-i", "-q", "-s", str(scale),
                        "postgres"], check=True, capture_output=True)
        srv.psql("CREATE TABLE notes AS SELECT g AS id, md5(g::text) || ' ' || repeat(md5((g % 977)::text) || "
                 "' the asset was inspected and returned to service ', 4) AS body FROM generate_series(1, 400000) g")
        srv.psql("CHECKPOINT")
    return srv, config


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-2000:]}")
    return time.monotonic() - t0


def bench_compression(srv: Server, work: Path, repeat: int) -> list[dict[str, object]]:
    rows = []
    for comp in COMPRESSIONS:
        times, checks = [], []
        size = 0
        for _ in range(repeat):
            out = work / "bb"
            shutil.rmtree(out, ignore_errors=True)
            times.append(timed([f"{PG_BIN}/pg_basebackup", "-h", str(srv.socket_dir), "-U", "backup_user", "-D",
                                str(out), "-Ft", "-X", "none", "--manifest-checksums=SHA256", "-c", "fast",
                                "-Z", comp]))
            size = sum(p.stat().st_size for p in out.iterdir())
            t0 = time.monotonic()
            check_tars(tar_files(out), parse_server_manifest((out / "backup_manifest").read_bytes()))
            checks.append(time.monotonic() - t0)
        rows.append({"compression": comp, "pg_basebackup_min_s": min(times),
                     "pg_basebackup_median_s": statistics.median(times), "size_mb": size / 1e6,
                     "check_min_s": min(checks)})
    return rows


def bench_tool(srv: Server, config: Path, work: Path, repeat: int, comp: str) -> dict[str, float]:
    plain, ours = [], []
    parts: dict[str, list[float]] = {}
    for _ in range(repeat):
        out = work / "bb"
        shutil.rmtree(out, ignore_errors=True)
        plain.append(timed([f"{PG_BIN}/pg_basebackup", "-h", str(srv.socket_dir), "-U", "backup_user", "-D", str(out),
                            "-Ft", "-X", "none", "--manifest-checksums=SHA256", "-c", "fast", "-Z", comp]))
        ours.append(timed([sys.executable, "-m", "runbook", "basebackup", "-c", str(config), "--quiet",
                           "--compress", comp]))
        status = json.loads((config.parent / "state" / "basebackup-status.json").read_text())
        for k, v in status["outcome"]["timings"].items():
            parts.setdefault(k, []).append(float(v))
    return {"plain_min_s": min(plain), "ours_min_s": min(ours), "ratio": min(ours) / min(plain),
            **{f"{k}_min": min(v) for k, v in parts.items()}}


def bench_rpo(base: Path, runbook_exe: str, seconds: float) -> dict[str, object]:
    import psycopg

    srv, config = make_primary(base, runbook_exe, scale=0, archive_timeout=60)
    srv.psql("CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    proc = subprocess.run([sys.executable, "-m", "runbook", "basebackup", "-c", str(config), "--quiet"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"basebackup failed: {proc.stderr}")
    acked: list[tuple[int, datetime]] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            with psycopg.connect(host=str(srv.socket_dir), port=srv.port, user="postgres", dbname="postgres",
                                 autocommit=True) as c:
                while not stop.is_set():
                    row = c.execute("INSERT INTO ticks DEFAULT VALUES RETURNING id, at").fetchone()
                    acked.append((row[0], row[1]))  # type: ignore[index]
                    time.sleep(0.1)
        except psycopg.Error:
            pass  # the kill -9 ends it

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(seconds)
    pid = int((srv.datadir / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)
    killed_at = datetime.now(UTC)
    stop.set()
    t.join(timeout=10)
    time.sleep(1)  # its children notice the postmaster's death and exit
    shutil.rmtree(srv.datadir)
    newest_acked = acked[-1]
    pgdata = base / "recovered"
    args = {"config": str(config), "target_kind": "latest", "pgdata": str(pgdata), "socket_dir": str(srv.socket_dir),
            "port": srv.port, "runbook_exe": runbook_exe}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "steps", "pitr"], input=json.dumps(args), capture_output=True,
                          text=True, cwd=ROOT)
    pitr_s = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pitr failed:\n{proc.stdout}\n{proc.stderr}")
    rec = Server(pgdata, srv.socket_dir)
    out = rec.psql("SELECT max(id), max(at) FROM ticks")
    rid, rat = out.split("|")
    rec.stop("immediate")
    recovered_at = datetime.fromisoformat(rat.replace(" ", "T"))
    return {"load_s": seconds, "writes_acked": len(acked), "newest_acked_id": newest_acked[0],
            "newest_recovered_id": int(rid), "rows_lost": newest_acked[0] - int(rid),
            "rpo_s": (newest_acked[1] - recovered_at).total_seconds(), "killed_at": killed_at.isoformat(),
            "pitr_s": pitr_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--rpo-seconds", type=str, default="75",
                    help="load before the kill -9, one trial per comma-separated value (e.g. 70,95,120)")
    ap.add_argument("--skip-base", action="store_true", help="only the RPO part")
    ap.add_argument("--skip-rpo", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="runbook-pitr-bench-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    try:
        exe = Sandbox(work / "venv-home").server_runbook(say=lambda s: print(f"  {s}"))
        if not a.skip_base:
            srv, config = make_primary(work / "p1", exe, a.scale)
            size = srv.psql("SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
            print(f"\n(1) pg_basebackup by compression; cluster {size}, {a.repeat} runs each")
            print(f"{'compression':22} {'min s':>7} {'median s':>9} {'size MB':>9} {'check s':>8}")
            for r in bench_compression(srv, work, a.repeat):
                print(f"{r['compression']:22} {r['pg_basebackup_min_s']:7.2f} {r['pg_basebackup_median_s']:9.2f} "
                      f"{r['size_mb']:9.1f} {r['check_min_s']:8.2f}")
            print("\n(2) runbook basebackup vs plain pg_basebackup (server-zstd:level=1)")
            res = bench_tool(srv, config, work, a.repeat, "server-zstd:level=1")
            for k, v in res.items():
                print(f"  {k:32} {v:8.2f}")
            srv.stop("immediate")
        if not a.skip_rpo:
            loads = [float(x) for x in a.rpo_seconds.split(",")]
            print("\n(3) measured RPO: archive_timeout=60, a write every 100 ms, kill -9, data directory destroyed, "
                  "PITR to latest")
            print(f"  {'load s':>7} {'acked':>6} {'lost rows':>9} {'RPO s':>7} {'PITR s':>7}")
            rpos = []
            for i, load in enumerate(loads):
                rpo = bench_rpo(work / f"rpo{i}", exe, load)
                rpos.append(float(rpo["rpo_s"]))  # type: ignore[arg-type]
                print(f"  {load:7.0f} {rpo['writes_acked']:>6} {rpo['rows_lost']:>9} {rpo['rpo_s']:7.1f} "
                      f"{rpo['pitr_s']:7.1f}")
            print(f"  worst {max(rpos):.1f} s, median {statistics.median(rpos):.1f} s; goal RPO < 60 s: "
                  f"{'met' if max(rpos) < 60 else 'MISSED'} (bound: archive_timeout 60 s + archive lag)")
    finally:
        for d in work.glob("*/data"):
            subprocess.run(as_server([f"{PG_BIN}/pg_ctl", "-D", str(d), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

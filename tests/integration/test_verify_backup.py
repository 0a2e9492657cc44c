"""`runbook verify-backup` against real PostgreSQL 15 clusters and moto's S3 server.

Good logical (local and S3 copies) and base backups are restored into throwaway clusters and checked; their
records are written and their levels raised to `restored`. The faults: an object altered after the manifest
(failed, the object named, and recovery no longer picks the backup), a base backup whose WAL has a gap
(failed, the first missing segment named), a scratch disk that fills (a small tmpfs: failed cleanly, the
scratch cluster removed, no record), two runs at once (the second refuses, naming the first) and SIGTERM
(the scratch cluster removed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from runbook.errors import Exit
from tests.conftest import ROOT, run_cli
from tests.support.backup_helpers import backup, backups_json, cli_env, source_cluster, write_config  # noqa: F401
from tests.support.pgcluster import Cluster, make_base_dir
from tests.support.pitr_cluster import (  # noqa: F401 - fixtures
    Primary,
    pitr_template_fixture,
    primary_fixture,
    server_runbook_fixture,
    write_rows,
)
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401

CHECKS = """
checks:
  expect_tables: [items, orders]
  smoke: ["select count(*) > 0 from items"]
"""


@pytest.fixture(scope="module")
def shop(source_cluster: Cluster) -> Cluster:  # noqa: F811
    c = source_cluster
    c.psql("create database shop")
    c.psql("""
        create table items(id int primary key, name text not null, pad text);
        create table orders(id serial primary key, item int references items, qty int);
        insert into items select g, 'item ' || g, md5(g::text) from generate_series(1, 2000) g;
        insert into orders(item, qty) select 1 + g % 2000, g from generate_series(1, 3000) g;
    """, "shop")
    return c


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    d = make_base_dir("runbook-verify-test-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def verify(config: Path, *args: str, scratch: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return run_cli("verify-backup", "-c", str(config), "--scratch-dir", str(scratch), *args, env=cli_env(),
                   timeout=timeout)


def records(prefix_dir: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((prefix_dir / "verifications").glob("*.json"))]


def logical_dir(repo: Path, db: str = "shop") -> Path:
    (sysid,) = (repo / "clusters").iterdir()
    (bdir,) = (sysid / "logical" / db).iterdir()
    return bdir


def test_a_good_logical_backup_is_restored_checked_and_recorded(shop: Cluster, base: Path, s3_server: S3Endpoint,  # noqa: F811
                                                                 s3_bucket: str) -> None:  # noqa: F811
    repo = base / "repo"
    s3 = {"bucket": s3_bucket, "endpoint_url": s3_server.url, "region": "us-east-1"}
    cfg = write_config(base / "repo.yaml", shop, dbs=["shop"], local=repo, s3=s3, extra=CHECKS)
    scratch = base / "scratch"
    assert backup(cfg).returncode == 0
    r = verify(cfg, "--latest", "--json", scratch=scratch)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "verified" and out["repository"] == "local" and out["kind"] == "logical"
    names = {c["name"]: c["status"] for c in out["checks"]}
    assert names["rows in public.items"] == "ok" and names["rows in public.orders"] == "ok"
    assert names["table items exists"] == "ok" and names["smoke: select count(*) > 0 from items"] == "ok"
    assert names["sha256 of every object"] == "ok"
    assert {"fetch_s", "restore_s", "checks_s", "total_s"} <= set(out["timings"])
    assert out["restored_size_bytes"] > 0
    assert out["scratch_removed"] is True and list(scratch.iterdir()) == []
    # the record beside the backup: level restored, passed, with the host and the timings; the manifest untouched
    bdir = logical_dir(repo)
    manifest_before = (bdir / "manifest.json").read_bytes()
    rec = [x for x in records(bdir) if x["level"] == "restored"]
    assert len(rec) == 1 and rec[0]["passed"] is True and rec[0]["host"] and rec[0]["timings"]["restore_s"] > 0
    cat = backups_json(cfg)
    (entry,) = cat["backups"]
    assert entry["copies"]["local"]["level"] == "restored" and entry["copies"]["s3"]["level"] == "readable"
    # the off-site copy, verified on its own
    r = verify(cfg, "--backup", entry["backup_id"], "--from", "s3", scratch=scratch)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "VERIFIED logical backup" in r.stdout
    cat = backups_json(cfg)
    assert cat["backups"][0]["copies"]["s3"]["level"] == "restored"
    assert (bdir / "manifest.json").read_bytes() == manifest_before


def test_the_fetched_logical_files_are_private_during_the_test_restore(shop: Cluster, base: Path,
                                                                      s3_server: S3Endpoint,  # noqa: F811
                                                                      s3_bucket: str) -> None:  # noqa: F811
    """globals.sql (password hashes) and the dump in the scratch directory: nobody but root reads them."""
    s3 = {"bucket": s3_bucket, "endpoint_url": s3_server.url, "region": "us-east-1"}
    cfg = write_config(base / "repo.yaml", shop, dbs=["shop"], s3=s3, extra=CHECKS)
    scratch = base / "scratch"
    assert backup(cfg).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "runbook", "verify-backup", "-c", str(cfg), "--scratch-dir",
                             str(scratch), "--from", "s3"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **cli_env()})
    seen: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            for p in scratch.glob("runbook-verify-*/fetch"):
                try:
                    seen["fetch"] = p.stat().st_mode & 0o777
                    for f in p.rglob("*"):
                        if f.is_file():
                            seen[f.relative_to(p).as_posix()] = f.stat().st_mode & 0o777
                except FileNotFoundError:
                    pass
            if "globals.sql" in seen and "dump/toc.dat" in seen:
                break
            time.sleep(0.01)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert seen.get("fetch") == 0o700 and seen.get("globals.sql") == 0o600 and seen.get("dump/toc.dat") == 0o600, seen


def test_an_object_altered_after_the_manifest_fails_and_recovery_stops_picking_it(shop: Cluster, base: Path) -> None:
    repo = base / "repo"
    cfg = write_config(base / "repo.yaml", shop, dbs=["shop"], local=repo, extra=CHECKS)
    scratch = base / "scratch"
    assert backup(cfg).returncode == 0
    bdir = logical_dir(repo)
    assert backups_json(cfg)["picks"]["shop"] == bdir.name
    manifest = json.loads((bdir / "manifest.json").read_text())
    victim = max((o for o in manifest["objects"] if o["path"].startswith("dump/") and o["path"].endswith(".dat.gz")),
                 key=lambda o: o["size"])
    path = bdir / victim["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = verify(cfg, scratch=scratch)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"sha256 of {victim['path']}" in r.stdout and "altered after the backup" in r.stdout
    assert list(scratch.iterdir()) == []
    (failed,) = [x for x in records(bdir) if not x["passed"]]
    assert failed["level"] == "restored" and any(victim["path"] in c["name"] for c in failed["checks"])
    cat = backups_json(cfg)
    assert cat["picks"]["shop"] is None  # a recovery no longer picks it
    assert cat["backups"][0]["level"] == "none"
    failed_at = datetime.fromisoformat(cat["backups"][0]["copies"]["local"]["failed_at"])
    assert failed_at == datetime.fromisoformat(str(failed["checked_at"]))
    listing = run_cli("backups", "-c", str(cfg), env=cli_env())
    assert "no backup at readable or better" in listing.stdout and "verification FAILED" in listing.stdout


def test_a_scratch_disk_that_fills_fails_cleanly_and_touches_nothing_else(shop: Cluster, base: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    shop.psql("create database bulk")
    # ~50 MB of rows that a dump compresses to almost nothing, but that fill a small disk when restored
    shop.psql("create table blob(id int, pad text); "
              "insert into blob select g, repeat('x', 1000) from generate_series(1, 50000) g", "bulk")
    repo = base / "repo"
    cfg = write_config(base / "repo.yaml", shop, dbs=["bulk"], local=repo)
    assert backup(cfg).returncode == 0
    bdir = logical_dir(repo, "bulk")
    before = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*"))
    scratch = base / "small-disk"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(scratch)], check=True)
    try:
        r = verify(cfg, "--json", scratch=scratch)
        out = json.loads(r.stdout)
        assert r.returncode == 2, r.stdout + r.stderr
        assert out["status"] == "failed" and "filled up" in out["error"] and "not judged" in out["error"]
        assert out["scratch_removed"] is True
        assert list(scratch.iterdir()) == []  # the scratch cluster is gone, the disk is empty again
    finally:
        subprocess.run(["umount", str(scratch)], check=False)
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == before  # no record, nothing else
    assert not (bdir / "verifications" / "x").exists()
    assert backups_json(cfg)["picks"]["bulk"] == bdir.name  # the backup's standing is unchanged
    shop.psql("drop database bulk")


def test_two_runs_at_once_the_second_refuses_and_sigterm_removes_the_scratch(shop: Cluster, base: Path) -> None:
    repo = base / "repo"
    cfg = write_config(base / "repo.yaml", shop, dbs=["shop"], local=repo, extra=CHECKS)
    scratch = base / "scratch"
    assert backup(cfg).returncode == 0
    first = subprocess.Popen([sys.executable, "-m", "runbook", "verify-backup", "-c", str(cfg), "--scratch-dir",
                              str(scratch)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **cli_env()})
    try:
        lock = base / "state" / "locks" / "verify-backup.lock"
        deadline = time.monotonic() + 60
        while not (lock.exists() and lock.read_text().strip() and list(scratch.glob("runbook-verify-*/cluster/*"))):
            assert time.monotonic() < deadline and first.poll() is None, first.communicate()
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)  # frozen mid-run, holding its lock: no race with a fast restore
        assert first.poll() is None
        r = verify(cfg, "--lock-wait", "0.5", scratch=scratch)
        assert r.returncode == Exit.LOCKED, r.stdout + r.stderr
        assert "another verify-backup is running" in r.stderr and f"pid {first.pid}" in r.stderr
        assert "waited 0.5 s, refusing" in r.stderr
        first.send_signal(signal.SIGTERM)
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=60)
        assert first.returncode == Exit.INTERRUPTED, out + err
        assert "terminated (SIGTERM)" in err
    finally:
        if first.poll() is None:
            first.kill()
    assert list(scratch.iterdir()) == []
    assert not (logical_dir(repo) / "verifications").exists() or not [
        x for x in records(logical_dir(repo)) if x["level"] == "restored"]
    ps = subprocess.run(["pgrep", "-f", str(scratch)], capture_output=True, text=True)
    assert ps.stdout.strip() == ""  # no scratch server left running


def _basebackup(p: Primary) -> Path:
    r = run_cli("basebackup", "-c", str(p.config), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (bdir,) = (p.repo / "clusters" / p.sysid / "base").iterdir()
    return bdir


def test_a_good_base_backup_is_replayed_to_consistency_and_recorded(primary: Primary, base: Path) -> None:
    with open(primary.config, "a") as f:
        f.write("checks: {expect_tables: [events], smoke: ['select count(*) >= 10 from events']}\n")
    write_rows(primary, 10, "before")
    bdir = _basebackup(primary)
    write_rows(primary, 3, "after")
    primary.switch_wal()
    r = run_cli("verify-backup", "-c", str(primary.config), "--kind", "base", "--db", "postgres", "--scratch-dir",
                str(base / "scratch"), "--json", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    names = {c["name"]: c["status"] for c in out["checks"]}
    assert names["archived WAL"] == "ok" and names["replay to consistency"] == "ok"
    assert names["table events exists"] == "ok" and names["smoke: select count(*) >= 10 from events"] == "ok"
    (rec,) = [x for x in records(bdir) if x["level"] == "restored"]
    assert rec["passed"] is True and rec["kind"] == "base"
    proc = run_cli("backups", "-c", str(primary.config), "--json")
    assert json.loads(proc.stdout)["base_backups"][0]["level"] == "restored"
    assert list((base / "scratch").iterdir()) == []


def test_a_base_backup_whose_wal_has_a_gap_fails_naming_the_first_missing_segment(primary: Primary,
                                                                                    base: Path) -> None:
    write_rows(primary, 5, "x")
    bdir = _basebackup(primary)
    m = json.loads((bdir / "manifest.json").read_text())
    missing = primary.wal_dir / (m["start_wal"] + ".zst")
    missing.unlink()
    r = run_cli("verify-backup", "-c", str(primary.config), "--kind", "base", "--scratch-dir", str(base / "scratch"),
                timeout=180)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"WAL {m['start_wal']}" in r.stdout and "gap" in r.stdout
    (rec,) = [x for x in records(bdir) if x["level"] == "restored"]
    assert rec["passed"] is False
    proc = run_cli("backups", "-c", str(primary.config), "--json")
    assert json.loads(proc.stdout)["base_backups"][0]["level"] == "none"  # pitr no longer starts from it
    assert list((base / "scratch").iterdir()) == []


def test_no_backup_and_no_config_could_not_run(base: Path, shop: Cluster) -> None:
    cfg = write_config(base / "repo.yaml", shop, dbs=["shop"], local=base / "empty")
    r = verify(cfg, scratch=base / "scratch")
    assert r.returncode == 3 and "no logical backup" in r.stderr
    r = run_cli("verify-backup", "-c", str(base / "nope.yaml"))
    assert r.returncode == 3 and "does not exist" in r.stderr and "Traceback" not in r.stderr

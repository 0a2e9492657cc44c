"""`runbook backup` as a pipeline (issue 16): each file pg_dump has finished is hashed, stored in the local
repository and on S3 and re-read, and read by the overlapped `pg_restore -f /dev/null`, while the dump goes on.

The overlap is made visible, not assumed: the pg_dump worker writing the big table is stopped (SIGSTOP) while
it holds its file open, and the files already finished must reach both repositories while it is stopped.
The failures of the overlap: pg_dump killed (-9) after files were uploaded leaves no backup, nothing in the
local repository, and S3 objects without a manifest that nothing lists as a backup; S3 going away mid-dump
keeps the local backup and gives S3 no manifest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.backup_helpers import (  # noqa: F401
    backups_json,
    cli_env,
    new_database,
    source_cluster,
    status,
    write_config,
)
from tests.support.pgcluster import Cluster
from tests.support.s3server import FaultProxy, S3Endpoint, s3_bucket, s3_server  # noqa: F401


@pytest.fixture
def db(source_cluster: Cluster) -> str:  # noqa: F811
    """One big table (its file stays open for a while) and a few small ones."""
    return new_database(source_cluster, "p", "create table big(id int, body text); "
                        "insert into big select g, repeat(md5(g::text), 4) from generate_series(1, 300000) g",
                        *(f"create table small{i}(id int primary key, n text); "
                          f"insert into small{i} select g, md5(g::text) from generate_series(1, 500) g"
                          for i in range(4)))


def pg_dump_pids(staging_root: Path) -> list[int]:
    """The pg_dump processes (leader and workers) writing under `staging_root`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"pg_dump") and any(str(staging_root).encode() in a for a in cmd):
            pids.append(int(name))
    return sorted(pids)


def writer_of_big_file(staging_root: Path, min_size: int = 200_000) -> tuple[int, Path] | None:
    """(pid, file) of a pg_dump process holding a data file open that is past `min_size` bytes: the big table."""
    for pid in pg_dump_pids(staging_root):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if target.name.endswith(".dat.gz") and str(staging_root) in str(target):
                try:
                    if target.stat().st_size >= min_size:
                        return pid, target
                except OSError:
                    continue
    return None


def wait_for(what: Callable[[], object], timeout: float, step: float = 0.005) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step)
    return None


def start_backup(cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "runbook", "backup", "-c", str(cfg)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **cli_env()})


def backup_writing_the_big_table(cfg: Path, repo: Path) -> tuple[subprocess.Popen[str], int, Path]:
    """`runbook backup -c cfg` started, once its pg_dump holds the big table's file open in the staging directory
    of the local repository `repo`: the backup's process, that pg_dump's pid, the file."""
    proc = start_backup(cfg)
    found = wait_for(lambda: writer_of_big_file(repo / ".staging"), timeout=60)
    assert found, "never saw pg_dump writing the big table"
    pid, big = found  # type: ignore[misc]
    return proc, pid, big


def local_data_files(repo: Path) -> list[Path]:
    return sorted(repo.glob("clusters/*/logical/*/*/dump/*.dat.gz"))


def s3_keys(s3: S3Endpoint, bucket: str) -> list[str]:
    resp = s3.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def test_finished_files_are_published_and_read_while_pg_dump_still_writes(
    source_cluster: Cluster, db: str, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    repo = tmp_path / "repo"
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=repo,
                       s3={"bucket": s3_bucket, "prefix": "p", "endpoint_url": s3_server.url})
    proc, pid, big = backup_writing_the_big_table(cfg, repo)
    stopped: int | None = None
    try:
        stopped = pid
        os.kill(stopped, signal.SIGSTOP)
        # pg_dump cannot finish now; the small tables' files and toc.dat reach both repositories all the same.
        assert wait_for(lambda: len(local_data_files(repo)) >= 4, timeout=60, step=0.05), \
            f"nothing published while pg_dump ran: {list(repo.rglob('*'))}"
        assert wait_for(lambda: sum(k.endswith(".dat.gz") for k in s3_keys(s3_server, s3_bucket)) >= 4,
                        timeout=60, step=0.05)
        assert any(p.name == "toc.dat" for p in repo.glob("clusters/*/logical/*/*/dump/*"))
        assert big.name not in {p.name for p in local_data_files(repo)}  # the open file is not taken
        assert not list(repo.glob("clusters/*/logical/*/*/manifest.json"))  # no backup before it is whole
        assert proc.poll() is None
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    (m,) = repo.glob("clusters/*/logical/*/*/manifest.json")
    manifest = json.loads(m.read_text())
    on_disk = sorted(p.relative_to(m.parent).as_posix() for p in m.parent.rglob("*")
                     if p.is_file() and p.name != "manifest.json" and "verifications" not in p.parts
                     and not p.name.endswith(".sig"))
    assert sorted(o["path"] for o in manifest["objects"]) == on_disk
    assert f"dump/{big.name}" in on_disk
    (record,) = (m.parent / "verifications").glob("*.json")
    checks = {c["name"]: c["detail"] for c in json.loads(record.read_text())["checks"]}
    assert "while the dump was written" in checks["pg_restore --file=/dev/null"]
    cat = backups_json(cfg)
    (entry,) = cat["backups"]
    assert entry["level"] == "readable"
    assert "each file hashed and sent on as it was written" in (tmp_path / "state" / "backup.log").read_text()


def test_pg_dump_killed_after_files_were_uploaded_leaves_no_backup(
    source_cluster: Cluster, db: str, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    repo = tmp_path / "repo"
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=repo,
                       s3={"bucket": s3_bucket, "prefix": "p", "endpoint_url": s3_server.url})
    proc, pid, _big = backup_writing_the_big_table(cfg, repo)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_for(lambda: sum(k.endswith(".dat.gz") for k in s3_keys(s3_server, s3_bucket)) >= 4,
                        timeout=60, step=0.05), "nothing uploaded while pg_dump ran"
        assert local_data_files(repo)
        leader = min(pg_dump_pids(repo / ".staging"))
        os.kill(leader, signal.SIGKILL)
    finally:
        os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, err
    assert "pg_dump failed" in err and "published nowhere" in err
    # Local: the objects that were stored are removed again; no manifest anywhere.
    assert local_data_files(repo) == []
    assert not list(repo.glob("clusters/*/logical/*/*/*"))
    assert list((repo / ".staging").iterdir()) == []
    keys = s3_keys(s3_server, s3_bucket)
    assert any(k.endswith(".dat.gz") for k in keys)  # S3's leftovers: the backup's credentials need no delete
    assert not any(k.endswith("manifest.json") for k in keys)
    cat = backups_json(cfg)
    assert cat["backups"] == []
    assert [i["repository"] for i in cat["incomplete"]] == ["s3"]
    st = status(tmp_path)
    assert st["targets"][db]["status"] == "failed" and st["targets"][db]["published"] == []
    # The next backup is not disturbed by the leftovers (a new id, a new prefix).
    ok = subprocess.run([sys.executable, "-m", "runbook", "backup", "-c", str(cfg)], cwd=ROOT, text=True,
                        capture_output=True, env={**os.environ, **cli_env()}, timeout=180)
    assert ok.returncode == 0, ok.stderr
    assert len(backups_json(cfg)["backups"]) == 1


def test_s3_going_away_mid_dump_keeps_the_local_backup_and_gives_s3_no_manifest(
    source_cluster: Cluster, db: str, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    repo = tmp_path / "repo"
    gone = {"now": False}
    upstream = ("127.0.0.1", s3_server.port)
    with FaultProxy(upstream, fail=lambda m, p: gone["now"]) as proxy:
        cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=repo,
                           s3={"bucket": s3_bucket, "prefix": "p", "endpoint_url": proxy.url, "max_attempts": 2})
        proc, pid, _big = backup_writing_the_big_table(cfg, repo)
        os.kill(pid, signal.SIGSTOP)
        try:
            assert wait_for(lambda: sum(k.endswith(".dat.gz") for k in s3_keys(s3_server, s3_bucket)) >= 1,
                            timeout=60, step=0.05)
            gone["now"] = True
        finally:
            os.kill(pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=180)
        gone["now"] = False
        cat = backups_json(cfg)
    assert proc.returncode == 1, err
    assert "s3:" in err and "500" in err
    assert len(list(repo.glob("clusters/*/logical/*/*/manifest.json"))) == 1
    assert not any(k.endswith("manifest.json") for k in s3_keys(s3_server, s3_bucket))
    st = status(tmp_path)["targets"][db]
    assert st["published"] == ["local"] and "s3" in st["failed"]
    (entry,) = cat["backups"]
    assert entry["level"] == "readable" and list(entry["copies"]) == ["local"]


def test_uncompressed_single_job_dump_is_pipelined_too(
    source_cluster: Cluster, db: str, tmp_path: Path  # noqa: F811
) -> None:
    """`compression: 0` (files `<id>.dat`, the pipes named so) and `jobs: 1` (pg_dump writes its files itself, no
    worker): the read check still overlaps and the backup is whole."""
    repo = tmp_path / "repo"
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=repo)
    cfg.write_text(cfg.read_text().replace("backup: {", "backup: {compression: 0, jobs: 1, "))
    proc = subprocess.run([sys.executable, "-m", "runbook", "backup", "-c", str(cfg)], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, **cli_env()}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    (m,) = repo.glob("clusters/*/logical/*/*/manifest.json")
    manifest = json.loads(m.read_text())
    assert manifest["dump"]["compression"] == 0 and manifest["dump"]["jobs"] == 1
    data = [o for o in manifest["objects"] if o["path"].endswith(".dat") and o["path"] != "dump/toc.dat"]
    assert len(data) == 5
    for o in manifest["objects"]:
        assert (m.parent / o["path"]).stat().st_size == o["size"]
    (record,) = (m.parent / "verifications").glob("*.json")
    checks = {c["name"]: c["detail"] for c in json.loads(record.read_text())["checks"]}
    assert "while the dump was written" in checks["pg_restore --file=/dev/null"]


def test_large_objects_get_the_read_check_on_the_finished_dump(
    source_cluster: Cluster, db: str, tmp_path: Path  # noqa: F811
) -> None:
    """An archive with large objects (blobs.toc and its files, which the table of contents does not name one by
    one) is not guessed at: the read check runs on the finished dump, as before the pipeline, and says why."""
    from tests.support.backup_helpers import BACKUP_ROLE

    oid = source_cluster.psql("select lo_from_bytea(0, '\\x0102030405'::bytea)", db)
    source_cluster.psql(f"alter large object {oid} owner to {BACKUP_ROLE}", db)
    repo = tmp_path / "repo"
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=repo)
    proc = subprocess.run([sys.executable, "-m", "runbook", "backup", "-c", str(cfg)], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, **cli_env()}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    (m,) = repo.glob("clusters/*/logical/*/*/manifest.json")
    assert any(o["path"] == "dump/blobs.toc" for o in json.loads(m.read_text())["objects"])
    (record,) = (m.parent / "verifications").glob("*.json")
    checks = {c["name"]: c["detail"] for c in json.loads(record.read_text())["checks"]}
    assert checks["pg_restore --file=/dev/null"].startswith("read every data entry")
    assert "while the dump was written" not in checks["pg_restore --file=/dev/null"]
    assert "the read check runs on the finished dump: the archive has large objects" in \
        (tmp_path / "state" / "backup.log").read_text()

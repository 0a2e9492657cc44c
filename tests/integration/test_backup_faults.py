"""`runbook backup` and the recovery actions when things go wrong, against a real cluster and moto.

Each fault of issue 4 with its promise: S3 failing (500 on the manifest, 500 on everything, unreachable,
wrong credentials, no bucket): the local copy is kept, the exit code says "published in some but not all",
nothing is half-published; a flipped byte: found at fetch with the object named, nothing restored;
pg_dump failing mid-way: no manifest, no retention, exit 2; a full disk: a clean failure, older backups
untouched; plus the lock, the size-drop warning and the status file monitoring reads.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import Exit
from steps.backup.lock import BackupLock
from tests.support.backup_helpers import (  # noqa: F401
    BACKUP_ROLE,
    backup,
    backups_json,
    new_database,
    run_action,
    source_cluster,
    status,
    write_config,
)
from tests.support.pgcluster import Cluster
from tests.support.s3server import FaultProxy, S3Endpoint, s3_bucket, s3_server  # noqa: F401


@pytest.fixture
def db(source_cluster: Cluster) -> str:  # noqa: F811
    """A fresh small database in the module's cluster."""
    return new_database(source_cluster, "d", "create table items(id int primary key, body text); "
                        "insert into items select g, repeat(md5(g::text), 4) from generate_series(1, 2000) g; "
                        "create table notes(id int primary key, n text); insert into notes values (1, 'x')")


def manifests(root: Path) -> list[Path]:
    return sorted(root.glob("clusters/*/logical/*/*/manifest.json"))


def s3_keys(s3: S3Endpoint, bucket: str) -> list[str]:
    resp = s3.client().list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in resp.get("Contents", [])]


def test_s3_failing_on_the_manifest_keeps_the_local_copy_and_publishes_nothing_half(
    source_cluster: Cluster, db: str, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    fail = lambda method, path: method == "PUT" and path.split("?")[0].endswith("/manifest.json")  # noqa: E731
    with FaultProxy(("127.0.0.1", s3_server.port), fail=fail) as proxy:
        cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=tmp_path / "repo",
                           s3={"bucket": s3_bucket, "prefix": "p", "endpoint_url": proxy.url, "max_attempts": 2})
        proc = backup(cfg)
    assert proc.returncode == 1, proc.stderr
    assert "published in local" in proc.stderr and "s3:" in proc.stderr and "answered 500" in proc.stderr
    assert any(status_ == 500 for _, _, status_ in proxy.seen)
    st = status(tmp_path)
    assert st["status"] == "warning" and st["targets"][db]["published"] == ["local"] and "s3" in st["targets"][db]["failed"]
    assert len(manifests(tmp_path / "repo")) == 1
    keys = s3_keys(s3_server, s3_bucket)
    assert any(k.endswith("toc.dat") for k in keys)  # the objects went up ...
    assert not any(k.endswith("manifest.json") or "/verifications/" in k for k in keys)  # ... but no backup exists
    cfg_direct = write_config(tmp_path / "direct.yaml", source_cluster, dbs=[db], local=tmp_path / "repo",
                              s3={"bucket": s3_bucket, "prefix": "p", "endpoint_url": s3_server.url})
    cat = backups_json(cfg_direct)
    assert [b["locations"] for b in cat["backups"]] == [["local"]]
    assert [i["repository"] for i in cat["incomplete"]] == ["s3"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("fault", ["answers-500", "unreachable", "wrong-credentials", "no-bucket"])
def test_s3_unusable_still_backs_up_locally(
    source_cluster: Cluster, db: str, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path, fault: str  # noqa: F811
) -> None:
    s3 = {"bucket": s3_bucket, "prefix": "p", "endpoint_url": s3_server.url, "max_attempts": 2}
    expect = {"answers-500": "answered 500", "unreachable": "cannot reach the S3 endpoint",
              "wrong-credentials": "refused the credentials", "no-bucket": "does not exist"}[fault]
    proxy = FaultProxy(None)
    with proxy:
        if fault == "answers-500":
            s3["endpoint_url"] = proxy.url
        elif fault == "unreachable":
            s3["endpoint_url"] = f"http://127.0.0.1:{_closed_port()}"
        elif fault == "no-bucket":
            s3["bucket"] = "nobody-made-this-bucket"
        cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=tmp_path / "repo", s3=s3)
        if fault == "wrong-credentials":
            s3_server.set_auth(True)
        try:
            proc = backup(cfg)
        finally:
            s3_server.set_auth(False)
    assert proc.returncode == 1, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr
    assert len(manifests(tmp_path / "repo")) == 1
    assert status(tmp_path)["repositories"]["local"] == "ok"
    assert not any(k.startswith("p/") for k in s3_keys(s3_server, s3_bucket))


def test_s3_only_and_unreachable_could_not_run(source_cluster: Cluster, db: str, tmp_path: Path) -> None:  # noqa: F811
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db],
                       s3={"bucket": "whatever", "endpoint_url": f"http://127.0.0.1:{_closed_port()}", "max_attempts": 1})
    proc = backup(cfg)
    assert proc.returncode == Exit.CANNOT_RUN
    assert "could not run" in proc.stderr and "cannot reach" in proc.stderr
    assert status(tmp_path)["status"] == "could-not-run"


def test_a_flipped_byte_is_caught_at_fetch_and_nothing_is_restored(
    source_cluster: Cluster, db: str, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=tmp_path / "repo",
                       s3={"bucket": s3_bucket, "prefix": "p", "endpoint_url": s3_server.url})
    assert backup(cfg).returncode == 0
    (m,) = manifests(tmp_path / "repo")
    manifest = json.loads(m.read_text())
    biggest = max(manifest["objects"], key=lambda o: o["size"])
    victim = m.parent / biggest["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    # pg_restore --list alone would not notice: the table of contents is intact.
    assert subprocess.run(["/usr/lib/postgresql/15/bin/pg_restore", "--list", str(m.parent / "dump")],
                          capture_output=True).returncode == 0

    dest = tmp_path / "restore"
    res = run_action("fetch-latest-backup", {"config": str(cfg), "db": db, "dest": str(dest), "from": "local"})
    assert res.code == 1
    assert biggest["path"] in res.stdout and "corrupt object" in res.stdout and "nothing was restored" in res.stdout
    failed = res.checks("failed")
    assert failed and biggest["path"] in failed[0]["name"]
    assert "backup_dir" not in res.outputs
    assert os.listdir(dest) == []
    restored = run_action("restore-logical", {"backup_dir": str(m.parent), "db": "never"},
                          env={"PGHOST": str(source_cluster.socket_dir), "PGPORT": str(source_cluster.port)})
    assert restored.code == 1 and biggest["path"] in restored.stdout
    assert source_cluster.psql("select count(*) from pg_database where datname = 'never'") == "0"

    # With both repositories allowed, the intact S3 copy of the same backup is used, and it says so.
    res = run_action("fetch-latest-backup", {"config": str(cfg), "db": db, "dest": str(dest)})
    assert res.code == 0, res.stdout
    assert res.outputs["source"] == "s3" and biggest["path"] in res.stdout

    # The fetch checked every file: the restore does not hash them again ... unless one changed since.
    fetched = Path(res.outputs["backup_dir"])
    victim = fetched / biggest["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))  # same size; only its mtime tells
    restored = run_action("restore-logical", {"backup_dir": str(fetched), "db": "never"},
                          env={"PGHOST": str(source_cluster.socket_dir), "PGPORT": str(source_cluster.port)})
    assert restored.code == 1 and "does not match its sha256" in restored.stdout and "nothing was restored" in restored.stdout
    assert "not hashed again" not in restored.stdout
    assert source_cluster.psql("select count(*) from pg_database where datname = 'never'") == "0"


def test_pg_dump_failing_midway_publishes_nothing_and_runs_no_retention(
    source_cluster: Cluster, db: str, tmp_path: Path  # noqa: F811
) -> None:
    repo = tmp_path / "repo"
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=repo)
    assert backup(cfg).returncode == 0
    assert backup(cfg).returncode == 0
    before = manifests(repo)
    assert len(before) == 2
    # A table the backup role may not dump in full: row-level security, and the role has no BYPASSRLS.
    source_cluster.psql("create table secrets(id int, s text); insert into secrets values (1, 'a'); "
                        "alter table secrets enable row level security; "
                        "create policy only_owner on secrets using (current_user = 'postgres')", db)
    strict = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=repo,
                          extra="retention: {keep_last: 1, keep_days: 0}")
    proc = backup(strict)
    assert proc.returncode == 2, proc.stderr
    assert "pg_dump failed" in proc.stderr and "row-level security" in proc.stderr and "BYPASSRLS" in proc.stderr
    assert manifests(repo) == before  # retention (keep 1) did not run
    assert list((repo / ".staging").iterdir()) == []
    assert len(list(repo.glob("clusters/*/logical/*/*"))) == 2  # no incomplete directory either
    assert status(tmp_path)["targets"][db]["status"] == "failed"
    # The same retention after a good backup does delete: the check above could fail.
    source_cluster.psql(f"alter role {BACKUP_ROLE} bypassrls")
    try:
        assert backup(strict).returncode == 0
    finally:
        source_cluster.psql(f"alter role {BACKUP_ROLE} nobypassrls")
    after = manifests(repo)
    assert len(after) == 1 and after[0] not in before
    assert json.loads(after[0].read_text())["row_counts"]["public.secrets"] == 1


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_disk_fails_cleanly_and_leaves_older_backups_untouched(
    source_cluster: Cluster, db: str, small_disk: Path, tmp_path: Path  # noqa: F811
) -> None:
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=small_disk)
    assert backup(cfg).returncode == 0
    (m,) = manifests(small_disk)
    first = {p: p.read_bytes() for p in m.parent.rglob("*") if p.is_file()}
    # About 4 MB of bytes gzip cannot shrink: more than the 2 MB disk holds.
    source_cluster.psql("create table blobs(id int, b bytea); insert into blobs select g, "
                        "decode(string_agg(md5(g::text || '-' || h::text || random()::text), ''), 'hex') "
                        "from generate_series(1, 100) g, generate_series(1, 2500) h group by g", db)
    proc = backup(cfg)
    assert proc.returncode == 2, proc.stderr
    assert "No space left on device" in proc.stderr or "no space left" in proc.stderr
    assert manifests(small_disk) == [m]
    assert {p: p.read_bytes() for p in m.parent.rglob("*") if p.is_file()} == first
    assert list((small_disk / ".staging").iterdir()) == []
    cat = backups_json(cfg)
    assert [b["level"] for b in cat["backups"]] == ["readable"] and cat["backups"][0]["picked"]


def test_two_backups_of_one_database_never_overlap(source_cluster: Cluster, db: str, tmp_path: Path) -> None:  # noqa: F811
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=tmp_path / "repo")
    target = f"{source_cluster.socket_dir}:{source_cluster.port}/{db}"
    held = BackupLock.take(tmp_path / "repo" / "locks", target)
    held.record("20000101T000000Z")
    try:
        proc = backup(cfg)
    finally:
        held.release()
    assert proc.returncode == Exit.LOCKED and "already running" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert manifests(tmp_path / "repo") == []
    assert backup(cfg).returncode == 0


def test_a_much_smaller_dump_is_a_warning_and_skips_retention(
    source_cluster: Cluster, db: str, tmp_path: Path  # noqa: F811
) -> None:
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=tmp_path / "repo",
                       extra="retention: {keep_last: 1, keep_days: 0}\n")
    cfg.write_text(cfg.read_text().replace("backup: {", "backup: {max_size_drop: 0.3, "))
    assert backup(cfg).returncode == 0
    source_cluster.psql("delete from items where id > 100", db)
    proc = backup(cfg)
    assert proc.returncode == 1
    assert "smaller than the previous backup" in proc.stderr and "check that no data was lost" in proc.stderr
    assert len(manifests(tmp_path / "repo")) == 2  # published, and retention (keep 1) did not run
    st = status(tmp_path)
    assert st["exit_code"] == 1 and st["targets"][db]["warnings"]
    shutil.rmtree(tmp_path / "state")


def test_an_archive_that_does_not_read_back_is_not_published(
    source_cluster: Cluster, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """pg_restore's checks run while the objects are stored: their failure stops the manifests. Here the check
    that runs after the dump (when the overlapped one cannot: steps.backup.archive_check.StreamingCheck)."""
    import logging

    from steps.backup import archive_check
    from steps.backup.logical import BackupRun
    from steps.pg.tools import ToolFailed
    from steps.repository.config import load_repository_config

    def unreadable(dump_dir: Path) -> list[object]:
        raise ToolFailed("pg_restore --file=/dev/null", 1, "pg_restore: error: could not uncompress data")

    def cannot_overlap(self: archive_check.StreamingCheck) -> None:
        self.why_not = "not overlapped in this test"

    monkeypatch.setattr(archive_check, "check_archive", unreadable)
    monkeypatch.setattr(archive_check.StreamingCheck, "start", cannot_overlap)
    cfg, path = load_repository_config(write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db],
                                                    local=tmp_path / "repo"))
    assert BackupRun(cfg, path).run(console=False) == 2
    assert not logging.getLogger("runbook").handlers  # the in-process run took its logging down again
    assert manifests(tmp_path / "repo") == []
    assert not list((tmp_path / "repo").glob("clusters/*/logical/*/*/dump/*"))  # stored objects removed again
    st = status(tmp_path)["targets"][db]
    assert st["status"] == "failed" and "could not uncompress" in st["error"] and st["published"] == []


def test_an_archive_the_overlapped_read_check_cannot_read_is_not_published(
    source_cluster: Cluster, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The overlapped `pg_restore -f /dev/null` really fails (it is fed a data file with one byte flipped, as a
    bad disk would return it): no manifest, the stored objects removed, the reason in the status."""
    from steps.backup import archive_check
    from steps.backup.logical import BackupRun
    from steps.repository.config import load_repository_config

    def flipped(self: archive_check.StreamingCheck, name: str, fd: int) -> None:
        self.wait_done(name)
        data = bytearray((self.dump_dir / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        os.write(fd, bytes(data))

    monkeypatch.setattr(archive_check.StreamingCheck, "_stream", flipped)
    cfg, path = load_repository_config(write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db],
                                                    local=tmp_path / "repo"))
    assert BackupRun(cfg, path).run(console=False) == 2
    assert manifests(tmp_path / "repo") == []
    assert not list((tmp_path / "repo").glob("clusters/*/logical/*/*/dump/*"))
    st = status(tmp_path)["targets"][db]
    assert st["status"] == "failed" and "pg_restore --file=/dev/null failed" in st["error"]
    monkeypatch.undo()  # the same database, read as it is: published
    assert BackupRun(cfg, path).run(console=False) == 0
    assert len(manifests(tmp_path / "repo")) == 1


def test_an_overlapped_read_check_that_cannot_feed_a_file_falls_back_to_the_finished_dump(
    source_cluster: Cluster, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    """The feeder fails (not pg_restore): pg_restore, waiting on a pipe nobody feeds, is stopped, not waited for
    forever, and the read check runs on the finished dump directory, which reads: published, said so."""
    from steps.backup import archive_check
    from steps.backup.logical import BackupRun
    from steps.repository.config import load_repository_config

    def broken(self: archive_check.StreamingCheck, name: str, fd: int) -> None:
        raise OSError(5, "injected read error")

    monkeypatch.setattr(archive_check.StreamingCheck, "_stream", broken)
    cfg, path = load_repository_config(write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db],
                                                    local=tmp_path / "repo"))
    assert BackupRun(cfg, path).run(console=False) == 0
    (m,) = manifests(tmp_path / "repo")
    (record,) = (m.parent / "verifications").glob("*.json")
    checks = {c["name"]: c["detail"] for c in json.loads(record.read_text())["checks"]}
    assert checks["pg_restore --file=/dev/null"].startswith("read every data entry")
    assert "while the dump was written" not in checks["pg_restore --file=/dev/null"]
    log = (tmp_path / "state" / "backup.log").read_text()
    assert "the read check runs on the finished dump" in log and "injected read error" in log


def test_sigterm_stops_the_backup_cleanly(source_cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    import signal
    import sys
    import time

    from tests.conftest import ROOT
    from tests.support.backup_helpers import cli_env

    source_cluster.psql("create database big")
    source_cluster.psql("create table t as select g, repeat(md5(g::text), 20) body from generate_series(1, 150000) g",
                        "big")
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=["big"], local=tmp_path / "repo")
    proc = subprocess.Popen([sys.executable, "-m", "runbook", "backup", "-c", str(cfg)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **cli_env()})
    deadline = time.monotonic() + 30
    while not list((tmp_path / "repo").glob(".staging/big-*/dump")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "interrupted: terminated (SIGTERM)" in err
    assert manifests(tmp_path / "repo") == []
    assert list((tmp_path / "repo" / ".staging").iterdir()) == []
    for _ in range(100):  # pg_dump was stopped with us: its sessions go away
        if source_cluster.psql("select count(*) from pg_stat_activity where datname = 'big'") == "0":
            break
        time.sleep(0.1)
    assert source_cluster.psql("select count(*) from pg_stat_activity where datname = 'big'") == "0"
    assert status(tmp_path)["status"] == "failed"


def test_an_unusable_local_repository_still_publishes_off_site(
    source_cluster: Cluster, db: str, s3_server: S3Endpoint, s3_bucket: str, tmp_path: Path  # noqa: F811
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the repository should be")
    cfg = write_config(tmp_path / "repo.yaml", source_cluster, dbs=[db], local=blocker / "repo",
                       s3={"bucket": s3_bucket, "prefix": "p", "endpoint_url": s3_server.url})
    # with no usable local repository, dumps are staged in the state directory: what a killed backup left
    # there is found and removed by the next one (as in the repository's .staging)
    staging = tmp_path / "state" / "staging"
    left = staging / f"{db}-20200101T000000Z"
    (left / "dump").mkdir(parents=True)
    (left / "dump" / "toc.dat").write_bytes(b"x" * 1000)
    proc = backup(cfg)
    assert proc.returncode == 1, proc.stderr
    assert "published in s3" in proc.stderr and "local:" in proc.stderr and "Traceback" not in proc.stderr
    st = status(tmp_path)
    assert st["targets"][db]["published"] == ["s3"] and st["repositories"]["local"] != "ok"
    assert any(k.endswith("/manifest.json") for k in s3_keys(s3_server, s3_bucket))
    assert staging.is_dir() and not list(staging.iterdir())  # its own staging emptied, the stale one removed
    assert "removed stale staging" in (tmp_path / "state" / "backup.log").read_text()

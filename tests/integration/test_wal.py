"""wal-push and wal-fetch as PostgreSQL runs them: archive_command/restore_command of real PostgreSQL 15
clusters (1 MB segments), run by the server as `postgres` from the server venv, into a local repository and
moto's S3 over HTTP.

Segments arrive compressed and checked in both; fetch restores them byte for byte; a push of the same
content succeeds and of other content is refused without touching the archive; a missing file is a quiet
exit 1; a damaged copy, an unreachable S3 or bad arguments stop recovery (exit 126); a segment of another
cluster and a root caller are refused; the asynchronous mode keeps up with pgbench with no gap; a real
recovery replays through wal-fetch and its read-ahead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from steps.repository.layout import next_segment, parse_wal_name, wal_key, wal_name_from_key
from steps.wal.fast import parse_record, push_root
from steps.wal.segment import CorruptWal, read_header, unpack
from steps.wal.settings import WalSettings
from tests.conftest import ROOT
from tests.support.pgcluster import PG_BIN, as_server_user, chown_server_user
from tests.support.s3server import FaultProxy, S3Endpoint, s3_bucket, s3_server  # noqa: F401
from tests.support.wal_helpers import (
    WalCluster,
    credentials_file,
    pgbench,
    s3_keys,
    s3_section,
    server_dir,
    wal_cluster,  # noqa: F401
    wal_template,  # noqa: F401
    write_config,
)

Factory = Callable[..., WalCluster]


def _archived_segments(wc: WalCluster) -> list[str]:
    status = wc.datadir / "pg_wal" / "archive_status"
    return sorted(n.removesuffix(".done") for n in os.listdir(status) if n.endswith(".done"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def both(wal_cluster: Factory, s3_server: S3Endpoint, s3_bucket: str) -> tuple[WalCluster, Path, Path]:  # noqa: F811
    """A running cluster archiving into a local repository and S3; (cluster, config, local repository)."""
    wc = wal_cluster()
    repo = server_dir(wc.base, "repo")
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo,
                       s3=s3_section(s3_server.url, s3_bucket, credentials_file(wc.base)),
                       wal={"spool_dir": str(server_dir(wc.base, "spool"))})
    wc.archive_with(cfg)
    wc.cluster.start()
    return wc, cfg, repo


def test_segments_arrive_compressed_in_both_and_fetch_restores_them_byte_for_byte(
        both: tuple[WalCluster, Path, Path], s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    wc, cfg, repo = both
    wc.psql("create table t as select g, md5(g::text) as h from generate_series(1, 20000) g")
    last = wc.switch()
    wc.wait_archived(last)
    sysid, seg_size = wc.sysid(), wc.segment_size()
    assert seg_size == 1024 * 1024
    names = _archived_segments(wc)
    assert last in names and len(names) >= 2
    objects = s3_keys(s3_server, s3_bucket, f"wal-tests/clusters/{sysid}/wal/")
    fetched = server_dir(wc.base, "fetched")
    for name in names:
        key = wal_key(sysid, name)
        local = (repo / key).read_bytes()
        assert len(local) < seg_size // 2, f"{name} is not compressed: {len(local)} bytes"
        meta, _ = read_header(local)
        assert meta["name"] == name and meta["size"] == seg_size
        assert f"wal-tests/{key}" in objects
        original = (wc.datadir / "pg_wal" / name).read_bytes()
        for source in ("local", "s3"):
            dest = fetched / f"{name}.{source}"
            r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", source, name, str(dest))
            assert r.returncode == 0, r.stderr
            assert dest.read_bytes() == original
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"wal-tests/{wal_key(sysid, last)}")
    assert head["Metadata"]["sha256"] == read_header((repo / wal_key(sysid, last)).read_bytes())[0]["sha256"]


def test_push_is_idempotent_and_never_overwrites_other_content(
        both: tuple[WalCluster, Path, Path], s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    wc, cfg, repo = both
    name = wc.switch()
    wc.wait_archived(name)
    key = wal_key(wc.sysid(), name)
    before_local = (repo / key).read_bytes()
    before_s3 = s3_server.client().get_object(Bucket=s3_bucket, Key=f"wal-tests/{key}")["Body"].read()

    same = wc.runbook("wal-push", "-c", str(cfg), f"pg_wal/{name}")
    assert same.returncode == 0, same.stderr

    other = server_dir(wc.base, "elsewhere/pg_wal") / name
    data = bytearray((wc.datadir / "pg_wal" / name).read_bytes())
    data[5000:5016] = os.urandom(16)
    other.write_bytes(bytes(data))
    chown_server_user(other)
    r = wc.runbook("wal-push", "-c", str(cfg), str(other))
    assert 0 < r.returncode < 126, r
    assert "DIFFERENT content" in r.stderr and name in r.stderr and "nothing is overwritten" in r.stderr
    assert (repo / key).read_bytes() == before_local
    assert s3_server.client().get_object(Bucket=s3_bucket, Key=f"wal-tests/{key}")["Body"].read() == before_s3


def test_never_overwrites_on_a_store_that_ignores_conditional_writes(
        wal_cluster: Factory, s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    wc = wal_cluster()
    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: False,
                    drop_headers=("If-None-Match",)) as proxy:
        cfg = write_config(wc.base / "repository.yaml", wc.cluster,
                           s3=s3_section(proxy.url, s3_bucket, credentials_file(wc.base)))
        wc.cluster.start()
        name = wc.switch()
        assert wc.runbook("wal-push", "-c", str(cfg), f"pg_wal/{name}").returncode == 0
        key = f"wal-tests/{wal_key(wc.sysid(), name)}"
        before = s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        other = server_dir(wc.base, "elsewhere/pg_wal") / name
        data = bytearray((wc.datadir / "pg_wal" / name).read_bytes())
        data[7000:7008] = os.urandom(8)
        other.write_bytes(bytes(data))
        chown_server_user(other)
        r = wc.runbook("wal-push", "-c", str(cfg), str(other))
        assert 0 < r.returncode < 126 and "DIFFERENT content" in r.stderr, r
        assert s3_server.client().get_object(Bucket=s3_bucket, Key=key)["Body"].read() == before
        puts = [p for m, p, _ in proxy.seen if m == "PUT" and key in p]  # (the other PUT: the repository marker)
        assert len(puts) == 1  # the look found the object: no second write was even tried


def test_missing_files_exit_1_quietly(both: tuple[WalCluster, Path, Path]) -> None:
    wc, cfg, _ = both
    wc.wait_archived(wc.switch())  # the first push marks each repository as one: "missing" is believed there
    dest = server_dir(wc.base, "fetched") / "x"
    for name in ("00000099.history", "0000000100000000000000FF", "00000001000000000000000A.00000028.backup"):
        r = wc.runbook("wal-fetch", "-c", str(cfg), name, str(dest))
        assert (r.returncode, r.stderr) == (1, ""), (name, r)
    assert not dest.exists()


def test_a_damaged_copy_stops_recovery_unless_another_copy_is_good(
        both: tuple[WalCluster, Path, Path], s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    wc, cfg, repo = both
    name = wc.switch()
    wc.wait_archived(name)
    key = wal_key(wc.sysid(), name)
    obj = repo / key
    blob = bytearray(obj.read_bytes())
    blob[-100] ^= 0xFF  # inside the zstd frame
    os.chmod(obj, 0o640)
    obj.write_bytes(bytes(blob))
    with pytest.raises(CorruptWal):
        unpack(bytes(blob), name)
    dest = server_dir(wc.base, "fetched") / "RECOVERYXLOG"
    # Local is damaged, S3 is good: restored from S3, with a warning naming the damaged copy.
    r = wc.runbook("wal-fetch", "-c", str(cfg), name, str(dest))
    assert r.returncode == 0 and "damaged" in r.stderr and name in r.stderr, r
    assert dest.read_bytes() == (wc.datadir / "pg_wal" / name).read_bytes()
    dest.unlink()
    # Local only: nothing good is left, recovery must stop (exit > 125), naming the segment.
    r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "local", name, str(dest))
    assert r.returncode == 126 and name in r.stderr and "damaged" in r.stderr, r
    assert not dest.exists()
    # The same for a copy whose header lies about the content (sha256 mismatch after decompression).
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"wal-tests/{key}", Body=bytes(blob))
    r = wc.runbook("wal-fetch", "-c", str(cfg), name, str(dest))
    assert r.returncode == 126 and name in r.stderr


def test_unreachable_s3_stops_recovery_and_fails_the_push(wal_cluster: Factory) -> None:  # noqa: F811
    wc = wal_cluster()
    dead = f"http://127.0.0.1:{_free_port()}"
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=server_dir(wc.base, "repo"),
                       s3=s3_section(dead, "nowhere", credentials_file(wc.base), max_attempts=1),
                       wal={"fetch_attempts": 2, "spool_dir": str(server_dir(wc.base, "spool"))})
    wc.cluster.start()
    name = wc.switch()
    t0 = time.monotonic()
    push = wc.runbook("wal-push", "-c", str(cfg), f"pg_wal/{name}")
    assert 0 < push.returncode < 126 and "cannot reach the S3 endpoint" in push.stderr, push
    fetch = wc.runbook("wal-fetch", "-c", str(cfg), "0000000100000000000000FE", str(wc.base / "x"))
    assert fetch.returncode == 126 and "cannot reach" in fetch.stderr, fetch
    assert time.monotonic() - t0 < 30  # bounded retries


def test_a_segment_of_another_cluster_is_refused(wal_cluster: Factory) -> None:  # noqa: F811
    a, b = wal_cluster(), wal_cluster(True)
    for wc in (a, b):
        wc.cluster.start()
    assert a.sysid() != b.sysid()
    repo = server_dir(b.base, "repo")
    cfg = write_config(b.base / "repository.yaml", b.cluster, local=repo)
    name = a.switch()
    foreign = server_dir(b.base, "foreign/pg_wal") / name
    foreign.write_bytes((a.datadir / "pg_wal" / name).read_bytes())
    chown_server_user(foreign)
    r = b.runbook("wal-push", "-c", str(cfg), str(foreign))  # run in b's data directory, as the server would
    assert 0 < r.returncode < 126 and "refusing" in r.stderr and a.sysid() in r.stderr, r
    assert not any(repo.rglob("*.zst"))
    # Its own segment goes to its own directory, named by its own identifier.
    own = b.switch()
    r = b.runbook("wal-push", "-c", str(cfg), f"pg_wal/{own}")
    assert r.returncode == 0, r.stderr
    assert (repo / wal_key(b.sysid(), own)).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\n")
    env = {**os.environ, "NO_COLOR": "1"}
    push = subprocess.run([sys.executable, "-m", "runbook", "wal-push", "-c", str(cfg), "pg_wal/000000010000000000000001"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert push.returncode == 2 and "refuses to run as root" in push.stderr and "runuser -u postgres" in push.stderr
    fetch = subprocess.run([sys.executable, "-m", "runbook", "wal-fetch", "-c", str(cfg), "000000010000000000000001",
                            str(tmp_path / "x")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert fetch.returncode == 126 and "refuses to run as root" in fetch.stderr


def test_fetch_argument_errors_stop_recovery(both: tuple[WalCluster, Path, Path]) -> None:
    wc, cfg, _ = both
    for args in (["-c", str(cfg)], ["-c", str(cfg), "not-a-wal-name", "x"], ["--bogus"]):
        r = wc.runbook("wal-fetch", *args)
        assert r.returncode == 126, (args, r)


def test_async_mode_keeps_up_with_pgbench_without_gaps(wal_cluster: Factory, s3_server: S3Endpoint,  # noqa: F811
                                                       s3_bucket: str) -> None:  # noqa: F811
    wc = wal_cluster()
    repo, spool = server_dir(wc.base, "repo"), server_dir(wc.base, "spool")
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo,
                       s3=s3_section(s3_server.url, s3_bucket, credentials_file(wc.base)),
                       wal={"async": True, "spool_dir": str(spool), "max_parallel": 4, "worker_idle_s": 3})
    wc.archive_with(cfg)
    wc.cluster.start()
    sysid = wc.sysid()
    pgbench(wc.cluster, "-i", "-s", "3", "-q")
    pgbench(wc.cluster, "-c", "4", "-j", "2", "-T", "4", "-n")
    last = wc.switch()
    wc.wait_archived(last, timeout=60)
    status = wc.datadir / "pg_wal" / "archive_status"
    assert not [n for n in os.listdir(status) if n.endswith(".ready")]
    assert wc.psql("select failed_count from pg_stat_archiver") == "0", wc.log_tail()
    seg_size = wc.segment_size()
    local = sorted(n for k in (repo / f"clusters/{sysid}/wal").iterdir() if (n := wal_name_from_key(k.name)))
    remote = sorted(n for k in s3_keys(s3_server, s3_bucket, f"wal-tests/clusters/{sysid}/wal/")
                    if (n := wal_name_from_key(k)))
    assert local == remote
    segments = [n for n in local if parse_wal_name(n).kind == "segment"]
    assert len(segments) >= 20, segments
    for a, b in zip(segments, segments[1:], strict=False):
        assert b == next_segment(a, seg_size), f"gap between {a} and {b}"
    assert segments[-1] == last
    (log_file,) = (spool / sysid).glob("push-*/push-worker.log")
    log = log_file.read_text()
    assert "uploader started" in log and "FAILED" not in log
    # every archived file is sealed, in both repositories, by the uploader's own sealer thread (no sealer process)
    deadline = time.monotonic() + 20
    while True:
        ledgers = [json.loads(p.read_text()) for p in (repo / f"clusters/{sysid}/wal-ledger").glob("*.json")]
        sealed = {f[0] for led in ledgers for f in led["files"]}
        if set(local) <= sealed or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert set(local) <= sealed, sorted(set(local) - sealed)
    remote_ledgers = [k for k in s3_keys(s3_server, s3_bucket, f"wal-tests/clusters/{sysid}/wal-ledger/")
                      if k.endswith(".json")]
    assert len(remote_ledgers) == len(ledgers) and len(ledgers) < len(local)  # bursts make one ledger
    assert "sealer started" in log_file.read_text()
    assert not list((spool / sysid).glob("seal-*/seal-worker.log"))


def _held_ready(wc: WalCluster, name: str) -> Path:
    """A copy of the finished segment `name` in a pg_wal of its own, marked ready: the asynchronous uploader
    serves it as PostgreSQL's own, and the server's archiver never touches it (it is not in the server's pg_wal)."""
    pg_wal = server_dir(wc.base, "held/pg_wal")
    (pg_wal / "archive_status").mkdir(exist_ok=True)
    seg = pg_wal / name
    seg.write_bytes((wc.datadir / "pg_wal" / name).read_bytes())
    (pg_wal / "archive_status" / f"{name}.ready").touch()
    chown_server_user(pg_wal)
    return seg


def _ok_records(spool: Path, name: str) -> dict[Path, str]:
    return {p: p.read_text() for p in spool.rglob(f"{name}.ok")}


def test_an_async_confirmation_is_for_this_segment_in_this_destination(wal_cluster: Factory) -> None:  # noqa: F811
    """The uploader's `.ok` record for repository A never confirms a push to repository B: after the config
    changes, the segment is pushed again, and `wal-push` exits 0 only once B holds it."""
    wc = wal_cluster()
    wc.cluster.start()
    name = wc.switch()
    sysid = wc.sysid()
    key = wal_key(sysid, name)
    seg = _held_ready(wc, name)
    spool = server_dir(wc.base, "spool")
    repo_a, repo_b, repo_c = (server_dir(wc.base, f"repo-{x}") for x in "abc")
    cfg = wc.base / "repository.yaml"
    wal = {"async": True, "spool_dir": str(spool), "worker_idle_s": 2, "push_timeout_s": 30}

    write_config(cfg, wc.cluster, local=repo_a, wal=wal)
    r = wc.runbook("wal-push", "-c", str(cfg), str(seg))
    assert r.returncode == 0, r.stderr
    assert unpack((repo_a / key).read_bytes(), name)[0] == seg.read_bytes()
    (record_a,) = _ok_records(spool, name)  # confirmed by the uploader's record, not pushed synchronously
    assert str(repo_a) in record_a.read_text() and sysid in record_a.read_text()

    # The config now names another repository: A's record must not confirm the segment for B.
    write_config(cfg, wc.cluster, local=repo_b, wal=wal)
    r = wc.runbook("wal-push", "-c", str(cfg), str(seg))
    assert r.returncode == 0, r.stderr
    assert (repo_b / key).exists(), f"{name} was confirmed from repository A's record; B never received it"
    assert unpack((repo_b / key).read_bytes(), name)[0] == seg.read_bytes()
    assert any(str(repo_b) in text for text in _ok_records(spool, name).values())  # B's own record

    # A record naming A, even where C's records are kept (copied there, a collision of the spool's
    # directory names), is not trusted for C either.
    write_config(cfg, wc.cluster, local=repo_c, wal=wal)
    out_c = Path(push_root(WalSettings.load(str(cfg)), int(sysid), str(seg.parent))) / "out"
    out_c.mkdir(parents=True, exist_ok=True)
    (out_c / f"{name}.ok").write_text(record_a.read_text())
    chown_server_user(spool)
    r = wc.runbook("wal-push", "-c", str(cfg), str(seg))
    assert r.returncode == 0, r.stderr
    assert (repo_c / key).exists(), f"{name} was confirmed from a record naming repository A; C never received it"
    assert str(repo_c) in (out_c / f"{name}.ok").read_text()


def test_an_async_record_of_other_bytes_is_not_trusted(wal_cluster: Factory) -> None:  # noqa: F811
    """The file changed after the uploader recorded it: the record's sha256 is not the file's, so it confirms
    nothing; the segment is pushed again, and the archive's other content makes that fail loudly."""
    wc = wal_cluster()
    wc.cluster.start()
    name = wc.switch()
    key = wal_key(wc.sysid(), name)
    seg = _held_ready(wc, name)
    spool, repo = server_dir(wc.base, "spool"), server_dir(wc.base, "repo")
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo,
                       wal={"async": True, "spool_dir": str(spool), "worker_idle_s": 2, "push_timeout_s": 30})
    assert wc.runbook("wal-push", "-c", str(cfg), str(seg)).returncode == 0
    archived = (repo / key).read_bytes()
    assert _ok_records(spool, name)
    data = bytearray(seg.read_bytes())
    data[5000:5016] = os.urandom(16)
    seg.write_bytes(bytes(data))
    r = wc.runbook("wal-push", "-c", str(cfg), str(seg))
    assert 0 < r.returncode < 126 and "DIFFERENT content" in r.stderr, r
    assert (repo / key).read_bytes() == archived


def test_a_recovery_replays_through_wal_fetch_and_its_read_ahead(both: tuple[WalCluster, Path, Path],
                                                                 wal_cluster: Factory) -> None:  # noqa: F811
    wc, cfg, _ = both
    base = server_dir(wc.base, "basebackup")
    subprocess.run(as_server_user([str(PG_BIN / "pg_basebackup"), "-h", str(wc.cluster.socket_dir), "-p",
                                   str(wc.cluster.port), "-U", "postgres", "-D", str(base / "data"), "-X", "none",
                                   "-c", "fast"]), check=True, capture_output=True)
    wc.psql("create table r as select g from generate_series(1, 1000) g")
    for _ in range(12):
        wc.psql("insert into r select g from generate_series(1, 3000) g")
        wc.switch()
    expected = wc.psql("select count(*) from r")
    last = wc.switch()
    wc.wait_archived(last)
    restored = wal_cluster()
    data = restored.datadir
    subprocess.run(as_server_user(["rm", "-rf", str(data)]), check=True)
    subprocess.run(as_server_user(["cp", "-a", str(base / "data"), str(data)]), check=True)
    restored.configure(restore_command=f"{restored.venv.runbook} wal-fetch -c {cfg} %f %p",
                       recovery_target_timeline="latest", archive_mode="off")
    (data / "recovery.signal").touch()
    chown_server_user(data)
    restored.cluster.start()
    deadline = time.monotonic() + 60
    while restored.psql("select pg_is_in_recovery()") == "t":
        assert time.monotonic() < deadline, restored.log_tail()
        time.sleep(0.2)
    assert restored.psql("select count(*) from r") == expected
    log = restored.log_tail(200)
    assert "restored log file" in log and "FATAL" not in log
    spools = list((wc.base / "spool" / wc.sysid()).glob("in-*"))
    assert spools and (spools[0] / ".want").exists(), "the read-ahead never ran"
    # The recovery has ended (recovery.signal removed): the prefetcher reads ahead no more and, once the asks
    # PostgreSQL sends at the end are answered, exits, rather than poll the archive's end for worker_idle_s.
    from steps.wal.fast import worker_alive

    deadline = time.monotonic() + 30
    while worker_alive(spools[0] / ".lock"):
        assert time.monotonic() < deadline, (spools[0] / ".prefetch.log").read_text()
        time.sleep(0.2)
    assert "has ended: reading ahead no more" in (spools[0] / ".prefetch.log").read_text()
    assert [p.name for p in spools[0].iterdir() if not p.name.startswith(".")] == []  # nothing left read ahead


def test_the_first_wal_fetch_that_reads_the_repository_starts_the_read_ahead_beside_its_read(
        both: tuple[WalCluster, Path, Path]) -> None:
    """Replay's first call reads the repository itself (nothing is read ahead yet): it starts the prefetcher
    before that read, not after it, so the next call finds it running. Seen with a name the repository does not
    hold: the call answers "missing" (exit 1) and the prefetcher it started runs, with no `.want` to serve (an
    earlier recovery's is removed, not served)."""
    from steps.wal.fast import worker_alive

    wc, cfg, _ = both
    wc.wait_archived(wc.switch())
    spool_root = wc.base / "spool" / wc.sysid()
    assert not list(spool_root.glob("in-*"))  # no read-ahead for this data directory yet
    r = wc.runbook("wal-fetch", "-c", str(cfg), "0000000100000000000000FF", str(wc.datadir / "pg_wal" / "RECOVERYXLOG"))
    assert (r.returncode, r.stderr) == (1, ""), r
    (spool,) = spool_root.glob("in-*")
    deadline = time.monotonic() + 30
    while not worker_alive(spool / ".lock"):
        assert time.monotonic() < deadline, "no prefetcher was started"
        time.sleep(0.05)
    assert not (spool / ".want").exists()
    pid = int((spool / ".lock").read_text().split()[0])
    os.kill(pid, signal.SIGTERM)


def test_the_segment_size_is_read_from_pg_control_of_any_size(wal_cluster: Factory, tmp_path: Path) -> None:  # noqa: F811
    """The first wal-fetch of a replay names the segments after its own before it has read it: their size comes
    from pg_control (after its floating-point check value, not at an offset of one version), as pg_controldata
    reads it, for the tests' 1 MB segments and a cluster made with 64 MB ones; a pg_control without the check
    value, or with sizes PostgreSQL does not allow, gives no size (the name is then sent after the read)."""
    import struct

    from steps.wal.fast import control_segment_size
    from tests.support.pgcluster import initdb

    def controldata(datadir: Path) -> int:
        out = subprocess.run(as_server_user([str(PG_BIN / "pg_controldata"), str(datadir)]), check=True,
                             capture_output=True, text=True).stdout
        (line,) = [ln for ln in out.splitlines() if ln.startswith("Bytes per WAL segment:")]
        return int(line.split(":")[1])

    wc = wal_cluster()
    big = wc.base / "big" / "data"  # (a directory the server user can reach)
    initdb(big, "--wal-segsize=64")
    for datadir, size in ((wc.datadir, 1024 * 1024), (big, 64 * 1024 * 1024)):
        assert control_segment_size(str(datadir)) == controldata(datadir) == size
    forged = tmp_path / "forged"
    (forged / "global").mkdir(parents=True)
    control = bytearray((big / "global" / "pg_control").read_bytes())
    at = control.index(struct.pack("=d", 1234567.0))  # pg_control's floatFormat
    control[at + 20:at + 24] = (3 * 1024 * 1024).to_bytes(4, sys.byteorder)  # not a power of two
    (forged / "global" / "pg_control").write_bytes(bytes(control))
    assert control_segment_size(str(forged)) is None
    (forged / "global" / "pg_control").write_bytes(bytes(512))
    assert control_segment_size(str(forged)) is None
    assert control_segment_size(str(tmp_path / "nowhere")) is None


def test_the_first_wal_fetch_asks_for_the_next_segments_before_its_own_read(
        both: tuple[WalCluster, Path, Path], s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    """Replay's first call, which reads its segment from S3 itself, has the read-ahead fetch the segments after
    it while its own read is under way, not after: its GET is held at the S3 endpoint until the prefetcher
    it started has read the next segment, and the next call takes that one from the read-ahead."""
    wc, _, repo = both
    names = [wc.switch() for _ in range(3)]
    wc.wait_archived(names[-1])
    archived = {n: unpack((repo / wal_key(wc.sysid(), n)).read_bytes(), n)[0] for n in names}
    next_read = threading.Event()

    def hold(method: str, path: str) -> threading.Event | None:
        return next_read if method == "GET" and f"/wal/{names[0]}" in path else None

    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: False, hold=hold) as proxy:
        spool = server_dir(wc.base, "spool-first")
        cfg = write_config(wc.base / "via-proxy.yaml", wc.cluster,
                           s3=s3_section(proxy.url, s3_bucket, credentials_file(wc.base)),
                           wal={"spool_dir": str(spool), "prefetch": 2})

        def release_after_the_next_read() -> None:
            deadline = time.monotonic() + 60
            while not any(m == "GET" and f"/wal/{names[1]}" in p and s == 200 for m, p, s in proxy.seen):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            next_read.set()

        releaser = threading.Thread(target=release_after_the_next_read)
        releaser.start()
        dest = server_dir(wc.base, "fetched")
        r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "s3", names[0], str(dest / names[0]))
        releaser.join()
        assert r.returncode == 0, r.stderr
        order = [p for m, p, s in proxy.seen if m == "GET" and (f"/wal/{names[0]}" in p or f"/wal/{names[1]}" in p)]
        assert names[1] in order[0], f"the next segment was read after the first one's own read: {order}"
        gets = len(order)
        r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "s3", names[1], str(dest / names[1]))
        assert r.returncode == 0, r.stderr
        assert [(dest / n).read_bytes() for n in names[:2]] == [archived[n] for n in names[:2]]
        assert len([p for m, p, s in proxy.seen if m == "GET" and f"/wal/{names[1]}" in p]) == 1 and gets == 2, \
            "the second call read the repository instead of the read-ahead"
        for lock in spool.rglob(".lock"):  # the prefetcher this test started
            from steps.wal.fast import worker_alive

            if worker_alive(lock):
                os.kill(int(lock.read_text().split()[0]), signal.SIGTERM)


def test_at_the_archive_s_end_the_read_ahead_tries_only_the_next_segment(
        both: tuple[WalCluster, Path, Path], s3_server: S3Endpoint, s3_bucket: str) -> None:  # noqa: F811
    """Past the last archived segment the read-ahead tries the next one (again each second: it may be archived
    any moment), not every segment of its window: WAL is archived in order, and a replay at the archive's end
    would otherwise have the repository asked for `wal.prefetch` names a second until the prefetcher idles out."""
    wc, _, _ = both
    last = wc.switch()
    wc.wait_archived(last)
    after = [next_segment(last, 1024 * 1024, i) for i in range(1, 5)]
    with FaultProxy(("127.0.0.1", s3_server.port), fail=lambda m, p: False) as proxy:
        spool = server_dir(wc.base, "spool-end")
        cfg = write_config(wc.base / "via-proxy.yaml", wc.cluster,
                           s3=s3_section(proxy.url, s3_bucket, credentials_file(wc.base)),
                           wal={"spool_dir": str(spool), "prefetch": 4})
        dest = server_dir(wc.base, "fetched")
        r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "s3", last, str(dest / last))
        assert r.returncode == 0, r.stderr

        def tried(name: str) -> int:
            return len([p for m, p, _ in proxy.seen if m == "GET" and f"/wal/{name}" in p])

        deadline = time.monotonic() + 30
        while not all(tried(n) for n in after):  # the first wave tries the whole window once
            assert time.monotonic() < deadline, proxy.seen
            time.sleep(0.1)
        time.sleep(0.5)
        first_wave, before = [tried(n) for n in after[1:]], tried(after[0])
        time.sleep(3)
        assert [tried(n) for n in after[1:]] == first_wave, proxy.seen  # not again
        assert tried(after[0]) >= before + 2, proxy.seen  # again, about once a second
        # A wal-fetch for a name it did not try does not wait for it: the prefetcher answers its ask.
        r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "s3", after[2], str(dest / after[2]))
        assert (r.returncode, r.stderr) == (1, ""), r
        for lock in spool.rglob(".lock"):  # the prefetcher this test started
            from steps.wal.fast import worker_alive

            if worker_alive(lock):
                os.kill(int(lock.read_text().split()[0]), signal.SIGTERM)


def test_the_read_ahead_stops_at_once_when_its_data_directory_is_removed(
        both: tuple[WalCluster, Path, Path]) -> None:
    """A recovering data directory removed mid-replay (a restore abandoned, the directory wiped to start over):
    its prefetcher, started by the first wal-fetch run in it, stops at once, without waiting to answer asks
    nobody can send, and leaves nothing it read ahead in the spool."""
    from steps.wal.fast import worker_alive

    wc, cfg, _ = both
    name = wc.switch()
    wc.wait_archived(name)
    copy = server_dir(wc.base, "recovering")
    for d in ("global", "pg_wal"):
        server_dir(copy, d)
    subprocess.run(as_server_user(["cp", str(wc.datadir / "global" / "pg_control"), str(copy / "global")]),
                   check=True)
    subprocess.run(as_server_user(["touch", str(copy / "recovery.signal")]), check=True)
    r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "local", name, str(copy / "pg_wal" / "RECOVERYXLOG"),
                   cwd=copy)
    assert r.returncode == 0, r.stderr
    (spool,) = (wc.base / "spool" / wc.sysid()).glob("in-*")
    deadline = time.monotonic() + 30
    while not worker_alive(spool / ".lock"):
        assert time.monotonic() < deadline, "no prefetcher was started"
        time.sleep(0.05)
    (copy / "global" / "pg_control").unlink()  # first: the signal file still says "recovering"
    subprocess.run(["rm", "-rf", str(copy)], check=True)
    deadline = time.monotonic() + 30
    while worker_alive(spool / ".lock"):
        assert time.monotonic() < deadline, (spool / ".prefetch.log").read_text()
        time.sleep(0.1)
    log = (spool / ".prefetch.log").read_text()
    assert f"the data directory {copy} is gone: reading ahead no more" in log, log
    assert "has ended" not in log
    assert [p.name for p in spool.iterdir() if not p.name.startswith(".")] == []


def _uploader_pid(spool: Path) -> int | None:
    """The pid of the live asynchronous uploader serving `spool` (its lock names it), or None."""
    from steps.wal.fast import worker_alive

    for lock in spool.rglob("push-worker.lock"):
        if worker_alive(lock):
            return int(lock.read_text().split()[0])
    return None


def test_the_first_push_of_a_burst_and_a_killed_uploader(wal_cluster: Factory) -> None:  # noqa: F811
    """The first call of a burst pushes its segment itself (durably, in every repository) while the uploader
    it started comes up for the next ones; an uploader killed mid-burst, while a wal-push waits for it, is
    replaced, and every segment is confirmed only once it is archived byte for byte."""
    wc = wal_cluster()
    wc.cluster.start()
    names = [wc.switch() for _ in range(4)]
    held = [_held_ready(wc, n) for n in names]
    spool, repo = server_dir(wc.base, "spool"), server_dir(wc.base, "repo")
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo,
                       wal={"async": True, "spool_dir": str(spool), "worker_idle_s": 20, "push_timeout_s": 30})
    key = {n: wal_key(wc.sysid(), n) for n in names}

    def archived(i: int) -> bool:
        return (repo / key[names[i]]).exists() and unpack((repo / key[names[i]]).read_bytes(),
                                                          names[i])[0] == held[i].read_bytes()

    # Only the first is ready: its wal-push starts the uploader and pushes it itself, with the uploader's record.
    for seg in held[1:]:
        (seg.parent / "archive_status" / f"{seg.name}.ready").rename(seg.parent / f"{seg.name}.later")
    r = wc.runbook("wal-push", "-c", str(cfg), str(held[0]))
    assert r.returncode == 0, r.stderr
    assert archived(0)
    (record,) = _ok_records(spool, names[0]).values()
    assert "wal-push itself" in record and str(repo) in record
    deadline = time.monotonic() + 30
    while (pid := _uploader_pid(spool)) is None:  # started by that first call
        assert time.monotonic() < deadline, "the first push started no uploader"
        time.sleep(0.05)
    (held[0].parent / "archive_status" / f"{names[0]}.ready").rename(
        held[0].parent / "archive_status" / f"{names[0]}.done")  # PostgreSQL's archiver, after exit 0
    log = next(spool.rglob("push-worker.log"))

    # The uploader stopped (mid-burst), the next segment becomes ready, its wal-push waits; the uploader dies.
    os.kill(pid, signal.SIGSTOP)
    (held[1].parent / f"{names[1]}.later").rename(held[1].parent / "archive_status" / f"{names[1]}.ready")
    waiting = subprocess.Popen(as_server_user([str(wc.venv.runbook), "wal-push", "-c", str(cfg), str(held[1])]),
                               cwd=wc.datadir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert waiting.poll() is None, "confirmed by an uploader that was stopped"
    assert not archived(1)
    os.kill(pid, signal.SIGKILL)
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert archived(1)
    assert _uploader_pid(spool) not in (None, pid), "no new uploader took over"
    assert f"{names[1]}: local stored" in log.read_text()
    assert f"{names[0]}: " not in log.read_text()  # the first was its caller's: never pushed twice

    # The rest of the burst: confirmed by the new uploader's records.
    for i in (2, 3):
        (held[i].parent / f"{names[i]}.later").rename(held[i].parent / "archive_status" / f"{names[i]}.ready")
    for i in (2, 3):
        r = wc.runbook("wal-push", "-c", str(cfg), str(held[i]))
        assert r.returncode == 0, r.stderr
        assert archived(i)
        (record,) = _ok_records(spool, names[i]).values()
        assert "wal-push itself" not in record
        parsed = parse_record(record)
        assert parsed is not None  # confirmed without a second hash: the identity the uploader saw
        assert int(parsed["identity"].split()[2]) == held[i].stat().st_size
    os.kill(_uploader_pid(spool) or 0, signal.SIGTERM)


def test_the_uploader_pushes_a_burst_in_one_wave_and_a_kill_mid_wave_confirms_nothing_unarchived(
        wal_cluster: Factory) -> None:  # noqa: F811
    """Every ready file at once (`wal.push_ahead`): after the first call of a burst, the uploader pushes all the
    others without waiting for their calls. Killed in the middle of that wave, it leaves an `.ok` only for a
    segment whose archived copy is complete (each is durable before its record is written); the calls that
    follow confirm the rest, each archived byte for byte."""
    wc = wal_cluster()
    wc.cluster.start()
    names = [wc.switch() for _ in range(6)]
    held = [_held_ready(wc, n) for n in names]
    spool, repo = server_dir(wc.base, "spool"), server_dir(wc.base, "repo")
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo,
                       wal={"async": True, "spool_dir": str(spool), "worker_idle_s": 20, "push_timeout_s": 30,
                            "push_ahead": 5})
    key = {n: wal_key(wc.sysid(), n) for n in names}

    def archived(i: int) -> bool:
        return (repo / key[names[i]]).exists() and unpack((repo / key[names[i]]).read_bytes(),
                                                          names[i])[0] == held[i].read_bytes()

    r = wc.runbook("wal-push", "-c", str(cfg), str(held[0]))
    assert r.returncode == 0, r.stderr
    (held[0].parent / "archive_status" / f"{names[0]}.ready").rename(
        held[0].parent / "archive_status" / f"{names[0]}.done")
    deadline = time.monotonic() + 30
    while not any(_ok_records(spool, n) for n in names[1:]):  # the wave is under way: kill it at its first record
        assert time.monotonic() < deadline, "the uploader pushed nothing ahead of the calls"
        time.sleep(0.002)
    pid = _uploader_pid(spool)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    log = next(spool.rglob("push-worker.log")).read_text()
    assert "(cluster " in log and "5 in parallel" in log, log
    confirmed = [i for i in range(1, 6) if _ok_records(spool, names[i])]
    for i in confirmed:
        assert archived(i), f"{names[i]} has an .ok record but is not archived whole"
    for i in range(1, 6):  # PostgreSQL's calls, one by one: the rest pushed by a new uploader
        r = wc.runbook("wal-push", "-c", str(cfg), str(held[i]))
        assert r.returncode == 0, r.stderr
        assert archived(i)
        (held[i].parent / "archive_status" / f"{names[i]}.ready").rename(
            held[i].parent / "archive_status" / f"{names[i]}.done")
    if (pid := _uploader_pid(spool)) is not None:
        os.kill(pid, signal.SIGTERM)

    # Without a kill, a new burst is pushed ahead of every call: all records there before the calls come.
    more = [wc.switch() for _ in range(4)]
    held2 = [_held_ready(wc, n) for n in more]
    r = wc.runbook("wal-push", "-c", str(cfg), str(held2[0]))
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while not all(_ok_records(spool, n) for n in more[1:]):
        assert time.monotonic() < deadline, "the uploader did not push the whole burst ahead of its calls"
        time.sleep(0.05)
    for seg in held2[1:]:
        assert wc.runbook("wal-push", "-c", str(cfg), str(seg)).returncode == 0
    if (pid := _uploader_pid(spool)) is not None:
        os.kill(pid, signal.SIGTERM)


def test_an_s3_outage_during_read_ahead_never_answers_missing(both: tuple[WalCluster, Path, Path],
                                                              s3_server: S3Endpoint,  # noqa: F811
                                                              s3_bucket: str) -> None:  # noqa: F811
    """The prefetcher cannot read S3 (an outage after the first segment): wal-fetch reads the repository itself
    and stops recovery (126), never "missing"; once S3 is back, the same segments arrive byte for byte, from
    the repository or the read-ahead."""
    wc, _, repo = both
    names = [wc.switch() for _ in range(4)]
    wc.wait_archived(names[-1])
    archived = {n: unpack((repo / wal_key(wc.sysid(), n)).read_bytes(), n)[0] for n in names}
    outage = {"on": False}

    def fail(method: str, path: str) -> bool:
        return outage["on"] and method == "GET" and names[0] not in path

    with FaultProxy(("127.0.0.1", s3_server.port), fail=fail) as proxy:
        cfg = write_config(wc.base / "via-proxy.yaml", wc.cluster,
                           s3=s3_section(proxy.url, s3_bucket, credentials_file(wc.base), max_attempts=1),
                           wal={"spool_dir": str(server_dir(wc.base, "spool-proxy")), "fetch_attempts": 2})
        dest = server_dir(wc.base, "fetched")
        outage["on"] = True
        r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "s3", names[0], str(dest / names[0]))
        assert r.returncode == 0, r.stderr  # its own GET passes; the read-ahead it starts meets the outage
        deadline = time.monotonic() + 30
        while not any(m == "GET" and names[1] in p and s == 500 for m, p, s in proxy.seen):
            assert time.monotonic() < deadline, "the read-ahead never tried the next segment"
            time.sleep(0.05)
        r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "s3", names[1], str(dest / names[1]))
        assert r.returncode == 126, (r.returncode, r.stderr)
        assert not (dest / names[1]).exists()
        outage["on"] = False
        for n in names[1:]:
            r = wc.runbook("wal-fetch", "-c", str(cfg), "--from", "s3", n, str(dest / n))
            assert r.returncode == 0, r.stderr
            assert (dest / n).read_bytes() == archived[n]
        for lock in (wc.base / "spool-proxy").rglob(".lock"):  # the prefetcher this test started
            from steps.wal.fast import worker_alive

            if worker_alive(lock):
                os.kill(int(lock.read_text().split()[0]), 15)

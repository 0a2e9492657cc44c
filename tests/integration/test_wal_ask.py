"""A `wal-fetch` the read-ahead cannot answer asks the running prefetcher (steps.wal.ask, steps.wal.spool):
real PostgreSQL 15 archiving (1 MB segments) into a local repository and moto's S3 over HTTP, the server venv's
`runbook wal-fetch` run as the server's user in the data directory, as PostgreSQL runs it.

What proves the full path did not run: the interpreter's own import log (PYTHONPROFILEIMPORTTIME) of the call,
which names every module it loaded: an answered ask loads steps.wal.ask and never steps.wal.archive (the full
path), nor boto3.

- a miss (the segment after the archive's end, a `.history` that never existed) from a local repository or S3:
  exit 1, quietly, from the prefetcher's proven answer;
- with `--verified`, a miss the signed ledgers list goes to the full path ("deleted", 126), one they do not list
  is a miss;
- a `.history` file is taken through an ask, byte for byte, from a repository in clear or encrypted (the
  prefetcher decrypts it with the keys it holds);
- the repository replaced by an empty directory (unmounted) while the prefetcher runs: 126 from the full path,
  never 1;
- a `.missing` answer of another ask (another nonce) is not taken;
- the prefetcher killed while an ask waits: the full path answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from steps.repository.layout import next_segment
from steps.wal.fast import worker_alive
from steps.wal.ledger import Index, write_index
from tests.integration.test_wal_encrypted import age_identity, encrypted_config
from tests.support.pgcluster import as_server_user, chown_server_user
from tests.support.s3server import S3Endpoint, s3_bucket, s3_server  # noqa: F401
from tests.support.wal_helpers import (
    WalCluster,
    credentials_file,
    s3_section,
    server_dir,
    wal_cluster,  # noqa: F401
    wal_template,  # noqa: F401
    write_config,
)

Factory = Callable[..., WalCluster]
IMPORTS = {"PYTHONPROFILEIMPORTTIME": "1"}
HISTORY = b"1\t0/3000000\tno recovery target specified\n"


@dataclass
class Archive:
    wc: WalCluster
    cfg: Path  # the config wal-fetch runs with (same repositories as the archiving one)
    repo: Path
    spool: Path
    names: list[str]  # archived segments, oldest first
    dest: Path  # where fetched files go (owned by the server's user)

    def fetch(self, name: str, source: str = "any", *more: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.wc.runbook("wal-fetch", "-c", str(self.cfg), "--from", source, *more, name,
                               str(self.dest / name), env=env)

    def read_ahead_spool(self) -> Path:
        spools = list((self.spool / self.wc.sysid()).glob("in-*"))
        assert len(spools) == 1, spools
        return spools[0]

    def start_prefetcher(self, source: str) -> int:
        """The first fetch of a replay (the full path) starts the prefetcher: its pid once it holds its lock and
        reads its FIFO of asks (before that, a wal-fetch does not ask it: the full path answers)."""
        r = self.fetch(self.names[0], source)
        assert r.returncode == 0, r.stderr
        spool = self.read_ahead_spool()
        deadline = time.monotonic() + 30
        while not (worker_alive(spool / ".lock") and serves_asks(spool)):
            assert time.monotonic() < deadline, "the prefetcher never started"
            time.sleep(0.02)
        return int((spool / ".lock").read_text().split()[0])

    def prefetcher_log(self) -> str:
        return (self.read_ahead_spool() / ".prefetch.log").read_text()


def serves_asks(spool: Path) -> bool:
    """Does a prefetcher read the FIFO of asks? (an open for writing that does not wait fails without a reader)"""
    try:
        os.close(os.open(spool / ".asks" / ".wake", os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def loaded(stderr: str) -> tuple[set[str], list[str]]:
    """(the modules the call imported, its other stderr lines) from PYTHONPROFILEIMPORTTIME's log."""
    modules, other = set(), []
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            modules.add(line.rsplit("|", 1)[-1].strip())
        elif line.strip():
            other.append(line)
    return modules, other


def push_history(wc: WalCluster, cfg: Path) -> None:
    history = server_dir(wc.base, "history") / "00000002.history"
    history.write_bytes(HISTORY)
    chown_server_user(history)
    r = wc.runbook("wal-push", "-c", str(cfg), str(history))
    assert r.returncode == 0, r.stderr


def stop_prefetchers(spool: Path) -> None:
    for lock in spool.rglob(".lock"):  # the prefetchers a test started
        if worker_alive(lock):
            os.kill(int(lock.read_text().split()[0]), signal.SIGKILL)


@pytest.fixture
def archive(wal_cluster: Factory, s3_server: S3Endpoint, s3_bucket: str) -> Iterator[Archive]:  # noqa: F811
    wc = wal_cluster()
    repo = server_dir(wc.base, "repo")
    spool = server_dir(wc.base, "spool")
    s3 = s3_section(s3_server.url, s3_bucket, credentials_file(wc.base))
    push_cfg = write_config(wc.base / "push.yaml", wc.cluster, local=repo, s3=s3, wal={"spool_dir": str(spool)})
    # The prefetcher stays for the whole test (the default of the tests, 3 s idle, could end it between steps).
    cfg = write_config(wc.base / "fetch.yaml", wc.cluster, local=repo, s3=s3,
                       wal={"spool_dir": str(spool), "worker_idle_s": 60})
    wc.archive_with(push_cfg)
    wc.cluster.start()
    names = [wc.switch() for _ in range(3)]
    wc.wait_archived(names[-1])
    push_history(wc, push_cfg)
    try:
        yield Archive(wc, cfg, repo, spool, names, server_dir(wc.base, "fetched"))
    finally:
        stop_prefetchers(spool)


@pytest.mark.parametrize("source", ["local", "s3"])
def test_a_miss_is_answered_by_the_running_prefetcher_without_the_full_path(archive: Archive, source: str) -> None:
    a = archive
    a.start_prefetcher(source)
    after_end = next_segment(a.names[-1], a.wc.segment_size(), 1)  # the next segment: in the read-ahead's window
    far = next_segment(a.names[-1], a.wc.segment_size(), 40)  # outside it
    for name in (after_end, far, "00000099.history"):
        r = a.fetch(name, source, env=IMPORTS)
        modules, other = loaded(r.stderr)
        assert (r.returncode, other) == (1, []), (name, r.returncode, other)
        assert "steps.wal.ask" in modules and "steps.wal.archive" not in modules and "boto3" not in modules, name
        assert not (a.dest / name).exists()
        assert f"{name}: asked from {source}: missing" in a.prefetcher_log()


def test_with_a_verified_index_a_listed_miss_is_a_deletion_and_an_unlisted_one_a_miss(archive: Archive) -> None:
    a = archive
    a.start_prefetcher("local")
    deleted, unlisted = (next_segment(a.names[-1], a.wc.segment_size(), i) for i in (20, 21))
    index = a.dest / "runbook.wal-index"
    write_index(index, Index(segments={deleted: "0" * 64}), accept_unsealed=False)
    chown_server_user(index)
    r = a.fetch(deleted, "local", "--verified", str(index), env=IMPORTS)
    modules, other = loaded(r.stderr)
    assert r.returncode == 126 and "it was deleted" in r.stderr, r.stderr
    assert "steps.wal.archive" in modules  # the prefetcher said missing; the full path said why that is wrong
    r = a.fetch(unlisted, "local", "--verified", str(index), env=IMPORTS)
    modules, other = loaded(r.stderr)
    assert (r.returncode, other) == (1, []) and "steps.wal.archive" not in modules, r.stderr


def test_a_history_file_is_taken_through_an_ask(archive: Archive) -> None:
    a = archive
    a.start_prefetcher("s3")
    r = a.fetch("00000002.history", "s3", env=IMPORTS)
    modules, other = loaded(r.stderr)
    assert (r.returncode, other) == (0, []), r.stderr
    assert "steps.wal.archive" not in modules and "boto3" not in modules
    assert (a.dest / "00000002.history").read_bytes() == HISTORY
    assert "00000002.history: asked from s3: found" in a.prefetcher_log()
    assert not (a.read_ahead_spool() / ".asks" / "00000002.history").exists()  # taken (renamed), not copied


def test_an_encrypted_history_file_and_miss_through_an_ask(wal_cluster: Factory, s3_server: S3Endpoint,  # noqa: F811
                                                            s3_bucket: str) -> None:  # noqa: F811
    wc = wal_cluster()
    identity, public = age_identity(server_dir(wc.base, "keys"), "restore")
    s3 = s3_section(s3_server.url, s3_bucket, credentials_file(wc.base))
    cfg = encrypted_config(wc, s3, identity, public)
    wc.archive_with(cfg)
    wc.cluster.start()
    names = [wc.switch() for _ in range(2)]
    wc.wait_archived(names[-1])
    push_history(wc, cfg)
    assert list((wc.base / "repo").rglob("00000002.history.zst.age"))
    cfg = encrypted_config(wc, s3, identity, public, {"worker_idle_s": 60})  # the same repositories, read from now
    a = Archive(wc, cfg, wc.base / "repo", wc.base / "spool", names, server_dir(wc.base, "fetched"))
    try:
        for source in ("local", "s3"):
            a.start_prefetcher(source)
            r = a.fetch("00000002.history", source, env=IMPORTS)
            modules, other = loaded(r.stderr)
            assert (r.returncode, other) == (0, []), r.stderr
            assert (a.dest / "00000002.history").read_bytes() == HISTORY
            assert not {"steps.wal.archive", "steps.wal.crypt", "pyrage", "boto3"} & modules, source
            (a.dest / "00000002.history").unlink()
            r = a.fetch("00000077.history", source, env=IMPORTS)
            modules, other = loaded(r.stderr)
            assert (r.returncode, other) == (1, []) and "steps.wal.archive" not in modules, r.stderr
    finally:
        stop_prefetchers(wc.base / "spool")


def test_a_repository_gone_while_the_prefetcher_runs_stops_recovery_never_a_miss(archive: Archive) -> None:
    """The repository's file system unmounted under a running prefetcher (an empty directory where it was): the
    prefetcher cannot prove the miss (no REPOSITORY marker, no archived WAL), so the ask gets no miss, and the
    full path stops recovery with 126."""
    a = archive
    a.start_prefetcher("local")
    a.repo.rename(a.repo.with_name("repo-elsewhere"))
    server_dir(a.wc.base, "repo")  # the empty mount point
    for name in (next_segment(a.names[-1], a.wc.segment_size(), 30), "00000003.history"):
        r = a.fetch(name, "local", env=IMPORTS)
        modules, _ = loaded(r.stderr)
        assert r.returncode == 126 and "not the repository" in r.stderr, (name, r.returncode, r.stderr)
        assert "steps.wal.archive" in modules, name  # the full path answered
        assert f"{name}: asked from local: none" in a.prefetcher_log()


def test_a_missing_answer_of_another_ask_is_not_taken(archive: Archive) -> None:
    a = archive
    a.start_prefetcher("local")
    asks = a.read_ahead_spool() / ".asks"
    asks.mkdir(exist_ok=True)
    stale = asks / "00000002.history.missing"
    stale.write_text("12345-1\n")  # a nonce no ask of this test wrote
    chown_server_user(asks)
    r = a.fetch("00000002.history", "local", env=IMPORTS)
    modules, _ = loaded(r.stderr)
    assert r.returncode == 0 and (a.dest / "00000002.history").read_bytes() == HISTORY, r.stderr
    assert "steps.wal.archive" not in modules  # the prefetcher's answer to this very ask
    assert stale.read_text() == "12345-1\n"


def test_the_prefetcher_killed_while_an_ask_waits_leaves_the_answer_to_the_full_path(archive: Archive) -> None:
    a = archive
    pid = a.start_prefetcher("local")
    os.kill(pid, signal.SIGSTOP)  # it holds its lock, answers nothing
    name = next_segment(a.names[-1], a.wc.segment_size(), 30)
    ask = a.read_ahead_spool() / ".asks" / f"{name}.ask"
    t0 = time.monotonic()
    p = subprocess.Popen(as_server_user([str(a.wc.venv.runbook), "wal-fetch", "-c", str(a.cfg), "--from", "local",
                                         name, str(a.dest / name)]), cwd=a.wc.datadir, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **IMPORTS})
    try:
        while not ask.exists():
            assert time.monotonic() - t0 < 20 and p.poll() is None, "wal-fetch never asked"
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        _, stderr = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    modules, other = loaded(stderr)
    assert (p.returncode, other) == (1, []), stderr  # the full path's own proven miss
    assert "steps.wal.ask" in modules and "steps.wal.archive" in modules
    assert time.monotonic() - t0 < 8  # the lock let go was noticed, not the ask's bound (10 s) waited out

"""The quick answers of `wal-push`/`wal-fetch` import nothing the interpreter has not loaded at start (issue 16).

PostgreSQL starts these commands once per segment and waits for each: every module they import is paid per
segment. Here both quick answers run for real, as the server's user, from the server venv (a non-editable install,
as in production): an asynchronous `wal-push` confirmed by the uploader's `.ok` record (by the file's identity, no
second hash), and a `wal-fetch` that takes the segment from the read-ahead spool. Each runs through
`runbook.launch.main`, as the console script does, in an interpreter that then lists `sys.modules`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from steps.repository.layout import wal_key
from steps.wal.segment import unpack
from tests.support.pgcluster import as_server_user, chown_server_user
from tests.support.server_venv import server_venv  # noqa: F401
from tests.support.wal_helpers import WalCluster, server_dir, wal_cluster, wal_template, write_config  # noqa: F401

Factory = Callable[..., WalCluster]

# What the quick answers used to import (~11 ms a segment): none of it, nor what it pulls in.
HEAVY = {"json", "re", "enum", "pathlib", "hashlib", "_hashlib", "typing", "urllib", "urllib.parse", "fnmatch",
         "subprocess", "argparse", "steps.wal.settings", "steps.wal.archive", "runbook.cli.wal"}

LISTING = ("import sys; sys.argv = ['runbook'] + sys.argv[1:]; from runbook.launch import main; rc = main();"
           "print(rc); print(' '.join(sorted(sys.modules)))")


def quick(wc: WalCluster, env: dict[str, str], *args: str) -> tuple[int, set[str], str]:
    """`runbook ARGS...` through runbook.launch.main as the server's user in the data directory (as PostgreSQL
    runs it): (its exit code, the modules loaded when it returned, stderr)."""
    r = subprocess.run(as_server_user([str(wc.venv.python), "-c", LISTING, *args]), cwd=wc.datadir,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    rc, modules = r.stdout.splitlines()[-2:]
    return int(rc), set(modules.split()), r.stderr


def wait_for(what: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_quick_answers_import_nothing_beyond_the_interpreters_start(wal_cluster: Factory) -> None:  # noqa: F811
    import os

    wc = wal_cluster()
    wc.cluster.start()
    first, second = wc.switch(), wc.switch()
    pg_wal = server_dir(wc.base, "held/pg_wal")  # PostgreSQL's own archiver never touches these copies
    (pg_wal / "archive_status").mkdir()
    for name in (first, second):
        (pg_wal / name).write_bytes((wc.datadir / "pg_wal" / name).read_bytes())
    chown_server_user(pg_wal)
    spool, repo = server_dir(wc.base, "spool"), server_dir(wc.base, "repo")
    env = {**os.environ, "XDG_CACHE_HOME": str(server_dir(wc.base, "cache"))}
    cfg = write_config(wc.base / "repository.yaml", wc.cluster, local=repo,
                       wal={"async": True, "spool_dir": str(spool), "worker_idle_s": 5, "push_timeout_s": 30})

    # The first push of a burst starts the uploader (and loads the config in full, writing the hot cache).
    (pg_wal / "archive_status" / f"{first}.ready").touch()  # read by the server's user, never written
    assert wc.runbook("wal-push", "-c", str(cfg), str(pg_wal / first), env=env).returncode == 0
    # The next segment is the running uploader's: its `.ok` names the file's identity (no second hash).
    time.sleep(0.05)  # its ctime (the chown above) older than a tick of the file clock when the uploader looks
    (pg_wal / "archive_status" / f"{second}.ready").touch()
    wait_for(lambda: list(spool.rglob(f"{second}.ok")))
    (ok,) = spool.rglob(f"{second}.ok")
    assert "identity=" in ok.read_text()
    rc, modules, err = quick(wc, env, "wal-push", "-c", str(cfg), str(pg_wal / second))
    assert rc == 0, err
    assert unpack((repo / wal_key(wc.sysid(), second)).read_bytes(), second)[0] == (pg_wal / second).read_bytes()
    assert not HEAVY & modules, f"the confirmed push imported {sorted(HEAVY & modules)}"
    assert "steps.wal.hot" in modules  # answered from the hot cache
    # The installed command itself (what archive_command runs) adds nothing: not pip's wrapper, which imports re.
    r = subprocess.run(as_server_user([str(wc.venv.python), "-X", "importtime", str(wc.venv.runbook), "wal-push",
                                       "-c", str(cfg), str(pg_wal / second)]),
                       cwd=wc.datadir, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "runbook.launch" in imported and not HEAVY & imported, sorted(HEAVY & imported)

    # Replay: the first fetch reads the repository and starts the read-ahead, which fetches the next segment.
    restore = server_dir(wc.base, "restore")
    r = wc.runbook("wal-fetch", "-c", str(cfg), first, str(restore / "RECOVERYXLOG"), env=env)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: list(spool.rglob(f"in-*/{second}.json")))
    rc, modules, err = quick(wc, env, "wal-fetch", "-c", str(cfg), second, str(restore / "NEXT"))
    assert rc == 0, err
    assert Path(restore / "NEXT").read_bytes() == (pg_wal / second).read_bytes()
    assert not HEAVY & modules, f"the fetch from the read-ahead imported {sorted(HEAVY & modules)}"  # nor archive
    assert "steps.wal.hot" in modules

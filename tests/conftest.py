"""Shared fixtures: a state directory, a runbook writer, a runner of the real CLI, PostgreSQL clusters.

The suite is laid out by layer, and each test is marked with its layer from where it lives:
- `tests/unit/`: no PostgreSQL, no network; child processes only where the unit is one (`make test-fast`);
- `tests/integration/`: real PostgreSQL 15 clusters, S3 over HTTP, the real command line and supervisor;
- `tests/tui/`: the cockpit, through Textual's pilot, snapshots and tmux;
- `tests/support/`: what they share (clusters, the S3 endpoint, the server user's venv, helpers).
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.pgcluster import Cluster

# The suite writes nothing into the checkout: hypothesis keeps its examples and caches (.hypothesis/) in a
# temporary directory of this test session, removed at exit, not beside the sources.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="runbook-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, True)
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = _HYPOTHESIS_HOME
settings.register_profile("runbook", database=None)
settings.load_profile("runbook")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def write_runbook(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "runbook.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip())
        return p

    return write


def run_cli(*args: str, input: str | None = None, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command line, in a child process, as an operator would run it."""
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "runbook", *args], input=input, capture_output=True, text=True,
        timeout=timeout, env=full_env, cwd=cwd or ROOT,
    )


@pytest.fixture(scope="session")
def pg_base() -> Iterator[Path]:
    from tests.support.pgcluster import PG_BIN, make_base_dir

    if not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL 15 server binaries are missing: run `make test` (scripts/setup.sh installs postgresql-15)")
    base = make_base_dir("runbook-test-pg-")
    yield base
    import shutil

    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_base: Path) -> Path:
    from tests.support.pgcluster import initdb

    tpl = pg_base / "template" / "data"
    initdb(tpl)
    return tpl


@pytest.fixture
def pg_cluster(pg_base: Path, pg_template: Path) -> Iterator[Cluster]:
    from tests.support.pgcluster import clone_cluster

    n = next(_cluster_numbers)
    dest = pg_base / f"c{n}"
    dest.mkdir()
    cluster = clone_cluster(pg_template, dest)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


_cluster_numbers = itertools.count(1)

_LAYERS = {"unit": "unit", "integration": "integration", "tui": "tui"}


# The modules that take longest (each builds sandboxes, drives tmux, or runs many recoveries), longest first, as
# measured with `pytest --durations=0`. `make test` runs the suite on several workers, one module per worker at a
# time (`--dist loadfile`); starting these first keeps one of them from being the last thing a worker does.
_LONGEST_FIRST = (
    "integration/test_demo.py", "integration/test_gameday_logical.py", "integration/test_demo_encrypted.py",
    "integration/test_signing.py", "integration/test_gameday_archive.py", "tui/test_tmux_gameday.py",
    "integration/test_pitr.py", "integration/test_pitr_encrypted.py", "integration/test_cluster_identity.py",
    "integration/test_incident_room.py", "tui/test_tmux_watch.py", "integration/test_hostile_base_backup.py",
    "tui/test_tmux.py", "integration/test_wal.py", "integration/test_wal_check.py", "integration/test_status.py",
    "integration/test_wal_hotpath.py", "integration/test_wal_ask.py",
    "integration/test_remote_takeover.py",
    "integration/test_pgbackrest_pitr.py",
    "integration/test_gameday_terminal.py", "integration/test_gameday_wal_gap.py",
    "integration/test_gameday_target_time.py", "integration/test_gameday_major_version.py",
    "integration/test_gameday_disk.py",
)


def _schedule_rank(item: pytest.Item) -> int:
    rel = Path(str(item.path)).relative_to(ROOT / "tests").as_posix()
    return _LONGEST_FIRST.index(rel) if rel in _LONGEST_FIRST else len(_LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its layer (the directory under tests/ it lives in): `-m unit` is the fast lane.

    And put the longest modules first (a stable sort: the order inside a module, and of the rest, is kept)."""
    for item in items:
        layer = _LAYERS.get(Path(str(item.path)).relative_to(ROOT / "tests").parts[0])
        if layer is not None:
            item.add_marker(getattr(pytest.mark, layer))
    items.sort(key=_schedule_rank)
from tests.support.server_venv import server_venv  # noqa: E402,F401  (session: the venv the server user runs)

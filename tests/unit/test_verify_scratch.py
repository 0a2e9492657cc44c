"""verify-backup's scratch directory: made fresh by steps.fs.private_dir under a scratch root that is a real
directory owned by root or by us; 0711 so that the server's user can pass through to `cluster/` but not list
it; `fetch/` (globals.sql, user mappings) is 0700 and ours, unreadable by that user."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from steps.proof.verification import CannotRun
from steps.proof.verify import VerifyRun


def _scratch(root: Path) -> Path:
    return VerifyRun(None, Path("/c.yaml"), kind="base", scratch_root=root)._make_scratch()


def test_the_scratch_layout_is_private(tmp_path: Path) -> None:
    scratch = _scratch(tmp_path / "missing-root")  # made 0755, ours
    assert oct((tmp_path / "missing-root").stat().st_mode & 0o777) == "0o755"
    assert scratch.parent == tmp_path / "missing-root" and scratch.name.startswith("runbook-verify-")
    assert oct(scratch.stat().st_mode & 0o777) == "0o711"
    assert sorted(p.name for p in scratch.iterdir()) == ["cluster", "fetch"]
    for sub in ("cluster", "fetch"):
        st = (scratch / sub).stat()
        assert oct(st.st_mode & 0o777) == "0o700" and st.st_uid == os.geteuid()
    assert _scratch(tmp_path / "missing-root") != scratch  # fresh each time


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root and the postgres user")
def test_the_server_user_passes_through_but_reads_nothing_it_is_not_given() -> None:
    from tests.support.pgcluster import make_base_dir

    base = make_base_dir("runbook-scratch-test-")  # 0755 (pytest's own temporary directories are 0700)
    try:
        _check_server_user_view(_scratch(base / "root"))
    finally:
        shutil.rmtree(base)


def _check_server_user_view(scratch: Path) -> None:
    (scratch / "fetch" / "globals.sql").write_text("ALTER ROLE x PASSWORD 'SCRAM-SHA-256$...';\n")

    def as_postgres(*cmd: str) -> int:
        return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True).returncode

    assert as_postgres("test", "-x", str(scratch)) == 0  # traverse
    assert as_postgres("ls", str(scratch)) != 0  # but not list
    assert as_postgres("cat", str(scratch / "fetch" / "globals.sql")) != 0
    assert as_postgres("ls", str(scratch / "cluster")) != 0  # not the server user's until its files are in place


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_scratch_root_that_is_a_link_or_another_users_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    with pytest.raises(CannotRun, match="is a symlink"):
        _scratch(tmp_path / "link")
    os.chown(real, 4242, 4242)
    with pytest.raises(CannotRun, match="belongs to uid 4242"):
        _scratch(real)
    assert list(real.iterdir()) == []

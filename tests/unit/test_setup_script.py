"""scripts/setup.sh makes the virtual environment with an interpreter the server's user can execute.

PostgreSQL runs archive_command/restore_command as `postgres`; a venv made from root's pyenv (under the 0700
/root) made every archive command fail with exit 126. Simulated here: the first `python3` on PATH is a link to
the system's interpreter inside a 0700 directory, which root can execute and `postgres` cannot.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

SETUP = ROOT / "scripts" / "setup.sh"
SYSTEM_PYTHON = "/usr/bin/python3"


def _server_user_exists() -> bool:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not _server_user_exists() or shutil.which("runuser") is None
    or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root, the postgres user, runuser and /usr/bin/python3 (what make test runs with)")


def closed_python(tmp_path: Path, name: str = "closed") -> Path:
    """A `python3` that root can run and postgres cannot: a link in a 0700 directory."""
    d = tmp_path / name / "bin"
    d.mkdir(parents=True)
    (tmp_path / name).chmod(0o700)
    (d / "python3").symlink_to(SYSTEM_PYTHON)
    return d / "python3"


def which_python(path: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SETUP), "--which-python"], capture_output=True, text=True, timeout=60,
                          env={"PATH": path, "HOME": "/root", **env})


def test_an_interpreter_the_server_cannot_execute_is_passed_over_for_the_systems(tmp_path: Path) -> None:
    closed = closed_python(tmp_path)
    assert subprocess.run(["runuser", "-u", "postgres", "--", str(closed), "-c", ""], cwd="/",
                          capture_output=True).returncode != 0  # the simulation holds: postgres cannot run it
    r = which_python(f"{closed.parent}:/usr/bin:/bin")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == SYSTEM_PYTHON
    assert f"postgres cannot execute {closed}, the first python3 on PATH" in r.stderr
    assert "Permission denied" in r.stderr and f"using {SYSTEM_PYTHON}" in r.stderr


def test_an_interpreter_the_server_can_execute_is_kept_without_a_word(tmp_path: Path) -> None:
    r = which_python("/usr/bin:/bin")
    assert r.returncode == 0 and r.stdout.strip() == SYSTEM_PYTHON and r.stderr == "", r.stderr


def test_without_any_interpreter_the_server_can_execute_it_says_why_and_what_to_do(tmp_path: Path) -> None:
    closed = closed_python(tmp_path)
    other = closed_python(tmp_path, "closed-too")
    r = which_python(f"{closed.parent}:/usr/bin:/bin", RUNBOOK_SYSTEM_PYTHON=str(other))
    assert r.returncode == 3 and r.stdout == "", r.stdout + r.stderr
    assert f"no Python 3.11+ that postgres can execute: {closed} is not executable by it" in r.stderr
    assert f"{other} is too old or not executable by it" in r.stderr
    assert "apt-get install python3 python3-venv" in r.stderr and "Traceback" not in r.stderr

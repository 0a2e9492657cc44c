"""A virtual environment the PostgreSQL server's user can run: for archive_command and restore_command.

The server runs those commands as `postgres`, who cannot enter a clone under a 0700 directory nor run root's
pyenv interpreter (under /root). So, once per test session: copy the package sources of this clone (ROOT) to
a 0755 temporary directory, create a venv there with the system's /usr/bin/python3, and `pip install` the
package into it, not editable (the postgres user reads only that directory). Its `runbook` is what the
tests put in archive_command/restore_command, and what they run `as_server_user`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

SYSTEM_PYTHON = Path("/usr/bin/python3")
_SOURCES = ("pyproject.toml", "README.md", "runbook", "steps")


@dataclass(frozen=True)
class ServerVenv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def runbook(self) -> Path:
        return self.root / "bin" / "runbook"


def build_server_venv(src_root: Path, base: Path) -> ServerVenv:
    """Copy the package out of the clone and install it into a fresh venv under `base` (0755)."""
    os.chmod(base, 0o755)
    src = base / "src"
    src.mkdir()
    for name in _SOURCES:
        p = src_root / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    venv = base / "venv"
    python = str(SYSTEM_PYTHON) if SYSTEM_PYTHON.exists() else "python3"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           str(src)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install into the server venv failed:\n{proc.stdout}\n{proc.stderr}")
    for root, dirs, _files in os.walk(base):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    return ServerVenv(venv)


_built: list[ServerVenv] = []


@pytest.fixture(scope="session")
def server_venv() -> ServerVenv:
    """Built once per test session, however many modules import the fixture; removed at exit."""
    from tests.conftest import ROOT

    if not _built:
        base = Path(tempfile.mkdtemp(prefix="runbook-server-venv-"))
        atexit.register(shutil.rmtree, base, True)
        _built.append(build_server_venv(ROOT, base))
    return _built[0]

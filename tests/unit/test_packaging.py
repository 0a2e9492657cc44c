"""A non-editable install (`pip install .`, as on a database host) carries every package and data file.

An editable install finds any directory; a real one ships only what pyproject.toml names, so a new
subpackage left out of it would be missing exactly where archive_command and the TUI run.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_installed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = set(find_packages(str(ROOT), include=cfg["packages"]["find"]["include"]))
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for top in ("runbook", "steps")
               for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk, "no packages found"
    assert on_disk <= shipped, f"not installed by `pip install .`: {sorted(on_disk - shipped)}"


def test_the_tui_stylesheet_is_installed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = cfg["runbook"]
    for tcss in (ROOT / "runbook").rglob("*.tcss"):
        rel = tcss.relative_to(ROOT / "runbook")
        assert any(rel.match(p) for p in patterns), f"{rel} is not in package-data: a real install lacks it"

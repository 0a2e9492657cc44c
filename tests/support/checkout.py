"""What the tests may not do: write into the checkout. A snapshot of its files (path -> mtime, size), and the
difference between two, ignoring what Python and the tools keep there by design (caches, the venv)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules"}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    files: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP and not d.endswith(".egg-info")]
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p, follow_symlinks=False)
            except FileNotFoundError:
                continue
            files[os.path.relpath(p, root)] = (st.st_mtime_ns, st.st_size)
    return files


def changed(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    """Files created, removed or written since `before`."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def git_status(root: Path) -> str:
    return subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--ignored", "--untracked-files=all"],
                          capture_output=True, text=True, check=True).stdout

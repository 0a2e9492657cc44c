"""What a hostile input aims at, and how a test proves it was left as it was."""

from __future__ import annotations

import os
from pathlib import Path


def snapshot(top: Path) -> dict[str, tuple[int, int, int, int, bytes | str]]:
    """Every entry under `top` (itself included): mode, owner, mtime_ns, size and content (or link target)."""
    out: dict[str, tuple[int, int, int, int, bytes | str]] = {}
    for p in [top, *sorted(top.rglob("*"))]:
        st = os.lstat(p)
        body: bytes | str = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        out[str(p.relative_to(top))] = (st.st_mode, st.st_uid, st.st_mtime_ns, st.st_size, body)
    return out

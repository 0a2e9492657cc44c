"""Checking a dump archive with pg_restore before it is published.

`pg_restore --list` only proves the table of contents parses: it accepts archives with flipped bytes or
cut short. `pg_restore -f /dev/null` reads and decompresses every table's data (and large objects), so a
broken data file fails it. Together with the sha256 re-read of every stored object this is the
`readable` level of DESIGN.md.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from steps.pg.tools import ToolFailed, tool
from steps.repository.manifest import Check


def toc_entries(dump_dir: Path) -> list[str]:
    """The archive's table of contents, one entry per line (comments dropped)."""
    proc = subprocess.run([tool("pg_restore"), "--list", str(dump_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolFailed("pg_restore --list", proc.returncode, proc.stderr)
    return [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith(";")]


def check_archive(dump_dir: Path) -> list[Check]:
    """Both checks, as records; raises ToolFailed (with pg_restore's message) when one fails."""
    entries = toc_entries(dump_dir)
    data = [e for e in entries if " TABLE DATA " in e or " BLOBS " in e or " BLOB DATA " in e]
    checks = [Check(name="pg_restore --list", status="ok", detail=f"{len(entries)} table-of-contents entries")]
    proc = subprocess.run([tool("pg_restore"), "--file=/dev/null", str(dump_dir)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise ToolFailed("pg_restore --file=/dev/null", proc.returncode, proc.stderr,
                         hint="the dump cannot be read back; it is not published")
    checks.append(Check(name="pg_restore --file=/dev/null", status="ok",
                        detail=f"read every data entry ({len(data)} tables/large-object sets)"))
    return checks

"""A fetched backup directory remembers that its files were checked, so the restore does not hash them again.

`fetch-latest-backup` checks every object's sha256 as it streams it in. It then writes `.verified.json`
beside the files: the manifest's own sha256 and each file's size, modification time (ns) and inode as they
were once checked. `restore-logical` right after trusts a file only when all three still match (the file
was not rewritten, replaced or touched since) and the manifest is the one checked; anything else is hashed
again, as is a directory that was not made by a fetch. Hashing 1.7 GB again cost about a second of the RTO
for nothing; a stale or edited stamp costs only that second back.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

STAMP = ".verified.json"


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def write_stamp(directory: Path, manifest_sha256: str, paths: list[str], by: str) -> None:
    """Record, after every file under `directory` was checked against the manifest, what they look like."""
    record = {"manifest_sha256": manifest_sha256, "by": by, "at": datetime.now(UTC).isoformat(timespec="seconds"),
              "files": {p: _stat(directory / p) for p in paths}}
    tmp = directory / f"{STAMP}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, directory / STAMP)


def checked_unchanged(directory: Path, manifest_sha256: str, paths: list[str]) -> tuple[str, str] | None:
    """(who checked, when) when the stamp covers exactly these files, unchanged since; else None."""
    try:
        record = json.loads((directory / STAMP).read_text())
        if record["manifest_sha256"] != manifest_sha256 or set(record["files"]) != set(paths):
            return None
        for p in paths:
            if _stat(directory / p) != record["files"][p]:
                return None
        return str(record["by"]), str(record["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

"""The backup repository layout: where each thing lives, the same under a local directory or an S3 prefix.

```
clusters/<system identifier>/logical/<db>/<backup id>/   dump/..., globals.sql, manifest.json
clusters/<system identifier>/logical/<db>/<backup id>/verifications/<UTC timestamp>.json
files/<backup id>/                                       attachments.tar, manifest.json
```
A backup id is the UTC start of the backup run, `YYYYmmddTHHMMSSZ` (ISO 8601 basic: sorts as text).
Keys are relative to the repository root and always use `/`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

ID_FORMAT = "%Y%m%dT%H%M%SZ"
ID_RE = re.compile(r"^\d{8}T\d{6}Z$")
DB_RE = re.compile(r"^[^/\x00]{1,63}$")
MANIFEST = "manifest.json"
VERIFICATIONS = "verifications"
DUMP_DIR = "dump"
GLOBALS = "globals.sql"
ATTACHMENTS_TAR = "attachments.tar"


def backup_id(when: datetime) -> str:
    return when.astimezone(UTC).strftime(ID_FORMAT)


def parse_id(text: str) -> datetime:
    return datetime.strptime(text, ID_FORMAT).replace(tzinfo=UTC)


def is_id(text: str) -> bool:
    return bool(ID_RE.match(text))


def logical_root(system_identifier: str) -> str:
    return f"clusters/{system_identifier}/logical/"


def logical_prefix(system_identifier: str, db: str, bid: str) -> str:
    """The directory (ending in /) of one logical backup."""
    if not DB_RE.match(db) or db in (".", ".."):
        raise ValueError(f"not a usable database name for a repository path: {db!r}")
    return f"clusters/{system_identifier}/logical/{db}/{bid}/"


def files_prefix(bid: str) -> str:
    return f"files/{bid}/"


def verification_key(prefix: str, checked_at: datetime) -> str:
    stamp = checked_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{prefix}{VERIFICATIONS}/{stamp}.json"


# --- base backups (physical, for PITR) ----------------------------------------------------------------
# clusters/<system identifier>/base/<backup id>/   base.tar[.zst|.lz4|.gz], backup_manifest, manifest.json
# clusters/<system identifier>/base/<backup id>/verifications/<UTC timestamp>.json

BACKUP_MANIFEST = "backup_manifest"


def base_root(system_identifier: str) -> str:
    return f"clusters/{system_identifier}/base/"


def base_prefix(system_identifier: str, bid: str) -> str:
    """The directory (ending in /) of one base backup."""
    if not system_identifier.isdigit():
        raise ValueError(f"not a system identifier: {system_identifier!r}")
    if not is_id(bid):
        raise ValueError(f"not a backup id: {bid!r}")
    return f"clusters/{system_identifier}/base/{bid}/"

"""The backup repository layout: where each thing lives, the same under a local directory or an S3 prefix.

```
clusters/<system identifier>/logical/<db>/<backup id>/   dump/..., globals.sql, manifest.json
clusters/<system identifier>/logical/<db>/<backup id>/verifications/<UTC timestamp>.json
files/<backup id>/                                       attachments.tar, manifest.json
clusters/<system identifier>/wal/<name>.zst[.age]        WAL segments, .partial segments, .history and
                                                         .backup files, as archived by `wal-push`
```
A backup id is the UTC start of the backup run, `YYYYmmddTHHMMSSZ` (ISO 8601 basic: sorts as text).
Keys are relative to the repository root and always use `/`.

Every WAL object is `<name>` + `WAL_SUFFIX`, whatever its kind: one rule for segments, timeline history
files and backup history files alike, each framed the same way (steps.wal.segment: a zstd skippable frame
holding the sha256 and size of the original, then the zstd frame; `zstd -d` reads it as it is). In a
repository marked `encrypt: true` the object is that framed file encrypted with age, `<name>.zst` +
ENCRYPTED_SUFFIX (steps.wal.crypt); a repository may hold both forms (encryption turned on mid-life).
`parse_wal_name` tells the kinds apart and `wal_name_from_key` maps a key back to the name PostgreSQL
asks for (retention and the catalogue use them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

ID_FORMAT = "%Y%m%dT%H%M%SZ"
ID_RE = re.compile(r"^\d{8}T\d{6}Z$")
DB_RE = re.compile(r"^[^/\x00]{1,63}$")
MANIFEST = "manifest.json"
VERIFICATIONS = "verifications"
DUMP_DIR = "dump"
GLOBALS = "globals.sql"
ATTACHMENTS_TAR = "attachments.tar"
ENCRYPTED_SUFFIX = ".age"  # an object of an encrypted repository is stored as its plaintext path + this


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


# --- WAL archive ------------------------------------------------------------------------------------

WAL_SUFFIX = ".zst"
_SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")
_HISTORY_RE = re.compile(r"^([0-9A-F]{8})\.history$")
_BACKUP_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.([0-9A-F]{8})\.backup$")
WalKind = Literal["segment", "partial", "history", "backup"]


@dataclass(frozen=True)
class WalName:
    """A file name PostgreSQL archives: `TTTTTTTTLLLLLLLLSSSSSSSS` (timeline, log, segment), the same with
    `.partial` (the last segment of a timeline at promotion), `TTTTTTTT.history` (a timeline's history)
    or `...SSSSSSSS.OOOOOOOO.backup` (a backup history file)."""

    name: str
    kind: WalKind
    timeline: int
    log: int = 0
    seg: int = 0

    @property
    def has_header(self) -> bool:
        """Segments (partial ones too) start with a WAL page header; history and backup files do not."""
        return self.kind in ("segment", "partial")

    def segno(self, segment_size: int) -> int:
        """The segment number: log * segments-per-log + seg."""
        return self.log * (0x100000000 // segment_size) + self.seg


def parse_wal_name(name: str) -> WalName:
    """Parse a name PostgreSQL archives or asks for; ValueError for anything else (no paths, no suffixes)."""
    if m := _SEGMENT_RE.match(name):
        kind: WalKind = "partial" if m.group(4) else "segment"
        return WalName(name, kind, int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16))
    if m := _HISTORY_RE.match(name):
        return WalName(name, "history", int(m.group(1), 16))
    if m := _BACKUP_RE.match(name):
        return WalName(name, "backup", int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16))
    raise ValueError(f"not a WAL file name: {name!r} (expected a segment, .partial, .history or .backup name)")


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """The file name of segment number `segno` on `timeline` (PostgreSQL's XLogFileName)."""
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def next_segment(name: str, segment_size: int, n: int = 1) -> str:
    """The name of the segment `n` after `name` on the same timeline."""
    w = parse_wal_name(name)
    if w.kind != "segment":
        raise ValueError(f"{name} is not a segment")
    return segment_name(w.timeline, w.segno(segment_size) + n, segment_size)


ARCHIVED_RE = re.compile(r"^([0-9A-F]{24})(\.[a-z0-9]+)?(\.age)?$")


def archived_segment(key: str) -> str | None:
    """The segment name an archive object holds (`<segment>.zst` as wal-push stores it, `<segment>.zst.age`
    encrypted, or any `<segment>[.<suffix>]` a plain `cp` archive holds), or None for `.history`, `.backup`,
    `.partial` files and anything else."""
    m = ARCHIVED_RE.match(key.rsplit("/", 1)[-1])
    return m.group(1) if m else None


def wal_prefix(system_identifier: str) -> str:
    """The directory (ending in /) of a cluster's WAL archive."""
    if not system_identifier.isdigit():
        raise ValueError(f"not a system identifier: {system_identifier!r}")
    return f"clusters/{system_identifier}/wal/"


def wal_key(system_identifier: str, name: str) -> str:
    """The key of one archived WAL file (`name` as PostgreSQL names it: %f), unencrypted; an encrypted one is
    this key + ENCRYPTED_SUFFIX (`<name>.zst.age`; steps.wal.store.keys_to_try says which a reader looks for first)."""
    parse_wal_name(name)
    return wal_prefix(system_identifier) + name + WAL_SUFFIX


def wal_ledger_prefix(system_identifier: str) -> str:
    """Where the database host's sealer writes the signed WAL ledgers of a cluster (steps.wal.ledger)."""
    if not system_identifier.isdigit():
        raise ValueError(f"not a system identifier: {system_identifier!r}")
    return f"clusters/{system_identifier}/wal-ledger/"


def wal_ledger_last(key: str) -> str | None:
    """The highest WAL-order name (24 hex digits) a ledger key `<first>-<last>-<sha12>.json` covers, or None when
    the key is not a ledger's: what retention and a recovery tell from the listing, without reading it."""
    base = key.rsplit("/", 1)[-1]
    parts = base.removesuffix(".json").split("-")
    if not base.endswith(".json") or len(parts) != 3 or len(parts[1]) != 24:
        return None
    return parts[1]


def wal_claims_root(system_identifier: str) -> str:
    """Where pushers to a store that may ignore conditional writes (S3) record what they stored, before they
    confirm it: `clusters/<id>/wal-acks/<name>/<sha256 of the original>`, empty objects, one per content ever
    pushed under that name (steps.wal.archive). Outside wal/, so nothing that lists the archive sees them."""
    if not system_identifier.isdigit():
        raise ValueError(f"not a system identifier: {system_identifier!r}")
    return f"clusters/{system_identifier}/wal-acks/"


def wal_claims_prefix(system_identifier: str, name: str) -> str:
    """The claims of one WAL file name (ending in /: no name is a prefix of another's claims)."""
    parse_wal_name(name)
    return f"{wal_claims_root(system_identifier)}{name}/"


def wal_name_from_key(key: str) -> str | None:
    """The WAL file name an archive key holds (`<name>.zst`, or `<name>.zst.age` encrypted), or None for
    anything else under wal/."""
    base = key.rsplit("/", 1)[-1].removesuffix(ENCRYPTED_SUFFIX)
    if not base.endswith(WAL_SUFFIX):
        return None
    name = base[: -len(WAL_SUFFIX)]
    try:
        parse_wal_name(name)
    except ValueError:
        return None
    return name

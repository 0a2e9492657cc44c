"""The product's own records about pgBackRest's backups: where they go, what they vouch for, how they are read.

The product never writes inside pgBackRest's repository. What it records about a pgBackRest backup (a test
restore's verification record, by `verify-backup --kind base`) goes into the product's own repository (`local:`
and/or `s3:` of the repository config), signed like every record:

```
clusters/<system identifier>/pgbackrest/<stanza>/<label>/verifications/<UTC timestamp>.json   (+ .sig)
```

A record's `manifest_sha256` is `fingerprint(stanza, backup)`: a digest of what `pgbackrest info` says of the
backup (stanza, label, start and stop LSN, WAL and time), so a record never vouches for another backup that
happens to take the same label (a stanza made again, another cluster's). Its `backup_id` is the label.

`entries` turns the engine's backups and these records into the catalogue's entries (steps.repository.catalogue),
so that `status`, `backups` and the projected RTO read pgBackRest's backups as they read the product's own:
a backup pgBackRest lists without error is `readable` (pgBackRest wrote it, and the WAL from its start to its
stop reached the archive before `backup` ended); a passed test restore makes it `restored`; a failed record, until
a later one passes, demotes it to `none`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import ValidationError

from steps.engines.facts import PhysicalBackup
from steps.engines.pgbackrest.info import LABEL
from steps.repository import layout
from steps.repository.catalogue import Copy, Entry
from steps.repository.config import STANZA_PATTERN
from steps.repository.manifest import Level, VerificationRecord, parse_verification, to_json
from steps.repository.signing import Signer, Trust, future, signature_keys
from steps.repository.store import Store

WHERE = "pgbackrest"  # the location name of a pgBackRest backup (`backups`' WHERE column, status' JSON)
DEFAULT_SEGMENT_SIZE = 16 << 20
_STANZA = re.compile(STANZA_PATTERN)


def records_root(system_identifier: str, stanza: str) -> str:
    if not system_identifier.isdigit():
        raise ValueError(f"not a system identifier: {system_identifier!r}")
    if not _STANZA.match(stanza):
        raise ValueError(f"not a stanza name: {stanza!r}")
    return f"clusters/{system_identifier}/pgbackrest/{stanza}/"


def records_prefix(system_identifier: str, stanza: str, label: str) -> str:
    """The directory (ending in /) of the product's records about one pgBackRest backup."""
    if not LABEL.match(label):
        raise ValueError(f"not a pgBackRest backup label: {label!r}")
    return f"{records_root(system_identifier, stanza)}{label}/"


def fingerprint(stanza: str, b: PhysicalBackup) -> str:
    """What a record about backup `b` vouches for (its manifest_sha256)."""
    text = "\n".join(["pgbackrest", stanza, b.label, b.kind, b.start_lsn, b.stop_lsn, b.start_wal, b.stop_wal,
                      str(int(b.started_at.timestamp())), str(int(b.stopped_at.timestamp()))])
    return hashlib.sha256(text.encode()).hexdigest()


def write_record(store: Store, signer: Signer, system_identifier: str, stanza: str,
                 record: VerificationRecord) -> str:
    """Sign and store a record about pgBackRest backup `record.backup_id`; its key."""
    key = layout.verification_key(records_prefix(system_identifier, stanza, record.backup_id), record.checked_at)
    signer.put(store, key, to_json(record))
    return key


@dataclass
class BaseFacts:
    """What the product's code reads of a base backup's manifest, for a pgBackRest backup."""

    start_wal: str
    stop_wal: str
    start_lsn: str
    stop_lsn: str
    started_at: datetime
    stopped_at: datetime
    wal_segment_size: int
    timeline: int
    kind: str
    reference: tuple[str, ...]


class PgBackRestEntry(Entry):
    """A pgBackRest backup as a catalogue entry: one copy, WHERE, holding the product's records about it."""

    def locations(self) -> list[str]:
        return [WHERE]


@dataclass
class Records:
    by_label: dict[str, list[VerificationRecord]]
    refused: list[tuple[str, str, str]]  # (repository, key, why): not genuine, not counted


def read_records(stores: list[Store], trust: Trust, system_identifier: str, stanza: str,
                 now: datetime | None = None) -> Records:
    """The genuine records about the stanza's backups in the product's repositories (a forged, unsigned or
    unreadable one is refused or skipped, never counted)."""
    now = now or datetime.now(UTC)
    out = Records({}, [])
    root = records_root(system_identifier, stanza)
    for store in stores:
        for label in store.list_dirs(root):
            if not LABEL.match(label):
                continue
            prefix = f"{root}{label}/{layout.VERIFICATIONS}/"
            keys = [k for k, _ in store.list_keys(prefix)]
            signed = signature_keys(keys)
            for key in keys:
                if not key.endswith(".json") or "/" in key[len(prefix):]:
                    continue
                data = store.get_bytes(key)
                verdict = trust.read(store, key, data, key in signed)
                if not verdict.accepted:
                    out.refused.append((store.name, key, verdict.reason))
                    continue
                try:
                    record = parse_verification(data)
                except (ValueError, ValidationError):
                    continue  # an unreadable record vouches for nothing
                if record.backup_id != label:
                    out.refused.append((store.name, key, f"it speaks of {record.backup_id[:40]!r}, not {label}"))
                    continue
                if future(record.checked_at, now):
                    out.refused.append((store.name, key, f"checked_at {record.checked_at.isoformat()} is in the "
                                        "future"))
                    continue
                out.by_label.setdefault(label, []).append(record)
    return out


def level_of(records: list[VerificationRecord], digest: str) -> Level:
    """Readable as pgBackRest lists it; restored after a passed test restore; none while the latest failed."""
    mine = sorted((r for r in records if r.manifest_sha256 == digest), key=lambda r: r.checked_at)
    if mine and not mine[-1].passed:
        return Level.none
    failed = [r.checked_at for r in mine if not r.passed]
    since = max(failed) if failed else None
    best = max((r.level_value for r in mine if since is None or r.checked_at > since), default=Level.none)
    return max(best, Level.readable)


def segment_size_of(backups: list[PhysicalBackup]) -> int | None:
    """The cluster's WAL segment size, told by its backups' start LSN and WAL file (pgBackRest's info does not
    say it): the power of two from 1 MB to 1 GB that puts every start LSN in its WAL file; None when no backup
    tells (all start in a file's first segment of a log) or they disagree."""
    fits = None
    for b in backups:
        try:
            hi, lo = (int(x, 16) for x in b.start_lsn.split("/"))
            log, seg = int(b.start_wal[8:16], 16), int(b.start_wal[16:24], 16)
        except ValueError:
            continue
        if hi != log:
            continue
        ok = {1 << n for n in range(20, 31) if lo // (1 << n) == seg}
        if seg == 0 and len(ok) > 1:
            continue
        fits = ok if fits is None else fits & ok
    return min(fits) if fits and len(fits) == 1 else None


def entries(backups: list[PhysicalBackup], stanza: str, stores: list[Store], records: Records,
            segment_size: int | None) -> list[Entry]:
    """The engine's backups (newest first) as catalogue entries of kind base, with the product's records."""
    out: list[Entry] = []
    home = stores[0] if stores else None
    for b in backups:
        digest = fingerprint(stanza, b)
        recs = records.by_label.get(b.label, [])
        facts = BaseFacts(start_wal=b.start_wal, stop_wal=b.stop_wal, start_lsn=b.start_lsn, stop_lsn=b.stop_lsn,
                          started_at=b.started_at, stopped_at=b.stopped_at,
                          wal_segment_size=segment_size or DEFAULT_SEGMENT_SIZE, timeline=int(b.start_wal[:8], 16),
                          kind=b.kind, reference=b.reference)
        e = PgBackRestEntry("base", b.label, "", b.system_identifier or "", b.stopped_at, b.size_bytes,
                            cast(Any, facts))
        prefix = records_prefix(b.system_identifier, stanza, b.label) if b.system_identifier else ""
        e.copies[WHERE] = Copy(store=cast(Any, home), prefix=prefix, manifest_sha256=digest,
                               level=level_of(recs, digest), records=recs, keys=[])
        out.append(e)
    return out


@dataclass
class Listed:
    """What `backups` and `status` read of pgBackRest in one go: the stanza, its backups as catalogue entries
    (newest first, with the product's records about them), its archive range, the records refused."""

    stanza: Any  # steps.engines.pgbackrest.info.StanzaInfo
    base: list[Entry]
    archive: Any  # steps.engines.facts.ArchiveRange | None
    refused: list[tuple[str, str, str]]


def listed(cfg: Any, stores: list[Store], trust: Trust, segment_size: int | None = None,
           engine: Any = None) -> Listed:
    """pgBackRest's backups and archive (one `info`, one `repo-ls`, or what `engine` has read already) with the
    product's records about them. Raises PgBackRestError (RunbookError) when pgBackRest does not answer."""
    from steps.engines.pgbackrest.engine import PgBackRestEngine

    engine = engine if isinstance(engine, PgBackRestEngine) else PgBackRestEngine(cfg)
    st = engine.stanza()
    rng = engine.archive_range_of(st)
    recs = read_records(stores, trust, st.system_identifier, st.name) if st.system_identifier else Records({}, [])
    base = entries(st.backups, st.name, stores, recs, segment_size or segment_size_of(st.backups))
    return Listed(st, base, rng, recs.refused)

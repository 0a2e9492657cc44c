"""The product's own records about pgBackRest backups: where they are kept, how they are read.

A verification record (`runbook verify-backup --kind base` with engine pgbackrest) is the product's, never
pgBackRest's: it goes into the product's own repository (`local:` or `s3:` of the repository config), under

    clusters/<system identifier>/pgbackrest/<stanza>/<backup label>/verifications/<UTC timestamp>.json

signed like every other record (steps.repository.signing). Nothing is ever written inside pgBackRest's repository.
The record's `manifest_sha256` is the sha256 of the backup's entry in `pgbackrest info --output=json` (its label,
type, times, WAL and LSN range, sizes, references; serialised with sorted keys): a later backup under the same
label (a stanza re-created) is not vouched for by an older record.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import Any

from steps.engines.pgbackrest.info import LABEL
from steps.repository.layout import verification_key

STANZA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def backup_prefix(system_identifier: str, stanza: str, label: str) -> str:
    """The product's prefix for one pgBackRest backup (its verification records go under it)."""
    if not system_identifier.isdigit():
        raise ValueError(f"not a system identifier: {system_identifier[:40]!r}")
    if not STANZA.match(stanza):
        raise ValueError(f"not a stanza name: {stanza[:40]!r}")
    if not LABEL.match(label):
        raise ValueError(f"not a pgBackRest backup label: {label[:40]!r}")
    return f"clusters/{system_identifier}/pgbackrest/{stanza}/{label}/"


def stanza_prefix(system_identifier: str, stanza: str) -> str:
    """Where every pgBackRest backup's records of this cluster and stanza are kept."""
    return backup_prefix(system_identifier, stanza, "20000101-000000F").rsplit("/", 2)[0] + "/"


def record_key(system_identifier: str, stanza: str, label: str, checked_at: datetime) -> str:
    return verification_key(backup_prefix(system_identifier, stanza, label), checked_at)


def info_sha256(entry: dict[str, Any]) -> str:
    """The sha256 a record vouches for: the backup's info entry, keys sorted."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def info_entry(doc: dict[str, Any], label: str) -> dict[str, Any] | None:
    """The raw entry of backup `label` in the stanza object of `pgbackrest info --output=json`."""
    for b in doc.get("backup") or []:
        if isinstance(b, dict) and b.get("label") == label:
            return b
    return None


def newest_records(store: Any, system_identifier: str, stanza: str, trust: Any) -> dict[str, Any]:
    """The newest genuine verification record of each backup label under the stanza's prefix of `store`
    (steps.repository.signing `trust` checks each; a record that is not genuine, or not a record, is passed
    over). Returns {label: VerificationRecord}."""
    from steps.repository.manifest import VerificationRecord

    out: dict[str, Any] = {}
    prefix = stanza_prefix(system_identifier, stanza)
    for key, _size in store.list_keys(prefix):
        rest = key[len(prefix):].split("/")
        if key.endswith(".sig") or len(rest) != 3 or not LABEL.match(rest[0]) or rest[1] != "verifications" or not rest[2].endswith(".json"):
            continue
        try:
            data = store.get_bytes(key)
            if not trust.read(store, key, data).accepted:
                continue
            record = VerificationRecord.model_validate_json(data)
        except Exception:  # noqa: BLE001 - a record that cannot be read vouches for nothing
            continue
        if record.backup_id != rest[0]:
            continue
        seen = out.get(rest[0])
        if seen is None or record.checked_at > seen.checked_at:
            out[rest[0]] = record
    return out

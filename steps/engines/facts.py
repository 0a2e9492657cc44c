"""What a physical engine reports, the same whichever engine (steps.engines): its base backups, the range of its
WAL archive, its own checks, a base backup just taken."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

CheckStatus = Literal["ok", "warning", "failed"]


@dataclass(frozen=True)
class PhysicalBackup:
    """One base backup. `kind`: full, diff or incr (pgBackRest); the product's own are full. Times are aware
    (UTC); WAL names and LSNs as PostgreSQL prints them. `size_bytes`: the cluster's size when it was taken;
    `stored_bytes`: what this backup itself adds to the repository (None when unknown); `reference`: the
    backups it needs besides itself (a diff or incr's full, ...)."""

    label: str
    kind: Literal["full", "diff", "incr"]
    started_at: datetime
    stopped_at: datetime
    start_wal: str
    stop_wal: str
    start_lsn: str
    stop_lsn: str
    size_bytes: int
    stored_bytes: int | None = None
    reference: tuple[str, ...] = ()
    where: tuple[str, ...] = ()
    system_identifier: str | None = None


@dataclass(frozen=True)
class ArchiveRange:
    """The WAL archive of the protected cluster: its oldest and newest WAL file, and when the newest was archived
    (None when the engine cannot tell). `where`: the repository it was read from."""

    min_wal: str | None
    max_wal: str | None
    newest_archived_at: datetime | None = None
    where: str = ""


@dataclass(frozen=True)
class EngineCheck:
    """One finding of the engine's own check, shaped like `runbook check`'s lines."""

    name: str
    status: CheckStatus
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class BaseBackupDone:
    """A base backup the engine has just taken: the backup as the engine lists it, and the wall time it took."""

    backup: PhysicalBackup
    duration_s: float

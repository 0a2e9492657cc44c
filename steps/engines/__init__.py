"""The physical engines: the product's own (pg_basebackup and `wal-push`) and pgBackRest, behind one interface.

`runbook status`, `check`, `backups` and `basebackup` ask the engine of the repository config (`engine:`) for the
physical facts; the verdicts, records and reports are the product's, the same whichever engine. The product never
writes inside pgBackRest's repository files: its own records (verification records, drills, run summaries) stay in
its own repository (`local:`/`s3:`). docs/architecture.md, docs/pgbackrest.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from steps.engines.facts import ArchiveRange, BaseBackupDone, EngineCheck, PhysicalBackup

__all__ = ["ArchiveRange", "BaseBackupDone", "EngineCheck", "PhysicalBackup", "PhysicalEngine", "engine_for"]


class PhysicalEngine(Protocol):
    """What the product needs from a physical engine. Each method raises RunbookError (a PgBackRestError for
    pgBackRest) with what went wrong and what to do when the engine cannot answer."""

    name: str  # "own" | "pgbackrest"

    def backups(self) -> list[PhysicalBackup]:
        """The base backups of the protected cluster a recovery can start from, newest first."""
        ...

    def archive_range(self) -> ArchiveRange | None:
        """The WAL archive's oldest and newest WAL file and when the newest was archived; None when no WAL has
        been archived."""
        ...

    def check(self, timeout: float | None = None) -> list[EngineCheck]:
        """The engine's own checks, beyond those `runbook check` makes itself (`pgbackrest check`: archiving
        reaches the repository, the stanza matches the cluster; `timeout`: how long it may wait for WAL). The
        product's own engine adds none: its checks are runbook check's."""
        ...

    def basebackup(self, kind: str | None = None) -> BaseBackupDone:
        """Take a base backup now: `kind` full, diff or incr (pgBackRest; None: the engine's default); the
        product's own engine takes full ones only."""
        ...


def engine_for(cfg: Any, config_path: Path | None = None) -> PhysicalEngine:
    """The engine of a repository config (`engine:`). `config_path`: the config's file, which the product's own
    basebackup records in its log (default: $RUNBOOK_CONFIG's)."""
    if getattr(cfg, "engine", "own") == "pgbackrest":
        from steps.engines.pgbackrest.engine import PgBackRestEngine

        return PgBackRestEngine(cfg)
    from steps.engines.own import OwnEngine

    return OwnEngine(cfg, config_path)

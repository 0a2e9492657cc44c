"""The product's own physical engine: base backups by `runbook basebackup` (pg_basebackup) in its repository, WAL
archived by `runbook wal-push` into it. Read from the repository's signed manifests (steps.repository.catalogue)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from steps.engines.facts import ArchiveRange, BaseBackupDone, EngineCheck, PhysicalBackup


class OwnEngine:
    name = "own"

    def __init__(self, cfg: Any, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path

    def _stores(self) -> list[Any]:
        from steps.repository.configured import open_stores

        stores: list[Any] = []
        for which in ("local", "s3"):
            if getattr(self.cfg, which) is not None:
                stores += open_stores(self.cfg, which)
        return stores

    def backups(self) -> list[PhysicalBackup]:
        from steps.repository.catalogue import scan
        from steps.repository.manifest import BaseManifest
        from steps.repository.signing import trust_from_config

        cat = scan(self._stores(), trust=trust_from_config(self.cfg), kinds=("base",))
        if cat.errors:
            raise RunbookError("; ".join(f"the {n} repository cannot be read: {e}" for n, e in cat.errors.items()))
        out = []
        for e in cat.base:
            m = e.manifest
            if not isinstance(m, BaseManifest):
                continue
            out.append(PhysicalBackup(label=e.backup_id, kind="full", started_at=m.started_at.astimezone(UTC),
                                      stopped_at=m.stopped_at.astimezone(UTC), start_wal=m.start_wal,
                                      stop_wal=m.stop_wal, start_lsn=m.start_lsn, stop_lsn=m.stop_lsn,
                                      size_bytes=m.cluster.size_bytes, stored_bytes=e.size_bytes, where=tuple(e.locations()),
                                      system_identifier=e.cluster))
        return out

    def archive_range(self) -> ArchiveRange | None:
        """The WAL of the cluster of the newest base backup (the cluster directory a PITR reads)."""
        from steps.repository.layout import parse_wal_name, wal_name_from_key, wal_prefix
        from steps.wal.store import open_wal_stores

        backups = self.backups()
        if not backups or backups[0].system_identifier is None:
            return None
        sysid = backups[0].system_identifier
        lo: tuple[tuple[int, int], str] | None = None
        hi: tuple[tuple[int, int], str, float, str] | None = None
        for ws in open_wal_stores(self.cfg.local.path if self.cfg.local else None,
                                  self.cfg.s3.model_dump(mode="json") if self.cfg.s3 else None):
            for item in ws.list(wal_prefix(sysid)):
                name = wal_name_from_key(item.key)
                if name is None or parse_wal_name(name).kind not in ("segment", "partial"):
                    continue
                w = parse_wal_name(name)
                key = (w.timeline, w.log * 0x100000000 + w.seg)
                if lo is None or key < lo[0]:
                    lo = (key, name[:24])
                if hi is None or key > hi[0] or (key == hi[0] and item.mtime > hi[2]):
                    hi = (key, name[:24], item.mtime, ws.name)
        if lo is None or hi is None:
            return None
        return ArchiveRange(min_wal=lo[1], max_wal=hi[1], newest_archived_at=datetime.fromtimestamp(hi[2], UTC),
                            where=hi[3])

    def check(self, timeout: float | None = None) -> list[EngineCheck]:
        return []  # the own engine's checks are runbook check's (steps.proof.check)

    def basebackup(self, kind: str | None = None) -> BaseBackupDone:
        from steps.backup.base import BaseBackupRun
        from steps.repository.config import resolve_config_path

        if kind not in (None, "full"):
            raise RunbookError(f"the product's own engine takes full base backups only, not {kind}",
                               hint="leave out --type, or use engine: pgbackrest for diff and incr backups")
        path = self.config_path or resolve_config_path(None)
        started = datetime.now(UTC)
        code = BaseBackupRun(self.cfg, path, console=False).run()
        if code != 0:
            raise RunbookError(f"basebackup failed (exit {code})", hint=f"its log: {self.cfg.state_dir()}")
        duration = (datetime.now(UTC) - started).total_seconds()
        return BaseBackupDone(backup=self.backups()[0], duration_s=duration)

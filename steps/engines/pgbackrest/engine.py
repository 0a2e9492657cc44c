"""pgBackRest as the physical engine (steps.engines.PhysicalEngine): `info --output=json` for the backups and the
WAL range, `repo-ls` for when the newest WAL was archived, `check`, `backup --type`."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from steps.engines.facts import ArchiveRange, BaseBackupDone, EngineCheck, PhysicalBackup
from steps.engines.pgbackrest.info import StanzaInfo, newest_archived_at, parse_info
from steps.engines.pgbackrest.runner import PgBackRestError, info, run
from steps.engines.pgbackrest.settings import PgBackRestSettings, settings_from

KINDS = ("full", "diff", "incr")


class PgBackRestEngine:
    name = "pgbackrest"

    def __init__(self, cfg: Any = None, *, settings: PgBackRestSettings | None = None) -> None:
        self.settings = settings or settings_from(cfg)
        self._stanza: StanzaInfo | None = None
        self._archived: dict[tuple[str, str], datetime | None] = {}

    def stanza(self, *, fresh: bool = False) -> StanzaInfo:
        """The stanza's facts: read once per engine (one command, one status line), again when `fresh`."""
        if self._stanza is None or fresh:
            self._stanza = parse_info(info(self.settings), self.settings.stanza)
        return self._stanza

    def backups(self) -> list[PhysicalBackup]:
        return self.stanza().backups

    def archive_range(self) -> ArchiveRange | None:
        return self.archive_range_of(self.stanza())

    def archive_range_of(self, st: StanzaInfo) -> ArchiveRange | None:
        """The archive range of facts already read (one `info` for the backups and the range)."""
        a = st.archive
        if a.max_wal is None or st.archive_id is None:
            return None
        return ArchiveRange(min_wal=a.min_wal, max_wal=a.max_wal,
                            newest_archived_at=self.archived_at(st.archive_id, a.max_wal), where=a.where)

    def archived_at(self, archive_id: str, wal: str) -> datetime | None:
        """When `wal` reached the repository: its file's time in the archive (pgBackRest's info does not say)."""
        if (archive_id, wal) in self._archived:
            return self._archived[(archive_id, wal)]
        path = f"archive/{self.settings.stanza}/{archive_id}/{wal[:16]}"
        proc = run(self.settings, "repo-ls", "--output=json", path, timeout=120)
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError as e:
            raise PgBackRestError(f"pgbackrest repo-ls {path} did not print JSON: {e.msg}") from None
        found = self._archived[(archive_id, wal)] = newest_archived_at(doc, wal)
        return found

    def check(self, timeout: float | None = None) -> list[EngineCheck]:
        """`pgbackrest info` (the stanza's status) and `pgbackrest check` (the cluster matches the stanza; it
        switches WAL and waits for the segment to reach the repository: `timeout` seconds, as its
        archive-timeout, unless the options set one)."""
        out = []
        try:
            st = self.stanza(fresh=True)
        except PgBackRestError as e:
            return [EngineCheck("pgbackrest_info", "failed", e.message, e.hint)]
        if st.status_code != 0:
            out.append(EngineCheck("pgbackrest_info", "failed" if not st.backups else "warning",
                                   f"stanza {st.name}: {st.status_message} (status {st.status_code})",
                                   "pgbackrest info says more"))
        else:
            out.append(EngineCheck("pgbackrest_info", "ok", f"stanza {st.name}: {len(st.backups)} backups, WAL "
                                   f"{st.archive.min_wal or '-'} .. {st.archive.max_wal or '-'}"))
        extra = []
        if timeout is not None and "archive-timeout" not in self.settings.options:
            extra.append(f"--archive-timeout={max(0.1, min(timeout, 86400)):g}")
        t0 = time.monotonic()
        self._stanza = None  # check archives a segment: what info said before is old
        try:
            run(self.settings, "check", *extra, timeout=(timeout or 60) + 60)
        except PgBackRestError as e:
            out.append(EngineCheck("pgbackrest_check", "failed", e.message, e.hint))
        else:
            out.append(EngineCheck("pgbackrest_check", "ok", f"stanza {st.name}: the cluster matches it and a WAL "
                                   f"switch reached its repository ({time.monotonic() - t0:.1f} s)"))
        return out

    def basebackup(self, kind: str | None = None) -> BaseBackupDone:
        if kind is not None and kind not in KINDS:
            raise PgBackRestError(f"backup type {kind!r} is not one of {', '.join(KINDS)}")
        before = {b.label for b in self.stanza(fresh=True).backups}
        t0 = time.monotonic()
        run(self.settings, "backup", *([f"--type={kind}"] if kind else []))
        duration = time.monotonic() - t0
        new = [b for b in self.stanza(fresh=True).backups if b.label not in before]
        if not new:
            raise PgBackRestError("pgbackrest backup exited 0 but info lists no new backup",
                                  hint="pgbackrest info; its log says more")
        return BaseBackupDone(backup=new[0], duration_s=duration)

"""The catalogue of built-in actions: name, argument model, declared outputs.

Importing this module must stay cheap (the validator and the engine use it); an action's own heavy
imports (boto3, psycopg) happen inside its `main`, which runs only in the child process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel


@dataclass(frozen=True)
class ActionSpec:
    name: str
    summary: str
    module: str  # steps.<module> holds `Args` (a pydantic model) and `main(args, events) -> int`
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> what it holds
    details: str = ""  # more than the summary, for the runbook file reference (docs/runbook-file.md)

    def args_model(self) -> type[BaseModel]:
        return importlib.import_module(self.module).Args  # type: ignore[no-any-return]

    def entry(self) -> Callable[..., int]:
        return importlib.import_module(self.module).main  # type: ignore[no-any-return]


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in [
        ActionSpec(
            name="wait-postgres",
            summary="Wait until a PostgreSQL server accepts connections (pg_isready), with a deadline",
            module="steps.wait_postgres",
            details="Fails at once (exit 2, no waiting) on bad connection parameters.",
            outputs={"waited_s": "seconds until the server answered"},
        ),
        ActionSpec(
            name="fetch-latest-backup",
            summary="The newest logical backup at readable or better (S3 or local), sha256-verified, into a directory",
            module="steps.fetch",
            outputs={
                "backup_dir": "directory holding dump/, globals.sql and manifest.json",
                "backup_id": "id of the backup (its UTC start, YYYYmmddTHHMMSSZ)",
                "snapshot_time": "the recovery point: when the dump's snapshot was taken (ISO 8601)",
                "db": "the database the backup is of",
                "cluster": "system identifier of the cluster it came from",
                "size_bytes": "size of the backup's objects",
                "source": "where it was fetched from: local, s3 (or existing)",
            },
        ),
        ActionSpec(
            name="restore-logical",
            summary="Restore a fetched backup into a new database: globals, pg_restore --jobs, ANALYZE",
            module="steps.restore_logical",
            outputs={
                "restored_db": "name of the restored database",
                "duration_s": "seconds for the whole action",
                "restore_s": "seconds of pg_restore",
                "analyze_s": "seconds of ANALYZE",
            },
        ),
        ActionSpec(
            name="restore-attachments",
            summary="Restore the user-uploaded files of a backup run, byte-identical, into a directory",
            module="steps.restore_attachments",
            details="Which snapshot: the one of `backup_id`'s run when it has one (scenario 1: the database's); else, "
                    "with `at` (the recovery point), the newest taken at or before it, and when all are newer the "
                    "nearest after it, with a warning; else the newest. Staged in a fresh private directory (0700) "
                    "beside `dest` (its parent: a real directory owned by root or by the user running it) and renamed into place; a symbolic link at `dest` is refused, one inside it is "
                    "never written through. An existing `dest` keeps its owner and mode, and when run as root its "
                    "owner gets the restored files.",
            outputs={
                "dest": "the directory restored into",
                "attachments_id": "id of the attachments snapshot (the backup run)",
                "files": "number of files restored",
                "attachments_time": "when the snapshot was taken (ISO 8601)",
                "distance_s": "with `at`: seconds from the snapshot to the recovery point (negative: taken after it)",
                "distance": "with `at`: the snapshot and how far from the recovery point, e.g. \"attachments "
                            "snapshot 2026-11-25T02:00:41+00:00, 42 s before the recovery point (...)\"",
            },
        ),
        ActionSpec(
            name="notify",
            summary="POST a JSON message to a chat webhook (or print it to post by hand when none is configured)",
            module="steps.notify",
            outputs={"sent": "true when the webhook accepted the message"},
        ),
        ActionSpec(
            name="check-target",
            summary="Can this server receive the recovery: answers, major version, database absent, free disk",
            module="steps.check_target",
            outputs={"server_version": "server_version_num of the target"},
        ),
        ActionSpec(
            name="verify-database",
            summary="Expected tables exist, row counts equal the backup's manifest, smoke queries pass",
            module="steps.verify_database",
            outputs={
                "tables_checked": "distinct tables checked: found present, or their row counts compared",
                "row_counts_compared": "tables whose row counts were compared with the backup's manifest",
                "rows_lost": "drills: rows written after the backup and lost (needs disaster_counts)",
            },
        ),
        ActionSpec(
            name="pitr",
            summary="Point-in-time recovery: the newest base backup that ended before the target, archived WAL "
                    "replayed into a new data directory, waited for until promoted",
            module="steps.pitr.action",
            outputs={
                "recovery_point": "the last replayed transaction's time (ISO 8601): what the database now holds",
                "timeline": "the restored server's new timeline (2 after the first PITR)",
                "replay_s": "seconds from the server's start to the end of recovery",
                "data_directory": "the restored data directory",
                "lsn": "where redo ended",
                "backup_id": "the base backup it started from",
                "log_file": "the restored server's log",
                "tablespaces": "where each tablespace went: a list of {oid, name, location, original}",
            },
            details="Never into the production data or tablespace directories; `recovery.signal`, "
                    "`restore_command` = `runbook wal-fetch`, archiving off (or `archive_to`), waits for the real "
                    "end of recovery. docs/basebackup.md",
        ),
        ActionSpec(
            name="status",
            summary="`runbook status` as a step: the RPO exposure now, whether archiving works, the newest backups, "
                    "the projected RTO, against the runbook's targets",
            module="steps.status_step",
            details="Each verdict is a check (`rpo`, `rto`; red is failed) with its reasons; a repository that cannot "
                    "be read is a failed check `status` (could not run). The step shows, it does not decide: exit 0 "
                    "whatever the verdict.",
            outputs={"verdict": "ok, warning, red or could not run", "rpo_exposure_s": "seconds of data a recovery now would lose",
                     "newest_wal_age_s": "age of the newest archived WAL (when there is one)"},
        ),
        ActionSpec(
            name="reprotect",
            summary="Protect the recovered server again: WAL archiving into its cluster directory of the "
                    "repository, a base backup, a logical backup, `runbook check` until green",
            module="steps.reprotect",
            details="Archiving is turned on with `ALTER SYSTEM`, then a reload or restart; after PITR the new "
                    "timeline's `.history` is queued first. In a drill it writes nothing unless `drill_writes` "
                    "(the sandbox's own repository).",
            outputs={
                "protected_at": "when protection was restored (ISO 8601): the report shows it",
                "system_identifier": "the recovered cluster's system identifier: its directory in the repository",
                "timeline": "the timeline it archives on (a new one after PITR)",
                "base_backup_id": "the base backup taken",
                "logical_backup_id": "the logical backup taken",
                "config": "the repository config the scheduled jobs must use for the recovered server",
            },
        ),
    ]
}

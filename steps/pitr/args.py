"""The `pitr` action's arguments: the pydantic `Args` model and every check that needs nothing but them
(the target's form, absolute paths, the `tablespaces` mapping given as text), plus the default `runbook`
executable for restore_command."""

from __future__ import annotations

import os
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TargetKind = Literal["time", "xid", "lsn", "name", "latest", "immediate"]


def default_runbook_exe() -> str:
    """The `runbook` next to this interpreter (the venv's), which the server's user must be able to run."""
    return str(Path(sys.executable).parent / "runbook")


def bindir(args: Args) -> str:
    """The directory of the server binaries that start the restored copy (`bindir`, else PostgreSQL 15's, or the
    Debian cluster's version's)."""
    from steps.pg.tools import PG_BIN

    if args.bindir:
        return args.bindir
    return f"/usr/lib/postgresql/{args.pg_version}/bin" if args.debian_cluster else PG_BIN


def parse_target_time(text: str) -> datetime:
    """ISO 8601 with a zone. A time without one is refused: the server would read it in *its* zone."""
    try:
        dt = datetime.fromisoformat(text.strip().replace(" ", "T", 1) if "T" not in text else text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-25T03:10:00+07:00)") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"the target time {text!r} has no time zone: add one (Z, +07:00) so that it means one "
                         "moment, whatever the server's TimeZone")
    return dt


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(min_length=1, description="The repository config (local and/or S3) to recover from")
    target_kind: TargetKind = Field("time", description="time | xid | lsn | name | latest | immediate "
                                  "(the end of the base backup: the earliest consistent moment)")
    target: str = Field("", description="The target: an ISO 8601 time with zone, an xid, an LSN, a restore point")
    target_time: str = Field("", description="The time target (kind time), when `target` is not given: so that a "
                             "runbook can pass its target_time parameter and a separate target for other kinds")
    inclusive: bool = Field(True, description="Stop just after the target (true) or just before it (false)")
    pgdata: str = Field(min_length=1, description="New data directory: must not exist or be empty")
    port: int = Field(5432, ge=1, le=65535, description="Port of the restored server")
    socket_dir: str | None = Field(None, description="Unix socket directory of the restored server "
                                   "(default: /var/run/postgresql when it exists, else the data directory's parent)")
    listen_addresses: str = Field("", description="listen_addresses of the restored server ('' = socket only)")
    runbook_exe: str | None = Field(None, description="Absolute path of `runbook` that the server's user can "
                                    "run, for restore_command (default: the one beside this Python)")
    restore_command: str | None = Field(None, description="Override the restore_command (%f %p) entirely")
    archive_to: str | None = Field(None, description="Archive the restored copy's WAL into this directory "
                                   "(never the production archive); default: archiving off")
    source: Literal["any", "local", "s3"] = Field("any", description="Where to fetch the base backup from")
    backup_id: str | None = Field(None, description="Use this base backup rather than picking one")
    cluster: str | None = Field(None, description="System identifier, when the repository holds several clusters")
    allow_unsigned: bool = Field(False, description="Accept unsigned base backups, and archived WAL no signed WAL "
                                 "ledger lists (a repository written before signing, an unsealed tail); each is "
                                 "reported as a warning")
    debian_cluster: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                                       description="Restore into a new Debian cluster of this name (pg_createcluster)")
    pg_version: str = Field("15", description="Debian clusters: the major version")
    bindir: str | None = Field(None, description="The replacement server's PostgreSQL binaries (postgres, pg_ctl); "
                               "their major version must be the base backup's (default: PostgreSQL 15's, or "
                               "/usr/lib/postgresql/<pg_version>/bin for a Debian cluster)")
    check_only: bool = Field(False, description="Check only, change nothing: the base backup chosen, the binaries' "
                             "major version, the free space, the archived WAL's continuity up to the target")
    accept_gap: bool = Field(False, description="With target_kind latest: recover up to a gap in the archived WAL "
                             "(the best reachable point), accepting that the WAL after it is not replayed")
    user: str = Field("postgres", description="Superuser role of the restored cluster, to watch the recovery")
    timeout_s: float = Field(4 * 3600, gt=0, description="Give up waiting for the end of recovery after this")
    fetch_dir: str | None = Field(None, description="Where the backup is fetched: a fresh private (0700) directory "
                                  "is made in DIR, which must be owned by root or by us (default: the data "
                                  "directory's parent if so, else $RUNBOOK_SCRATCH_DIR or /var/tmp)")
    tablespaces: dict[str, str] = Field(default_factory=dict, description="Where tablespaces go: {OID, name or "
                                        "original location: absolute directory, missing or empty}; also "
                                        "'KEY=DIR, KEY=DIR' as text")
    delta: bool = Field(False, description="engine pgbackrest: restore with --delta into an existing data "
                        "directory (pgBackRest rewrites only what differs); the configured production data "
                        "directory (pg1-path) is refused unless this is true. The own engine refuses it")
    tablespace_dir: str | None = Field(None, description="Tablespaces not in `tablespaces` go to DIR/<oid> "
                                       "(default: <pgdata>_tablespaces/<oid>)")

    @model_validator(mode="before")
    @classmethod
    def _empty_is_none(cls, data: Any) -> Any:
        if isinstance(data, dict):  # a runbook passes '' for "not set"
            for key in ("debian_cluster", "runbook_exe", "restore_command", "archive_to", "backup_id", "cluster",
                        "socket_dir", "fetch_dir", "tablespace_dir", "bindir"):
                if data.get(key) == "":
                    data = {**data, key: None}
            if isinstance(data.get("tablespaces"), str) and "{{" not in data["tablespaces"]:  # a template: later
                data = {**data, "tablespaces": parse_tablespace_mapping(data["tablespaces"])}
            elif data.get("tablespaces") is None and "tablespaces" in data:
                data = {**data, "tablespaces": {}}
        return data

    @model_validator(mode="after")
    def _target(self) -> Args:
        if self.target_kind == "time" and not self.target.strip():
            self.target = self.target_time
        if not Path(self.pgdata).is_absolute():
            raise ValueError(f"pgdata must be an absolute path, not {self.pgdata!r}")
        for key, directory in self.tablespaces.items():
            if not key.strip():
                raise ValueError("tablespaces: an empty key (use the tablespace's OID, name or original location)")
            if not os.path.isabs(directory):
                raise ValueError(f"tablespaces: the directory for {key!r} must be an absolute path, not {directory!r}")
        if self.bindir is not None and not os.path.isabs(self.bindir):
            raise ValueError(f"bindir must be an absolute path, not {self.bindir!r}")
        if self.tablespace_dir is not None and not os.path.isabs(self.tablespace_dir):
            raise ValueError(f"tablespace_dir must be an absolute path, not {self.tablespace_dir!r}")
        if self.target_kind in ("latest", "immediate"):
            return self
        if not self.target.strip():
            raise ValueError(f"target_kind {self.target_kind} needs a target")
        if self.target_kind == "time":
            parse_target_time(self.target)
        elif self.target_kind == "xid" and not self.target.strip().isdigit():
            raise ValueError(f"an xid is a number, not {self.target!r}")
        elif self.target_kind == "lsn":
            from steps.pg.walnames import parse_lsn

            parse_lsn(self.target)
        return self


def parse_tablespace_mapping(text: str) -> dict[str, str]:
    """'KEY=DIR, KEY=DIR' (commas or newlines) as a dict; a directory with a comma needs the dict form."""
    out: dict[str, str] = {}
    for item in re.split(r"[,\n]", text):
        if not item.strip():
            continue
        key, sep, directory = item.partition("=")
        if not sep or not key.strip() or not directory.strip():
            raise ValueError(f"tablespaces: {item.strip()!r} is not KEY=DIRECTORY (KEY: an OID, a name or the "
                             "original location)")
        out[key.strip()] = directory.strip()
    return out

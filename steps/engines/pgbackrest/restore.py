"""pgBackRest's restore, as the recovery (steps.pitr.pgbackrest) and verify-backup (steps.proof.verify_pgbackrest)
use it: the stanza's facts, the WAL archive's end, the production data directory as the config names it, and
`pgbackrest restore` of one backup set into a target directory, run as pgBackRest's user.

What is passed never names the production cluster: the options `pg1-path`, `pg1-port`, `pg1-socket-path`,
`pg1-host`, `pg1-user`, `pg1-database` of the repository config are left out of a restore, which names its own
target with `--pg1-path` (a `pg1-path` in pgbackrest.conf is overridden by the command line). The choice of the
backup set, the refusals and the recovery are the caller's.
"""

from __future__ import annotations

import configparser
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from steps.engines.facts import PhysicalBackup
from steps.engines.pgbackrest.runner import PgBackRestError

# Options that name the production cluster: never passed to a restore, which names its own target.
PRODUCTION_OPTIONS = ("pg1-path", "pg1-port", "pg1-socket-path", "pg1-host", "pg1-user", "pg1-database")


def stanza_facts(s: Any) -> Any:
    """`pgbackrest info --output=json` of the configured stanza, read and checked (steps.engines.pgbackrest.info:
    a StanzaInfo; backups newest first, those pgBackRest marks in error left out)."""
    from steps.engines.pgbackrest.info import parse_info
    from steps.engines.pgbackrest.runner import info

    return parse_info(info(s), s.stanza)


def archive_end_lsn(st: Any) -> int | None:
    """The LSN just past the newest archived segment (None when unknown)."""
    from steps.engines.pgbackrest.records import segment_size_of

    newest = st.archive.max_wal
    if not newest or not st.backups:
        return None
    size = segment_size_of(st.backups)
    if size is None:
        return None
    high, low = int(newest[8:16], 16), int(newest[16:24], 16)
    return (high * ((1 << 32) // size) + low + 1) * size


def production_datadirs(s: Any, cfg: Any = None) -> list[Path]:
    """The production data directory as the config names it: `cluster.data_directory`, `pg1-path` in the
    options, and in the stanza's (or the global) section of pgbackrest.conf."""
    found = [production_datadir(s)]
    if cfg is not None and getattr(cfg.cluster, "data_directory", None):
        found.append(Path(cfg.cluster.data_directory))
    return [p for p in found if p is not None]


def production_datadir(s: Any) -> Path | None:
    """The data directory pgBackRest is configured to back up: `pg1-path` in the options, else in the
    stanza's (or the global) section of pgbackrest.conf."""
    value = s.options.get("pg1-path")
    if value is None and s.config is not None:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(Path(s.config).read_text())
        except (OSError, configparser.Error):
            return None
        for section in (s.stanza, "global"):
            if parser.has_option(section, "pg1-path"):
                value = parser.get(section, "pg1-path")
                break
    return Path(str(value)) if value else None


def restore_settings(s: Any) -> Any:
    """The settings for a restore: the production cluster's own options left out (the restore names its
    target with --pg1-path; a pg1-path from pgbackrest.conf is overridden by the command line)."""
    return replace(s, options={k: v for k, v in s.options.items() if k not in PRODUCTION_OPTIONS})


def run_user(s: Any) -> Any:
    """The passwd entry of the user pgBackRest runs as (its settings' user; the server's user when root),
    or None when it runs as us."""
    import pwd

    from steps.pg.server import server_user

    if os.geteuid() != 0:
        return None
    if s.user:
        return pwd.getpwnam(s.user)
    return server_user()


def make_target_dir(path: Path, pw: Any, what: str = "data directory") -> None:
    """`path` made 0700 (or the empty one taken), owned by pgBackRest's user, through a descriptor."""
    from steps.fs import UnsafePath, make_real_dir

    try:
        make_real_dir(path, mode=0o700, uid=pw.pw_uid if pw else None, gid=pw.pw_gid if pw else None, what=what)
    except UnsafePath as e:
        raise PgBackRestError(e.message, hint="name a real directory, not a link") from None


def restore(s: Any, b: PhysicalBackup, pgdata: Path, extra: list[str], *, delta: bool, timeout: float) -> float:
    """`pgbackrest restore` of set `b` into `pgdata`; returns its seconds. Raises PgBackRestError with
    pgBackRest's own message."""
    from steps.engines.pgbackrest.runner import run

    t0 = time.monotonic()
    run(restore_settings(s), "restore", f"--pg1-path={pgdata}", f"--set={b.label}", *extra,
        *(["--delta"] if delta else []), timeout=timeout)
    return time.monotonic() - t0

"""The new data directory (and any directory a restored copy writes into): refused unless it is new or
empty, then made 0700 and owned by the server's user, or made by `pg_createcluster` for a Debian cluster
(its fresh, empty data directory replaced). An existing data directory is never deleted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from steps.pitr.args import Args
from steps.pitr.errors import PitrError


def require_new_or_empty(path: Path, prefix: str, why: str, hint: str) -> None:
    """`path` does not exist, or is an empty directory; else a PitrError starting with `prefix`."""
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise PitrError(f"{prefix}{path} exists and is not a directory")
        if any(path.iterdir()):
            raise PitrError(f"{prefix}{path} is not empty: {why}", hint=hint)


def check_empty(pgdata: Path) -> None:
    require_new_or_empty(pgdata, "", "PITR restores only into a new or empty data directory (it never "
                          "overwrites one, and refuses a half-restored one)",
                          "choose a new path, or move that directory aside yourself once you are sure")


def prepare_bare(pgdata: Path) -> None:
    from steps.pg.server import server_user

    check_empty(pgdata)
    pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(pgdata, 0o700)
    pw = server_user()
    if pw is not None:
        os.chown(pgdata, pw.pw_uid, pw.pw_gid)
        probe = subprocess.run(["runuser", "-u", pw.pw_name, "--", "test", "-w", str(pgdata)], capture_output=True)
        if probe.returncode != 0:
            raise PitrError(f"the server's user {pw.pw_name} cannot reach {pgdata}",
                            hint="every parent directory must be traversable (x) by that user")


def precheck_debian(args: Args, pgdata: Path) -> str:
    """Refuses a cluster name or a data directory that exists already; returns pg_createcluster's path."""
    conf = Path("/etc/postgresql") / args.pg_version / str(args.debian_cluster)
    if conf.exists():
        raise PitrError(f"the Debian cluster {args.pg_version}/{args.debian_cluster} exists already ({conf})",
                        hint="choose a new cluster name; an existing cluster is never overwritten")
    check_empty(pgdata)
    exe = shutil.which("pg_createcluster")
    if exe is None:
        raise PitrError("pg_createcluster is not installed", hint="apt-get install postgresql-common")
    return exe


def prepare_debian(args: Args, pgdata: Path) -> None:
    """pg_createcluster makes a new cluster (config in /etc/postgresql/V/NAME); its fresh data directory is
    emptied for the base backup. Refuses a name or a data directory that exists already."""
    exe = precheck_debian(args, pgdata)
    proc = subprocess.run([exe, args.pg_version, str(args.debian_cluster), "-d", str(pgdata), "-p", str(args.port),
                           "--", "--no-sync"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PitrError(f"pg_createcluster failed: {proc.stderr.strip()[-800:]}")
    # The cluster was made a moment ago by us, for this: its initdb output makes way for the backup.
    for child in pgdata.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()

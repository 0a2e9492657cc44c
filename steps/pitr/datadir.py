"""The new data directory (and any directory a restored copy writes into): refused unless it is new or
empty, and refused when it is a symlink (a restore never writes, chmods or chowns through a link); made
0700, owned by us while the backup is extracted into it (the server's user gets the whole tree afterwards,
steps.pg.server.give_to_server, through descriptors), or made by `pg_createcluster` for a Debian cluster
(its fresh, empty data directory emptied and taken back until then). Modes and owners are set on
descriptors opened with O_NOFOLLOW, never by following a path. An existing data directory is never deleted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from steps.pitr.args import Args
from steps.pitr.errors import PitrError


def require_new_or_empty(path: Path, prefix: str, why: str, hint: str) -> None:
    """`path` does not exist, or is an empty directory (not a symlink); else a PitrError starting with `prefix`."""
    if path.is_symlink():
        raise PitrError(f"{prefix}{path} is a symlink (to {os.readlink(path)}): a restore never goes through a "
                        "link (it would chmod and chown whatever the link points at)",
                        hint="name the real directory")
    if path.exists():
        if not path.is_dir():
            raise PitrError(f"{prefix}{path} exists and is not a directory")
        if any(path.iterdir()):
            raise PitrError(f"{prefix}{path} is not empty: {why}", hint=hint)


def check_empty(pgdata: Path) -> None:
    require_new_or_empty(pgdata, "", "PITR restores only into a new or empty data directory (it never "
                          "overwrites one, and refuses a half-restored one)",
                          "choose a new path, or move that directory aside yourself once you are sure")


def prepare_bare(pgdata: Path) -> None:
    """The data directory made (or the empty one taken), 0700 and ours while the backup is extracted into it;
    the server's user must be able to reach it (every parent traversable)."""
    from steps.fs import UnsafePath, make_real_dir
    from steps.pg.server import server_user

    check_empty(pgdata)
    try:
        make_real_dir(pgdata, mode=0o700, uid=os.geteuid(), gid=os.getegid(), what="data directory")
    except UnsafePath as e:
        raise PitrError(e.message) from None
    pw = server_user()
    if pw is not None:
        reachable(pw.pw_name, pgdata)


def reachable(user: str, directory: Path) -> None:
    """PitrError unless `user` can traverse every directory down to `directory`'s parent."""
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(directory.parent)], capture_output=True)
    if probe.returncode != 0:
        raise PitrError(f"the server's user {user} cannot reach {directory}",
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
    # The cluster was made a moment ago by us, for this: its initdb output makes way for the backup (a link
    # in it is removed itself, never followed), and the directory is ours until the backup is in it.
    from steps.fs import UnsafePath, empty_subdir, open_real_dir, set_owner_mode

    try:
        fd = os.open(pgdata.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the operator's layout
        try:
            empty_subdir(fd, pgdata.name, what="data directory")
        finally:
            os.close(fd)
        fd = open_real_dir(pgdata, "data directory")
        try:
            set_owner_mode(fd, mode=0o700, uid=os.geteuid(), gid=os.getegid())
        finally:
            os.close(fd)
    except UnsafePath as e:
        raise PitrError(f"the new Debian cluster's data directory: {e.message}") from None

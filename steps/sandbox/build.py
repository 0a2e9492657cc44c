"""The sandbox: a throwaway AssetFlow on this machine, its backup repository, and a disaster.

Layout under the sandbox directory (mode 0755, so the server's user can traverse it when we are root):
`pgdata/` (the primary; in scenario 1 the disaster replaces it with a fresh, empty cluster, as a provisioned
replacement server), `run/` (its socket and log), `repo/` (the local backup repository),
`uploads/` (the application's attachment files), `restore/` (where a drill fetches the backup),
`repository.yaml` (the repository config), `at-backup.json` and `at-disaster.json` (per-table row counts
and checksums), `sandbox.json` (what was built and when). Beside it, `<sandbox dir>.keys/`: the backup's signing key
(0600) and its public key, which the config trusts (outside the directory, whose tree is given to the server's
user when a cluster is initialised in it); `wal/` there, the server user's, holds the WAL signing key; with
`runbook demo --encrypt`, `operator.agekey` (0600) and its `.pub`: the operator's age identity, the repository's
recipient (made once, kept across rebuilds like the signing key), and in scenario 2 as root a copy of it in
`wal/` that the server's user owns, for restore_command (`identity_file`).

Both scenarios end with re-protection (the `reprotect` action): the recovered cluster archives into its own
directory of `repo/` through the server venv's `runbook wal-push`. Scenario 2 (`pitr`) adds: WAL archiving on
the primary (`archive_command` = `runbook wal-push` into `repo/`,
`archive_timeout` = 30 s), a base backup and the daily backup (whose attachments snapshot the drill restores; the
disaster wipes `uploads/` as in scenario 1), `venv/` (a virtual environment made with /usr/bin/python3 holding this package,
because the server's user cannot run root's interpreter: built once, re-installed only when the package's
sources change), `pgdata-pitr/` (where the operator recovers to), `writes.json` (the stream of timestamped
writes around the disaster) and `at-target.json` (the tables just before the disaster).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from runbook.lockfile import current_user
from runbook.paths import state_home
from steps.pg.server import Server, give_to_server, remove_tree, server_user
from steps.sandbox import assetflow
from steps.wal.worker import stop_workers

DB = "assetflow_prod"
BACKUP_ROLE = "backup_user"


# The project's checkout when running from one (steps/sandbox/build.py is two packages below it); an installed
# package has no pyproject.toml there, and its own interpreter is then the one the operator installed.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def default_dir() -> Path:
    """`$RUNBOOK_SANDBOX_DIR`, else one per user: `/var/tmp/runbook-sandbox-<user>` as root (the server's user
    must traverse it; `<user>` is the one sudo ran for, else root), else `$XDG_STATE_HOME/runbook/sandbox`."""
    if os.environ.get("RUNBOOK_SANDBOX_DIR"):
        return Path(os.environ["RUNBOOK_SANDBOX_DIR"])
    if os.geteuid() == 0:
        user = os.environ.get("SUDO_USER") or current_user()
        return Path(f"/var/tmp/runbook-sandbox-{re.sub(r'[^A-Za-z0-9._-]+', '_', user)}")
    return state_home() / "sandbox"


@dataclass
class Sandbox:
    base: Path
    encrypt: bool = False  # set by build(): the repository config it writes encrypts (runbook demo --encrypt)
    archive: bool = False  # set by build(): the primary archives its WAL (scenario 2)
    engine: str = "own"  # set by build(): `pgbackrest` for `demo --engine pgbackrest` (steps.sandbox.pgbackrest)

    @property
    def server(self) -> Server:
        return Server(self.base / "pgdata", self.base / "run")

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    @property
    def uploads(self) -> Path:
        return self.base / "uploads"

    @property
    def config(self) -> Path:
        return self.base / "repository.yaml"

    @property
    def restore_dir(self) -> Path:
        return self.base / "restore"

    @property
    def env_file(self) -> Path:
        return self.base / "db.env"

    @property
    def info_file(self) -> Path:
        return self.base / "sandbox.json"

    @property
    def pitr_datadir(self) -> Path:
        return self.base / "pgdata-pitr"

    @property
    def venv(self) -> Path:
        return self.base / "venv"

    @property
    def source_cluster(self) -> str:
        """The system identifier of the cluster the sandbox built and backed up (the drill's source)."""
        return str(self.info().get("cluster", ""))

    def info(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.info_file.read_text()))
        except (OSError, ValueError):
            return {}

    # ---- building ----------------------------------------------------------------------------------

    def build(self, scale: int, files: int, say: Any = print, *, archive: bool = False,
              encrypt: bool = False, engine: str = "own") -> None:
        """A primary with AssetFlow loaded, fresh. Reuses the initialised cluster when there is one.

        `archive`: WAL archiving on, into the sandbox's repository, with `runbook wal-push` (scenario 2).
        `encrypt`: the repository encrypts everything written to it (age) to the operator's key (`operator_key`),
        which the config names as the identity of the hosts that restore.
        `engine`: `pgbackrest` (with `archive`): WAL archived with `pgbackrest archive-push` into a pgBackRest
        repository of the sandbox, the stanza made (steps.sandbox.pgbackrest)."""
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.encrypt = encrypt
        self.archive = archive
        self.engine = engine if archive else "own"
        self._stop_recovered()
        srv = self.server
        if not (srv.datadir / "PG_VERSION").exists():
            say("initialising a PostgreSQL 15 cluster")
            remove_tree(srv.datadir)
            srv.initdb("--data-checksums")
            self._reclaim_base()
        srv.stop()  # the settings below need a restart (archive_mode)
        stop_workers(self.wal_spool)  # an uploader or sealer of the last build still writing into the repository
        remove_tree(self.repo)
        self.repo.mkdir()
        (self.base / "backups.json").unlink(missing_ok=True)
        give_to_server(self.repo)  # wal-push writes here as the server's user
        remove_tree(self.wal_spool)
        self.wal_spool.mkdir()
        give_to_server(self.wal_spool)  # and notes here what its sealer signs (never the operator's state dir)
        if archive and self.engine == "pgbackrest":
            from steps.sandbox import pgbackrest

            pgbackrest.make_dirs(self.base)
            self._write_config()
            command = pgbackrest.archive_command(self.config)  # plain words: the sandbox's paths have no quotes
            srv.start("fsync=off", "archive_mode=on", "archive_timeout=30", "wal_level=replica",
                      f"archive_command='{command}'")
            pgbackrest.stanza_create(self.config, say)
        elif archive:
            exe = self.server_runbook(say)
            self._write_config()
            srv.start("fsync=off", "archive_mode=on", "archive_timeout=30", "wal_level=replica",
                      f"archive_command='{exe} wal-push -c {self.config} %p'")
        else:
            srv.start("fsync=off", "archive_mode=off")
        say(f"server up on {srv.socket_dir}" + (" with WAL archiving into the repository" if archive else ""))
        # Every database of the sandbox's cluster goes (a game day may have restored under another name), then
        # the roles that owned them.
        srv.psql("SELECT format('DROP DATABASE %I WITH (FORCE)', datname) FROM pg_database "
                 "WHERE datname NOT IN ('postgres', 'template0', 'template1') \\gexec")
        for role in (assetflow.APP_ROLE, BACKUP_ROLE):
            srv.psql(f"DROP ROLE IF EXISTS {role}")
        srv.psql(assetflow.setup_sql(DB))
        srv.psql(f"CREATE ROLE {BACKUP_ROLE} LOGIN REPLICATION; GRANT pg_read_all_data TO {BACKUP_ROLE}")
        t0 = time.monotonic()
        srv.psql(f"SET ROLE {assetflow.APP_ROLE};\n" + assetflow.SCHEMA, db=DB)
        srv.psql(f"SET ROLE {assetflow.APP_ROLE};\n" + assetflow.data_sql(scale), db=DB)
        remove_tree(self.uploads)
        self.uploads.mkdir(parents=True)
        written = assetflow.write_attachments(self.uploads, files)
        if written:
            srv.psql(f"SET ROLE {assetflow.APP_ROLE};\n" + assetflow.attachments_sql(written), db=DB)
        # pg_read_all_data does not cover large objects in PostgreSQL 15: grant each one to the backup role.
        srv.psql(f"SELECT format('GRANT SELECT ON LARGE OBJECT %s TO {BACKUP_ROLE}', oid) "
                 "FROM pg_largeobject_metadata \\gexec", db=DB)
        srv.psql("ANALYZE", db=DB)
        size = srv.psql(f"select pg_size_pretty(pg_database_size('{DB}'))")
        say(f"AssetFlow loaded: {size}, {len(written)} attachment files ({time.monotonic() - t0:.1f}s)")
        remove_tree(self.restore_dir)
        self.restore_dir.mkdir()  # ours, not the server's: fetch-latest-backup refuses a parent another user owns
        self._write_config()
        self.env_file.write_text(  # the plan's secrets file; trust auth here, but the password is masked all the same
            f"DB_HOST={srv.socket_dir}\nDB_PORT={srv.port}\nDB_USER=postgres\nDB_PASSWORD=sandbox-pw-{os.getpid()}\n")
        os.chmod(self.env_file, 0o600)
        self.info_file.write_text(json.dumps({"built_at": _now(), "scale": scale, "files": files, "db": DB,
                                              "cluster": self.system_identifier()}, indent=2))

    def _write_config(self) -> None:
        self.config.write_text(self._config_text())
        self._own_config()

    def _own_config(self) -> None:
        """The config as docs/repository-config.md says: 0640, owned by root (when we are root) with the server's
        group, which reads it (wal-push); a config the server's user owns is refused to root."""
        pw = server_user()
        if pw is not None:
            os.chown(self.config, 0, pw.pw_gid)
        os.chmod(self.config, 0o640)

    @property
    def wal_spool(self) -> Path:
        """The WAL commands' spool (sealing notes, read-ahead), the server's user's: the server the sandbox starts
        inherits the operator's environment, whose state directory that user cannot write."""
        return self.base / "wal-spool"

    @property
    def signing_key(self) -> Path:
        """The sandbox backup host's signing key: beside the sandbox directory (as its lock is), outside the tree
        that is given to the server's user whenever a cluster is initialised in it."""
        return self.base.with_name(self.base.name + ".keys") / "backup.key"

    def _keys(self) -> tuple[Path, Path]:
        """The sandbox backup host's signing key (made once, kept across rebuilds) and its public key file."""
        from steps.repository.signing import create_key_files

        key, pub = self.signing_key, self.signing_key.with_name("backup.key.pub")
        if not key.exists():
            create_key_files(key, "the sandbox's backup key")
        os.chmod(key.parent, 0o755)  # the public key is read by whoever reads the repository
        return key, pub

    def _wal_keys(self) -> tuple[Path, Path]:
        """The sandbox database host's WAL key (signing.wal_private_key: the sealer of wal-push signs its WAL
        ledgers with it), in a directory of its own owned by the server's user, who alone reads it."""
        from steps.repository.signing import create_key_files

        key = self.signing_key.with_name("wal") / "wal.key"
        pub = key.with_name("wal.key.pub")
        if not key.exists():
            key.parent.mkdir(mode=0o755, exist_ok=True)
            create_key_files(key, "the sandbox's WAL key")
        pw = server_user()
        if pw is not None:
            for p in (key.parent, key, pub):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(key.parent, 0o755)
        return key, pub

    @property
    def operator_key(self) -> Path:
        """The operator's age identity (`runbook demo --encrypt`): made once beside the signing keys, kept across
        rebuilds, removed by `--down`; its public key (`operator.agekey.pub`) is the repository's recipient."""
        return self.signing_key.with_name("operator.agekey")

    @property
    def server_operator_key(self) -> Path:
        """The server user's copy of the operator's identity, for `wal-fetch` in restore_command (scenario 2)."""
        return self.signing_key.with_name("wal") / "operator.agekey"

    def identity_file(self) -> Path:
        """The identity file the config names for the hosts that restore.

        Two readers, two users: the operator (fetch-latest-backup, restore-attachments, verify-backup, pitr,
        check) and, in scenario 2, the PostgreSQL server's user, who runs `runbook wal-fetch` as restore_command.
        An identity file must be 0600 and its reader's own (or root's) (steps.crypto.age.load_identities), so a
        file root owns is closed to the server's user. When we are root and the server runs as another user,
        scenario 2 therefore names a second copy, in the server user's key directory (beside its WAL key) and
        owned by it: wal-fetch reads it as its own, and root's readers accept that one owner besides root
        (steps.crypto.age.load_identities). Scenario 1 has no restore_command: the operator's own copy."""
        pw = server_user()
        if not self.archive or pw is None or pw.pw_uid == os.geteuid():
            return self.operator_key
        return self.server_operator_key

    def recipient(self) -> str:
        """The operator's public key (age1...): the repository's recipient."""
        from steps.crypto.age import load_recipients

        return load_recipients([str(self.operator_key.with_name(self.operator_key.name + ".pub"))])[0]

    def _operator_keys(self) -> tuple[Path, str]:
        """The operator's identity, made when missing, and its copy for the server's user when one is needed
        (identity_file); returns the file to name in the config and the recipient."""
        from steps.crypto.keys import create_identity_file

        key = self.operator_key
        self._keys()  # the key directory, 0755 (the public keys in it are read by the server's user)
        if not key.exists():
            create_identity_file(key, "the sandbox operator's age key (runbook demo --encrypt)")
        wanted = self.identity_file()
        if wanted != key:
            pw = server_user()
            assert pw is not None  # identity_file() names the copy only for another server user
            self._wal_keys()  # the server user's key directory
            tmp = wanted.with_name(wanted.name + ".tmp")
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.read_bytes())
                os.fchown(f.fileno(), pw.pw_uid, pw.pw_gid)
            os.replace(tmp, wanted)
        return wanted, self.recipient()

    def _encryption_text(self) -> str:
        identity, recipient = self._operator_keys()
        return f"encryption: {{recipients: [{recipient}], identity_files: [{identity}]}}\n"

    def _config_text(self) -> str:
        key, pub = self._keys()
        wal_key, wal_pub = self._wal_keys()
        return (
            "# The sandbox's repository config, written by `runbook demo`.\n"
            "version: 1\n"
            f"cluster: {{host: {self.server.socket_dir}, port: {self.server.port}, user: {BACKUP_ROLE}, "
            f"databases: [{DB}]}}\n"
            f"local: {{path: {self.repo}{', encrypt: true' if self.encrypt else ''}}}\n"
            f"{self._encryption_text() if self.encrypt else ''}"
            "retention: {keep_last: 3, keep_days: 7}\n"
            f"attachments: {{path: {self.uploads}}}\n"
            "checks:\n"
            "  expect_tables: [assets, locations, users, loans, maintenance_records, attachments]\n"
            "  smoke:\n"
            "    - select count(*) > 0 from assets\n"
            "    - select count(*) = 0 from loans where due_at <= loaned_at\n"
            f"backup: {{state_dir: {self.base / 'backup-state'}}}\n"
            f"wal: {{spool_dir: {self.wal_spool}}}\n"
            f"signing: {{private_key: {key}, wal_private_key: {wal_key}, public_keys: [{pub}, {wal_pub}]}}\n"
            + (self._pgbackrest_text() if self.engine == "pgbackrest" else "")
        )

    def _pgbackrest_text(self) -> str:
        from steps.sandbox import pgbackrest

        return pgbackrest.config_text(self.base, self.server.datadir, self.server.socket_dir, self.server.port)

    # ---- the drill's story -------------------------------------------------------------------------

    def backup(self, say: Any = print) -> None:
        say("taking the daily backup with `runbook backup`")
        proc = subprocess.run([sys.executable, "-m", "runbook", "backup", "-c", str(self.config)],
                              capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise RunbookError(f"the sandbox's backup failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
        self._snapshot("at-backup.json")
        (self.base / "attachments-at-backup.json").write_text(
            json.dumps(assetflow.dir_tree_digest(self.uploads), indent=2, sort_keys=True))
        self._note_backup()

    def logical_backups(self) -> list[Path]:
        """The directories of the sandbox cluster's logical backups of the database, oldest first."""
        root = self.repo / "clusters" / self.source_cluster / "logical" / DB
        if not self.source_cluster or not root.is_dir():
            return []
        return sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())

    def _note_backup(self) -> None:
        """`backups.json`: each logical backup the sandbox took (id, snapshot time, the rows it holds), as taken:
        what a clean recovery would reach (a game day's baseline), whatever a fault does to the repository."""
        made = self.logical_backups()
        if not made:
            return
        try:
            taken = json.loads((self.base / "backups.json").read_text())
        except (OSError, ValueError):
            taken = []
        if taken and taken[-1].get("backup_id") == made[-1].name:
            return
        manifest = json.loads((made[-1] / "manifest.json").read_text())
        taken.append({"backup_id": made[-1].name, "snapshot_time": manifest.get("snapshot_time"),
                      "counts": json.loads((self.base / "at-backup-counts.json").read_text())})
        (self.base / "backups.json").write_text(json.dumps(taken, indent=2))

    def verify_backup(self, kind: str, say: Any = print) -> None:
        """`runbook verify-backup` of the newest backup of `kind` (--encrypt): the operator's key opens what the
        backup host encrypted, and the backup restores into a throwaway cluster (level `restored`)."""
        say(f"verifying the encrypted {kind} backup with `runbook verify-backup --kind {kind}` (decrypted with the "
            "operator's key, restored into a throwaway cluster)")
        proc = subprocess.run([sys.executable, "-m", "runbook", "verify-backup", "-c", str(self.config), "--kind", kind,
                               "--scratch-dir", str(self.base)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunbookError(f"the sandbox's verify-backup --kind {kind} failed (exit {proc.returncode}):\n"
                               f"{(proc.stderr.strip() or proc.stdout.strip())[-3000:]}")
        say((proc.stdout.strip().splitlines() or ["verified"])[-1])

    def keep_writing(self, loans: int, say: Any = print) -> int:
        """The application goes on after the backup: these rows exist only in the database that will burn."""
        self.server.psql(
            f"SET ROLE {assetflow.APP_ROLE};\n"
            f"INSERT INTO loans (asset_id, user_id, loaned_at, due_at) SELECT 1 + i, 1 + i, now(), now() + interval '7 days' "
            f"FROM generate_series(1, {loans}) i;\n"
            f"INSERT INTO audit_log (actor, action) SELECT 'user1', 'loan after backup' FROM generate_series(1, {loans});",
            db=DB,
        )
        say(f"the application kept writing: {2 * loans} rows after the backup")
        return 2 * loans

    def disaster(self, say: Any = print) -> datetime:
        """The server is lost with its database, and the attachments are wiped; a freshly built replacement
        server (a new cluster: a new system identifier) waits on the same socket for the recovery, as a
        provisioned one would. Returns the moment data was lost."""
        self._snapshot("at-disaster.json")
        lost_at = datetime.now(UTC)
        srv = self.server
        srv.psql(f"DROP DATABASE {DB} WITH (FORCE)")
        srv.stop("immediate")
        remove_tree(srv.datadir)
        srv.initdb("--data-checksums")  # gives the sandbox's directory (the config too) to the server's user
        self._reclaim_base()
        self._own_config()
        srv.start("fsync=off")
        self._wipe_uploads()
        remove_tree(self.restore_dir)
        self.restore_dir.mkdir()
        say(f"DISASTER at {lost_at:%H:%M:%S} UTC: the server is lost with database {DB}, attachments wiped; a "
            f"fresh replacement server (a new cluster, system identifier {self.system_identifier()}) waits on "
            f"{srv.socket_dir}")
        info = self.info()
        info["disaster_at"] = lost_at.isoformat()
        self.info_file.write_text(json.dumps(info, indent=2))
        return lost_at

    def _reclaim_base(self) -> None:
        """initdb gives the data directory's parent (this directory) to the server's user; take the directory
        itself back (its subdirectories stay the server's), as a real host's /srv/assetflow is root's: the
        recovery's private working directories beside uploads/ and restore/ need a parent that only root or
        we can change (steps.fs.private_dir)."""
        st = self.base.stat()
        if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            os.chown(self.base, os.geteuid(), os.getegid())

    def _wipe_uploads(self) -> None:
        """The disaster takes the attachments too: the directory stays, empty, for the restore."""
        for child in self.uploads.iterdir():
            remove_tree(child) if child.is_dir() else child.unlink()

    def down(self) -> None:
        self._stop_recovered()
        unmount_under(self.base)  # a game day's small file system (steps.sandbox.faults.disk)
        if (self.server.datadir / "PG_VERSION").exists():
            self.server.stop("immediate")
        stop_workers(self.wal_spool)
        remove_tree(self.base)
        remove_tree(self.signing_key.parent)

    # ---- scenario 2: WAL archiving, a base backup, writes, a wrong DROP TABLE ------------------------------

    def _stop_recovered(self) -> None:
        """A server recovered by an earlier drill listens on the same socket: stop it and remove it (every
        `pgdata-pitr*` directory: an operator who started again into a new one, as the pitr step says to, or an
        earlier attempt moved aside); a recovery the operator pointed elsewhere in the sandbox (a game day:
        another pgdata) is stopped too."""
        if not self.base.is_dir():
            return
        for pid in [*self.base.glob("*/postmaster.pid"), *self.base.glob("*/*/postmaster.pid")]:
            d = pid.parent
            if d != self.server.datadir and not d.is_symlink() and (d / "PG_VERSION").exists():
                Server(d, self.server.socket_dir).stop("immediate")
        for datadir in sorted(self.base.glob(f"{self.pitr_datadir.name}*")):
            if not datadir.is_dir() or datadir.is_symlink():
                continue
            if (datadir / "PG_VERSION").exists():
                Server(datadir, self.server.socket_dir).stop("immediate")
            remove_tree(datadir)
            (self.base / f"{datadir.name}.recovery.log").unlink(missing_ok=True)

    def server_runbook(self, say: Any = print) -> str:
        """The `runbook` the server's user runs for archive_command/restore_command.

        Not root: the server runs as us, so this interpreter's `runbook` does. Root: a venv under the sandbox
        made with /usr/bin/python3 holding a copy of this package (root's interpreter may live where the
        server's user cannot go), built when missing, re-installed when the package's sources changed."""
        own = Path(sys.executable).parent / "runbook"
        given = os.environ.get("RUNBOOK_SERVER_RUNBOOK")  # a venv built already (the tests share one)
        if given and os.access(given, os.X_OK):
            return given
        if os.geteuid() != 0:
            return str(own)
        src_root = SOURCE_ROOT
        if not (src_root / "pyproject.toml").exists():
            return str(own)  # an installed package: its interpreter is wherever the operator installed it
        stamp = _source_stamp(src_root)
        marker = self.venv / ".runbook-sources"
        exe = self.venv / "bin" / "runbook"
        if exe.exists() and marker.exists() and marker.read_text() == stamp:
            return str(exe)
        t0 = time.monotonic()
        src = self.base / "venv-src"
        remove_tree(src)
        src.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md", "runbook", "steps"):
            p = src_root / name
            if p.is_dir():
                shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif p.exists():
                shutil.copy2(p, src / name)
        fresh = not exe.exists()
        if fresh:
            say("making the server's virtual environment (/usr/bin/python3, once)")
            remove_tree(self.venv)
            _run([shutil.which("python3", path="/usr/bin") or "python3", "-m", "venv", str(self.venv)], "venv")
        pip = [str(self.venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        _run(pip + ([] if fresh else ["--no-deps", "--force-reinstall"]) + [str(src)], "pip install")
        remove_tree(src)
        for root, dirs, _files in os.walk(self.venv):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        marker.write_text(stamp)
        say(f"server venv ready: {exe} ({time.monotonic() - t0:.0f}s)")
        return str(exe)

    def basebackup(self, say: Any = print) -> None:
        say("taking a base backup with `runbook basebackup`")
        proc = subprocess.run([sys.executable, "-m", "runbook", "basebackup", "-c", str(self.config), "--quiet"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunbookError(f"the sandbox's base backup failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
        say(proc.stdout.strip())

    def pitr_disaster(self, seconds: float = 4.0, interval: float = 0.1, say: Any = print, *,
                      archived: bool = True) -> dict[str, Any]:
        """A steady stream of timestamped writes into audit_log; half-way, a wrong `DROP TABLE`, and the
        attachments are wiped (the server's disk is lost with them).

        Records the moment just before the disaster (the recovery target, server time), which writes were
        acknowledged before it and which started after it, forces a WAL switch so that everything up to the
        disaster is archived, and waits for the archive (not when `archived` is false: a game day broke
        archiving). The primary keeps running: stopping it is the runbook's first PITR step."""
        import psycopg

        srv = self.server
        conninfo = {"host": str(srv.socket_dir), "port": srv.port, "user": "postgres", "dbname": DB,
                    "autocommit": True}
        acked: list[tuple[int, float]] = []  # (seq, monotonic time of the acknowledgement)
        started: list[tuple[int, float]] = []
        stop = threading.Event()
        errors: list[str] = []

        def writer() -> None:
            try:
                with psycopg.connect(**conninfo) as c:  # type: ignore[arg-type]
                    seq = 0
                    while not stop.is_set():
                        seq += 1
                        started.append((seq, time.monotonic()))
                        c.execute("INSERT INTO audit_log (actor, action, detail) VALUES ('writer', 'tick', %s)",
                                  (json.dumps({"seq": seq}),))
                        acked.append((seq, time.monotonic()))
                        time.sleep(interval)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(str(e))

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        time.sleep(seconds / 2)
        facts = self.table_facts()
        with psycopg.connect(**conninfo) as c:  # type: ignore[arg-type]
            before = time.monotonic()
            target = c.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            after = time.monotonic()
            time.sleep(0.2)
            c.execute("DROP TABLE maintenance_records")
            disaster_at = c.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        self._wipe_uploads()
        time.sleep(seconds / 2)
        stop.set()
        t.join(timeout=10)
        if errors:
            raise RunbookError(f"the sandbox's writer failed: {errors[0]}")
        if archived:
            self._switch_and_wait()
        else:  # archiving is broken (a game day's fault): nothing more reaches the archive, nobody waits for it
            srv.psql("SELECT pg_switch_wal()")
        record = {
            "target_time": target.isoformat(), "disaster_at": disaster_at.isoformat(),
            "acked_before_target": [s for s, at in acked if at < before],
            "started_after_target": [s for s, at in started if at > after],
            "writes": len(acked), "interval_s": interval,
        }
        (self.base / "writes.json").write_text(json.dumps(record, indent=2))
        (self.base / "at-target.json").write_text(json.dumps(facts, indent=2))
        info = self.info()
        info.update({"disaster_at": disaster_at.isoformat(), "target_time": target.isoformat(), "scenario": "pitr"})
        self.info_file.write_text(json.dumps(info, indent=2))
        say(f"{len(acked)} timestamped writes into audit_log every {interval * 1000:.0f} ms; DISASTER at "
            f"{disaster_at:%H:%M:%S.%f} UTC: DROP TABLE maintenance_records, attachments wiped; the moment just "
            "before it: "
            f"{target.isoformat()}")
        return record

    def _switch_and_wait(self, timeout: float = 60) -> None:
        """pg_switch_wal(), then wait until the archiver has archived that segment."""
        srv = self.server
        seg = srv.psql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout
        while True:
            row = srv.psql("SELECT coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') "
                           "FROM pg_stat_archiver")
            last, failed, last_failed = row.split("|")
            if last and last[:24] >= seg:
                return
            if time.monotonic() > deadline:
                raise RunbookError(f"WAL segment {seg} was not archived within {timeout:.0f} s "
                                   f"(failures: {failed}, last failed: {last_failed or 'none'}); see {srv.log}")
            time.sleep(0.2)

    # ---- facts -------------------------------------------------------------------------------------

    def system_identifier(self, datadir: Path | None = None) -> str:
        """The cluster's system identifier: its directory in the repository."""
        data = ((datadir or self.server.datadir) / "global" / "pg_control").read_bytes()
        return str(int.from_bytes(data[:8], "little"))

    def table_facts(self, db: str = DB) -> dict[str, dict[str, Any]]:
        """Per table: its rows as the backup counts them (steps.pg.rows: a table's own rows, FROM ONLY; what a
        backup cannot hold is left out) and an md5 of those rows in a stable order."""
        import psycopg
        from psycopg import sql

        from steps.pg.rows import count_rows

        srv = self.server
        out: dict[str, dict[str, Any]] = {}
        with psycopg.connect(host=str(srv.socket_dir), port=srv.port, user="postgres", dbname=db,
                             autocommit=True) as pg:
            counted = count_rows(pg)
            for name, rows in sorted(counted.counts.items()):
                schema, table = name.split(".", 1)
                digest = pg.execute(sql.SQL("select coalesce(md5(string_agg(t::text, '|' order by t::text)), '') "
                                            "from only {} t").format(sql.Identifier(schema, table))).fetchone()
                out[name] = {"rows": rows, "md5": digest[0] if digest else ""}
        return out

    def _snapshot(self, name: str) -> None:
        facts = self.table_facts()
        (self.base / name).write_text(json.dumps(facts, indent=2))
        (self.base / name.replace(".json", "-counts.json")).write_text(
            json.dumps({t: f["rows"] for t, f in facts.items()}, indent=2))


def mounts_under(base: Path) -> list[Path]:
    """The mount points inside `base` (/proc/self/mounts), deepest first."""
    root = Path(os.path.realpath(base))
    found: list[Path] = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 1:
            point = Path(fields[1].replace("\\040", " "))
            if point != root and root in point.parents:
                found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(base: Path) -> None:
    """Unmount every file system mounted inside `base` (a sandbox's), before its tree is removed."""
    for point in mounts_under(base):
        proc = subprocess.run(["umount", str(point)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RunbookError(f"cannot unmount {point} inside the sandbox: {proc.stderr.strip()}",
                               hint=f"unmount it by hand (umount {point}), then run `runbook demo --down` again")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _source_stamp(root: Path) -> str:
    h = hashlib.sha256()
    for top in ("pyproject.toml", "runbook", "steps"):
        p = root / top
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RunbookError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}")

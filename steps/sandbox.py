"""The sandbox: a throwaway AssetFlow on this machine, its backup repository, and a disaster.

Layout under the sandbox directory (mode 0755, so the server's user can traverse it when we are root):
`pgdata/` (the primary), `run/` (its socket and log), `repo/` (the local backup repository),
`uploads/` (the application's attachment files), `restore/` (where a drill fetches the backup),
`repository.yaml` (the repository config), `at-backup.json` and `at-disaster.json` (per-table row counts
and checksums), `sandbox.json` (what was built and when).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.errors import RunbookError
from steps import assetflow
from steps.pgserver import Server, give_to_server, remove_tree

DB = "assetflow_prod"
BACKUP_ROLE = "backup_user"


def default_dir() -> Path:
    if os.environ.get("RUNBOOK_SANDBOX_DIR"):
        return Path(os.environ["RUNBOOK_SANDBOX_DIR"])
    if os.geteuid() == 0:
        return Path("/var/tmp/runbook-sandbox")
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "runbook" / "sandbox"


TABLE_SQL = """
select n.nspname || '.' || c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema') order by 1
"""


@dataclass
class Sandbox:
    base: Path

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

    def info(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.info_file.read_text()))
        except (OSError, ValueError):
            return {}

    # ---- building ----------------------------------------------------------------------------------

    def build(self, scale: int, files: int, say: Any = print) -> None:
        """A primary with AssetFlow loaded, fresh. Reuses the initialised cluster when there is one."""
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        srv = self.server
        if not (srv.datadir / "PG_VERSION").exists():
            say("initialising a PostgreSQL 15 cluster")
            remove_tree(srv.datadir)
            srv.initdb("--data-checksums")
        srv.start("fsync=off", "archive_mode=off")
        say(f"server up on {srv.socket_dir}")
        srv.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
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
        remove_tree(self.repo)
        remove_tree(self.restore_dir)
        self.repo.mkdir()
        self.restore_dir.mkdir()
        give_to_server(self.restore_dir)
        self.config.write_text(self._config_text())
        self.env_file.write_text(  # the plan's secrets file; trust auth here, but the password is masked all the same
            f"DB_HOST={srv.socket_dir}\nDB_PORT={srv.port}\nDB_USER=postgres\nDB_PASSWORD=sandbox-pw-{os.getpid()}\n")
        os.chmod(self.env_file, 0o600)
        self.info_file.write_text(json.dumps({"built_at": _now(), "scale": scale, "files": files, "db": DB}, indent=2))

    def _config_text(self) -> str:
        return (
            "# The sandbox's repository config, written by `runbook demo`.\n"
            "version: 1\n"
            f"cluster: {{host: {self.server.socket_dir}, port: {self.server.port}, user: {BACKUP_ROLE}, "
            f"databases: [{DB}]}}\n"
            f"local: {{path: {self.repo}}}\n"
            "retention: {keep_last: 3, keep_days: 7}\n"
            f"attachments: {{path: {self.uploads}}}\n"
            "checks:\n"
            "  expect_tables: [assets, locations, users, loans, maintenance_records, attachments]\n"
            "  smoke:\n"
            "    - select count(*) > 0 from assets\n"
            "    - select count(*) = 0 from loans where due_at <= loaned_at\n"
            f"backup: {{state_dir: {self.base / 'backup-state'}}}\n"
        )

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
        """The database is dropped and the attachments are wiped. Returns the moment data was lost."""
        self._snapshot("at-disaster.json")
        lost_at = datetime.now(UTC)
        self.server.psql(f"DROP DATABASE {DB} WITH (FORCE)")
        for child in self.uploads.iterdir():
            remove_tree(child) if child.is_dir() else child.unlink()
        remove_tree(self.restore_dir)
        self.restore_dir.mkdir()
        give_to_server(self.restore_dir)
        say(f"DISASTER at {lost_at:%H:%M:%S} UTC: database {DB} dropped, attachments wiped")
        info = self.info()
        info["disaster_at"] = lost_at.isoformat()
        self.info_file.write_text(json.dumps(info, indent=2))
        return lost_at

    def down(self) -> None:
        if (self.server.datadir / "PG_VERSION").exists():
            self.server.stop("immediate")
        remove_tree(self.base)

    # ---- facts -------------------------------------------------------------------------------------

    def table_facts(self, db: str = DB) -> dict[str, dict[str, Any]]:
        """Per table: exact row count and an md5 of its content in a stable order."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.server.psql(TABLE_SQL, db=db).splitlines():
            schema, table = name.split(".", 1)
            q = (f'select count(*), coalesce(md5(string_agg(t::text, \'|\' order by t::text)), \'\') '
                 f'from "{schema}"."{table}" t')
            count, digest = self.server.psql(q, db=db).split("|")
            out[name] = {"rows": int(count), "md5": digest}
        return out

    def _snapshot(self, name: str) -> None:
        facts = self.table_facts()
        (self.base / name).write_text(json.dumps(facts, indent=2))
        (self.base / name.replace(".json", "-counts.json")).write_text(
            json.dumps({t: f["rows"] for t, f in facts.items()}, indent=2))


def _now() -> str:
    return datetime.now(UTC).isoformat()

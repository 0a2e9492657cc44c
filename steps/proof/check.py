"""`runbook check`: is WAL archiving configured and working, are the backups fresh, what is the RPO exposure now.

For monitoring and for the last step of re-protection. Each check is `Check(name, status, detail, hint)`:
- connection: the cluster of the config's `cluster:` section (libpq conventions), its system identifier;
- repositories: each configured one can be read;
- archive_mode / archive_command: archiving on, through `runbook wal-push` (and this very config);
- archive_command:USER / restore_command:USER: the server's user (the data directory's owner) can execute the
  command, its links and its interpreter, and read the repository config it names; a runbook command answers
  `--version` as that user (steps.proof.server_user; as root, or as that user, on the server's host);
- archive_timeout: set, and no longer than the RPO target (`--rpo`, 5 min): a quiet database's last writes
  otherwise wait in pg_wal until a segment fills;
- pg_stat_archiver: a failure newer than the last success means archiving is failing now;
- archived_wal: the last file the server archived is in every repository; the RPO exposure now is the age of
  that archive when WAL has been written since;
- wal_switch (`--force-switch`): commits a transaction, `pg_switch_wal()`, and waits (`--timeout`) until every
  repository holds the finished segment;
- logical_backup / base_backup: the age of the newest genuine one (base backups may not exist yet: said so);
- signatures: every backup and record signed by a trusted key (steps.repository.signing); what is refused and
  why; unsigned ones accepted with `--allow-unsigned`; this host's own signing key among the trusted ones;
- recipients:local / recipients:s3 (warning only): encryption.recipients names a key the repository's encryption
  journal says was revoked, so new data is still encrypted to it;
- keys:local / keys:s3: which of this host's identity files (`encryption.identity_files`) open the newest
  logical backup's encrypted copy: its epoch's data key unwrapped, one object decrypted and its sha256 compared
  (steps.encrypted.reading); a host without identities (the backup host) is told so, as information;
- tablespaces: every tablespace is in the newest base backup (a point-in-time recovery from a backup taken
  before a CREATE TABLESPACE replays it at the original path: on the same host, the live directory).

It needs a role with `pg_monitor` (and EXECUTE on `pg_switch_wal` for `--force-switch`), never a superuser.
Exit codes: 0 all ok, 1 a warning, 2 a check failed, 3 the check could not run (config, connection).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from runbook.durations import rough_duration
from runbook.errors import Exit, RunbookError

Status = Literal["ok", "warning", "failed", "info"]
EXIT = {"ok": Exit.OK, "info": Exit.OK, "warning": Exit.WARNING, "failed": Exit.FAILED}
EXIT_CANNOT_RUN = Exit.CANNOT_RUN


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    hint: str | None = None


@dataclass
class CheckOptions:
    """What `runbook check` is asked (its flags), and what re-protection and `status` ask of it."""

    config: str | None = None  # the repository config; None: $RUNBOOK_CONFIG, then the default path
    force_switch: bool = False  # switch WAL and wait until every repository holds the finished segment
    timeout: float = 60.0  # how long force_switch waits
    rpo: float = 300.0  # the RPO target, seconds
    max_logical_age: float = 26 * 3600.0  # a daily job
    max_base_age: float = 8 * 86400.0  # a weekly job
    allow_unsigned: bool = False  # accept unsigned backups (a repository written before signing), with a warning
    engine_check: bool = True  # engine: pgbackrest: run `pgbackrest check` (it switches WAL; `status` does not)


@dataclass
class CheckResult:
    code: int  # 0 ok, 1 warning, 2 failed, 3 could not run
    checks: list[Check]
    generated_at: datetime
    config: Path | None = field(default=None)  # the config read, when it could be

    @property
    def verdict(self) -> str:
        return {0: "ok", 1: "warning", 2: "failed", 3: "could not run"}[self.code]


class Checker:
    def __init__(self, args: CheckOptions) -> None:
        self.args = args
        self.checks: list[Check] = []
        self.now = datetime.now(UTC)

    def add(self, name: str, status: Status, detail: str, hint: str | None = None) -> Check:
        c = Check(name, status, detail, hint)
        self.checks.append(c)
        return c

    # --- the run ----------------------------------------------------------------------------------

    def run(self) -> int:
        from steps.repository.config import load_repository_config

        try:
            cfg, path = load_repository_config(self.args.config)
        except RunbookError as e:
            self.add("config", "failed", str(e))
            return EXIT_CANNOT_RUN
        self.cfg, self.path = cfg, path.absolute()
        stores = self._stores()
        self._staging()
        try:
            conn = self._connect()
        except RunbookError as e:
            self.add("connection", "failed", e.message, e.hint)
            return EXIT_CANNOT_RUN
        with conn:
            facts = self._facts(conn)
            self._settings(facts)
            self._as_server_user(conn, facts)
            if cfg.engine == "pgbackrest":
                self._pgbackrest(conn, facts)
            else:
                self._own_wal(conn, facts, stores)
            tablespaces = conn.execute(
                "select oid::text, spcname, pg_tablespace_location(oid) from pg_tablespace"
                " where spcname not in ('pg_default', 'pg_global') order by oid").fetchall()
        self._backups(facts["sysid"], stores, tablespaces)
        worst = max((EXIT[c.status] for c in self.checks), default=0)
        return worst

    def _own_wal(self, conn: Any, facts: dict[str, Any], stores: list[Any]) -> None:
        """The product's own WAL archive: the segments in its repositories, sealed, without conflicting claims."""
        from steps.wal.store import open_wal_stores

        cfg = self.cfg
        wal_stores = open_wal_stores(cfg.local.path if cfg.local else None,
                                     cfg.s3.model_dump(mode="json") if cfg.s3 else None,
                                     encrypt={"local": cfg.encrypts("local"), "s3": cfg.encrypts("s3")})
        wal_stores = [s for s in wal_stores if s.name in {x.name for x in stores}]
        if self.args.force_switch:
            self._switch(conn, facts, wal_stores)
            self.now = datetime.now(UTC)
        self._archived(conn, facts, wal_stores)
        self._claims(facts, wal_stores)

    def _pgbackrest(self, conn: Any, facts: dict[str, Any]) -> None:
        """engine: pgbackrest: the server's archiver, pgBackRest's archive (does it hold what the server says it
        archived? the RPO exposure now) and, unless `status` asks, `pgbackrest check` (it switches WAL and waits
        for the segment in its repository: --force-switch's work, always)."""
        engine = self._engine()
        a = self._archiver(conn)
        last = a["last_archived_wal"]
        if self.args.engine_check:
            for c in engine.check(timeout=self.args.timeout):
                self.add(c.name, c.status, c.detail, c.hint)
            self.now = datetime.now(UTC)
            a = self._stat_archiver(conn)
            last = a["last_archived_wal"]
        if not last:
            self.add("archived_wal", "warning", "the server has archived nothing yet (since its statistics reset)",
                     "runbook check archives a segment now (pgbackrest check switches WAL)")
            return
        try:
            rng = engine.archive_range()
        except RunbookError as e:
            self.add("archived_wal", "failed", f"pgBackRest's archive cannot be read: {e.message}", e.hint)
            return
        age = (self.now - a["last_archived_time"]).total_seconds()
        segment = last[:24]
        if rng is None or rng.max_wal is None or (len(last) == 24 and rng.max_wal < segment):
            self.add("archived_wal", "failed", f"the server archived {last} {rough_duration(age)} ago, but "
                     f"pgBackRest's archive ends at {rng.max_wal if rng and rng.max_wal else 'nothing'}",
                     "is archive_command pushing to this stanza? compare it with pgbackrest.stanza and its config")
            return
        insert_lsn = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0] if not facts[
            "in_recovery"] else None
        pending = self._pending(insert_lsn, last, int(facts["segment_size"]))
        exposure = f"RPO exposure now: up to {rough_duration(age)} of WAL not yet archived" if pending else \
            "no WAL written since: nothing at risk"
        status: Status = "warning" if pending and age > self.args.rpo else "ok"
        self.add("archived_wal", status, f"newest archived {last}, {rough_duration(age)} ago, in pgBackRest's "
                 f"archive ({rng.min_wal} .. {rng.max_wal}); {exposure}",
                 "archiving lags behind: check pg_stat_archiver and the server log" if status == "warning" else None)

    def _engine(self) -> Any:
        """The physical engine of the config, one for the whole check (pgBackRest's info is read once)."""
        if getattr(self, "engine", None) is None:
            from steps.engines import engine_for

            self.engine = engine_for(self.cfg, self.path)
        return self.engine

    def _stores(self) -> list[Any]:
        from steps.repository.configured import checked_stores
        from steps.repository.store import RepositoryError

        out = []
        for which, got in checked_stores(self.cfg, RepositoryError):
            if isinstance(got, RepositoryError):
                self.add(f"repository:{which}", "failed", got.message, got.hint)
                continue
            self.add(f"repository:{which}", "ok", got.describe())
            out.append(got)
            self._marker(which, got)
        return out

    def _marker(self, which: str, store: Any) -> None:
        """The repository marker (steps.repository.store.MARKER): without it `wal-fetch` cannot tell the
        repository from an empty mount point or a wrong path, and refuses to answer "missing". Reported, never
        written here (a writer writes it: backup, basebackup, wal-push)."""
        from steps.repository.store import MARKER

        try:
            present = store.has_marker()
        except RunbookError as e:
            self.add(f"repository_marker:{which}", "warning", f"cannot look for the {MARKER} marker: {e.message}")
            return
        if present:
            return
        self.add(f"repository_marker:{which}", "warning",
                 f"{store.describe()} has no {MARKER} marker at its root: it may not be the repository (an "
                 "unmounted file system, a wrong path or prefix), and wal-fetch refuses to answer \"missing\" from "
                 "it, except where the cluster's archived WAL is already there (docs/wal.md)",
                 "if it is the repository, the next backup, basebackup or wal-push into it writes the marker; "
                 "if not, mount it or correct the path")

    def _staging(self) -> None:
        """Stale staging (steps.backup.staging): whole dumps a killed backup left behind, that the next backup
        removes. Reported, never removed here."""
        from steps.backup.staging import fallback_root, find_stale

        cfg = self.cfg
        roots = {r for r in (cfg.backup.staging_dir, cfg.basebackup.staging_dir) if r is not None}
        if cfg.backup.staging_dir is None or cfg.basebackup.staging_dir is None:
            roots.add(cfg.local.path / ".staging" if cfg.local is not None else fallback_root(cfg))
        lock_dir = cfg.backup.lock_dir or (cfg.local.path / "locks" if cfg.local is not None else cfg.state_dir() / "locks")
        try:
            stale = [st for root in sorted(roots) for st in find_stale(root, lock_dir)]
        except OSError as e:
            self.add("staging", "info", f"cannot look for stale staging: {e.strerror}: {e.filename}",
                     "run check as the user that runs the backups to see it")
            return
        if not stale:
            return
        total = sum(st.size for st in stale)
        self.add("staging", "warning",
                 f"stale staging left by {len(stale)} backup(s) that did not finish (killed?), "
                 f"{total / 1e6:.1f} MB: " + ", ".join(str(st.path) for st in stale),
                 "the next `runbook backup` / `runbook basebackup` removes it under its lock")

    def _connect(self) -> Any:
        from steps.pg.tools import Conn, connect

        c = self.cfg.cluster
        self.conn_info = Conn(c.host, c.port, c.user)
        self.dbname = c.databases[0] if c.databases else "postgres"
        return connect(self.conn_info, self.dbname, autocommit=True, application_name="runbook check")

    def _facts(self, conn: Any) -> dict[str, Any]:
        row = conn.execute(
            "select current_user, current_setting('server_version'), pg_is_in_recovery(),"
            " (select system_identifier::text from pg_control_system()),"
            " current_setting('archive_mode'), current_setting('archive_command'),"
            " (select setting::int from pg_settings where name = 'archive_timeout'),"
            " current_setting('archive_library'), current_setting('wal_segment_size'),"
            " (select setting::bigint from pg_settings where name = 'wal_segment_size')").fetchone()
        keys = ["user", "version", "in_recovery", "sysid", "archive_mode", "archive_command", "archive_timeout",
                "archive_library", "segment_size_text", "segment_size"]
        facts = dict(zip(keys, row, strict=True))
        where = self.conn_info.describe(self.dbname)
        role = "a standby (in recovery)" if facts["in_recovery"] else "a primary"
        self.add("connection", "ok", f"{where} as {facts['user']}: PostgreSQL {facts['version']}, {role}, "
                 f"system identifier {facts['sysid']}, WAL segments of {facts['segment_size_text']}")
        return facts

    def _settings(self, f: dict[str, Any]) -> None:
        mode = f["archive_mode"]
        if mode == "off":
            self.add("archive_mode", "failed", "archive_mode = off: no WAL is archived, point-in-time recovery "
                     "is impossible", "set archive_mode = on (needs a restart) and archive_command")
        elif mode == "always" or not f["in_recovery"]:
            self.add("archive_mode", "ok", f"archive_mode = {mode}")
        else:
            self.add("archive_mode", "warning", "archive_mode = on on a standby: it archives nothing until promoted")
        cmd = f["archive_command"] or ""
        if f["archive_library"]:
            self.add("archive_command", "warning", f"archive_library = {f['archive_library']!r} is used, "
                     "not archive_command", "clear archive_library to archive with runbook wal-push")
        elif not cmd.strip():
            self.add("archive_command", "failed", "archive_command is empty: WAL piles up in pg_wal unarchived",
                     self._archive_hint())
        elif self.cfg.engine == "pgbackrest":
            self._pgbackrest_command(cmd)
        elif "wal-push" not in cmd:
            self.add("archive_command", "warning", f"archive_command = {cmd!r} does not use runbook wal-push",
                     "the repository gets no WAL from this server: "
                     "archive_command = '/path/to/venv/bin/runbook wal-push -c CONFIG %p'")
        else:
            other = self._other_config(cmd)
            if other:
                self.add("archive_command", "warning", f"archive_command = {cmd!r} uses the repository config "
                         f"{other}, not {self.path}", "the WAL goes elsewhere than this config's repositories")
            else:
                self.add("archive_command", "ok", f"archive_command = {cmd!r}")
        timeout = int(f["archive_timeout"] or 0)
        rpo = self.args.rpo
        if timeout == 0:
            self.add("archive_timeout", "warning", "archive_timeout = 0: on a quiet database the last writes wait "
                     "in pg_wal until a segment fills, for hours", f"set archive_timeout to at most {rpo:g} s "
                     "(the RPO target); 60 s is common")
        elif timeout > rpo:
            self.add("archive_timeout", "warning", f"archive_timeout = {timeout} s is longer than the RPO target "
                     f"{rpo:g} s", f"set archive_timeout to at most {rpo:g} s")
        else:
            self.add("archive_timeout", "ok", f"archive_timeout = {timeout} s (RPO target {rpo:g} s)")

    def _archive_hint(self) -> str:
        if self.cfg.engine == "pgbackrest" and self.cfg.pgbackrest is not None:
            return f"archive_command = 'pgbackrest --stanza={self.cfg.pgbackrest.stanza} archive-push %p'"
        return "archive_command = '/path/to/venv/bin/runbook wal-push -c CONFIG %p'"

    def _pgbackrest_command(self, cmd: str) -> None:
        """engine: pgbackrest: archive_command is pgBackRest's archive-push, for this config's stanza."""
        assert self.cfg.pgbackrest is not None
        stanza = self.cfg.pgbackrest.stanza
        try:
            words = shlex.split(cmd)
        except ValueError:
            words = cmd.split()
        given = [w.split("=", 1)[1] for w in words if w.startswith("--stanza=")]
        given += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--stanza"]
        if "archive-push" not in words:
            self.add("archive_command", "warning", f"archive_command = {cmd!r} does not use pgbackrest archive-push "
                     "(engine: pgbackrest)", "pgBackRest's archive gets no WAL from this server: "
                     + self._archive_hint())
        elif given and given[-1] != stanza:
            self.add("archive_command", "warning", f"archive_command = {cmd!r} pushes to stanza {given[-1]}, not "
                     f"{stanza} (pgbackrest.stanza)", "the WAL goes to another stanza than this config's")
        else:
            self.add("archive_command", "ok", f"archive_command = {cmd!r}")

    def _as_server_user(self, conn: Any, facts: dict[str, Any]) -> None:
        """archive_command and restore_command, looked at and run (`--version`) as the server's user, the owner of
        its data directory, as PostgreSQL runs them (steps.proof.server_user)."""
        import psycopg

        from runbook.paths import DEFAULT_CONFIG
        from steps.proof.server_user import probe_command, server_user

        try:
            datadir, restore = conn.execute(
                "select current_setting('data_directory'), current_setting('restore_command')").fetchone()
        except psycopg.Error as e:
            self.add("server_user", "info", f"archive_command not run as the server's user: cannot read "
                     f"data_directory: {str(e).strip()}", "the role needs pg_read_all_settings (pg_monitor has it)")
            return
        user = server_user(datadir)
        if user is None:
            self.add("server_user", "info", f"the server's data directory {datadir} is not on this host: its "
                     "archive and restore commands are not run as its user from here",
                     "run `runbook check` as root on the server's host")
            return
        commands = [("archive_command", facts["archive_command"] or "")] if not facts["archive_library"] else []
        commands.append(("restore_command", restore or ""))
        for setting, command in commands:
            if command.strip():
                found = probe_command(setting, command, user, DEFAULT_CONFIG, identities=self._identity_files)
                self.add(f"{setting}:{user}", found.status, found.detail, found.hint)

    def _identity_files(self, config: str) -> list[str]:
        """encryption.identity_files of the config a restore_command names (this one, or another read here)."""
        cfg = self.cfg
        if Path(config).absolute() != self.path:
            from steps.repository.config import load_repository_config

            try:
                cfg, _ = load_repository_config(config)
            except RunbookError:
                return []  # the walk names an unreadable config; a broken one fails the command itself
        return [str(p) for p in cfg.encryption.identity_files] if cfg.encryption else []

    def _other_config(self, cmd: str) -> str | None:
        try:
            words = shlex.split(cmd)
        except ValueError:
            return None
        for i, w in enumerate(words):
            given = words[i + 1] if w in ("-c", "--config") and i + 1 < len(words) else (
                w.split("=", 1)[1] if w.startswith("--config=") else None)
            if given:
                return None if Path(given).absolute() == self.path else given
        return None

    def _stat_archiver(self, conn: Any) -> dict[str, Any]:
        row = conn.execute("select archived_count, last_archived_wal, last_archived_time, failed_count,"
                           " last_failed_wal, last_failed_time, stats_reset from pg_stat_archiver").fetchone()
        keys = ["archived_count", "last_archived_wal", "last_archived_time", "failed_count", "last_failed_wal",
                "last_failed_time", "stats_reset"]
        return dict(zip(keys, row, strict=True))

    def _archived(self, conn: Any, facts: dict[str, Any], stores: list[Any]) -> None:
        a = self._archiver(conn)
        self._archived_in(conn, facts, stores, a)

    def _archiver(self, conn: Any) -> dict[str, Any]:
        """pg_stat_archiver: is archiving failing now? (its row, for what follows)"""
        a = self._stat_archiver(conn)
        failing = a["last_failed_time"] is not None and (
            a["last_archived_time"] is None or a["last_failed_time"] > a["last_archived_time"])
        if failing:
            self.add("pg_stat_archiver", "failed",
                     f"archiving is failing: {a['failed_count']} failures, the last for {a['last_failed_wal']} "
                     f"{rough_duration((self.now - a['last_failed_time']).total_seconds())} ago, after the last success "
                     f"({a['last_archived_wal'] or 'none'})",
                     "read the server log for archive_command's message; WAL piles up in pg_wal meanwhile")
        else:
            extra = f" ({a['failed_count']} failures earlier, all followed by successes)" if a["failed_count"] else ""
            self.add("pg_stat_archiver", "ok", f"{a['archived_count']} files archived since "
                     f"{a['stats_reset']:%Y-%m-%d %H:%M}, no failure since the last success{extra}")
        return a

    def _archived_in(self, conn: Any, facts: dict[str, Any], stores: list[Any], a: dict[str, Any]) -> None:
        from steps.repository.layout import wal_key
        from steps.wal.store import stat_archived

        last = a["last_archived_wal"]
        if not last:
            self.add("archived_wal", "warning", "the server has archived nothing yet (since its statistics reset)",
                     "runbook check --force-switch archives a segment now")
            return
        key = wal_key(facts["sysid"], last)
        missing = []
        for s in stores:
            try:
                if stat_archived(s, key) is None:
                    missing.append(s.describe())
            except RunbookError as e:
                missing.append(f"{s.describe()} ({e.message})")
        age = (self.now - a["last_archived_time"]).total_seconds()
        insert_lsn = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0] if not facts[
            "in_recovery"] else None
        pending = self._pending(insert_lsn, last, int(facts["segment_size"]))
        if missing:
            self.add("archived_wal", "failed", f"the server archived {last} {rough_duration(age)} ago, but "
                     f"{', '.join(missing)} do(es) not hold it", "is archive_command using another repository "
                     "config? compare it with this one")
            return
        exposure = f"RPO exposure now: up to {rough_duration(age)} of WAL not yet archived" if pending else \
            "no WAL written since: nothing at risk"
        status: Status = "warning" if pending and age > self.args.rpo else "ok"
        self.add("archived_wal", status, f"newest archived {last}, {rough_duration(age)} ago, in every repository; {exposure}",
                 "archiving lags behind: check pg_stat_archiver and the server log" if status == "warning" else None)
        self._sealed(facts, stores, last, age)

    def _sealed(self, facts: dict[str, Any], stores: list[Any], last: str, age: float) -> None:
        """Is the newest archived file in a signed WAL ledger (steps.wal.ledger)? A recovery replays only what
        the ledgers sign: an archive that is not sealed is one no recovery takes without allow_unsigned."""
        from steps.repository.signing import SigningError, trust_from_config
        from steps.wal.ledger import ledger_prefix, read_index

        try:
            trust = trust_from_config(self.cfg)
        except SigningError as e:
            self.add("wal_sealed", "warning", f"the signed WAL ledgers cannot be checked: {e.message}", e.hint)
            return
        import time

        for s in stores:
            index = read_index([s], trust, int(facts["sysid"]), last)
            waited = 0.0
            while last not in index.segments and age + waited < 10 and waited < 5:  # archived just now
                time.sleep(0.5)
                waited += 0.5
                index = read_index([s], trust, int(facts["sysid"]), last)
            name = f"wal_sealed:{s.name}"
            problems = index.errors + index.refused
            if last in index.segments:
                self.add(name, "warning" if problems else "ok",
                         f"the newest archived {last} is in a signed WAL ledger of {s.describe()}"
                         + (f"; {'; '.join(problems)}" if problems else ""))
                continue
            try:
                any_ledger = bool(s.list_some(ledger_prefix(facts["sysid"])))
            except RunbookError:
                any_ledger = True
            if not any_ledger:
                self.add(name, "warning", f"the archived WAL in {s.describe()} is not sealed: no signed WAL ledger "
                         "at all, so a recovery replays it only with allow_unsigned",
                         "set signing.wal_private_key (a key of the server's user, its .pub among public_keys): "
                         "`runbook keys create --out KEY` as that user; docs/wal.md")
                continue
            late = age > 60
            self.add(name, "failed" if late else "warning",
                     f"the newest archived {last} ({rough_duration(age)} ago) is in no signed WAL ledger of "
                     f"{s.describe()}" + (f" ({'; '.join(problems)})" if problems else "")
                     + ("; a recovery now would end before it" if late else "; the sealer signs it in a moment"),
                     "the sealer (wal-push --seal-worker) is not sealing: read seal-worker.log under "
                     "wal.spool_dir/<system identifier>/seal-*/ of the server's user (is the WAL key readable "
                     "by it?)" if late else None)

    def _claims(self, facts: dict[str, Any], stores: list[Any]) -> None:
        """Two different segments of one name (steps.wal.archive.push_one's claims, kept on stores that may
        ignore conditional writes): a name pushed with two contents, which wal-fetch refuses."""
        from collections import defaultdict

        from steps.repository.layout import wal_claims_root

        root = wal_claims_root(facts["sysid"])
        for s in stores:
            if not s.verify_after_write:
                continue  # a local archive cannot hold two contents of one name (link(2))
            try:
                listed = s.list(root)
            except RunbookError as e:
                self.add(f"wal_conflicts:{s.name}", "warning", f"cannot list {root} in {s.describe()}: {e.message}")
                continue
            by_name: dict[str, set[str]] = defaultdict(set)
            for x in listed:
                parts = x.key[len(root):].split("/")
                if len(parts) == 2:
                    by_name[parts[0]].add(parts[1])
            both = sorted(n for n, shas in by_name.items() if len(shas) > 1)
            if both:
                self.add(f"wal_conflicts:{s.name}", "failed",
                         f"two different segments of one name in {s.describe()}: {', '.join(both)} (each pushed "
                         "with different content; the store ignores conditional writes). wal-fetch refuses them, "
                         "so a recovery stops there",
                         "two clusters with one system identifier archive here, or pg_wal was altered: find out "
                         "which copy is right, put it in place and remove the wrong claim under "
                         f"{root}<name>/")

    @staticmethod
    def _pending(insert_lsn: str | None, last: str, segment_size: int) -> bool:
        """Has WAL been written after the last archived segment?"""
        from steps.repository.layout import parse_wal_name

        if insert_lsn is None:
            return False
        hi, lo = insert_lsn.split("/")
        lsn = (int(hi, 16) << 32) | int(lo, 16)
        try:
            w = parse_wal_name(last)
        except ValueError:
            return True
        if w.kind not in ("segment", "partial"):
            return True
        archived_end = (w.segno(segment_size) + 1) * segment_size
        return lsn > archived_end + 40  # past the next segment's long page header: records were written

    def _switch(self, conn: Any, facts: dict[str, Any], stores: list[Any]) -> None:
        from steps.repository.layout import wal_key
        from steps.wal.store import stat_archived

        if facts["in_recovery"]:
            self.add("wal_switch", "failed", "cannot switch WAL on a standby", "run check against the primary")
            return
        started = datetime.now(UTC)
        try:
            conn.execute("select txid_current()")  # something to switch away from: a commit record
            seg = conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()[0]
        except Exception as e:  # noqa: BLE001 - psycopg's errors, reported as a check
            self.add("wal_switch", "failed", f"pg_switch_wal() failed: {str(e).strip()}",
                     f"grant execute on function pg_switch_wal() to {facts['user']}")
            return
        key = wal_key(facts["sysid"], seg)
        t0 = time.monotonic()
        waiting = {s.describe(): s for s in stores}
        while waiting and time.monotonic() - t0 < self.args.timeout:
            for where, s in list(waiting.items()):
                try:
                    if stat_archived(s, key) is not None:
                        del waiting[where]
                except RunbookError:
                    pass
            if not waiting:
                break
            a = self._stat_archiver(conn)
            if a["last_failed_wal"] == seg and a["last_failed_time"] and a["last_failed_time"] >= started:
                self.add("wal_switch", "failed", f"switched to a new segment; archiving {seg} FAILED "
                         f"({a['failed_count']} failures)", "read the server log for archive_command's message")
                return
            time.sleep(0.2)
        took = time.monotonic() - t0
        # The server records the success just after the command returns: let pg_stat_archiver catch up.
        settle = time.monotonic() + 5
        while not waiting and time.monotonic() < settle:
            done = self._stat_archiver(conn)["last_archived_wal"]
            if done and done[:24] >= seg:
                break
            time.sleep(0.05)
        if waiting:
            self.add("wal_switch", "failed", f"switched WAL: {seg} did not reach {', '.join(waiting)} within "
                     f"{self.args.timeout:g} s", "is archive_command set and working? see pg_stat_archiver and "
                     "the server log")
        else:
            self.add("wal_switch", "ok", f"switched WAL: {seg} reached every repository in {took:.1f} s")

    def _backups(self, sysid: str, stores: list[Any], tablespaces: list[tuple[str, str, str]]) -> None:
        from steps.repository.catalogue import scan
        from steps.repository.manifest import Level
        from steps.repository.signing import SigningError, trust_from_config

        if not stores:
            return
        try:
            trust = trust_from_config(self.cfg, allow_unsigned=self.args.allow_unsigned)
        except SigningError as e:
            self.add("signatures", "failed", e.message, e.hint)
            return
        cat = scan(stores, trust=trust, kinds=("logical", "base"))
        self._signatures(cat, trust)
        self._revoked(stores, trust)
        mine = [e for e in cat.entries if e.cluster == sysid and e.level >= Level.readable]
        if mine:
            newest = mine[0]
            age = (self.now - newest.time).total_seconds()
            status: Status = "ok" if age <= self.args.max_logical_age else "warning"
            self.add("logical_backup", status, f"newest {newest.db} {newest.backup_id} ({newest.level.name}, in "
                     f"{', '.join(newest.locations())}), {rough_duration(age)} old",
                     None if status == "ok" else "is the daily `runbook backup` job running? see its status file")
            self._keys(newest, next((e for e in mine if e.encrypted()), None), trust)
        else:
            self.add("logical_backup", "warning", f"no readable logical backup of cluster {sysid}",
                     "run `runbook backup -c CONFIG` (and schedule it daily)")
        if self.cfg.engine == "pgbackrest":
            self._pgbackrest_backups()
            return
        newest_base = next((e for e in cat.base if e.cluster == sysid), None)  # genuine, newest first
        if newest_base is not None and tablespaces:
            self._tablespaces(newest_base, tablespaces)
        if newest_base is None:
            self.add("base_backup", "warning", f"no base backup of cluster {sysid} yet: point-in-time recovery "
                     "has nothing to start from", "run `runbook basebackup -c CONFIG` (and schedule it weekly)")
        else:
            age = (self.now - newest_base.time).total_seconds()
            status = "ok" if age <= self.args.max_base_age else "warning"
            self.add("base_backup", status, f"newest {newest_base.backup_id} (in {', '.join(newest_base.locations())}),"
                     f" {rough_duration(age)} old",
                     None if status == "ok" else "is the weekly `runbook basebackup` job running?")

    def _pgbackrest_backups(self) -> None:
        """engine: pgbackrest: the newest base backup pgBackRest lists (it backs up tablespaces itself)."""
        try:
            backups = self._engine().backups()
        except RunbookError as e:
            self.add("base_backup", "failed", f"pgBackRest's backups cannot be listed: {e.message}", e.hint)
            return
        if not backups:
            stanza = self.cfg.pgbackrest.stanza if self.cfg.pgbackrest else "?"
            self.add("base_backup", "warning", f"no pgBackRest backup of stanza {stanza} yet: "
                     "point-in-time recovery has nothing to start from",
                     "run `runbook basebackup -c CONFIG` (pgbackrest backup; schedule it weekly)")
            return
        newest = backups[0]
        age = (self.now - newest.stopped_at).total_seconds()
        status: Status = "ok" if age <= self.args.max_base_age else "warning"
        self.add("base_backup", status, f"newest {newest.label} ({newest.kind}, in pgBackRest), "
                 f"{rough_duration(age)} old",
                 None if status == "ok" else "is the weekly `runbook basebackup` job running?")

    def _revoked(self, stores: list[Any], trust: Any) -> None:
        """A writer whose encryption.recipients still name a key the repository's encryption journal says was
        revoked (`runbook keys revoke`) goes on encrypting new data to it (its epochs are wrapped for its
        configured recipients): warned per repository this host encrypts into. Only genuine journal records
        count (signed by a trusted key, as epochs are)."""
        from steps.crypto.age import load_recipients
        from steps.crypto.epochs import revoked

        writing = [s for s in stores if self.cfg.encrypts(s.name)]
        if not writing:
            return
        try:
            configured = load_recipients(self.cfg.encryption.recipients if self.cfg.encryption else [])
        except RunbookError as e:
            self.add("recipients", "failed", e.message, e.hint)
            return
        for store in writing:
            try:
                bad = sorted(revoked(store, trust) & set(configured))
            except RunbookError as e:
                self.add(f"recipients:{store.name}", "warning", f"cannot read the encryption journal of "
                         f"{store.describe()}: {e.message}", e.hint)
                continue
            if bad:
                self.add(f"recipients:{store.name}", "warning",
                         f"encryption.recipients names {', '.join(bad)}, revoked in the encryption journal of "
                         f"{store.describe()}: what this host writes there is still encrypted to "
                         f"{'it' if len(bad) == 1 else 'them'}",
                         "remove it from encryption.recipients on every host that writes backups or WAL: the next "
                         "write starts a new epoch without it (docs/encryption.md, \"Revocation\")")

    def _keys(self, newest: Any, entry: Any, trust: Any) -> None:
        """Which of this host's identity files open the encrypted copies of the newest backup, or of the newest
        encrypted one (`entry`) when the newest is stored in clear (steps.encrypted.reading: the epoch's data key
        unwrapped, one object decrypted and its sha256 compared). A host without identities (the backup host
        needs none) is told where the proof is made."""
        from steps.encrypted.reading import Keys, describe_recipients, which_keys_open
        from steps.repository import layout
        from steps.repository.manifest import sha256_bytes

        if entry is None:
            return
        if entry is not newest:
            self.add("encryption", "info", f"the newest backup, {newest.db} {newest.backup_id}, is stored in clear "
                     f"in {', '.join(newest.locations())}; the newest encrypted one is {entry.db} {entry.backup_id}")
        encrypted = entry.encrypted()
        keys = Keys(self.cfg, trust, allow_unsigned=self.args.allow_unsigned, config_path=self.path)
        what = f"{'newest' if entry is newest else 'newest encrypted'} {entry.db} backup {entry.backup_id}"
        for name, enc in encrypted.items():
            check = f"keys:{name}"
            if not keys.identity_files():
                self.add(check, "info", f"{what} is encrypted in {name} (epoch {enc.epoch}, "
                         f"{describe_recipients(enc.recipients)}); this host holds no identity (a backup host needs "
                         "none)", "run `runbook check` where encryption.identity_files is set to prove a key opens it")
                continue
            copy = entry.copies[name]
            try:
                data = copy.store.get_bytes(copy.prefix + layout.MANIFEST)
                if sha256_bytes(data) != copy.manifest_sha256:
                    raise RunbookError(f"{copy.prefix}{layout.MANIFEST} changed while it was read")
                manifest = type(entry.manifest).model_validate_json(data)
                proofs = which_keys_open(keys, copy.store, copy.prefix, manifest)
            except RunbookError as e:
                self.add(check, "failed", f"{what} in {name}: {e.message}", e.hint)
                continue
            opens = [p for p in proofs if p.opens]
            parts = [f"{p.file}: {p.detail}" for p in opens] + [f"not {p.file}: {p.detail}" for p in proofs
                                                                 if not p.opens]
            if opens:
                self.add(check, "ok", f"{what} in {name} opens with {len(opens)} of {len(proofs)} identity files: "
                         + "; ".join(parts))
            else:
                self.add(check, "failed", f"no identity file of this host opens {what} in {name}: "
                         + "; ".join(parts),
                         f"its epoch {enc.epoch} is wrapped for {', '.join(enc.recipients)} (and whoever `runbook "
                         "keys rotate` added): set encryption.identity_files to one of those keys")

    def _signatures(self, cat: Any, trust: Any) -> None:
        """Every backup signed by a trusted key: what is refused and why, what was accepted unsigned, and whether
        this host's own signing key is among those it trusts."""
        from steps.repository.signing import SigningError, signer_from_config

        problems = [f"{r.describe()}: {r.reason}" for r in cat.refused]
        problems += [f"record {key} in {name}: {why}" for name, key, why in cat.refused_records]
        if problems:
            self.add("signatures", "warning", f"{len(problems)} not genuine, never used: " + "; ".join(problems[:5])
                     + ("; ..." if len(problems) > 5 else ""),
                     "a forgery, a key this host does not trust (signing.public_keys), or backups from before "
                     "signing (`runbook prune --allow-unsigned` applies retention to those)")
        if unsigned := cat.unsigned():
            self.add("unsigned", "warning", f"{len(unsigned)} unsigned backups accepted because --allow-unsigned: "
                     + "; ".join(unsigned[:5]) + ("; ..." if len(unsigned) > 5 else ""))
        try:
            signer = signer_from_config(self.cfg, required=False)
        except SigningError:
            signer = None  # a reading host need not read the backup host's private key
        if signer is not None and signer.key_id not in trust.keys:
            self.add("signing_key", "warning", f"this host signs with key {signer.key_id} ({signer.path}), which is "
                     "not among signing.public_keys: its own backups are refused here",
                     f"add {signer.path}.pub to signing.public_keys")
        if not problems:
            n = len(cat.entries) + len(cat.base)
            keys = ", ".join(sorted(trust.keys)) or "none"
            self.add("signatures", "ok", f"{n} backups readable, {len(unsigned)} of them unsigned" if unsigned
                     else f"{n} backups, each signed by a trusted key ({keys})")

    def _tablespaces(self, entry: Any, tablespaces: list[tuple[str, str, str]]) -> None:
        """Every tablespace must be in the newest base backup: one created after it is re-created by a
        point-in-time recovery's replay at its original path, which on this host is the live directory."""
        import re

        bid, m = entry.backup_id, entry.manifest
        in_backup = {g.group(1) for o in m.objects if (g := re.match(r"^(\d+)\.tar(\.\w+)?$", o.path))}
        missing = [(oid, name, where) for oid, name, where in tablespaces if oid not in in_backup]
        if not missing:
            self.add("tablespaces", "ok", f"{len(tablespaces)} tablespace(s), all in base backup {bid}")
            return
        names = ", ".join(f"{name} (OID {oid}, {where})" for oid, name, where in missing)
        self.add("tablespaces", "warning",
                 f"not in the newest base backup {bid}: {names}. A point-in-time recovery from it replays "
                 "CREATE TABLESPACE at the original path: on this host, into the live tablespace's directory",
                 "run `runbook basebackup -c CONFIG` now (and after every CREATE TABLESPACE)")


def run_check(opts: CheckOptions) -> CheckResult:
    """Every check, the worst status as the exit code; never raises for what the operator can fix."""
    checker = Checker(opts)
    try:
        code = checker.run()
    except RunbookError as e:
        checker.add("check", "failed", e.message, e.hint)
        code = EXIT_CANNOT_RUN
    except Exception as e:  # noqa: BLE001 - a query failing (privileges): say so, exit "could not run"
        checker.add("check", "failed", f"{type(e).__name__}: {str(e).strip()}",
                    "the role needs pg_monitor (and EXECUTE on pg_switch_wal for --force-switch)")
        code = EXIT_CANNOT_RUN
    return CheckResult(code, checker.checks, checker.now, getattr(checker, "path", None))

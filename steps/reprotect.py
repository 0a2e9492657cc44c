"""reprotect: after a recovery, protect the recovered server again, before the all-clear.

Until this step the recovered service has no backup at all. In order:

1. **Which cluster.** Connect to the recovered server (a superuser: `ALTER SYSTEM` and a restart may be
   needed); its system identifier names its directory in the repository: a **new** one after a logical
   restore (a new cluster), the **same** one after PITR, going on on a new timeline (PostgreSQL picked an
   unused timeline from the archive's `.history` files, so no segment name of the old timeline is reused; and
   `wal-push` never overwrites an object).
2. **The config.** The repository config names the cluster it protects (`cluster:`: host, port). When the
   recovered server is elsewhere, a copy of the config with `cluster.host`/`cluster.port` pointing at it is
   written beside it (`config_out`, default `<config>.recovered.yaml`, same mode and owner): the scheduled
   `backup`/`basebackup`/`check` jobs must be pointed at it (said in the output).
3. **Archiving on.** `ALTER SYSTEM SET archive_mode = on, archive_command = '<runbook_exe> wal-push -c CONFIG
   %p', archive_timeout`; a reload when archive_mode was on already, else a restart (`restart_command`, or
   `pg_ctl restart` of the data directory as the server's user, or `pg_ctlcluster` for a Debian cluster).
   After PITR the new timeline's `.history` file is queued for the archiver (its `.ready` marker): PostgreSQL
   wrote it at promotion while archiving was off.
4. **A base backup and a logical backup**, with `runbook basebackup` and `runbook backup` on that config.
5. **A WAL switch** (as the superuser) waited for until the archiver reports it archived, then **`runbook
   check` until green** (every check ok), bounded by `check_timeout_s`.

In a **drill** nothing is written unless `drill_writes` says the repository is the drill's own (the sandbox's):
a drill reads backups from a repository and writes none into it (after PITR the drill's copy has production's
system identifier; its new timeline in production's archive would be followed by a later real recovery).

Outputs: `protected_at` (when protection was restored; the report shows it), `system_identifier`,
`timeline`, `base_backup_id`, `logical_backup_id`, `config`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runbook.errors import RunbookError
from steps.events import Events


class ReprotectError(RunbookError):
    title = "reprotect"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str = Field(min_length=1, description="The repository config whose repositories protect the server")
    host: str | None = Field(None, description="The recovered server: host or socket directory (default: PGHOST)")
    port: int | None = Field(None, ge=1, le=65535, description="Its port (default: PGPORT)")
    user: str | None = Field(None, description="A superuser of it, for ALTER SYSTEM (default: PGUSER)")
    db: list[str] = Field(default_factory=list, description="Databases to back up logically (default: the config's "
                          "cluster.databases)")
    into: str = Field("", description="The database the recovery restored when it is not `db` (restored under a "
                      "new name): backed up instead of `db` (empty: `db`)")
    runbook_exe: str | None = Field(None, description="Absolute path of `runbook` that the server's user can run, "
                                    "for archive_command (default: the one beside this Python)")
    archive_timeout: int = Field(60, ge=1, le=3600, description="archive_timeout in seconds (at most the RPO target)")
    restart_command: str | None = Field(None, description="Shell command that restarts the recovered server "
                                        "(default: pg_ctl restart of its data directory, as the server's user)")
    debian_cluster: str | None = Field(None, description="A Debian cluster name: restarted with pg_ctlcluster")
    pg_version: str = Field("15", description="Debian clusters: the major version")
    config_out: str | None = Field(None, description="Where the config for the recovered server is written when "
                                   "its cluster section points elsewhere (default: <config>.recovered.yaml)")
    check_timeout_s: float = Field(180, gt=0, le=3600, description="How long `check` may take to turn green")
    mode: Literal["live", "drill", "rehearsal"] = Field("live", description="The run's mode ({{ run.mode }})")
    drill_writes: bool = Field(False, description="In a drill, re-protect for real: only when the repository is "
                               "the drill's own (the sandbox's), never production's")
    rpo_s: float = Field(300, gt=0, description="The RPO target `check` holds archive_timeout to")

    @field_validator("db", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [x for x in (p.strip() for p in v.split(",")) if x]
        return v

    @field_validator("runbook_exe", "restart_command", "debian_cluster", "config_out", "host", "user", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v


def _say(text: str) -> None:
    print(f"reprotect: {text}", flush=True)


def _facts(conn: Any) -> dict[str, Any]:
    row = conn.execute(
        "select (select system_identifier::text from pg_control_system()), pg_is_in_recovery(),"
        " current_setting('data_directory'), current_setting('archive_mode'),"
        " ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,"
        " (select source from pg_settings where name = 'archive_mode'),"
        " current_setting('is_superuser')").fetchone()
    keys = ["sysid", "in_recovery", "data_directory", "archive_mode", "timeline", "archive_mode_source", "superuser"]
    return dict(zip(keys, row, strict=True))


def _same_server(cfg: Any, host: str | None, port: int | None) -> bool:
    def norm_host(h: str | None) -> str:
        h = h or os.environ.get("PGHOST") or "/var/run/postgresql"
        return os.path.realpath(h) if h.startswith("/") else h

    def norm_port(p: int | None) -> int:
        return int(p or os.environ.get("PGPORT") or 5432)

    return norm_host(cfg.cluster.host) == norm_host(host) and norm_port(cfg.cluster.port) == norm_port(port)


def config_for(cfg: Any, path: Path, args: Args) -> Path:
    """The config whose cluster section is the recovered server: the given one, or a copy pointing at it."""
    if _same_server(cfg, args.host, args.port):
        return path
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    cluster = dict(data.get("cluster") or {})
    if args.host:
        cluster["host"] = args.host
    if args.port:
        cluster["port"] = args.port
    data["cluster"] = cluster
    out = Path(args.config_out) if args.config_out else path.with_name(path.stem + ".recovered.yaml")
    text = (f"# Written by `runbook reprotect` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {path.name} for the "
            "recovered server.\n# Point the backup, basebackup and check jobs at this file.\n"
            + yaml.safe_dump(data, sort_keys=False))
    st = path.stat()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, st.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, out)
    from steps.repository.config import load_repository_config

    load_repository_config(out)  # the copy must load as the original does
    return out


def _restart(args: Args, facts: dict[str, Any]) -> None:
    from steps.pg.server import as_server
    from steps.pg.tools import PG_BIN

    if args.restart_command:
        cmd = ["bash", "-c", args.restart_command]
    elif args.debian_cluster:
        cmd = ["pg_ctlcluster", args.pg_version, args.debian_cluster, "restart"]
    else:
        # pg_ctl restart keeps the server's command-line options (postmaster.opts) but not its log file: name one,
        # or the new postmaster would write into (and hold open) our output.
        cmd = as_server([os.path.join(PG_BIN, "pg_ctl"), "-D", facts["data_directory"], "-m", "fast", "-w",
                         "-t", "120", "-l", str(_server_log(Path(facts["data_directory"]))), "restart"])
    _say("restarting the recovered server (archive_mode needs it): " + shlex.join(cmd))
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=300)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise ReprotectError(f"the restart failed (exit {proc.returncode}): {text.strip()[-600:]}",
                             hint="restart it by hand (archive_mode = on is set), then run this step again")


def _server_log(datadir: Path) -> Path:
    """Where the restarted server logs: beside its data directory (made for the server's user), else inside it."""
    from steps.pg.server import server_user

    log = datadir.parent / f"{datadir.name}.server.log"
    try:
        log.touch()
        pw = server_user()
        if pw is not None:
            os.chown(log, pw.pw_uid, pw.pw_gid)
        return log
    except OSError:
        return datadir / "reprotect-restart.log"


def _queue_history(facts: dict[str, Any]) -> str | None:
    """After PITR: mark the new timeline's history file `.ready`, so the archiver sends it first."""
    from steps.pg.server import as_server

    tli = int(facts["timeline"])
    if tli <= 1:
        return None
    name = f"{tli:08X}.history"
    wal = Path(facts["data_directory"]) / "pg_wal"
    status = wal / "archive_status"
    if not (wal / name).exists() or (status / f"{name}.done").exists() or (status / f"{name}.ready").exists():
        return None
    subprocess.run(as_server(["touch", str(status / f"{name}.ready")]), check=True, capture_output=True)
    return name


def _cli(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runbook", *argv], capture_output=True, text=True,
                          timeout=timeout)


def _newest(config: Path, sysid: str, kind: str, db: str | None = None) -> str | None:
    from steps.repository.catalogue import scan
    from steps.repository.config import load_repository_config
    from steps.repository.configured import open_stores
    from steps.repository.signing import trust_from_config

    cfg, _ = load_repository_config(config)
    cat = scan(open_stores(cfg), trust=trust_from_config(cfg), db=db, kinds=(kind,))  # type: ignore[arg-type]
    entries = cat.base if kind == "base" else cat.entries
    return next((e.backup_id for e in entries if e.cluster == sysid), None)


def switch_and_wait(conn: Any, timeout_s: float) -> str:
    """A commit, `pg_switch_wal()` (as the superuser: the backup role may not have EXECUTE on it), then wait until
    the archiver reports that segment archived (pg_stat_archiver), or its failure."""
    from steps.pg.tools import connect

    with connect(conn, "postgres", autocommit=True, application_name="runbook reprotect") as pg:
        pg.execute("select txid_current()")
        seg = str(pg.execute("select pg_walfile_name(pg_switch_wal())").fetchone()[0])
        deadline = time.monotonic() + timeout_s
        while True:
            last, failed = pg.execute("select coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') "
                                      "from pg_stat_archiver").fetchone()
            if last and last[:24] >= seg:
                return seg
            if time.monotonic() > deadline:
                raise ReprotectError(f"the WAL segment {seg} was not archived within {timeout_s:.0f} s (last "
                                     f"archived {last or 'none'}, last failed {failed or 'none'})",
                                     hint="read the server log for archive_command's message")
            time.sleep(0.2)


def check_until_green(config: Path, timeout_s: float, rpo_s: float, events: Events | None = None) -> list[Any]:
    """`runbook check` (steps.proof.check) again and again until every check is ok, for at most
    `timeout_s`. Returns the last checks; raises ReprotectError when it never turned green."""
    from steps.proof.check import Checker, CheckOptions

    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        checker = Checker(CheckOptions(config=str(config), timeout=min(60.0, timeout_s), rpo=rpo_s))
        try:
            code = checker.run()
        except RunbookError as e:
            checker.add("check", "failed", e.message, e.hint)
            code = 3
        bad = [c for c in checker.checks if c.status not in ("ok", "info")]
        if code == 0 and not bad:
            return checker.checks
        if time.monotonic() > deadline:
            detail = "; ".join(f"{c.name}: {c.detail}" for c in bad) or f"exit {code}"
            raise ReprotectError(f"runbook check is not green after {attempt} attempts ({timeout_s:.0f} s): {detail}",
                                 hint=f"run `runbook check -c {config}` and fix what it says")
        _say(f"check not green yet ({'; '.join(c.name for c in bad)}); again in 2 s")
        time.sleep(2)


def _unreachable(cfg: Any, path: Path, events: Events) -> str | None:
    """Every configured repository must answer before archiving is turned on: wal-push writes each segment into
    all of them, so one that is down would stall archiving (and the base backup waiting for its WAL) for good.
    The message when one does not (None: all answer)."""
    from steps.repository.configured import checked_stores
    from steps.repository.store import RepositoryError

    for name, got in checked_stores(cfg, RepositoryError):
        if isinstance(got, RepositoryError):
            msg = (f"the {name} repository cannot be reached ({got.message}): WAL archiving and the backups write "
                   "into every configured repository, so the recovered server cannot be protected while it is down; "
                   "nothing was changed on the server. Bring it back and retry this step; or protect into the other "
                   f"copy alone for now (its section removed from {path}, noted in the journal) and retry. The "
                   "service itself is back whatever this step says")
            events.check(f"{name} repository", "failed", msg)
            return msg
    return None


def main(args: Args, events: Events) -> int:
    from steps.pg.tools import Conn, connect
    from steps.pitr.args import default_runbook_exe
    from steps.repository.config import load_repository_config

    t0 = time.monotonic()
    if args.mode == "drill" and not args.drill_writes:
        msg = ("drill: re-protection is not done. A drill writes nothing into the repository it recovers from: "
               "after PITR the drill's copy has production's system identifier, and its new timeline in production's "
               "archive would be followed by a later real recovery. In a sandbox with its own repository, set "
               "drill_writes (the demo's profile does)")
        events.check("drill", "warning", msg)
        print(f"reprotect: {msg}")
        return 0
    cfg, path = load_repository_config(args.config)
    path = path.absolute()
    if (down := _unreachable(cfg, path, events)) is not None:
        print(down)
        return 1
    conn = Conn(args.host, args.port, args.user)
    try:
        pg = connect(conn, "postgres", autocommit=True, application_name="runbook reprotect")
    except RunbookError as e:
        events.check("connect", "failed", str(e))
        print(str(e))
        return 1
    try:
        with pg:
            facts = _facts(pg)
            if facts["in_recovery"]:
                raise ReprotectError("the server is still in recovery: protect it once it is promoted")
            if facts["superuser"] != "on":
                raise ReprotectError(f"{conn.describe('postgres')}: the role is not a superuser; ALTER SYSTEM needs one",
                                     hint="give the superuser with user: (or DB_USER in the secrets file)")
            sysid = str(facts["sysid"])
            _say(f"recovered server {conn.describe('postgres')}: system identifier {sysid}, timeline "
                 f"{facts['timeline']}, data directory {facts['data_directory']}")
            config = config_for(cfg, path, args)
            if config != path:
                _say(f"wrote {config} for the recovered server (cluster: {args.host}:{args.port or 5432}); point "
                     "the scheduled backup, basebackup and check jobs at it")
            events.check("repository config", "ok", str(config))
            exe = args.runbook_exe or default_runbook_exe()
            if not os.path.isabs(exe):
                raise ReprotectError(f"runbook_exe must be an absolute path, not {exe!r}")
            command = f"{shlex.quote(exe)} wal-push -c {shlex.quote(str(config))} %p"
            pg.execute("ALTER SYSTEM SET archive_mode = 'on'")
            from psycopg import sql

            pg.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
            pg.execute(sql.SQL("ALTER SYSTEM SET archive_timeout = {}").format(sql.Literal(str(args.archive_timeout))))
            history = _queue_history(facts)
            if history:
                _say(f"queued {history} (the new timeline's history) for the archiver")
            needs_restart = facts["archive_mode"] != "on"
            if not needs_restart:
                pg.execute("select pg_reload_conf()")
    except ReprotectError as e:
        events.check("archiving", "failed", str(e))
        print(str(e))
        return 1
    if needs_restart:
        try:
            _restart(args, facts)
        except (ReprotectError, subprocess.TimeoutExpired) as e:
            events.check("restart", "failed", str(e))
            print(str(e))
            return 1
    with connect(conn, "postgres", autocommit=True, application_name="runbook reprotect") as pg:
        time.sleep(0.2)
        now = _facts(pg)
        setting = pg.execute("select current_setting('archive_command')").fetchone()[0]
    if now["archive_mode"] != "on" or setting != command:
        msg = (f"archiving is not on after the {'restart' if needs_restart else 'reload'}: archive_mode = "
               f"{now['archive_mode']} (set from {now['archive_mode_source']}), archive_command = {setting!r}")
        events.check("archiving", "failed", msg)
        print(msg + "\nhint: a setting given on the server's command line or in postgresql.conf after the include "
              "wins over ALTER SYSTEM: remove it there")
        return 1
    events.check("archiving", "ok", f"archive_mode on, archive_command = {command!r}, archive_timeout = "
                 f"{args.archive_timeout} s, into cluster directory {sysid}")
    _say(f"archiving on into clusters/{sysid}/ of the repository")

    t1 = time.monotonic()
    r = _cli("basebackup", "-c", str(config), "--quiet", timeout=6 * 3600)
    print(r.stdout, end="", flush=True)
    if r.returncode != 0:
        msg = f"the base backup failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}"
        events.check("base backup", "failed", msg)
        print(msg)
        return 1
    base_id = _newest(config, sysid, "base")
    events.check("base backup", "ok", f"{base_id} ({time.monotonic() - t1:.0f} s)")

    dbs = [args.into] if args.into else (args.db or list(cfg.cluster.databases))
    logical_id = None
    t2 = time.monotonic()
    r = _cli("backup", "-c", str(config), *[x for d in dbs for x in ("--db", d)], timeout=6 * 3600)
    print(r.stdout, end="", flush=True)
    if r.returncode not in (0, 1):
        msg = f"the logical backup failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}"
        events.check("logical backup", "failed", msg)
        print(msg)
        return 1
    logical_id = _newest(config, sysid, "logical", dbs[0] if len(dbs) == 1 else None)
    events.check("logical backup", "warning" if r.returncode == 1 else "ok",
                 f"{logical_id} of {', '.join(dbs) or 'the configured databases'} ({time.monotonic() - t2:.0f} s)")

    try:
        seg = switch_and_wait(conn, args.check_timeout_s)
        _say(f"switched WAL as {conn.user or 'the superuser'}: {seg} reached the archive")
        checks = check_until_green(config, args.check_timeout_s, args.rpo_s, events)
    except ReprotectError as e:
        events.check("runbook check", "failed", str(e))
        print(str(e))
        return 1
    events.check("runbook check", "ok", f"{len(checks)} checks green, a forced WAL switch reached the archive")
    protected_at = datetime.now(UTC)
    events.output("protected_at", protected_at.isoformat())
    events.output("system_identifier", sysid)
    events.output("timeline", int(now["timeline"]))
    events.output("base_backup_id", base_id or "")
    events.output("logical_backup_id", logical_id or "")
    events.output("config", str(config))
    _say(f"protected again at {protected_at:%H:%M:%S} UTC ({time.monotonic() - t0:.0f} s): WAL archiving into "
         f"clusters/{sysid}/ (timeline {now['timeline']}), base backup {base_id}, logical backup {logical_id}, "
         "check green")
    return 0

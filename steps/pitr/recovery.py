"""Recovery of a restored data directory: its settings, the server started, the replay watched to its end.

- settings: `restore_command`, `recovery_settings` (the target), `server_settings` (port, socket, archiving
  off or to a separate directory), `empty_pg_wal`, `write_auto_conf` (postgresql.auto.conf and
  recovery.signal);
- the server: `start_server` (`pg_ctl -w` as the server's user, or `pg_ctlcluster`), `watch_recovery`
  (`pg_is_in_recovery()` polled until false, the postmaster checked alive, its log scanned for FATAL/PANIC),
  `finish_recovery` (after promotion: the timeline; the recovery settings removed), `stop_immediately`;
- the log: `server_log`, `log_tail`, `fatal_lines`, `recovery_facts` (the recovery point and where redo
  ended); `postmaster_alive`, `psql`, `archive_end`.

verify-backup reuses `empty_pg_wal`, `write_auto_conf`, `postmaster_alive`, `fatal_lines` and `log_tail`.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from runbook.lock import pid_alive
from steps.events import Events
from steps.fs import UnsafePath, read_plain_text
from steps.pitr.args import Args, bindir, default_runbook_exe, parse_target_time
from steps.pitr.errors import PitrError

LAST_XACT_RE = re.compile(r"last completed transaction was at log time (.+?)\s*$", re.M)
REDO_DONE_RE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
NOT_REACHED = "recovery ended before configured recovery target was reached"

# FATALs that end a client's connection, not the recovery (our own polling while the server starts, others)
CLIENT_FATALS = ("the database system is", "role \"", "database \"", "password authentication failed",
                 "no pg_hba.conf entry", "Peer authentication failed", "terminating connection due to")
RECOVERY_SETTINGS = ["restore_command", "recovery_target_time", "recovery_target_xid", "recovery_target_lsn",
                     "recovery_target_name", "recovery_target", "recovery_target_inclusive",
                     "recovery_target_action", "recovery_target_timeline"]


# --- configuration --------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def restore_command(args: Args, config_path: Path, verified: Path | None = None) -> str:
    if args.restore_command:
        return args.restore_command
    exe = args.runbook_exe or default_runbook_exe()
    if not os.path.isabs(exe):
        raise PitrError(f"runbook_exe must be an absolute path, not {exe!r}")
    check = f" --verified {shlex.quote(str(verified))}" if verified is not None else ""
    return f"{shlex.quote(exe)} wal-fetch -c {shlex.quote(str(config_path))}{check} %f %p"


def recovery_settings(args: Args, config_path: Path, verified: Path | None = None) -> dict[str, str]:
    s: dict[str, str] = {"restore_command": restore_command(args, config_path, verified),
                         "recovery_target_action": "promote", "recovery_target_timeline": "latest"}
    if args.target_kind == "time":
        s["recovery_target_time"] = parse_target_time(args.target).isoformat(sep=" ")
    elif args.target_kind == "xid":
        s["recovery_target_xid"] = args.target.strip()
    elif args.target_kind == "lsn":
        s["recovery_target_lsn"] = args.target.strip()
    elif args.target_kind == "name":
        s["recovery_target_name"] = args.target
    elif args.target_kind == "immediate":
        s["recovery_target"] = "immediate"
    if args.target_kind not in ("latest", "immediate"):
        s["recovery_target_inclusive"] = "on" if args.inclusive else "off"
    return s


def server_settings(args: Args, socket_dir: str) -> dict[str, str]:
    # hot_standby: connections during recovery, so that its progress can be watched
    s = {"port": str(args.port), "listen_addresses": args.listen_addresses, "hot_standby": "on"}
    if not args.debian_cluster:
        s["unix_socket_directories"] = socket_dir
    if args.archive_to:
        dest = shlex.quote(args.archive_to)
        s["archive_mode"] = "on"
        s["archive_command"] = f"test ! -f {dest}/%f && cp %p {dest}/%f"
    else:
        s["archive_mode"] = "off"
    return s


def empty_pg_wal(pgdata: Path) -> None:
    """A restored data directory's pg_wal holds nothing but an empty archive_status: the WAL comes from the
    archive, through restore_command. pg_wal is emptied only as a real directory inside the data directory,
    through descriptors: when it (or the data directory) is a link, nothing is removed (a PitrError)."""
    from steps.fs import UnsafePath, empty_subdir, exists_beneath, open_real_dir, open_subdir

    try:
        fd = open_real_dir(pgdata, "data directory")
        try:
            if exists_beneath(fd, "pg_wal"):
                empty_subdir(fd, "pg_wal", keep=("archive_status",), what="pg_wal")
            os.close(open_subdir(fd, "pg_wal/archive_status", create=True, what="pg_wal"))
        finally:
            os.close(fd)
    except UnsafePath as e:
        raise PitrError(f"{pgdata}/pg_wal is not a real directory of the data directory ({e.message}): it is "
                        "never emptied through a link", hint="the restored files are suspect: start again into "
                        "a new data directory, from another base backup") from None


def write_auto_conf(pgdata: Path, recovery: dict[str, str], server: dict[str, str]) -> None:
    path = pgdata / "postgresql.auto.conf"
    text = path.read_text() if path.exists() else "# Do not edit this file manually!\n"
    if not text.endswith("\n"):
        text += "\n"
    lines = [f"{k} = {_quote(v)}" for k, v in {**server, **recovery}.items()]
    path.write_text(text + "\n".join(lines) + "\n")
    (pgdata / "recovery.signal").write_text("")


# --- the server -----------------------------------------------------------------------------------------


def psql(pgdata_socket: str, port: int, user: str, sql: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    from steps.pg.server import as_server
    from steps.pg.tools import tool

    return subprocess.run(as_server([tool("psql"), "-h", pgdata_socket, "-p", str(port), "-U", user, "-d", "postgres",
                                     "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]),
                          capture_output=True, text=True, timeout=timeout)


def postmaster_alive(pgdata: Path) -> bool:
    try:
        pid = int(read_plain_text(pgdata / "postmaster.pid").splitlines()[0])
    except (OSError, ValueError, IndexError, UnsafePath):
        return False
    return pid_alive(pid)


def log_tail(log: Path, n: int = 15) -> str:
    try:
        return "\n".join(read_plain_text(log).splitlines()[-n:])
    except (OSError, UnsafePath):
        return "(no log)"


def fatal_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.search(r"\b(FATAL|PANIC):", ln)]


def own_log(log: Path, pw: Any) -> None:
    """The server's log file, made (or appended to) without following a link at its name, and given to the
    server's user on its descriptor: it sits beside the data directory, where that user may write."""
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise PitrError(f"the server log {log} cannot be opened as a plain file ({e.strerror}): a link there is "
                        "never followed", hint="remove it, or restore into another directory") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PitrError(f"the server log {log} is not a regular file")
        if pw is not None:
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
    finally:
        os.close(fd)


def start_server(args: Args, pgdata: Path, log: Path) -> None:
    from steps.pg.server import as_server, server_user

    if args.debian_cluster:
        cmd = ["pg_ctlcluster", args.pg_version, args.debian_cluster, "start"]
    else:
        own_log(log, server_user())
        # -w returns once the server accepts connections (consistent); the end of recovery is waited below.
        cmd = as_server([os.path.join(bindir(args), "pg_ctl"), "-D", str(pgdata), "-l", str(log), "-w",
                         "-t", str(int(min(args.timeout_s, 3600))), "start"])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        text = log_tail(log, 30)
        raise _recovery_failed(text, f"the restored server did not start (exit {proc.returncode}): "
                                     f"{(proc.stderr or proc.stdout).strip()[-400:]}")


def _recovery_failed(log_text: str, fallback: str) -> PitrError:
    fatal = fatal_lines(log_text)
    if any(NOT_REACHED in ln for ln in fatal) or NOT_REACHED in log_text:
        last = LAST_XACT_RE.findall(log_text)
        redo = REDO_DONE_RE.findall(log_text)
        reached = (f"; the archive ends at LSN {redo[-1]}" if redo else "") + \
                  (f", last transaction at {last[-1]}" if last else "")
        run_id = os.environ.get("RUNBOOK_RUN_ID")
        how = (f"`runbook resume {run_id} --set target_kind=latest`, then retry this step (this attempt's data "
               "directory is moved aside, not deleted)" if run_id else
               "target_kind latest, into a new data directory")
        best = (f"the best reachable point is the end of the WAL that could be replayed (LSN {redo[-1]}"
                if redo else "the best reachable point is the end of the WAL that could be replayed (") + \
               (f", last transaction at {_iso(last[-1])})" if last else ")")
        return PitrError(
            f"target beyond the archived WAL: recovery ended before the target was reached{reached}: the WAL "
            f"after it is missing (a gap in the archive, or archiving stopped); {best}",
            hint=f"to recover up to that point (the data after it is lost): {how}; a time or LSN target needs a "
                 "record past it to stop at, so target latest is how to stop at the end of the WAL. If the WAL "
                 "should be there, check archiving (`runbook check`, pg_stat_archiver on the old server) and copy "
                 "any surviving pg_wal segments into the archive")
    detail = "\n".join(fatal[-5:]) if fatal else log_text
    # restore_command's own reason (a wrong key, an altered or refused segment: wal-fetch exits 126, which the
    # server logs as "command not executable"), from the lines it wrote into the server log just before
    said = [ln.strip() for ln in log_text.splitlines() if ln.startswith("runbook wal-fetch:")]
    if said and fatal:
        detail += "\nrestore_command said: " + said[-1][len("runbook wal-fetch:"):].strip()
    return PitrError(f"{fallback}\n{detail}", hint="the server log above says why; the data directory is left "
                     "as it is for inspection: start again into a new one")


def watch_recovery(args: Args, pgdata: Path, log: Path, socket_dir: str, events: Events, start_lsn: int,
           end_lsn: int | None, t0: float) -> tuple[str | None, str | None]:
    """Poll until recovery ended; returns (last replayed xact time from SQL, last replay LSN)."""
    from steps.pg.walnames import format_lsn, parse_lsn

    deadline = time.monotonic() + args.timeout_s
    last_ts: str | None = None
    last_lsn: str | None = None
    sql = ("select pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, ''), "
           "coalesce(pg_last_xact_replay_timestamp()::text, '')")
    next_event = 0.0
    while True:
        if not postmaster_alive(pgdata):
            raise _recovery_failed(log_tail(log, 40), "the restored server stopped during recovery")
        text = read_plain_text(log, missing="")
        fatal = [ln for ln in fatal_lines(text) if not any(b in ln for b in CLIENT_FATALS)]
        if fatal or "PANIC:" in text:
            raise _recovery_failed(text, "the restored server reported a fatal error during recovery")
        proc = psql(socket_dir, args.port, args.user, sql)
        if proc.returncode == 0 and proc.stdout.strip():
            in_rec, lsn, ts = (proc.stdout.strip().split("|") + ["", ""])[:3]
            last_lsn = lsn or last_lsn
            last_ts = ts or last_ts
            if in_rec == "f":
                return last_ts, last_lsn
            now = time.monotonic()
            if lsn and now >= next_event:
                next_event = now + 2
                done = parse_lsn(lsn) - start_lsn
                total = (end_lsn - start_lsn) if end_lsn and end_lsn > start_lsn else None
                label = f"replayed to {lsn}" + (f" of {format_lsn(end_lsn)}" if end_lsn else "") + \
                        (f", last transaction {ts}" if ts else "") + f", target {args.target_kind} {args.target}".rstrip()
                events.progress(max(done, 0) / 1e6, total / 1e6 if total else None, "MB", label)
                print(f"pitr: {label} ({now - t0:.0f} s)", flush=True)
        if time.monotonic() > deadline:
            raise PitrError(f"recovery did not end within {args.timeout_s:.0f} s; the server is still replaying",
                            hint=f"watch {log}; raise timeout_s for a long replay")
        time.sleep(0.5)


def finish_recovery(args: Args, socket_dir: str) -> tuple[int, str | None]:
    """After promotion: the timeline, the current LSN; then the recovery settings are removed."""
    q = "select ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, pg_current_wal_lsn()"
    proc = psql(socket_dir, args.port, args.user, q)
    if proc.returncode != 0:
        raise PitrError(f"cannot query the promoted server: {proc.stderr.strip()}")
    tli, lsn = proc.stdout.strip().split("|")
    resets = "; ".join(f"ALTER SYSTEM RESET {s}" for s in RECOVERY_SETTINGS)
    proc = subprocess.run(
        _psql_argv(socket_dir, args.port, args.user), input=resets + ";",
        capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise PitrError(f"recovered, but removing the recovery settings failed: {proc.stderr.strip()}",
                        hint="run ALTER SYSTEM RESET restore_command (and recovery_target_*) by hand")
    return int(tli), lsn


def stop_immediately(args: Args, pgdata: Path) -> None:
    """Stop the restored server at once (`-m immediate`): `pg_ctl` as the server's user, or `pg_ctlcluster`."""
    stop_server(args, pgdata, "immediate")


def stop_server(args: Args, pgdata: Path, how: str = "fast") -> None:
    """Stop the restored server (`-m fast` by default): `pg_ctl` as the server's user, or `pg_ctlcluster`."""
    from steps.pg.server import as_server

    if not args.debian_cluster:
        subprocess.run(as_server([os.path.join(bindir(args), "pg_ctl"), "-D", str(pgdata), "-m", how, "-w",
                                  "stop"]), capture_output=True)
    else:
        subprocess.run(["pg_ctlcluster", args.pg_version, str(args.debian_cluster), "stop", "-m", how],
                       capture_output=True)


def _psql_argv(socket_dir: str, port: int, user: str) -> list[str]:
    from steps.pg.server import as_server
    from steps.pg.tools import tool

    return as_server([tool("psql"), "-h", socket_dir, "-p", str(port), "-U", user, "-d", "postgres", "-XAtq",
                      "-v", "ON_ERROR_STOP=1", "-f", "-"])


def archive_end(store: Any, sysid: str, segsize: int) -> int | None:
    from steps.pg.walnames import parse_segment
    from steps.repository.layout import archived_segment, wal_prefix

    best = None
    for key, _ in store.list_keys(wal_prefix(sysid)):
        seg = archived_segment(key)
        if seg is not None:
            n = parse_segment(seg, segsize)[1]
            best = n if best is None or n > best else best
    return None if best is None else (best + 1) * segsize


# --- the log --------------------------------------------------------------------------------------------


def server_log(args: Args, pgdata: Path) -> Path:
    """The restored server's log: the Debian cluster's, else `<pgdata>.recovery.log` beside the data directory."""
    return (Path("/var/log/postgresql") / f"postgresql-{args.pg_version}-{args.debian_cluster}.log"
            if args.debian_cluster else pgdata.parent / f"{pgdata.name}.recovery.log")


def recovery_facts(log: Path, last_ts: str | None, last_lsn: str | None) -> tuple[str | None, str | None]:
    """(the recovery point, the LSN where redo ended) from the server log: its last "last completed
    transaction was at log time ..." and "redo done at ...", else what `watch_recovery` saw over SQL."""
    text = read_plain_text(log, missing="")
    from_log = LAST_XACT_RE.findall(text)
    recovery_point = _iso(from_log[-1]) if from_log else (_iso(last_ts) if last_ts else None)
    redo = REDO_DONE_RE.findall(text)
    lsn = redo[-1] if redo else last_lsn
    return recovery_point, lsn


def _iso(text: str) -> str:
    """PostgreSQL's `2026-11-25 14:35:03.2588+00` as ISO 8601."""
    t = text.strip()
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        try:
            dt = datetime.strptime(t, "%Y-%m-%d %H:%M:%S.%f%z")
        except ValueError:
            return t
    return dt.isoformat()


REDO_START_RE = re.compile(r"redo starts at ([0-9A-F]+/[0-9A-F]+)")
REDO_TIMED_RE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+).*?elapsed: ([0-9.]+) s")


def redo_facts(log_text: str) -> tuple[int, float] | None:
    """(WAL bytes redone, seconds) from a server log's "redo starts at" / "redo done at ... elapsed: S s" lines
    (PostgreSQL 15 logs both), the last recovery in the log; None when it did not say."""
    from steps.pg.walnames import parse_lsn

    starts = REDO_START_RE.findall(log_text)
    dones = REDO_TIMED_RE.findall(log_text)
    if not starts or not dones:
        return None
    start, (end, elapsed) = parse_lsn(starts[-1]), dones[-1]
    done = parse_lsn(end)
    return (max(done - start, 0), float(elapsed)) if done >= start else None

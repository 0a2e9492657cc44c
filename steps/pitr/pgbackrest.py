"""The `pitr` action with `engine: pgbackrest` (steps.pitr.action dispatches here): `pgbackrest restore`
(steps.engines.pgbackrest.restore) into a new data directory, then the same recovery machinery as the
product's own engine (steps.pitr.recovery).

1. The backup set is the product's own choice, not pgBackRest's: the newest backup that **ended before** the
   target (its stop time, whole seconds, at least a second before a time target; its stop LSN <= an LSN target; the newest for xid, name, latest and
   immediate), or `backup_id` (a pgBackRest label). A target before the oldest backup's end is refused, as
   with the own engine, naming that backup. A time without a zone is refused by the arguments already.
2. Refused before anything is made: a target the archive range proves unreachable (an LSN past the end of the
   newest archived segment, a time more than a minute in the future); the configured production data
   directory as the target (`pg1-path` in the options or in pgbackrest.conf, `cluster.data_directory`) unless
   the runbook asks `delta: true`; a data directory that is not new or empty, unless `delta: true` (then
   pgBackRest's `--delta` rewrites only what differs); with `debian_cluster`, a cluster name that exists
   already (a new one is made with pg_createcluster, as for the own engine, and pgBackRest restores into its
   emptied data directory). pgBackRest itself refuses a data directory whose server runs.
3. `pgbackrest restore --pg1-path=<target> --set=<label> --type=time|xid|lsn|name|immediate|default
   --target=... --target-action=promote --archive-mode=off --tablespace-map-all=<dir>`, run as pgBackRest's
   user (steps.engines.pgbackrest.runner); the server's own settings for the copy (port, socket, hot_standby)
   go in as `--recovery-option`, so nothing is written into the restored directory by root. pgBackRest's
   `restore_command` (`pgbackrest archive-get`) is kept; tablespaces go under `tablespace_dir` (default
   `<pgdata>_tablespaces`), never to their production locations.
4. Then the own engine's steps: `pg_ctl -w start` as the server's user, the replay watched to promotion
   (`pg_is_in_recovery()`, the postmaster alive, FATAL/PANIC in its log; "recovery ended before configured
   recovery target was reached" explained as a target past the archive), the timeline, the recovery point,
   the recovery settings removed; the same outputs and report.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from steps.engines.facts import PhysicalBackup
from steps.engines.pgbackrest.restore import (
    archive_end_lsn,
    make_target_dir,
    production_datadirs,
    restore,
    run_user,
    stanza_facts,
)
from steps.engines.pgbackrest.runner import PgBackRestError
from steps.events import Events
from steps.pitr.args import Args, parse_target_time
from steps.pitr.errors import PitrError

# pgBackRest records a backup's stop as whole seconds, taken once the backup has stopped: the real end may be up
# to a second later than the figure. A time target counts a backup as ended only a second after it.
STOP_SLACK = timedelta(seconds=1)
# A time target this far past this host's clock is refused as "in the future" (another host's clock may run ahead).
CLOCK_SLACK = timedelta(seconds=60)


def choose_set(backups: list[PhysicalBackup], args: Args) -> PhysicalBackup:
    """The backup to restore (the own engine's rule, steps.pitr.backup.choose_backup), or a PitrError."""
    from steps.pg.walnames import parse_lsn

    usable = list(backups)
    if args.cluster:
        others = sorted({str(b.system_identifier) for b in usable} - {args.cluster})
        usable = [b for b in usable if b.system_identifier == args.cluster]
        if not usable and others:
            raise PitrError(f"no pgBackRest backup of cluster {args.cluster}, the one this recovery expects: the "
                            f"stanza holds backups of {', '.join(others)} only",
                            hint="the expected cluster (param source_cluster) is wrong, or the stanza was "
                                 "re-created for a new cluster; nothing was changed")
    if not usable:
        raise PitrError("no pgBackRest backup in the stanza" + (f" for cluster {args.cluster}" if args.cluster
                                                                 else ""),
                        hint="take one with `runbook basebackup` (pgbackrest backup); without a base backup only "
                             "a logical restore (scenario 1) is possible")
    usable = sorted(usable, key=lambda b: (b.stopped_at, b.label), reverse=True)
    if args.backup_id:
        chosen = next((b for b in usable if b.label == args.backup_id), None)
        if chosen is None:
            raise PitrError(f"no pgBackRest backup {args.backup_id} in the stanza",
                            hint="`runbook backups` lists them")
        return chosen
    oldest = usable[-1]
    if args.target_kind == "time":
        when = parse_target_time(args.target)
        for b in usable:
            if b.stopped_at + STOP_SLACK <= when:
                return b
        raise PitrError(
            f"target before the backup ends: the target {when.isoformat()} is before the end of the oldest "
            f"pgBackRest backup ({oldest.label}, ended {oldest.stopped_at.isoformat()}); a base backup can only be "
            "recovered to a moment after it ended",
            hint="choose a later target, or restore an older logical backup (scenario 1)")
    if args.target_kind == "lsn":
        target = parse_lsn(args.target)
        for b in usable:
            if b.stop_lsn and parse_lsn(b.stop_lsn) <= target:
                return b
        raise PitrError(f"target before the backup ends: LSN {args.target} is before the end of the oldest "
                        f"pgBackRest backup ({oldest.label}, stop LSN {oldest.stop_lsn})",
                        hint="choose a later LSN, or restore an older logical backup (scenario 1)")
    return usable[0]  # xid, name, latest, immediate: the newest (a target before it fails in recovery, said)


def refuse_early(args: Args, s: Any, st: Any, pgdata: Path, cfg: Any = None) -> None:
    """What can be refused is refused before anything is made (PitrError)."""
    from steps.pg.walnames import format_lsn, parse_lsn
    from steps.pitr.datadir import check_empty, precheck_debian

    if args.debian_cluster:
        if args.delta:
            raise PitrError("delta: true and debian_cluster: a new Debian cluster has nothing to rewrite",
                            hint="remove delta (a new cluster), or debian_cluster (restore into an existing directory)")
        precheck_debian(args, pgdata)  # a new cluster name, a new or empty data directory, pg_createcluster
    if any(os.path.realpath(p) == os.path.realpath(pgdata) for p in production_datadirs(s, cfg)):
        if not args.delta:
            raise PitrError(f"pgdata {pgdata} is the production data directory of stanza {s.stanza} (pg1-path): a "
                            "recovery never overwrites it by accident",
                            hint="restore into a new directory; to rewrite the production one in place (pgBackRest's "
                                 "--delta), the runbook must say `delta: true` for this step")
    elif not args.delta and not args.debian_cluster:
        check_empty(pgdata)
    if pgdata.is_symlink():
        raise PitrError(f"{pgdata} is a symlink: a restore never goes through a link", hint="name the real directory")
    end = archive_end_lsn(st)
    if args.target_kind == "lsn" and end is not None and parse_lsn(args.target) >= end:
        raise PitrError(f"target beyond the archived WAL: LSN {args.target} is past the end of the newest archived "
                        f"segment {st.archive.max_wal} (archive ends at {format_lsn(end)}); nothing was made",
                        hint="choose an earlier target (or 'latest'); if the WAL should be there, check archiving "
                             "(`runbook check`)")
    if args.target_kind == "time":
        when = parse_target_time(args.target)
        if when > datetime.now(UTC) + CLOCK_SLACK:
            raise PitrError(f"target beyond the archived WAL: {when.isoformat()} is in the future; nothing was made",
                            hint="choose a moment that has passed (or 'latest')")


def precheck(args: Args, st: Any, b: PhysicalBackup, pgdata: Path, events: Events) -> None:
    """The own engine's checks before anything is restored (steps.pitr.precheck), on pgBackRest's facts: the
    replacement server's binaries are the stanza's major version, and the data directory's file system has room
    for the cluster and the WAL replayed (pgBackRest restores straight into it: nothing is fetched beside it)."""
    import shutil

    from steps.pitr.args import bindir
    from steps.pitr.precheck import WAL_MARGIN_SEGMENTS, _existing, binary_version

    where = bindir(args)
    if st.pg_version:
        want = int(str(st.pg_version).split(".")[0])
        for name in ("postgres", "pg_ctl"):
            text, major = binary_version(os.path.join(where, name))
            if major != want:
                events.check("server major version", "failed", f"{name} in {where} is PostgreSQL {text}; stanza "
                             f"{st.name} is PostgreSQL {st.pg_version}")
                raise PitrError(f"major version mismatch: the replacement server's {name} ({where}) is PostgreSQL "
                                f"{text}, the pgBackRest backup {b.label} is of PostgreSQL {st.pg_version}: a base "
                                f"backup is started and replayed only by PostgreSQL {want}; nothing was restored",
                                hint=f"install PostgreSQL {want} on the replacement server and set `bindir` to its "
                                     f"binaries (e.g. /usr/lib/postgresql/{want}/bin)")
        events.check("server major version", "ok", f"binaries in {where} are PostgreSQL {want}, as the backup")
    data_at = _existing(pgdata)
    need = b.size_bytes + WAL_MARGIN_SEGMENTS * 16 * 1024 * 1024
    free = shutil.disk_usage(data_at).free
    detail = (f"{free / 1e6:.1f} MB free on the file system of {pgdata} ({data_at}); about {need / 1e6:.1f} MB "
              f"needed: the cluster ({b.size_bytes / 1e6:.1f} MB) and {WAL_MARGIN_SEGMENTS} WAL segments")
    if free < need and not args.delta:
        events.check("free space for the recovery", "failed", detail)
        raise PitrError(f"not enough space for the recovery: {detail}; nothing was restored",
                        hint="point `pgdata` at a file system with room (a new, empty directory), or make room there")
    events.check("free space for the recovery", "ok", detail)


def target_options(args: Args) -> list[str]:
    """--type/--target/--target-exclusive for the target kind."""
    if args.target_kind == "latest":
        return ["--type=default"]
    if args.target_kind == "immediate":
        return ["--type=immediate"]
    if args.target_kind == "time":
        target = parse_target_time(args.target).isoformat(sep=" ")
    else:
        target = args.target.strip()
    out = [f"--type={args.target_kind}", f"--target={target}"]
    if not args.inclusive:
        out.append("--target-exclusive")
    return out


def server_options(port: int, socket_dir: str | None, listen: str) -> list[str]:
    """The copy's own server settings, written by pgBackRest into postgresql.auto.conf (a Debian cluster's
    socket directory is its configuration's: `socket_dir` None)."""
    return [f"--recovery-option=port={port}", f"--recovery-option=listen_addresses={listen}",
            "--recovery-option=hot_standby=on",
            *([f"--recovery-option=unix_socket_directories={socket_dir}"] if socket_dir else [])]


def pitr(args: Args, cfg: Any, config_path: Path, events: Events) -> int:
    """The `pitr` action with engine pgbackrest (steps.pitr.action dispatches here)."""
    from steps.engines.pgbackrest.settings import settings_from
    from steps.pg.walnames import parse_lsn
    from steps.pitr.recovery import (
        finish_recovery,
        recovery_facts,
        server_log,
        start_server,
        watch_recovery,
    )

    t_begin = time.monotonic()
    s = settings_from(cfg)
    pgdata = Path(args.pgdata)
    st = stanza_facts(s)
    b = choose_set(st.backups, args)
    events.check("base backup chosen", "ok", f"pgBackRest {b.kind} backup {b.label} of stanza {s.stanza} (cluster "
                 f"{b.system_identifier}), ended {b.stopped_at.isoformat()}, {b.size_bytes / 1e6:.1f} MB")
    print(f"pitr: pgBackRest backup {b.label} ({b.kind}, stanza {s.stanza}, cluster {b.system_identifier}, ended "
          f"{b.stopped_at.isoformat()})", flush=True)
    refuse_early(args, s, st, pgdata, cfg)
    precheck(args, st, b, pgdata, events)
    if args.check_only:
        events.check("recovery can go ahead", "ok", f"pgBackRest backup {b.label}, target {args.target_kind} "
                     f"{args.target}".rstrip() + f", into {pgdata}: nothing was changed (check_only)")
        print(f"pitr: checks passed; nothing was changed (check_only): pgBackRest backup {b.label} into {pgdata}",
              flush=True)
        return 0
    if args.restore_command:
        events.check("restore_command", "warning", "restore_command is ignored with engine pgbackrest: pgBackRest's "
                     "archive-get reads the archive")
    socket_dir = args.socket_dir or ("/var/run/postgresql" if Path("/var/run/postgresql").is_dir()
                                     else str(pgdata.parent))
    if args.debian_cluster:  # pg_createcluster (configuration in /etc/postgresql), its data directory emptied
        from steps.pitr.datadir import prepare_debian

        prepare_debian(args, pgdata)
    try:
        make_target_dir(pgdata, run_user(s))  # pgBackRest's user restores into it
    except PgBackRestError as e:
        raise PitrError(e.message, hint=e.hint) from None
    ts_root = Path(args.tablespace_dir) if args.tablespace_dir else Path(f"{pgdata}_tablespaces")
    # latest: no target, the end of the archive, then promotion (pgBackRest refuses --target-action there)
    action = [] if args.target_kind == "latest" else ["--target-action=promote"]
    extra = [*target_options(args), *action, "--archive-mode=off",
             f"--tablespace-map-all={ts_root}",
             *[f"--tablespace-map={k}={v}" for k, v in args.tablespaces.items()],
             *server_options(args.port, None if args.debian_cluster else socket_dir, args.listen_addresses)]
    print(f"pitr: pgbackrest restore --set={b.label} into {pgdata}" + (" (--delta)" if args.delta else ""),
          flush=True)
    try:
        restore_s = restore(s, b, pgdata, extra, delta=args.delta, timeout=args.timeout_s)
    except PgBackRestError as e:
        raise PitrError(f"pgbackrest restore of {b.label} into {pgdata} failed: {e.message}",
                        hint=(e.hint + "; " if e.hint else "") + "the data directory is left as it is: start again "
                        "into a new one (or choose another backup_id)") from None
    events.check("restored", "ok", f"pgbackrest restore of {b.label} into {pgdata} ({restore_s:.1f} s; every file "
                 "checked by pgBackRest against its manifest)")
    events.check("WAL", "ok", "replayed through pgBackRest's archive-get (its restore_command, kept)")

    log = server_log(args, pgdata)
    print(f"pitr: starting the restored server on {socket_dir}:{args.port}; replaying to "
          f"{args.target_kind} {args.target}".rstrip(), flush=True)
    t2 = time.monotonic()
    start_server(args, pgdata, log)
    last_ts, last_lsn = watch_recovery(args, pgdata, log, socket_dir, events,
                                       parse_lsn(b.start_lsn) if b.start_lsn else 0,
                                       archive_end_lsn(st), t2)
    replay_s = time.monotonic() - t2
    timeline, _current = finish_recovery(args, socket_dir)
    recovery_point, lsn = recovery_facts(log, last_ts, last_lsn)
    events.check("recovery ended", "ok", f"promoted on timeline {timeline}; recovery point {recovery_point}")
    if recovery_point is None:
        events.check("recovery point", "warning", "no transaction was replayed after the base backup: the "
                     "recovery point is the backup's end")
        recovery_point = b.stopped_at.isoformat()
    events.output("recovery_point", recovery_point)
    events.output("timeline", timeline)
    events.output("replay_s", round(replay_s, 1))
    events.output("restore_s", round(restore_s, 1))
    events.output("data_directory", str(pgdata))
    events.output("lsn", lsn)
    events.output("backup_id", b.label)
    events.output("cluster", b.system_identifier)
    events.output("log_file", str(log))
    events.output("engine", "pgbackrest")
    print(f"pitr: recovered to {recovery_point} (last replayed transaction), timeline {timeline}, redo done at "
          f"{lsn}; restore {restore_s:.1f} s, replay {replay_s:.1f} s, total {time.monotonic() - t_begin:.1f} s",
          flush=True)
    print(f"pitr: the restored server runs on {socket_dir}:{args.port} with archiving off; re-protect it before "
          "the all-clear", flush=True)
    return 0


"""The proof side of the command line: `runbook check` (is archiving working, backups fresh, the RPO
exposure now), `runbook verify-backup` (a test restore) and `runbook status` ("would we make it now?").

The jobs live in `steps.proof` and return results; this module parses the flags and prints the results.
Importing it stays cheap: the handlers import their machinery.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runbook.cli.options import add_allow_unsigned, add_config, add_state_dir, state_dir
from runbook.errors import Exit, RunbookError


def register(sub: Any) -> None:
    c = sub.add_parser("check", help="is archiving working, are backups fresh, the RPO exposure now "
                       "(exit 0 ok, 1 warning, 2 failed, 3 could not run)")
    add_config(c)
    c.add_argument("--json", action="store_true", help="one JSON document for monitoring")
    c.add_argument("--force-switch", action="store_true",
                   help="switch to a new WAL segment and wait until every repository holds the finished one")
    c.add_argument("--timeout", type=float, default=60.0, metavar="S", help="how long --force-switch waits (60)")
    c.add_argument("--rpo", type=float, default=300.0, metavar="S",
                   help="the RPO target in seconds: archive_timeout and the archive's age are held to it (300)")
    c.add_argument("--max-logical-age", type=float, default=26 * 3600.0, metavar="S",
                   help="a newer logical backup is expected within this many seconds (26 h: a daily job)")
    c.add_argument("--max-base-age", type=float, default=8 * 86400.0, metavar="S",
                   help="a newer base backup is expected within this many seconds (8 days: a weekly job)")
    add_allow_unsigned(c)
    c.set_defaults(func=cmd_check)

    v = sub.add_parser("verify-backup", help="restore a backup into a throwaway cluster, check it, record the result "
                       "(exit 0 verified, 2 failed, 3 could not run)")
    add_config(v)
    which = v.add_mutually_exclusive_group()
    which.add_argument("--backup", metavar="ID", help="this backup (an id from `runbook backups`)")
    which.add_argument("--latest", action="store_true", help="the newest backup of --kind (the default)")
    v.add_argument("--kind", choices=["logical", "base"], default="logical", help="logical (default) or base")
    v.add_argument("--db", metavar="NAME", help="logical: a backup of this database; base: the database to check "
                   "(default: cluster.databases)")
    v.add_argument("--from", dest="source", choices=["local", "s3", "any"], default="any",
                   help="which repository's copy to verify (default: the first, local before s3)")
    v.add_argument("--scratch-dir", metavar="DIR", help="where the throwaway cluster lives (default: "
                   "$RUNBOOK_SCRATCH_DIR, else /var/tmp); needs room for the restored database")
    v.add_argument("--lock-wait", type=float, default=60.0, metavar="S",
                   help="wait this long for another verify-backup on this host, then refuse (default 60)")
    v.add_argument("--jobs", type=int, default=2, help="pg_restore --jobs (default 2)")
    v.add_argument("--superuser", default="postgres", help="superuser role of a restored base backup (postgres)")
    v.add_argument("--json", action="store_true", help="one JSON document on stdout")
    add_allow_unsigned(v)
    v.set_defaults(func=cmd_verify_backup)

    s = sub.add_parser("status", help="would we make it now? RPO exposure, backups per level, drills, projected RTO "
                       "against the runbook's targets (exit 0 ok, 1 warning, 2 red, 3 could not run)")
    s.add_argument("file", nargs="?", help="the runbook whose targets and scenarios count (default: ./runbook.yaml)")
    s.add_argument("-c", "--config", metavar="REPO_CONFIG|DIR",
                   help="the repository config (default: $RUNBOOK_CONFIG, then /etc/runbook/repository.yaml); with "
                        "--all also a directory of configs, one per cluster (default: the runbook's fleet:)")
    s.add_argument("--all", action="store_true", help="the fleet: one line per cluster of every config in -c DIR "
                   "(or the runbook's fleet:) and per cluster directory of their repositories; exit: the worst")
    s.add_argument("--json", action="store_true", help="one JSON document for monitoring (= --format json)")
    s.add_argument("--format", choices=["text", "json", "openmetrics"], default="text",
                   help="with --all: text (default), json, or openmetrics (Prometheus: node_exporter's textfile "
                        "collector, or a scrape)")
    s.add_argument("--one-line", action="store_true", help="only the verdict line")
    add_state_dir(s)
    s.add_argument("--now", metavar="TIME", help="evaluate as if at this ISO 8601 time (what-if; tests)")
    s.add_argument("--no-cluster", action="store_true", help="do not connect to the cluster (repository facts only)")
    s.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                   help="give up connecting to the cluster after this (default 5; PGCONNECT_TIMEOUT wins)")
    add_allow_unsigned(s)
    s.set_defaults(func=cmd_status)


# --- check ----------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from steps.proof.check import CheckOptions, run_check

    res = run_check(CheckOptions(config=args.config, force_switch=args.force_switch, timeout=args.timeout,
                                 rpo=args.rpo, max_logical_age=args.max_logical_age, max_base_age=args.max_base_age,
                                 allow_unsigned=args.allow_unsigned))
    if args.json:
        print(json.dumps({"status": res.verdict, "exit_code": res.code, "generated_at": res.generated_at.isoformat(),
                          "config": str(res.config or args.config or os.environ.get("RUNBOOK_CONFIG")),
                          "checks": [asdict(c) for c in res.checks]}, indent=2))
    else:
        label = {"ok": "ok", "info": "info", "warning": "WARNING", "failed": "FAILED"}
        width = max((len(c.name) for c in res.checks), default=10)
        for c in res.checks:
            print(f"{label[c.status]:8} {c.name:{width}}  {c.detail}")
            if c.hint:
                print(f"{'':8} {'':{width}}  hint: {c.hint}")
        verdict = {0: "all checks passed", 1: "warnings", 2: "FAILED", 3: "could not run"}[res.code]
        print(f"check: {verdict}")
    sys.stdout.flush()
    if res.code == Exit.CANNOT_RUN:  # what stopped it, where a person (and cron's mail) reads errors
        why = next((c for c in reversed(res.checks) if c.status == "failed"), None)
        print(f"runbook: check could not run: {why.detail if why else 'see the checks above'}", file=sys.stderr)
    return res.code


# --- verify-backup --------------------------------------------------------------------------------------


def print_outcome(out: Any) -> None:
    from steps.proof import verify

    for w in out.warnings:
        print(f"verify-backup: warning: {w}", file=sys.stderr)

    for c in out.checks:
        mark = "ok    " if c.status == "ok" else "FAILED"
        print(f"  {mark} {c.name}" + (f": {c.detail}" if c.detail else ""))
    t = out.timings
    parts = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items() if k != "total_s")
    if out.exit_code == verify.EXIT_VERIFIED:
        print(f"verify-backup: VERIFIED {out.kind} backup {out.backup_id} (restored and checked; {parts}; "
              f"total {t.get('total_s', 0):.1f} s); recorded at {out.record}")
    elif out.passed is False:
        failed = [c for c in out.checks if c.status == "failed"]
        print(f"verify-backup: FAILED {out.kind} backup {out.backup_id}: "
              + "; ".join(f"{c.name}: {c.detail}" for c in failed[:3])
              + (f"; recorded at {out.record}: recovery no longer picks this copy" if out.record else ""))
    if out.error:
        verdict = "FAILED" if out.exit_code == verify.EXIT_FAILED else "could not run"
        print(f"verify-backup: {verdict}: {out.error}", file=sys.stderr)
    if out.scratch and out.scratch_removed is False:
        print(f"verify-backup: warning: the scratch directory {out.scratch} could not be removed", file=sys.stderr)
    sys.stdout.flush()


def cmd_verify_backup(args: argparse.Namespace) -> int:
    from steps.proof import verify
    from steps.repository.config import load_repository_config

    try:
        cfg, path = load_repository_config(args.config)
    except RunbookError as e:
        out = verify.Outcome(error=f"verify-backup could not run: {e}")
        if args.json:
            print(json.dumps(out.as_json(), indent=2))
        else:
            print(f"runbook: {out.error}", file=sys.stderr)
        return verify.EXIT_CANNOT_RUN
    progress = sys.stderr if args.json else sys.stdout  # --json keeps stdout for the document

    def say(text: str) -> None:
        print(f"verify-backup: {text}", file=progress, flush=True)

    run = verify.VerifyRun(cfg, path.absolute(), backup_id=args.backup, kind=args.kind, db=args.db,
                           source=args.source, scratch_root=Path(args.scratch_dir) if args.scratch_dir else None,
                           lock_wait=args.lock_wait, jobs=args.jobs, superuser=args.superuser, say=say,
                           allow_unsigned=args.allow_unsigned)
    out = run.run()
    if args.json:
        print(json.dumps(out.as_json(), indent=2))
        sys.stdout.flush()
    else:
        print_outcome(out)
    return out.exit_code


# --- status ---------------------------------------------------------------------------------------------


def print_report(rep: Any) -> None:
    from steps.proof import status

    if rep.error:
        print(f"runbook: status: {rep.error}", file=sys.stderr)
    t = rep.runbook.get("targets", {})
    if rep.error and not rep.repositories and not rep.cluster:  # nothing was looked at: no facts to list
        print(f"Would we make it now? {rep.verdict.upper()}  (targets: RTO {status.human(t.get('rto_s'))}, "
              f"RPO {status.human(t.get('rpo_s'))}; {rep.now:%Y-%m-%d %H:%M} UTC)")
        return
    print(f"Would we make it now? {rep.verdict.upper()}  (targets: RTO {status.human(t.get('rto_s'))}, "
          f"RPO {status.human(t.get('rpo_s'))}; {rep.now:%Y-%m-%d %H:%M} UTC)")
    for name, r in rep.repositories.items():
        print(f"  repository {name}: {r['where'] if r['ok'] else 'UNREADABLE: ' + str(r['error'])}")
    c = rep.cluster
    print(f"  cluster: {'answers, system identifier ' + str(c.get('system_identifier')) if c.get('reachable') else 'does not answer: ' + str(c.get('error'))}")
    r = rep.rpo
    print(f"RPO {r.get('verdict', '?').upper()}: exposure now {status.human(r.get('exposure_s'))} "
          f"(basis: {r.get('basis', 'none')})")
    if r.get("newest_wal"):
        w = r["newest_wal"]
        print(f"  newest archived WAL {w['name']} at {w['archived_at']} ({status.human(w['age_s'])} ago, {w['where']})")
    if "archive_timeout_s" in r:
        print(f"  archive_timeout {r['archive_timeout_s']} s")
    for reason in r.get("reasons", []):
        print(f"  - {reason}")
    print("Backups (newest at each level):")
    for kind, levels in rep.backups.items():
        for level, b in levels.items():
            what = "none" if b is None else f"{b['backup_id']}" + (f" of {b['db']}" if b.get("db") else "") + \
                f", {status.human(b['age_s'])} old, in {','.join(b['locations'])}"
            print(f"  {kind:8} {level:12} {what}")
            if b is not None and b.get("encrypted"):
                print(f"  {'':8} {'':12} {encryption_summary(b)}")
    print(f"RTO {rep.rto.get('verdict', '?').upper()}:")
    for d in rep.drills:
        last = "never" if d["run_id"] is None else f"{d['run_id']}, RTO {status.human(d['rto_s'])}, {d['age_days']:.1f} days ago"
        print(f"  last good drill of {d['scenario']}: {last}{'  STALE' if d['stale'] else ''}")
    for sc, p in rep.projected.items():
        print(f"  projected RTO of {sc} if started now: {status.human(p.get('total_s'))} (restore {status.human(p.get('restore_s'))}"
              f" + other steps {status.human(p.get('other_steps_s'))}); basis: {p.get('basis')}")
    for reason in rep.rto.get("reasons", []):
        print(f"  - {reason}")
    if rep.integrity.get("reasons"):
        print(f"INTEGRITY {rep.integrity['verdict'].upper()}:")
        for reason in rep.integrity["reasons"]:
            print(f"  - {reason}")
    sys.stdout.flush()


def encryption_summary(b: dict[str, Any], width: int = 55) -> str:
    """One line of `status` under a backup: which copies are encrypted, to how many recipients, which ones."""
    from steps.encrypted.reading import describe_recipients

    enc = b["encrypted"]
    clear = [n for n in b["locations"] if n not in enc]
    first = next(iter(enc.values()))
    head = f"encrypted in {','.join(enc)}" + (f" ({','.join(clear)} in clear)" if clear else "") + ": "
    return head + describe_recipients(first.get("recipients_now") or first["recipients"], max(20, width - len(head)))


def cmd_status(args: argparse.Namespace) -> int:
    from steps.proof import status

    now = None
    if args.now:
        try:
            now = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
        except ValueError:
            print(f"runbook: status: --now {args.now!r} is not an ISO 8601 time", file=sys.stderr)
            return status.EXIT["could not run"]
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
    os.environ.setdefault("PGCONNECT_TIMEOUT", str(int(args.connect_timeout)))
    sdir = state_dir(args)
    explicit = args.file is not None
    file = Path(args.file) if explicit else Path("runbook.yaml")
    if args.all:
        from runbook.cli.fleet import cmd_status_all

        if args.one_line:
            print("runbook: status: --one-line shows one cluster; --all shows one line per cluster already",
                  file=sys.stderr)
            return status.EXIT["could not run"]
        return cmd_status_all(args, now, sdir, file, explicit)
    if args.format == "openmetrics":
        print("runbook: status: --format openmetrics goes with --all (a fleet of one: -c CONFIG --all)",
              file=sys.stderr)
        return status.EXIT["could not run"]
    if args.format == "json":
        args.json = True
    try:
        rep = status.gather(args.config, file, explicit_file=explicit, state_dir=sdir, now=now,
                            cluster=not args.no_cluster, allow_unsigned=args.allow_unsigned)
    except RunbookError as e:
        rep = status.Report(now=now or datetime.now(UTC), verdict="could not run", error=str(e))
    if args.json:
        print(json.dumps(rep.as_json(), indent=2, default=str))
        sys.stdout.flush()
    elif args.one_line:
        print(rep.one_line())
    else:
        print_report(rep)
    return rep.exit_code

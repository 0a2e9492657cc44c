"""The command line: `runbook validate|schema|run|resume|runs|report`.

User errors (`RunbookError`) are printed on stderr without a traceback, with their exit code.
The TUI is imported only when asked for, so the core and the headless runner never load Textual.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runbook import __version__
from runbook.clock import Clock
from runbook.errors import RunbookError, UsageError

if TYPE_CHECKING:
    from runbook.session import RunOptions


def _state_dir(args: argparse.Namespace) -> Path:
    from runbook.state import default_state_dir

    return Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()


def _parse_confirms(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--confirm {item!r}: write STEP=VALUE, e.g. --confirm restore=assetflow_prod")
        out[key.strip()] = value
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    from runbook.loader import load_runbook

    rb = load_runbook(Path(args.file))
    n = len(rb.steps)
    print(f"{args.file}: valid ({n} steps, scenarios: {', '.join(rb.scenarios) or 'none'})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from runbook.loader import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _headless_opts(args: argparse.Namespace) -> object:
    from runbook.headless import HeadlessOptions

    return HeadlessOptions(
        yes=args.yes, confirms=_parse_confirms(args.confirm or []), rerun_interrupted=getattr(args, "rerun_interrupted", False)
    )


def _drive(engine: object, args: argparse.Namespace) -> int:
    """Resume: the engine exists already; the TUI or the console drives it."""
    if not args.headless:
        from runbook.tui.app import run_engine

        return run_engine(engine, _state_dir(args))  # type: ignore[arg-type]
    from runbook.headless import run_headless

    return run_headless(engine, _headless_opts(args))  # type: ignore[arg-type]


def _confirm_break_lock(args: argparse.Namespace) -> None:
    """Taking over another holder's lock needs typed confirmation (or --confirm break-lock=break-lock)."""
    if not args.break_lock:
        return
    given = _parse_confirms(args.confirm or []).get("break-lock")
    if given is None and sys.stdin.isatty():
        given = input("--break-lock takes the run over from its holder. Type 'break-lock' to go on: ").strip()
    if given != "break-lock":
        raise UsageError("--break-lock needs typed confirmation: type break-lock at the prompt, "
                         "or pass --confirm break-lock=break-lock")


def cmd_run(args: argparse.Namespace) -> int:
    from runbook.params import parse_set
    from runbook.session import RunOptions, open_new_run

    _confirm_break_lock(args)
    opts = RunOptions(
        runbook_path=Path(args.file), scenario=args.scenario, mode=args.mode, sets=parse_set(args.set or []),
        profile=Path(args.profile) if args.profile else None, incident_start=args.incident_start,
        data_lost_at=args.data_lost_at, break_lock=args.break_lock,
    )
    if not args.headless:
        return _run_tui(opts, args)
    engine = open_new_run(opts, Clock(), state_dir=_state_dir(args))
    return _drive(engine, args)


def _run_tui(opts: RunOptions, args: argparse.Namespace) -> int:
    """The TUI asks for what the flags left open (scenario, params, incident start) before opening the run."""
    from runbook.loader import load_model, load_runbook
    from runbook.session import Profile
    from runbook.tui.app import run_new

    rb = load_runbook(opts.runbook_path)
    profile = load_model(opts.profile, Profile, filename=str(opts.profile)) if opts.profile else Profile()
    given = {**profile.params, **opts.sets}
    opts.mode = opts.mode or profile.mode
    opts.scenario = opts.scenario or profile.scenario
    return run_new(opts, rb, given, _state_dir(args))


def cmd_resume(args: argparse.Namespace) -> int:
    from runbook.params import parse_set
    from runbook.session import open_resume

    _confirm_break_lock(args)
    engine = open_resume(
        args.run_id, Clock(), state_dir=_state_dir(args), sets=parse_set(args.set or []), break_lock=args.break_lock
    )
    return _drive(engine, args)


def cmd_runs(args: argparse.Namespace) -> int:
    from runbook.durations import format_duration
    from runbook.state import RunState, list_runs

    clock = Clock()
    runs = list_runs(_state_dir(args))
    if args.json:
        rows = []
        for r in runs:
            if isinstance(r, RunState):
                rows.append({
                    "run_id": r.run_id, "runbook": r.runbook_name, "scenario": r.scenario, "mode": r.mode,
                    "status": r.status, "started_at": r.started_at.isoformat() if r.started_at else None,
                    "rto_s": r.rto_s(clock.now()), "rto_target_s": r.targets.get("rto_s"),
                    "service_restored": r.rto_end_at is not None, "operator": r.operator,
                })
            else:
                rows.append({"run_id": r[0], "error": r[1]})
        print(json.dumps(rows, indent=2))
        return 0
    if not runs:
        print(f"no runs under {_state_dir(args)}")
        return 0
    print(f"{'RUN':40} {'SCENARIO':16} {'MODE':10} {'STATUS':10} {'STARTED':20} RTO")
    for r in runs:
        if not isinstance(r, RunState):
            print(f"{r[0]:40} unreadable: {r[1]}")
            continue
        rto = r.rto_s(clock.now())
        so_far = "" if r.rto_end_at or r.closed else " so far"
        started = r.started_at.strftime("%Y-%m-%d %H:%M") if r.started_at else "?"
        print(f"{r.run_id:40} {r.scenario:16} {r.mode:10} {r.status:10} {started:20} "
              f"{format_duration(rto)}{so_far} of {format_duration(r.targets.get('rto_s'))}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from runbook.loader import load_runbook
    from runbook.report import render_markdown
    from runbook.state import load_state, run_dir

    state_dir = _state_dir(args)
    st = load_state(state_dir, args.run_id)
    try:
        rb = load_runbook(run_dir(state_dir, args.run_id) / "runbook.yaml")
        titles = {s.id: s.display_title for s in rb.steps}
    except RunbookError:
        titles = {}
    text = render_markdown(st, titles, Clock().now())
    if args.output:
        Path(args.output).write_text(text)
        print(f"report written to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runbook", description="The PostgreSQL disaster-recovery runbook.")
    p.add_argument("--version", action="version", version=f"runbook {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check a runbook file; every problem as FILE:LINE:COL: message")
    v.add_argument("file", nargs="?", default="runbook.yaml")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="print the JSON Schema of the runbook file (for editors)")
    s.set_defaults(func=cmd_schema)

    def run_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--headless", action="store_true", help="console front end instead of the TUI")
        q.add_argument("--yes", action="store_true", help="confirm every step except typed ones")
        q.add_argument("--confirm", action="append", metavar="STEP=VALUE", help="typed confirmation for a step")
        q.add_argument("--set", action="append", metavar="K=V", help="a parameter value")
        q.add_argument("--break-lock", action="store_true", help="take the run lock over from its holder")
        q.add_argument("--state-dir", help="where runs are kept (default: $XDG_STATE_HOME/runbook)")

    r = sub.add_parser("run", help="start a run of a runbook")
    r.add_argument("file", nargs="?", default="runbook.yaml")
    r.add_argument("--scenario")
    r.add_argument("--mode", choices=["live", "drill", "rehearsal"])
    r.add_argument("--profile", help="a params profile for one environment (e.g. the sandbox's)")
    r.add_argument("--incident-start", help="ISO 8601 time with zone (default: now)")
    r.add_argument("--data-lost-at", help="ISO 8601 time with zone (default: the incident start)")
    run_flags(r)
    r.set_defaults(func=cmd_run)

    re_ = sub.add_parser("resume", help="go on with an open run")
    re_.add_argument("run_id")
    re_.add_argument("--rerun-interrupted", action="store_true", help="headless: re-run an interrupted step")
    run_flags(re_)
    re_.set_defaults(func=cmd_resume)

    ls = sub.add_parser("runs", help="list runs")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--state-dir")
    ls.set_defaults(func=cmd_runs)

    rep = sub.add_parser("report", help="the Markdown report of a run")
    rep.add_argument("run_id")
    rep.add_argument("--format", choices=["md"], default="md")
    rep.add_argument("-o", "--output")
    rep.add_argument("--state-dir")
    rep.set_defaults(func=cmd_report)
    from steps.commands import register as register_backup_commands  # backup, backups, prune

    register_backup_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RunbookError as e:
        print(f"runbook: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("runbook: interrupted", file=sys.stderr)
        return 130

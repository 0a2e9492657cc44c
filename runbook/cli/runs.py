"""The run side of the command line: `validate`, `schema`, `run`, `resume`, `runs`, `report`.

`run` and `resume` drive the engine through the TUI (imported only then) or the headless front end
(`runbook.cli.headless`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.cli.options import add_state_dir, require_terminal, state_dir
from runbook.clock import Clock
from runbook.errors import RunbookError, UsageError

if TYPE_CHECKING:
    from runbook.session import RunOptions


def register(sub: Any) -> None:
    v = sub.add_parser("validate", help="check a runbook file; every problem as FILE:LINE:COL: message")
    v.add_argument("file", nargs="?", default="runbook.yaml", help="the runbook file (default: ./runbook.yaml)")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="print the JSON Schema of the runbook file (for editors)")
    s.set_defaults(func=cmd_schema)

    def run_flags(q: argparse.ArgumentParser) -> None:
        q.add_argument("--headless", action="store_true", help="console front end instead of the TUI")
        q.add_argument("--yes", action="store_true", help="confirm every step except typed ones")
        q.add_argument("--confirm", action="append", metavar="STEP=VALUE", help="typed confirmation for a step")
        q.add_argument("--set", action="append", metavar="K=V", help="a parameter value")
        q.add_argument("--answers", metavar="FILE", help="headless: scripted answers per step (YAML: step id -> list "
                       "of confirm, retry, {skip: REASON}, {type: TEXT}, stop, ...; docs/commands.md)")
        q.add_argument("--break-lock", action="store_true", help="take the run lock over from its holder")
        q.add_argument("--approver-policy", choices=["none", "other"],
                       help="the two-person rule for this run: none (automation: no step waits for another "
                            "operator; journaled), other (as in live mode, in drills too). Default: the "
                            "runbook's rules, live mode only")
        add_state_dir(q)

    r = sub.add_parser("run", help="start a run of a runbook")
    r.add_argument("file", nargs="?", default="runbook.yaml", help="the runbook file (default: ./runbook.yaml)")
    r.add_argument("--scenario", help="the scenario to walk (required when the runbook has several; default: "
                   "the profile's, or the only one)")
    r.add_argument("--mode", choices=["live", "drill", "rehearsal"],
                   help="live: production; drill: for real against a sandbox or staging; rehearsal: nothing runs, "
                        "each outcome is marked (default: the profile's, else live)")
    r.add_argument("--profile", help="a params profile for one environment (e.g. the sandbox's)")
    r.add_argument("--incident-start", help="ISO 8601 time with zone (default: now)")
    r.add_argument("--data-lost-at", help="ISO 8601 time with zone (default: the incident start)")
    run_flags(r)
    r.set_defaults(func=cmd_run)

    re_ = sub.add_parser("resume", help="go on with an open run")
    re_.add_argument("run_id", help="the open run to go on with (`runbook runs` lists them)")
    re_.add_argument("--rerun-interrupted", action="store_true", help="headless: re-run an interrupted step")
    re_.add_argument("--retry-failed", action="store_true",
                     help="headless: try the step the run failed at once more (failing again, the run stops)")
    re_.add_argument("--redo-from", metavar="STEP", help="walk STEP and every later step again, each confirmed "
                     "again (journaled): e.g. a point-in-time recovery to a wrong target, redone with --set "
                     "target_time=... (a running step is refused)")
    run_flags(re_)
    re_.set_defaults(func=cmd_resume)

    ls = sub.add_parser("runs", help="list runs, their RTO, and the last good drill per scenario (stale ones)")
    ls.add_argument("file", nargs="?", help="a runbook file: its scenarios never run show as stale too")
    ls.add_argument("--json", action="store_true", help="one JSON document: every run and the last good drill "
                    "per scenario")
    ls.add_argument("--game-days", action="store_true",
                    help="each person's game days (runbook demo --fault) by fault with their score, the faults "
                         "nobody has practised, and who has played none for 90 days (docs/game-days.md)")
    add_state_dir(ls)
    ls.set_defaults(func=cmd_runs)

    rep = sub.add_parser("report", help="the recovery report of a run (Markdown, or one self-contained HTML file)")
    rep.add_argument("run_id", help="the run (`runbook runs` lists them)")
    rep.add_argument("--format", choices=["md", "html"], default="md",
                     help="md: Markdown; html: one self-contained HTML file, timeline included (default: md)")
    rep.add_argument("-o", "--output", help="write the report to this file (default: standard output)")
    add_state_dir(rep)
    rep.set_defaults(func=cmd_report)


def _parse_confirms(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--confirm {item!r}: write STEP=VALUE, e.g. --confirm restore=assetflow_prod")
        out[key.strip()] = value
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 valid; 2 (FAILED) invalid: judging the file is what `validate` does, and an invalid one is its
    finding, as a failed check is `check`'s; 3 when it cannot judge it (missing, not a runbook file)."""
    from runbook.errors import Exit, InvalidFile
    from runbook.loader import load_runbook

    try:
        rb = load_runbook(Path(args.file))
    except InvalidFile as e:
        if Path(args.file).is_file() and os.access(args.file, os.R_OK):  # read, and judged invalid
            e.exit_code = Exit.FAILED
        raise
    n = len(rb.steps)
    print(f"{args.file}: valid ({n} steps, scenarios: {', '.join(rb.scenarios) or 'none'})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from runbook.loader import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _headless_opts(args: argparse.Namespace, answers: dict[str, Any]) -> object:
    from runbook.cli.headless import HeadlessOptions

    return HeadlessOptions(
        yes=args.yes, confirms=_parse_confirms(args.confirm or []), rerun_interrupted=getattr(args, "rerun_interrupted", False),
        retry_failed=getattr(args, "retry_failed", False), answers=answers,
    )


def answers_of(args: argparse.Namespace, runbook_file: Path) -> dict[str, Any]:
    """The `--answers FILE` of a headless run, checked against the steps of `runbook_file` before the run opens
    (none: {})."""
    if not getattr(args, "answers", None):
        return {}
    if not args.headless:
        raise UsageError("--answers scripts the console front end: add --headless")
    from runbook.cli.answers import load_answers
    from runbook.loader import load_runbook

    return load_answers(Path(args.answers), [s.id for s in load_runbook(runbook_file).steps])


def _drive(engine: object, args: argparse.Namespace, answers: dict[str, Any] | None = None) -> int:
    """Resume: the engine exists already; the TUI or the console drives it."""
    if not args.headless:
        from runbook.tui.app import run_engine

        return run_engine(engine, state_dir(args))  # type: ignore[arg-type]
    from runbook.cli.gamedays import say_debrief
    from runbook.cli.headless import run_headless

    code = run_headless(engine, _headless_opts(args, answers or {}))  # type: ignore[arg-type]
    say_debrief(state_dir(args), engine.run_id, prefix="runbook")  # type: ignore[attr-defined]  # a game day that ended
    return code


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

    require_terminal(args, "run")
    _confirm_break_lock(args)
    opts = RunOptions(
        runbook_path=Path(args.file), scenario=args.scenario, mode=args.mode, sets=parse_set(args.set or []),
        profile=Path(args.profile) if args.profile else None, incident_start=args.incident_start,
        data_lost_at=args.data_lost_at, break_lock=args.break_lock, approver_policy=args.approver_policy,
    )
    if not args.headless:
        answers_of(args, opts.runbook_path)  # refused: --answers without --headless
        return _run_tui(opts, args)
    answers = answers_of(args, opts.runbook_path)
    engine = open_new_run(opts, Clock(), state_dir=state_dir(args))
    return _drive(engine, args, answers)


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
    return run_new(opts, rb, given, state_dir(args))


def cmd_resume(args: argparse.Namespace) -> int:
    from runbook.params import parse_set
    from runbook.session import open_resume
    from runbook.state import run_dir

    require_terminal(args, "resume")
    _confirm_break_lock(args)
    answers = answers_of(args, run_dir(state_dir(args), args.run_id) / "runbook.yaml")  # the run's own copy
    engine = open_resume(
        args.run_id, Clock(), state_dir=state_dir(args), sets=parse_set(args.set or []), break_lock=args.break_lock,
        approver_policy=args.approver_policy, redo_from=args.redo_from,
    )
    return _drive(engine, args, answers)


def cmd_runs(args: argparse.Namespace) -> int:
    if args.game_days:
        from runbook.cli.gamedays import cmd_game_days

        return cmd_game_days(args)
    from runbook.durations import format_duration
    from runbook.report import rto_facts
    from runbook.staleness import STALE_AFTER, last_good_drills
    from runbook.state import RunState, list_runs

    now = Clock().now()
    runs = list_runs(state_dir(args))
    scenarios: dict[str, list[str]] = {}
    if args.file:
        from runbook.loader import load_runbook

        rb = load_runbook(Path(args.file))
        scenarios[rb.name] = list(rb.scenarios) or ["default"]
    drills = last_good_drills(runs, now, scenarios=scenarios)

    def last_good(key: tuple[str, str]) -> dict[str, object] | None:
        d = drills[key]
        if d.run_id is None:
            return None
        return {"run_id": d.run_id, "mode": d.mode, "rto_s": d.rto_s, "rto_target_s": d.rto_target_s,
                "ended_at": d.ended_at.isoformat() if d.ended_at else None, "age_days": round(d.age_days or 0, 3)}

    if args.json:
        rows: list[dict[str, object]] = []
        seen: set[tuple[str, str]] = set()
        for r in runs:
            if isinstance(r, RunState):
                key = (r.runbook_name, r.scenario)
                seen.add(key)
                rto = rto_facts(r, now)
                rows.append({
                    "run_id": r.run_id, "runbook": r.runbook_name, "scenario": r.scenario, "mode": r.mode,
                    "status": r.status, "started_at": r.started_at.isoformat() if r.started_at else None,
                    "ended_at": r.ended_at.isoformat() if r.ended_at else None,
                    "rto_s": rto.achieved_s, "rto_target_s": r.targets.get("rto_s"), "rto_verdict": rto.verdict,
                    "service_restored": r.rto_end_at is not None, "operator": r.operator,
                    "last_good": last_good(key), "stale": drills[key].stale,
                })
            else:
                rows.append({"run_id": r[0], "error": r[1]})
        for key, d in drills.items():  # scenarios of FILE that were never run: one row each, no run id
            if key not in seen:
                rows.append({"run_id": None, "runbook": d.runbook, "scenario": d.scenario, "status": "never run",
                             "last_good": None, "stale": True})
        print(json.dumps(rows, indent=2))
        return 0
    if not runs and not drills:
        print(f"no runs under {state_dir(args)}")
        return 0
    if runs:
        print(f"{'RUN':40} {'SCENARIO':16} {'MODE':10} {'STATUS':10} {'STARTED':17} RTO")
    for r in runs:
        if not isinstance(r, RunState):
            print(f"{r[0]:40} unreadable: {r[1]}")
            continue
        rto = rto_facts(r, now)
        so_far = "" if r.rto_end_at or r.closed else " so far"
        verdict = f" ({rto.verdict})" if rto.verdict in ("met", "missed") else ""
        started = r.started_at.strftime("%Y-%m-%d %H:%M") if r.started_at else "?"
        print(f"{r.run_id:40} {r.scenario:16} {r.mode:10} {r.status:10} {started:17} "
              f"{format_duration(rto.achieved_s)}{so_far} of {format_duration(r.targets.get('rto_s'))}{verdict}")
    if drills:
        if runs:
            print()
        print(f"Last successful live or drill run per scenario (stale after {STALE_AFTER.days} days without one):")
        print(f"{'RUNBOOK':30} {'SCENARIO':16} {'LAST GOOD RUN':40} {'RTO':9} AGE")
        for d in drills.values():
            name = d.runbook if len(d.runbook) <= 30 else d.runbook[:29] + "…"
            rto_text = format_duration(d.rto_s) if d.run_id else ""
            flag = "  STALE" if d.stale else ""
            print(f"{name:30} {d.scenario:16} {d.run_id or 'none':40} {rto_text:9} {d.age_text}{flag}")
    return 0


def _debrief(sdir: Path, st: Any, now: Any) -> Any:
    """A game-day run's debrief once it ended (None otherwise); a record that cannot be found is said on stderr,
    and the report is written without it."""
    from runbook.gameday import GameDayError, load_debrief

    try:
        return load_debrief(sdir, st, now)
    except GameDayError as e:
        print(f"warning: no game day debrief: {e.message}" + (f" ({e.hint})" if e.hint else ""), file=sys.stderr)
        return None


def cmd_report(args: argparse.Namespace) -> int:
    from runbook.loader import load_runbook
    from runbook.report import render_markdown
    from runbook.report_html import render_html
    from runbook.state import load_state, run_dir

    sdir = state_dir(args)
    st = load_state(sdir, args.run_id)
    try:
        rb = load_runbook(run_dir(sdir, args.run_id) / "runbook.yaml")
        titles = {s.id: s.display_title for s in rb.steps}
    except RunbookError:
        titles = {}
    render = render_html if args.format == "html" else render_markdown
    now = Clock().now()
    text = render(st, titles, now, debrief=_debrief(sdir, st, now))
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"report written to {args.output}")
    else:
        sys.stdout.write(text)
    return 0

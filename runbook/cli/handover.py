"""The incident room's commands for a second person: `runbook approve RUN_ID STEP` (the two-person rule) and
`runbook take-over RUN_ID` (a hand-over). Both only drop a request into the run's `requests/`; the driver's
process checks it and journals what it decided (runbook.requests)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from runbook.cli.options import add_state_dir, require_terminal, state_dir
from runbook.clock import Clock
from runbook.errors import RunbookError, UsageError

APPROVE_WAIT_S = 10.0


def register(sub: Any) -> None:
    a = sub.add_parser("approve", help="approve a step that waits for another operator (the two-person rule)")
    a.add_argument("run_id", help="the run (its driver's cockpit shows the exact command to type)")
    a.add_argument("step", help="the step that waits for approval")
    a.add_argument("-c", "--config", metavar="REPO_CONFIG",
                   help="approve from another host, through this repository config (the run's mirror in it; "
                        "the approval is signed with this host's key)")
    a.add_argument("--yes", action="store_true", help="no typed confirmation (tests and automation only)")
    add_state_dir(a)
    a.set_defaults(func=cmd_approve)

    t = sub.add_parser("take-over", help="take an open run over from its driver (on this host, or with -c from "
                                         "another host, through the repository)")
    t.add_argument("run_id", help="the open run to drive")
    t.add_argument("-c", "--config", metavar="REPO_CONFIG",
                   help="take over from another host, through this repository config (the run's mirror in it)")
    t.add_argument("--force", action="store_true",
                   help="with -c: the driver is silent (its host is dead): take over without its hand-over "
                        "(typed confirmation, journaled as forced)")
    t.add_argument("--profile", metavar="FILE",
                   help="with -c: this host's values for the run (params, env, secrets_env_file)")
    t.add_argument("--wait", type=float, default=None, metavar="S",
                   help="with -c: how long to wait for the driver's hand-over (default 600 s: it finishes the "
                        "step it runs first)")
    t.add_argument("--silent-limit", type=float, default=None, metavar="S",
                   help="with -c: a driver whose heartbeat is older than this is silent (default 60 s)")
    t.add_argument("--yes", action="store_true", help="no typed confirmation (tests and automation only)")
    t.add_argument("--headless", action="store_true", help="console front end instead of the TUI")
    t.add_argument("--confirm", action="append", metavar="STEP=VALUE", help="typed confirmation for a step")
    t.add_argument("--set", action="append", metavar="K=V", help="a parameter value the run did not save")
    t.add_argument("--rerun-interrupted", action="store_true",
                   help="headless: re-run a step that was interrupted (with -c --force: the one the silent host ran)")
    t.add_argument("--approver-policy", choices=["none", "other"],
                   help="change the run's approver policy from here on (journaled)")
    add_state_dir(t)
    t.set_defaults(func=cmd_take_over)


def _typed(prompt: str, expected: str, what: str) -> None:
    if not sys.stdin.isatty():
        raise UsageError(f"{what} needs typed confirmation at a terminal", hint="or --yes (automation only)")
    try:
        given = input(prompt).strip()
    except EOFError:
        given = ""
    if given != expected:
        raise UsageError(f"typed {given!r}, not {expected!r}: nothing was done")


def cmd_approve(args: argparse.Namespace) -> int:
    from runbook.requests import approver_refusal, read_pending, send_approval, user_name
    from runbook.state import run_dir

    if args.config:
        return _approve_remote(args)
    rdir = run_dir(state_dir(args), args.run_id)
    if not rdir.is_dir():
        raise RunbookError(f"no run {args.run_id} under {state_dir(args)}",
                           hint="give the driver's --state-dir (their cockpit shows the exact command)")
    pending = read_pending(rdir)
    if pending is None or pending.get("run_id") != args.run_id:
        raise UsageError(f"no step of run {args.run_id} waits for approval now")
    if pending.get("step") != args.step:
        raise UsageError(f"step {args.step} does not wait for approval; step {pending.get('step')} does")
    driver = pending.get("driver") or {}
    me = user_name(os.geteuid())
    why = approver_refusal(pending, os.geteuid())
    if why is not None:
        raise UsageError(why, hint="another operator, logged in as another user, runs this command")
    print(f"run {args.run_id} ({str(pending.get('mode', '')).upper()}), driven by {driver.get('user')}@"
          f"{driver.get('host')}")
    print(f"step {args.step}: {pending.get('title')}")
    if pending.get("command"):
        print("  $ " + str(pending["command"]).rstrip().replace("\n", "\n    "))
    for item in pending.get("items") or []:
        print(f"  ☐ {item}")
    if not args.yes:
        _typed(f"Approve this step as {me}? Type the step id ({args.step}) to approve: ", args.step,
               "an approval")
    send_approval(rdir, args.run_id, pending)
    deadline = time.monotonic() + APPROVE_WAIT_S
    while time.monotonic() < deadline:
        now = read_pending(rdir)
        if now is None or now.get("nonce") != pending.get("nonce"):
            print(f"approved: the driver's process accepted your approval of step {args.step}")
            return 0
        time.sleep(0.2)
    print(f"your approval is written; the driver's process has not accepted it within {APPROVE_WAIT_S:g} s "
          "(refused, or not running: the driver's cockpit says which)", file=sys.stderr)
    return 1


def _approve_remote(args: argparse.Namespace) -> int:
    """`runbook approve -c REPO_CONFIG RUN_ID STEP`: from another host, through the repository
    (runbook.remote_approve)."""
    from pathlib import Path

    from runbook.lockfile import current_user, hostname
    from runbook.remote_approve import RemoteApproval

    job = RemoteApproval(Path(args.config), args.run_id, Clock())
    job.prepare()
    p = job.check(args.step)
    print(f"run {args.run_id} ({p.mode.upper()}), driven by {p.driver.get('user')}@{p.driver.get('host')} "
          f"(through {job.source.describe()})")
    print(f"step {p.step}: {p.title}")
    if p.command:
        print("  $ " + p.command.rstrip().replace("\n", "\n    "))
    for item in p.items or []:
        print(f"  ☐ {item}")
    me = f"{current_user()}@{hostname()}"
    if not args.yes:
        _typed(f"Approve this step as {me}? Type the step id ({p.step}) to approve: ", p.step, "an approval")
    nonce = job.send(p)
    print(f"approval {nonce} written into the repository, signed with key {job.signer.key_id}; waiting for the "
          "driver's process to verify it...", file=sys.stderr, flush=True)
    ok, text = job.await_verdict()
    if ok:
        print(f"approved: the driver's process accepted your approval ({text})")
        return 0
    print(f"refused by the driver's process: {text}", file=sys.stderr)
    return 1


def cmd_take_over(args: argparse.Namespace) -> int:
    from runbook.cli.runs import _drive
    from runbook.params import parse_set
    from runbook.session import open_takeover
    from runbook.state import load_state

    require_terminal(args, "take-over")
    if args.config:
        return _take_over_remote(args)
    for flag in ("force", "profile", "wait", "silent_limit"):
        if getattr(args, flag) not in (None, False):
            raise UsageError(f"--{flag.replace('_', '-')} goes with -c REPO_CONFIG (a take-over from another host)")
    sd = state_dir(args)
    st = load_state(sd, args.run_id)
    if not args.yes:
        tail = args.run_id[-4:]
        who = st.operator.get("user", "?")
        _typed(f"Take run {args.run_id} over from its driver (started by {who})? Type the run id's last 4 "
               f"characters ({tail}) to go on: ", tail, "a take-over")

    def waiting(previous: dict[str, Any]) -> None:
        print(f"asking {previous.get('user')}@{previous.get('host')} (pid {previous.get('pid')}) to hand the "
              "run over...", file=sys.stderr)

    engine = open_takeover(args.run_id, Clock(), state_dir=sd, sets=parse_set(args.set or []),
                           approver_policy=args.approver_policy, on_wait=waiting)
    args.break_lock = False
    return _drive(engine, args)


def _take_over_remote(args: argparse.Namespace) -> int:
    """`runbook take-over -c REPO_CONFIG RUN_ID`: from another host, through the repository
    (runbook.remote_takeover)."""
    from pathlib import Path

    from runbook.cli.runs import _drive
    from runbook.params import parse_set
    from runbook.remote_takeover import SILENT_LIMIT_S, WAIT_S, RemoteTakeover

    for flag, value in (("--wait", args.wait), ("--silent-limit", args.silent_limit)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} {value:g}: give a number of seconds greater than 0")
    if args.approver_policy:
        raise UsageError("--approver-policy is not changed by a take-over from another host",
                         hint="resume the run with it once you drive it")
    job = RemoteTakeover(Path(args.config), args.run_id, state_dir(args), Clock(), sets=parse_set(args.set or []),
                         profile=Path(args.profile) if args.profile else None, force=args.force,
                         silent_limit_s=args.silent_limit if args.silent_limit is not None else SILENT_LIMIT_S,
                         wait_s=args.wait if args.wait is not None else WAIT_S)
    job.prepare()
    tail = args.run_id[-4:]
    if args.yes:
        confirmed = "--yes"
    else:
        _typed(job.question(), tail, "a take-over")
        confirmed = "typed"
    engine = job.take(confirmed=confirmed, say=lambda text: print(text, file=sys.stderr, flush=True))
    print(f"run {args.run_id} is driven from this host now ({engine.ctx.state_dir})", file=sys.stderr, flush=True)
    args.break_lock = False
    return _drive(engine, args)

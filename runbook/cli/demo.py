"""`runbook demo`: a whole recovery on this machine, for training and for scheduled drills.

It builds the sandbox (a PostgreSQL 15 primary with AssetFlow, a local repository), takes the daily backup
with `runbook backup`, lets the application write more, then a disaster drops the database and wipes the
attachments. The operator then recovers it with the shipped `runbook.yaml` in drill mode: in the TUI, or
unattended with `--headless --yes` (the sandbox supplies its own typed confirmations). `--down` removes it.
The sandbox's values live in a profile beside the runbook (`sandbox.profile.yaml`), so nothing in
`runbook.yaml` is sandbox-specific and `runbook run --profile` can replay the drill.

The sandbox is one operator's: a build and `--down` first take the sandbox's lock (steps.sandbox.lock, a file
beside the directory) and hold it until the drill ends (headless) or the TUI exits; while another process
holds it, or a run of the runbook against the sandbox's target holds its run lock, they refuse before touching
anything, naming the holder.

`--scenario pitr` (scenario 2): the primary archives its WAL with `runbook wal-push` into the sandbox's
repository, a base backup is taken with `runbook basebackup` and the daily backup (dumps and the attachments
snapshot) with `runbook backup`, then a steady stream of timestamped writes runs while a wrong `DROP TABLE`
strikes half-way and the attachments are wiped; the moment just before it is the profile's target_time, and
the operator recovers to it with the `pitr` action into a new data directory, then restores the attachments
snapshot nearest the recovery point.

`--engine pgbackrest` (scenario 2): the same drill on pgBackRest (steps.sandbox.pgbackrest): the primary
archives with `pgbackrest archive-push` into a pgBackRest repository of the sandbox, the stanza is made, the
base backup is `runbook basebackup` (pgbackrest backup), and the same runbook recovers with the `pitr` action
(pgbackrest restore) and re-protects. Without pgbackrest installed: a clear error naming the package.

`--encrypt` (either scenario): the sandbox's repository is marked `encrypt: true`, to an operator age key made
beside the sandbox (steps.sandbox.build: `operator_key`); every backup, attachments snapshot and WAL segment is
stored as age ciphertext, `runbook verify-backup` proves before the disaster that the operator's key opens the
backup (restored into a throwaway cluster), and the recovery decrypts as it fetches. Where the key is is said,
never the key.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from runbook.cli.options import add_state_dir, require_terminal, state_dir
from runbook.errors import UsageError


def register(sub: Any) -> None:
    d = sub.add_parser("demo", help="a local sandbox, a disaster, and the real recovery: the whole drill on this machine")
    d.add_argument("--runbook", default="runbook.yaml", help="the runbook to walk (default: ./runbook.yaml)")
    d.add_argument("--scenario", default="restore-latest", choices=["restore-latest", "pitr"],
                   help="restore-latest: the newest daily backup into a new database (scenario 1); pitr: a wrong "
                        "DROP TABLE undone by point-in-time recovery (scenario 2) (default: restore-latest)")
    d.add_argument("--headless", action="store_true", help="the console front end instead of the TUI")
    d.add_argument("--yes", action="store_true", help="unattended: confirm every step with the sandbox's values")
    d.add_argument("--answers", metavar="FILE", help="headless: scripted answers per step (YAML: step id -> list of "
                   "confirm, retry, {skip: REASON}, {type: TEXT}, {set: {K: V}}, stop, ...); a step with none "
                   "left falls back to --yes (docs/commands.md)")
    d.add_argument("--encrypt", action="store_true",
                   help="encrypt the sandbox's repository with age (docs/encryption.md): an operator key is made "
                        "beside the sandbox (kept across rebuilds, removed by --down), every backup and WAL segment "
                        "is stored encrypted to it, and the recovery decrypts as it fetches")
    d.add_argument("--engine", choices=["own", "pgbackrest"], default="own",
                   help="the physical engine of --scenario pitr: own (the product's base backups and WAL archive, "
                        "the default) or pgbackrest (WAL archived with pgbackrest archive-push into a pgBackRest "
                        "repository of the sandbox, the base backup and the restore by pgBackRest: "
                        "docs/pgbackrest.md); needs Debian's pgbackrest package")
    d.add_argument("--down", action="store_true", help="stop and remove the sandbox")
    d.add_argument("--scale", type=int, default=1, help="data size: 1 ≈ 2,000 assets and 4,000 loans (default 1)")
    d.add_argument("--files", type=int, default=200, help="attachment files (default 200)")
    d.add_argument("--dir", help="sandbox directory (default: $RUNBOOK_SANDBOX_DIR, else "
                   "/var/tmp/runbook-sandbox-USER as root (USER: the sudo user, else root), else "
                   "$XDG_STATE_HOME/runbook/sandbox, i.e. ~/.local/state/runbook/sandbox)")
    g = d.add_argument_group("game day (docs/game-days.md)")
    g.add_argument("--fault", action="append", metavar="NAME",
                   help="inject this fault into the sandbox (repeatable), or `random`: one that applies to the "
                        "scenario, picked with the seed; the operator is not told which until the debrief")
    g.add_argument("--seed", type=int, help="the seed of --fault random and of the faults' damage: the same seed "
                   "and scenario replay the same game day (drawn and recorded when not given)")
    g.add_argument("--faults", action="store_true", help="list the faults (name, scenarios, what it is) and exit")
    g.add_argument("--reveal", metavar="RUN_ID", help="the trainer's view of a game-day run: its faults, what was "
                   "done to the sandbox, what the tool shows, how to handle it")
    g.add_argument("--operator", metavar="NAME", help="who plays the game day (default: the OS user)")
    d.add_argument("--break-lock", action="store_true",
                   help="start a new drill over a run left unfinished on this sandbox (journaled); never over a "
                   "drill that is running")
    add_state_dir(d)
    d.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from steps.sandbox.build import Sandbox, default_dir
    from steps.sandbox.lock import SandboxLock, take, unfinished

    sb = Sandbox(Path(args.dir).resolve() if args.dir else default_dir())
    sdir = state_dir(args)
    if args.faults:
        return _list_faults(args)
    if args.reveal:
        return _reveal(args, sb, sdir)
    if not args.fault and (args.seed is not None or args.operator):
        raise UsageError("--seed and --operator are for game days: add --fault NAME or --fault random",
                         hint="`runbook demo --faults` lists the faults")
    if args.down:
        if not sb.base.exists():
            _say(f"no sandbox at {sb.base}: nothing to remove")
            return 0
        rb = _runbook_if_any(Path(args.runbook))
        lock = SandboxLock(sb.base, action="demo --down")
        take(lock, sb, rb, sdir)
        try:
            sb.down()
        finally:
            lock.release()
        _say(f"sandbox removed ({sb.base})")
        return 0
    if args.yes and not args.headless:
        raise UsageError("--yes is for unattended drills: add --headless (the TUI asks the operator)")
    _check_engine(args)
    require_terminal(args, "demo")
    runbook_path = Path(args.runbook)
    if not runbook_path.exists():
        raise UsageError(f"{runbook_path} not found", hint="run from the project's directory, or pass --runbook FILE")
    from runbook.loader import load_runbook

    rb = load_runbook(runbook_path)  # a broken runbook fails before the sandbox is touched
    if args.scenario not in rb.scenarios:
        raise UsageError(f"scenario {args.scenario!r} is not in {runbook_path}: {', '.join(rb.scenarios)}")
    from runbook.cli.runs import answers_of

    args.scripted = answers_of(args, runbook_path)  # a bad answers file fails before the sandbox is touched
    if args.fault:
        from steps.sandbox.faults import choose

        args.chosen_faults, args.seed = choose(args.fault, args.scenario, args.seed)  # a bad name fails here
    lock = SandboxLock(sb.base)
    take(lock, sb, rb, sdir)  # held until the drill ends: nobody rebuilds or removes the sandbox under it
    try:
        if not args.break_lock and (refusal := unfinished(sb, rb, sdir)) is not None:
            raise refusal
        return _build_and_recover(args, sb, rb, runbook_path, lock)
    finally:
        lock.release()


def _check_engine(args: argparse.Namespace) -> None:
    """--engine pgbackrest: scenario 2 only, without --encrypt, with pgbackrest installed."""
    if args.engine != "pgbackrest":
        return
    import shutil

    if args.scenario != "pitr":
        raise UsageError("--engine pgbackrest is for --scenario pitr: the engine is the physical side (base backups, "
                         "the WAL archive, PITR); scenario 1 restores a logical backup, the same with either engine",
                         hint="runbook demo --scenario pitr --engine pgbackrest")
    if args.encrypt:
        raise UsageError("--encrypt is the product's own repository encryption; with --engine pgbackrest the "
                         "physical side is pgBackRest's (its repo1-cipher-type), not the sandbox's",
                         hint="drop --encrypt, or use --engine own")
    if args.fault:
        raise UsageError("game-day faults are played on the product's own engine: they damage the sandbox's own "
                         "archive and backups, not pgBackRest's repository",
                         hint="drop --engine pgbackrest for a game day (--engine own, the default)")
    if shutil.which("pgbackrest") is None:
        raise UsageError("--engine pgbackrest: pgbackrest is not installed on this machine",
                         hint="apt-get install pgbackrest (Debian's package; scripts/setup.sh installs it)")


def _runbook_if_any(path: Path) -> Any:
    """The runbook, to find a run using the sandbox; None when there is none or it cannot be read."""
    from runbook.errors import RunbookError
    from runbook.loader import load_runbook

    try:
        return load_runbook(path) if path.exists() else None
    except RunbookError:
        return None


def _build_and_recover(args: argparse.Namespace, sb: Any, rb: Any, runbook_path: Path, lock: Any) -> int:
    from steps.sandbox.profile import write_profile

    encrypt = bool(args.encrypt)
    engine = getattr(args, "engine", "own")
    game = _game(args, sb)
    _say(f"building the sandbox in {sb.base}" + (" (encrypted repository)" if encrypt else "")
         + (" on pgBackRest" if engine == "pgbackrest" else ""))
    if args.scenario == "pitr":
        sb.build(args.scale, args.files, say=_say, archive=True, encrypt=encrypt, engine=engine)
        if encrypt:
            _say_encrypted(sb)
        _phase(game, "build")
        sb.basebackup(say=_say)
        sb.backup(say=_say)  # the daily backup: its attachments snapshot is the one scenario 2 restores
        if encrypt:
            sb.verify_backup("base", say=_say)
        _phase(game, "after-backup")
        story = sb.pitr_disaster(say=_say, archived=not (game is not None and game.ctx.facts.get("archiving_broken")))
        lost_at = datetime.fromisoformat(story["disaster_at"])
        profile = write_profile(sb, runbook_path, args.scenario, pitr=story)
        if game is not None:
            game.set_baseline(rpo_s=max(0.0, (lost_at - datetime.fromisoformat(story["target_time"])).total_seconds()))
        _phase(game, "before-run")
        _say(f"profile: {profile}")
        return _recover(args, sb, rb, runbook_path, profile, lost_at, lock, game)
    sb.build(args.scale, args.files, say=_say, encrypt=encrypt)
    if encrypt:
        _say_encrypted(sb)
    _phase(game, "build")
    sb.backup(say=_say)
    if encrypt:
        sb.verify_backup("logical", say=_say)
    _phase(game, "after-backup")
    sb.keep_writing(25, say=_say)
    lost_at = sb.disaster(say=_say)
    profile = write_profile(sb, runbook_path, args.scenario)
    if game is not None:
        from steps.sandbox.faults.game import clean_baseline

        game.set_baseline(**clean_baseline(sb, lost_at))
    _phase(game, "before-run")
    _say(f"profile: {profile}")
    return _recover(args, sb, rb, runbook_path, profile, lost_at, lock, game)


def _game(args: argparse.Namespace, sb: Any) -> Any:
    """The game day of `--fault`, or None. Says the game id and seed (never the faults: the operator reads this)."""
    if not args.fault:
        return None
    from runbook.lockfile import current_user
    from steps.sandbox.faults.game import Game

    game = Game(sb, args.chosen_faults, args.seed, args.scenario, args.operator or current_user(), state_dir(args),
                say=_say)
    _say(f"game day {game.gd.game_id} (seed {game.gd.seed}, operator {game.gd.operator}): something in this sandbox "
         "will not go to plan; the runbook and the tool's messages are yours to find it. The trainer's view: "
         "runbook demo --reveal RUN_ID")
    return game


def _phase(game: Any, name: str) -> None:
    if game is not None:
        game.phase(name)


def _list_faults(args: argparse.Namespace) -> int:
    from steps.sandbox.faults import listing

    faults = listing(None)
    if not faults:
        print("no faults are registered")
        return 0
    width = max(len(f.name) for f in faults)
    swidth = max(len(",".join(f.scenarios)) for f in faults)
    print(f"{'FAULT':<{width}}  {'SCENARIOS':<{swidth}}  WHAT GOES WRONG")
    for f in faults:
        print(f"{f.name:<{width}}  {','.join(f.scenarios):<{swidth}}  {f.title}")
    print("\nrunbook demo --fault NAME (repeatable), or --fault random [--seed N]; the trainer's view of a run: "
          "runbook demo --reveal RUN_ID")
    return 0


def _reveal(args: argparse.Namespace, sb: Any, sdir: Path) -> int:
    """The trainer's view: the game day of a run (from the sandbox, else from the ledger beside the runs)."""
    from runbook.errors import RunbookError
    from steps.sandbox.faults import registry
    from steps.sandbox.faults.record import for_run, ledger_for_run

    gd = (for_run(sb.base, args.reveal) if sb.base.is_dir() else None) or ledger_for_run(sdir, args.reveal)
    if gd is None:
        raise RunbookError(f"run {args.reveal} is not a game day (no record in the sandbox {sb.base} nor in "
                           f"{sdir}/gamedays.jsonl)", hint="`runbook runs` lists the runs; pass --dir and "
                           "--state-dir as the game day had them")
    faults = registry()
    print(f"game day {gd.game_id} · run {gd.run_id} · scenario {gd.scenario} · seed {gd.seed} · operator "
          f"{gd.operator} · {gd.created_at}")
    if gd.baseline:
        print("a clean run on this sandbox: " + ", ".join(f"{k} {v}" for k, v in sorted(gd.baseline.items())))
    facts = {i.get("name"): i for i in gd.injected}
    for name in gd.faults:
        f = faults.get(name)
        print(f"\nFAULT {name}" + (f": {f.title}" if f else " (no longer registered)"))
        if f is not None:
            for label, text in (("what was done", f.story), ("what the tool shows", f.evidence),
                                ("how to handle it", f.handling)):
                print(f"  {label}: {text}")
        inj = facts.get(name)
        if inj:
            print(f"  injected at {inj.get('at')}: " + json.dumps(inj.get("facts", {}), sort_keys=True))
        else:
            print("  not injected (the demo stopped before its phase)")
    print(f"\nseed {gd.seed} replays it: runbook demo --scenario {gd.scenario} "
          + " ".join(f"--fault {n}" for n in gd.faults) + f" --seed {gd.seed}")
    if gd.run_id and (sdir / "runs" / gd.run_id / "journal.jsonl").exists():
        from runbook.cli.gamedays import say_debrief

        print()
        if not say_debrief(sdir, gd.run_id):
            print("the run has not ended: its debrief comes when it does")
    return 0


def _say_encrypted(sb: Any) -> None:
    """Where the key is, never the key."""
    _say(f"backups and WAL are encrypted with age (local.encrypt: true) to the operator's key {sb.recipient()}; "
         f"its identity (private key, 0600) is {sb.operator_key}" +
         (f", with the server user's copy for restore_command at {sb.server_operator_key}"
          if sb.identity_file() != sb.operator_key else ""))


def _recover(args: argparse.Namespace, sb: Any, rb: Any, runbook_path: Path, profile: Path, lost_at: datetime,
             lock: Any, game: Any = None) -> int:
    from runbook.clock import Clock
    from runbook.session import RunOptions, open_new_run
    sdir = state_dir(args)
    opts = RunOptions(runbook_path=runbook_path, scenario=args.scenario, mode="drill", profile=profile,
                      incident_start=lost_at.isoformat(), data_lost_at=lost_at.isoformat(), state_dir=sdir,
                      break_lock=args.break_lock, game_day=game.journal_event() if game is not None else None)
    if not args.headless:
        from runbook.loader import load_model
        from runbook.session import Profile
        from runbook.tui.app import run_new

        given = load_model(profile, Profile, filename=str(profile)).params
        _say("opening the runbook: recover AssetFlow step by step")
        _phase(game, "during-run")  # the run is opened in the TUI: GameContext.find_run() finds it
        if game is not None:  # the ledger has the game before the TUI opens: its Debrief screen reads it
            from steps.sandbox.faults.record import append_ledger

            append_ledger(sdir, game.gd)
        code = run_new(opts, rb, given, sdir)
        if game is not None:
            from steps.sandbox.faults import run_of_game

            if (rid := run_of_game(sdir, game.gd.game_id)) is not None:
                game.opened(rid)
                from runbook.cli.gamedays import say_debrief

                say_debrief(sdir, rid)
            _say_reveal(args, rid)
        _say_key_after(args, sb)
        return code
    from runbook.cli.headless import HeadlessOptions, run_headless

    engine = open_new_run(opts, Clock(), state_dir=sdir)
    lock.set_run(engine.run_id)
    if game is not None:
        game.opened(engine.run_id)
        _phase(game, "during-run")
    confirms = {s.id: v for s in engine.steps if (v := engine.typed_expected(s)) is not None} if args.yes else {}
    code = run_headless(engine, HeadlessOptions(yes=args.yes, confirms=confirms, answers=args.scripted))
    c = engine.clock_status()
    from runbook.durations import format_duration

    report = f" · report: runbook report {engine.run_id}" + (f" --state-dir {sdir}" if args.state_dir else "")
    if code != 0:  # a run that did not recover has no RTO to meet
        print(f"demo: the recovery did not complete (exit {code}) after {format_duration(c.elapsed_s)}: no RTO was "
              f"achieved{report}")
    else:
        verdict = "met" if c.elapsed_s <= c.target_s else "MISSED"
        print(f"demo: measured RTO {format_duration(c.elapsed_s)} against {format_duration(c.target_s)}: {verdict}"
              f"{report}")
    if game is not None:
        from runbook.cli.gamedays import say_debrief

        say_debrief(sdir, engine.run_id)
        _say_reveal(args, engine.run_id)
    _say_key_after(args, sb)
    sys.stdout.flush()
    return code


def _say_reveal(args: argparse.Namespace, run_id: str | None) -> None:
    if run_id is not None:
        extra = (f" --dir {args.dir}" if args.dir else "") + (f" --state-dir {args.state_dir}" if args.state_dir else "")
        _say(f"game day over: the trainer's view is `runbook demo --reveal {run_id}{extra}`")


def _say_key_after(args: argparse.Namespace, sb: Any) -> None:
    if args.encrypt:
        _say(f"the sandbox's backups and WAL are stored encrypted (age) to {sb.recipient()}; the operator's key: "
             f"{sb.operator_key} (removed by `runbook demo --down`)")

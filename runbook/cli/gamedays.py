"""Game days on the command line: the debrief as printed after a game-day run (`runbook demo`, `demo --reveal`),
and `runbook runs --game-days`: each person's game days by fault with their score, the faults nobody has
practised, and who has not played one for 90 days (runbook.gameday).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runbook.cli.options import state_dir
from runbook.clock import Clock


def debrief_text(d: Any) -> list[str]:
    """The debrief as lines for a terminal: a label column, then the words of `runbook.gameday.debrief_lines`."""
    from runbook.gameday import debrief_lines

    width = 10
    return [f"  {line.label:<{width}} {line.text}" for line in debrief_lines(d)]


def say_debrief(sdir: Path, run_id: str, write: Callable[[str], None] = print, prefix: str = "demo") -> bool:
    """Print the debrief of a game-day run that ended; False (nothing printed) for any other run. A record that
    cannot be found is said, never a traceback."""
    from runbook.errors import RunbookError
    from runbook.gameday import GameDayError, load_debrief
    from runbook.state import load_state

    try:
        st = load_state(sdir, run_id)
    except RunbookError:
        return False  # what is wrong with the run was said by whoever drove it
    try:
        d = load_debrief(sdir, st, Clock().now())
    except GameDayError as e:
        write(f"{prefix}: no game day debrief: {e.message}")
        return False
    if d is None:
        return False
    write(f"{prefix}: game day debrief (score {d.score}/100; the rules: docs/game-days.md)")
    for line in debrief_text(d):
        write(line)
    return True


def cmd_game_days(args: argparse.Namespace) -> int:
    from runbook.gameday import STALE_GAME_DAY, game_days, ledger_path, progress
    from runbook.state import list_runs
    from steps.sandbox.faults import registry

    sdir = state_dir(args)
    now = Clock().now()
    games = game_days(sdir)
    faults = registry()
    prog = progress(games, list_runs(sdir), list(faults), sdir, now)
    if args.json:
        doc = {
            "ledger": str(ledger_path(sdir)), "stale_after_days": STALE_GAME_DAY.days,
            "people": [{
                "operator": p.operator, "last_game_day": p.last_at.isoformat() if p.last_at else None,
                "age_days": round(p.age_days, 3) if p.age_days is not None else None, "stale": p.stale,
                "game_days": [{
                    "game_id": g.game_id, "run_id": g.run_id, "created_at": g.created_at.isoformat(),
                    "scenario": g.scenario, "faults": g.faults, "seed": g.seed, "status": g.status, "score": g.score,
                    **({"problem": g.problem} if g.problem else {}),
                } for g in p.played],
            } for p in prog.people],
            "unpractised": prog.unpractised,
        }
        print(json.dumps(doc, indent=2))
        return 0
    if not prog.people:
        print(f"no game days in {ledger_path(sdir)} (play one: runbook demo --fault random)")
    for p in prog.people:
        last = f"last game day {p.last_at:%Y-%m-%d} ({_age(p.age_days)})" if p.last_at else "no game day finished"
        flag = f"  STALE: none in {STALE_GAME_DAY.days} days" if p.stale else ""
        print(f"{p.operator}: {len(p.played)} game day{'s' if len(p.played) != 1 else ''}, {last}{flag}")
        print(f"  {'FAULT':28} {'PLAYED':16} {'SCORE':5} RUN")
        for fault, played in p.by_fault().items():
            for g in played:
                score = f"{g.score}" if g.score is not None else "—"
                name = fault if len(fault) <= 28 else fault[:27] + "…"
                run = (g.run_id or "no run") + ("" if g.score is not None or not g.run_id else f" ({g.status})")
                print(f"  {name:28} {g.created_at:%Y-%m-%d %H:%M} {score:5} {run}")
    if prog.unpractised:
        print(f"\nFaults nobody has practised: {', '.join(prog.unpractised)}")
    elif prog.registered:
        print("\nEvery fault has been practised at least once.")
    return 0


def _age(days: float | None) -> str:
    if days is None:
        return "never"
    n = int(days)
    return "today" if n == 0 else f"{n} day{'s' if n != 1 else ''} ago"

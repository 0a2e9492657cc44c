"""terminal-dies: the operator's terminal dies mid-restore.

Once the run is open, a watcher in the demo's own process follows the run's journal; a moment after the restore
step (`restore` in scenario 1, `pitr` in scenario 2) starts, it sends SIGHUP to that process, the front end that
drives the run, as a closed SSH session or terminal window would. The step runs on under its supervisor (its own
session); the run stays open. The operator re-attaches with `runbook resume RUN_ID` and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from steps.sandbox.faults import Fault, GameContext, register
from steps.sandbox.faults._pitr_common import Events, at, completed, first
from steps.sandbox.faults.guard import FaultRefused

if TYPE_CHECKING:
    from steps.sandbox.build import Sandbox

RESTORE_STEP = {"restore-latest": "restore", "pitr": "pitr"}
DELAY_S = {"restore-latest": 0.2, "pitr": 1.0}  # after the step started: mid-restore (the sandbox's are short)
WATCH_S = 3600.0


def _started(journal: Any, step: str) -> bool:
    try:
        lines = journal.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("type") == "step-started" and e.get("step") == step:
            return True
    return False


def _hang_up_like_a_terminal() -> None:
    """A demo started under `nohup` (or from a shell that ignores SIGHUP) would shrug the hang-up off, finish, and
    score the game "not handled" for a fault that never happened: the default action (the process ends) is put
    back. Only an ignored SIGHUP is changed; the injector runs in the demo's main thread."""
    try:
        if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
    except ValueError:  # not the main thread: leave it
        pass


def inject(sb: Sandbox, ctx: GameContext) -> dict[str, Any]:
    if ctx.state_dir is None:  # said to the operator: nothing of the fault in it
        raise FaultRefused("the game day cannot follow the run: the demo has no state directory")
    state_dir = ctx.state_dir
    step = RESTORE_STEP[ctx.scenario]
    front_end = os.getpid()
    _hang_up_like_a_terminal()

    def watch() -> None:
        deadline = time.monotonic() + WATCH_S
        run_id = ctx.run_id
        while time.monotonic() < deadline:
            if run_id is None:  # the cockpit opens the run once the operator starts it: find it by its game id
                run_id = ctx.find_run()
            elif _started(state_dir / "runs" / run_id / "journal.jsonl", step):
                time.sleep(DELAY_S[ctx.scenario])
                os.kill(front_end, signal.SIGHUP)
                return
            time.sleep(0.2)

    threading.Thread(target=watch, name="game-day-hangup", daemon=True).start()
    return {"step": step, "signal": "SIGHUP", "front_end_pid": front_end,
            "delay_s": DELAY_S[ctx.scenario]}


def _hangup_step(events: Events) -> str | None:
    started = [e.get("step") for e in events if e.get("type") == "step-started"]
    return next((s for s in ("pitr", "restore") if s in started), None)


def evidence_event(events: Events) -> float | None:
    """The run was found open with its restore step under its supervisor: the first resume after it started."""
    step = _hangup_step(events)
    if step is None:
        return None
    started = first(events, "step-started", step=step)
    resumed = first(events, "run-resumed", after=at(started) if started else None)
    return at(resumed) if resumed is not None else None


def handled(events: Events) -> bool:
    """Re-attached (resumed, the step's outcome taken from its supervisor, never run twice) and finished."""
    step = _hangup_step(events)
    if step is None or evidence_event(events) is None:
        return False
    attempts = {e.get("attempt") for e in events if e.get("type") == "step-started" and e.get("step") == step}
    ok = first(events, "step-finished", step=step, statuses=("succeeded",))
    return completed(events) and ok is not None and attempts == {1}


FAULT = register(Fault(
    name="terminal-dies",
    title="the operator's terminal dies in the middle of the restore",
    scenarios=("restore-latest", "pitr"),
    story="A watcher in the demo's process sent SIGHUP to it (the front end driving the run) a second after the "
          "restore step started, as a dropped SSH session would: the demo ended; the step went on under its "
          "supervisor. (A demo started with SIGHUP ignored, as under `nohup`, has the default action put back first.)",
    evidence="The demo's screen is gone mid-restore; `runbook runs` shows the run open; `runbook resume RUN_ID` "
             "says the step is still running (re-attached) or ended while nobody watched, with its result.",
    handling="Do not start a new run nor re-run the restore: `runbook resume RUN_ID` (or `runbook watch` from another "
             "terminal first), let the step finish under its supervisor, and go on to the end.",
    phase="during-run",
    inject=inject,
    evidence_event=evidence_event,
    handled=handled,
))

"""Game days: the debrief of a game-day run, its score, and each person's game days over time.

A game-day run is a drill `runbook demo --fault ...` opened over a sandbox with faults injected; its journal
carries a `game-day` event (the game's id and seed, never the faults), and the game's record
(`steps.sandbox.faults.record.GameDay`: faults, what the injectors did, the clean baseline) lives in the sandbox
and, a copy, in the ledger `<state_dir>/gamedays.jsonl`, which outlives the sandbox.

From the journal and the record alone (pure, deterministic, an injectable `now`), `debrief` tells:
- each fault: its title and story, when the tool first showed the evidence (`Fault.evidence_event`), when the
  operator first acted after it (a retry, a re-run, a skip, a value given, a note, leaving the run to act
  outside it (the operator's quit, not a `--yes` that cannot go on), a resume (with what came with it:
  parameters changed with `--set`, steps walked again), a step marked done, a cancel, an abort) and whether the
  operator handled it (`Fault.handled`);
- the steps retried and skipped; the measured RTO and data-loss window beside the clean baseline's;
- the mistakes (a refused typed confirmation, a retry that failed the same way, an abort);
- the score out of 100, by the rules below (docs/game-days.md explains them with a worked example).

The score: 100 minus four deductions, each with its cap (they sum to 100, so the score is never below 0):
- detect (at most 20): per fault that showed its evidence, 2 points per full minute from the evidence to the
  operator's first action after it; 20 when the operator never acted on it, or its `handled` says it was not
  handled. A fault whose evidence never showed costs nothing. The worst fault counts.
- recover (at most 30): 30 when the service was not restored (the run did not reach its `rto_end` step) or the
  RTO target was missed; else 1 point per full minute of RTO beyond the clean baseline's: the record's `rto_s`,
  else the fastest completed drill of the same runbook and scenario in the state directory that was not a game
  day (`clean_rto`); nothing when neither is known.
- data (at most 20): 20 when the service was not restored; else the data-loss window beyond the clean baseline's,
  as a share of the RPO target: 20 points for a whole target's worth, rounded up (1 point per full minute when
  there is no RPO target); 20 when the window could not be measured (no recovery point reported, or the recovery
  point is after the loss).
- mistakes (at most 30): 10 points each.

Nothing of the fault is shown before the run ended: `load_debrief` answers only for a closed run (completed,
failed, aborted); a run left open (detached) may still be resumed by the operator playing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runbook.clock import parse_iso
from runbook.durations import format_duration
from runbook.errors import RunbookError
from runbook.state import CLOSED, RunState

if TYPE_CHECKING:
    from steps.sandbox.faults import Fault
    from steps.sandbox.faults.record import GameDay

GAME_DAY_EVENT = "game-day"
LEDGER_NAME = "gamedays.jsonl"
STALE_GAME_DAY = timedelta(days=90)

DETECT_MAX, DETECT_PER_MINUTE = 20, 2
RECOVER_MAX, RECOVER_PER_MINUTE = 30, 1
DATA_MAX = 20
MISTAKE_POINTS, MISTAKES_MAX = 10, 30

# What the operator did, by journal event: the first of these after a fault's evidence is "acting on it".
OPERATOR_ACTIONS = ("retry-requested", "rerun-chosen", "step-skipped", "value-provided", "note", "run-detached",
                    "run-resumed", "params-set", "steps-reopened", "cancel-requested", "step-finished", "run-finished")


class GameDayError(RunbookError):
    """A game-day run whose record cannot be found or read."""


# ---- the journal's game-day event and the ledger ------------------------------------------------------


def game_day_event(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's `game-day` event (its game id and seed), or None: not a game-day run."""
    return next((e for e in events if e.get("type") == GAME_DAY_EVENT), None)


def ledger_path(state_dir: Path) -> Path:
    return Path(state_dir) / LEDGER_NAME


def game_days(state_dir: Path) -> list[GameDay]:
    """The game days of the ledger beside the runs (`steps.sandbox.faults.record.ledger`), oldest first."""
    from steps.sandbox.faults.record import ledger

    return ledger(Path(state_dir))


def clean_rto(runs: list[Any], st: RunState) -> float | None:
    """The fastest RTO of a completed run of the same runbook and scenario, in drill mode, that was not a game
    day: what a clean run achieves here (the baseline of `recover` when the game day's record has none)."""
    best: float | None = None
    for r in runs:
        if not isinstance(r, RunState) or r.run_id == st.run_id or r.status != "completed" or r.mode != "drill":
            continue
        if r.runbook_name != st.runbook_name or r.scenario != st.scenario or game_day_event(r.events) is not None:
            continue
        rto = r.rto_s()
        if rto is not None and rto >= 0 and (best is None or rto < best):
            best = rto
    return best


# ---- the debrief -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultDebrief:
    name: str
    title: str
    story: str
    evidence: str  # what the tool shows when it bites
    handling: str  # what a good operator does
    injected_at: str | None
    facts: dict[str, Any]
    timed: bool  # the fault has an evidence detector (Fault.evidence_event)
    evidence_at: datetime | None  # when the tool first showed it (None: never, or not timed)
    acted_at: datetime | None  # the operator's first action after it
    acted: str  # what that action was
    handled: bool | None  # None: the fault has no judge of handling
    known: bool = True  # False: the fault is no longer in the registry (only its name is known)
    problem: str | None = None  # its judges could not read this journal

    @property
    def reaction_s(self) -> float | None:
        if self.evidence_at is None or self.acted_at is None:
            return None
        return max(0.0, (self.acted_at - self.evidence_at).total_seconds())


@dataclass(frozen=True)
class Deduction:
    rule: str  # detect | recover | data | mistakes
    points: int
    cap: int
    why: str


@dataclass(frozen=True)
class Debrief:
    game_id: str
    seed: int
    scenario: str
    operator: str
    run_id: str
    status: str  # the run's: completed | failed | aborted
    started_at: datetime | None
    faults: list[FaultDebrief]
    retried: list[str]
    skipped: list[tuple[str, str]]  # (step, reason)
    restored: bool
    rto_s: float | None
    rto_target_s: float | None
    baseline_rto_s: float | None
    window_s: float | None  # the data-loss window (None: not measured)
    window_problem: str | None
    rpo_target_s: float | None
    baseline_rpo_s: float | None
    rows_lost: Any
    baseline_rows_lost: Any
    mistakes: list[str]
    deductions: list[Deduction]

    @property
    def score(self) -> int:
        return max(0, 100 - sum(d.points for d in self.deductions))


def _epoch(ts: Any) -> float | None:
    try:
        return parse_iso(str(ts)).timestamp()
    except ValueError:
        return None


def _action_text(e: dict[str, Any]) -> str | None:
    """What an operator action was, in words; None when the event is not the operator's doing."""
    t, step = e.get("type"), e.get("step")
    if t == "retry-requested":
        return f"retried step {step}"
    if t == "rerun-chosen":
        return f"re-ran step {step}"
    if t == "step-skipped":
        return f"skipped step {step} ({e.get('reason', '')})"
    if t == "value-provided":
        return f"gave a value for {e.get('name')} (step {e.get('for_step') or step})"
    if t == "note":
        return "wrote a note" + (f" at step {step}" if step else "")
    if t == "run-detached" and str(e.get("reason", "")).startswith("the operator"):  # not a --yes or a closed stdin
        return f"left the run to act outside it ({e.get('reason')})"
    if t == "run-resumed":
        return "resumed the run"
    if t == "params-set":
        given = e.get("params")
        return "changed " + (", ".join(map(str, given)) if isinstance(given, dict) and given else "parameters") + \
            " (--set)"
    if t == "steps-reopened":
        return f"walked again from step {e.get('from_step')}"
    if t == "cancel-requested":
        return f"cancelled step {step}"
    if t == "step-finished" and e.get("marked"):
        return f"marked step {step} done"
    if t == "run-finished" and e.get("status") == "aborted":
        return "aborted the run"
    return None


def first_action(events: list[dict[str, Any]], after: float) -> tuple[float, str] | None:
    """The operator's first action at or after `after` (epoch seconds): when, and what."""
    for e in events:
        if e.get("type") not in OPERATOR_ACTIONS:
            continue
        at = _epoch(e.get("ts"))
        if at is None or at < after:
            continue
        text = _action_text(e)
        if text is None:
            continue
        if e.get("type") == "run-resumed":  # what came with the resume (journaled right after it) says more
            more = [m for m in (_action_text(x) for x in _with_resume(events, e)) if m]
            text = "; ".join([text, *more])
        return at, text
    return None


# Journaled by a resume right after its run-resumed event.
_RESUME_EXTRAS = ("params-set", "steps-reopened", "handover", "approver-policy", "lock-broken", "warning")


def _with_resume(events: list[dict[str, Any]], resumed: dict[str, Any]) -> list[dict[str, Any]]:
    i = next(n for n, x in enumerate(events) if x is resumed)
    out = []
    for x in events[i + 1:]:
        if x.get("type") not in _RESUME_EXTRAS:
            break
        out.append(x)
    return out


def mistakes(events: list[dict[str, Any]]) -> list[str]:
    """A refused typed confirmation, a retry that failed the same way as the attempt before it, an abort."""
    out: list[str] = []
    last_failure: dict[str, tuple[Any, Any]] = {}  # step -> (detail, exit code) of its last failed attempt
    retried: set[str] = set()  # steps whose next result follows an operator's retry
    for e in events:
        t, step = e.get("type"), str(e.get("step") or "")
        when = str(e.get("ts", ""))[11:19]
        if t == "confirm-refused":
            out.append(f"typed confirmation refused at step {step} ({when})")
        elif t in ("retry-requested", "rerun-chosen"):
            retried.add(step)
        elif t == "step-finished" and not e.get("will_retry"):
            failure = (e.get("detail"), e.get("exit_code"))
            if step in retried and e.get("status") == "failed" and last_failure.get(step) == failure:
                out.append(f"step {step} retried and failed the same way ({e.get('detail')}, {when})")
            retried.discard(step)
            if e.get("status") == "failed":
                last_failure[step] = failure
        elif t == "run-finished" and e.get("status") == "aborted":
            out.append(f"the run was aborted ({e.get('detail') or 'no reason given'}, {when})")
    return out


def _fault_debrief(name: str, game: GameDay, events: list[dict[str, Any]],
                   faults: Mapping[str, Fault]) -> FaultDebrief:
    injected = next((i for i in game.injected if isinstance(i, dict) and i.get("name") == name), {})
    raw = injected.get("facts")
    facts: dict[str, Any] = raw if isinstance(raw, dict) else {}
    f = faults.get(name)
    if f is None:
        return FaultDebrief(name, f"{name} (no longer in the registry)", "", "", "", injected.get("at"), facts,
                            False, None, None, "", None, known=False)
    evidence_at = acted_at = None
    acted = ""
    problem = None
    try:  # a judge is the fault module's code over a journal: one that fails is said, the debrief goes on
        shown = f.evidence_event(events) if f.evidence_event is not None else None
        handled = bool(f.handled(events)) if f.handled is not None else None
        if shown is not None:
            evidence_at = datetime.fromtimestamp(float(shown), UTC)
    except (ArithmeticError, AttributeError, KeyError, LookupError, TypeError, ValueError) as e:
        shown, handled = None, None
        problem = f"its judge of the journal failed ({type(e).__name__}: {e}): not timed, not judged"
    if shown is not None:
        first = first_action(events, float(shown))
        if first is not None:
            acted_at, acted = datetime.fromtimestamp(first[0], UTC), first[1]
    return FaultDebrief(f.name, f.title, f.story, f.evidence, f.handling, injected.get("at"), facts,
                        f.evidence_event is not None and problem is None, evidence_at, acted_at, acted, handled,
                        problem=problem)


def _detect(faults: list[FaultDebrief]) -> Deduction:
    worst = Deduction("detect", 0, DETECT_MAX, "no fault showed its evidence: nothing to detect")
    for f in faults:
        if f.handled is False:
            d = Deduction("detect", DETECT_MAX, DETECT_MAX, f"{f.name}: not handled")
        elif f.evidence_at is None:
            continue
        elif f.acted_at is None:
            d = Deduction("detect", DETECT_MAX, DETECT_MAX, f"{f.name}: shown, never acted on")
        else:
            reaction = f.reaction_s or 0.0
            points = min(DETECT_MAX, DETECT_PER_MINUTE * int(reaction // 60))
            d = Deduction("detect", points, DETECT_MAX,
                          f"{f.name}: acted {format_duration(reaction)} after the evidence")
        if d.points >= worst.points:
            worst = d
    return worst


def _recover(restored: bool, verdict: str, rto_s: float | None, baseline_s: float | None) -> Deduction:
    if not restored:
        return Deduction("recover", RECOVER_MAX, RECOVER_MAX, "the service was not restored")
    if verdict in ("missed", "impossible"):
        return Deduction("recover", RECOVER_MAX, RECOVER_MAX, f"the RTO target was {verdict}")
    if rto_s is None or baseline_s is None:
        return Deduction("recover", 0, RECOVER_MAX, "restored within the target (no clean baseline to compare)")
    extra = rto_s - baseline_s
    points = min(RECOVER_MAX, RECOVER_PER_MINUTE * int(max(0.0, extra) // 60))
    sign = "+" if extra >= 0 else "-"
    return Deduction("recover", points, RECOVER_MAX,
                     f"RTO {format_duration(rto_s)}, clean run {format_duration(baseline_s)} "
                     f"({sign}{format_duration(abs(extra))})")


def _data(restored: bool, window_s: float | None, problem: str | None, baseline_s: float | None,
          target_s: float | None) -> Deduction:
    if not restored:
        return Deduction("data", DATA_MAX, DATA_MAX, "the service was not restored: no data was brought back")
    if window_s is None:
        return Deduction("data", DATA_MAX, DATA_MAX, problem or "the data-loss window could not be measured")
    extra = window_s - (baseline_s or 0.0)
    if extra <= 0:
        return Deduction("data", 0, DATA_MAX, "no more data lost than a clean run")
    if target_s:
        points = min(DATA_MAX, math.ceil(round(DATA_MAX * extra / target_s, 6)))
        unit = f"(20 points for each RPO target of {format_duration(target_s)}, rounded up)"
    else:
        points = min(DATA_MAX, int(extra // 60))
        unit = "(no RPO target: 1 point a minute)"
    return Deduction("data", points, DATA_MAX, f"{_secs(extra)} more than a clean run {unit}")


def _secs(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


def debrief(st: RunState, game: GameDay, faults: Mapping[str, Fault], now: datetime) -> Debrief:
    """The debrief of a game-day run from its journal (`st`) and its record; `faults`: the registry."""
    from runbook.report import rpo_facts, rto_facts

    events = st.events
    per_fault = [_fault_debrief(n, game, events, faults) for n in game.faults]
    again = [str(e.get("step")) for e in events if e.get("type") in ("retry-requested", "rerun-chosen")]
    for e in events:  # a resume --redo-from walks these again
        if e.get("type") == "steps-reopened" and isinstance(e.get("steps"), list):
            again += [str(x) for x in e["steps"]]
    retried = list(dict.fromkeys(again))
    skipped = [(str(e.get("step")), str(e.get("reason", ""))) for e in events if e.get("type") == "step-skipped"]
    rto = rto_facts(st, now)
    rpo = rpo_facts(st)
    window = problem = None
    if rpo is None:
        problem = "no step reported a recovery point"
    elif rpo.impossible:
        problem = f"the recovery point is after the loss: {rpo.problem}"
    else:
        window, problem = rpo.window_s, rpo.problem
    base = game.baseline if isinstance(game.baseline, dict) else {}
    base_rto = _num(base.get("rto_s"))
    base_rpo = _num(base.get("rpo_s"))
    rpo_target = _num(st.targets.get("rpo_s"))
    found = mistakes(events)
    deductions = [
        _detect(per_fault),
        _recover(rto.restored, rto.verdict, rto.achieved_s, base_rto),
        _data(rto.restored, window, problem, base_rpo, rpo_target),
        Deduction("mistakes", min(MISTAKES_MAX, MISTAKE_POINTS * len(found)), MISTAKES_MAX,
                  f"{len(found)} mistake{'s' if len(found) != 1 else ''}"),
    ]
    return Debrief(
        game_id=game.game_id, seed=game.seed, scenario=game.scenario, operator=game.operator, run_id=st.run_id,
        status=st.status, started_at=st.started_at, faults=per_fault, retried=retried, skipped=skipped,
        restored=rto.restored,
        rto_s=rto.achieved_s, rto_target_s=_num(st.targets.get("rto_s")), baseline_rto_s=base_rto,
        window_s=window, window_problem=problem, rpo_target_s=rpo_target, baseline_rpo_s=base_rpo,
        rows_lost=rpo.rows_lost if rpo else None, baseline_rows_lost=base.get("rows_lost"), mistakes=found,
        deductions=deductions,
    )


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def load_debrief(state_dir: Path, st: RunState, now: datetime, ledger: list[GameDay] | None = None,
                 runs: list[Any] | None = None) -> Debrief | None:
    """The debrief of a run when it is a game day that has ended; None for any other run, and for a game-day run
    still open (nothing of the fault is told before the end). A game-day run whose record is missing from the
    ledger is a GameDayError naming the ledger."""
    event = game_day_event(st.events)
    if event is None or st.status not in CLOSED:
        return None
    from steps.sandbox.faults import registry

    games = game_days(state_dir) if ledger is None else ledger
    game = next((g for g in games if g.game_id == event.get("game_id")), None)
    if game is None:
        raise GameDayError(f"run {st.run_id} is game day {event.get('game_id')}, whose record is not in "
                           f"{ledger_path(state_dir)}",
                           hint="the ledger is written by `runbook demo --fault`; run `runbook report` with the "
                                "--state-dir the game day used")
    if not isinstance(game.baseline.get("rto_s"), int | float):
        from runbook.state import list_runs

        rto = clean_rto(runs if runs is not None else list_runs(state_dir), st)
        if rto is not None:
            game = replace(game, baseline={**game.baseline, "rto_s": rto, "rto_from": "the fastest clean drill"})
    return debrief(st, game, registry(), now)


# ---- the debrief in words (the TUI, the headless demo, the Markdown report) -----------------------------


@dataclass(frozen=True)
class DebriefLine:
    label: str  # "" for a continuation
    text: str
    alarm: bool = False


def _when(dt: datetime | None, start: datetime | None) -> str:
    if dt is None:
        return "—"
    into = f" (+{format_duration((dt - start).total_seconds())} into the run)" if start else ""
    return f"{dt.astimezone(UTC):%H:%M:%S} UTC{into}"


def _against(value: float | None, baseline: float | None, fmt: Any) -> str:
    if value is None:
        return "not measured"
    if baseline is None:
        return f"{fmt(value)} (no clean baseline)"
    extra = value - baseline
    return f"{fmt(value)}, clean run {fmt(baseline)} ({'+' if extra >= 0 else '-'}{fmt(abs(extra))})"


def debrief_lines(d: Debrief) -> list[DebriefLine]:
    """The debrief as labelled lines: the same words on every screen and in the Markdown report."""
    out = [DebriefLine("Game day", f"{d.game_id} · seed {d.seed} · scenario {d.scenario} · operator {d.operator}"
                                   f" · run {d.status}")]
    for f in d.faults:
        out.append(DebriefLine("Fault", f"{f.name}: {f.title}"))
        if f.story:
            out.append(DebriefLine("", f"what was done: {f.story}"))
        if not f.known:
            continue
        if f.problem:
            out.append(DebriefLine("", f"{f.problem}", alarm=True))
        elif not f.timed:
            out.append(DebriefLine("", "evidence: not timed (the fault has no detector)"))
        elif f.evidence_at is None:
            out.append(DebriefLine("", "evidence: the tool never showed it in this run"))
        else:
            out.append(DebriefLine("", f"evidence shown {_when(f.evidence_at, d.started_at)}: {f.evidence}"))
            if f.acted_at is None:
                out.append(DebriefLine("", "acted on: never", alarm=True))
            else:
                out.append(DebriefLine("", f"acted on {_when(f.acted_at, d.started_at)}: {f.acted}, "
                                           f"{format_duration(f.reaction_s)} after the evidence"))
        if f.handled is not None:
            out.append(DebriefLine("", f"handled: {'yes' if f.handled else 'NO'} — a good operator: {f.handling}",
                                   alarm=not f.handled))
        elif f.handling:
            out.append(DebriefLine("", f"a good operator: {f.handling}"))
    out.append(DebriefLine("Retried", ", ".join(d.retried) or "none"))
    out.append(DebriefLine("Skipped", "; ".join(f"{s} ({r})" for s, r in d.skipped) or "none"))
    rto = _against(d.rto_s, d.baseline_rto_s, format_duration) if d.restored else "service not restored"
    target = f"; target {format_duration(d.rto_target_s)}" if d.rto_target_s is not None else ""
    out.append(DebriefLine("RTO", rto + target, alarm=not d.restored))
    window = _against(d.window_s, d.baseline_rpo_s, _secs) if d.window_s is not None else \
        f"not measured: {d.window_problem}"
    rows = ""
    if d.rows_lost is not None:
        rows = f"; rows lost {d.rows_lost}" + (f" (clean run {d.baseline_rows_lost})"
                                                if d.baseline_rows_lost is not None else "")
    rpo_target = f"; target {format_duration(d.rpo_target_s)}" if d.rpo_target_s is not None else ""
    out.append(DebriefLine("Data lost", f"window {window}{rpo_target}{rows}", alarm=d.window_s is None))
    out.append(DebriefLine("Mistakes", "; ".join(d.mistakes) or "none", alarm=bool(d.mistakes)))
    out.append(DebriefLine("Score", f"{d.score}/100"))
    for x in d.deductions:
        out.append(DebriefLine("", f"{x.rule} −{x.points} of {x.cap}: {x.why}"))
    return out


def debrief_markdown(d: Debrief) -> list[str]:
    """The report's "Game day debrief" section (Markdown lines)."""
    from runbook.report import _cell

    out = ["", "## Game day debrief", "", f"**Score: {d.score}/100** (the rules: docs/game-days.md)", "",
           "| | |", "|---|---|"]
    for line in debrief_lines(d):
        out.append(f"| {line.label} | {_cell(line.text)} |")
    return out


# ---- progress over time: each person's game days (runbook runs --game-days) ----------------------------


@dataclass(frozen=True)
class Played:
    """One game day of one person, with its score when its run ended."""

    game_id: str
    run_id: str | None
    created_at: datetime
    scenario: str
    faults: list[str]
    seed: int
    status: str  # the run's (completed | failed | aborted | open), else: no run | journal missing | unreadable
    score: int | None
    problem: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in CLOSED


@dataclass(frozen=True)
class Person:
    operator: str
    played: list[Played]  # oldest first
    last_at: datetime | None  # the newest game day that ended (None: none ended)
    age_days: float | None
    stale: bool  # no game day ended within STALE_GAME_DAY

    def by_fault(self) -> dict[str, list[Played]]:
        out: dict[str, list[Played]] = {}
        for p in self.played:
            for f in p.faults:
                out.setdefault(f, []).append(p)
        return dict(sorted(out.items()))


@dataclass(frozen=True)
class Progress:
    people: list[Person]
    unpractised: list[str]  # registered faults no game day that ended has played
    registered: list[str]


def progress(games: list[GameDay], runs: list[Any], fault_names: list[str], state_dir: Path,
             now: datetime) -> Progress:
    """Who practised which fault, with which score, and who has not lately; `runs` as `list_runs` gives them."""
    by_id = {r.run_id: r for r in runs if isinstance(r, RunState)}
    unreadable = {r[0]: r[1] for r in runs if not isinstance(r, RunState)}
    people: dict[str, list[Played]] = {}
    for g in games:
        try:
            created = parse_iso(g.created_at)
        except ValueError:
            continue
        status, score, problem = "no run", None, None
        st = by_id.get(g.run_id) if g.run_id else None
        if g.run_id and st is None:
            status = "unreadable" if g.run_id in unreadable else "journal missing"
            problem = unreadable.get(g.run_id)
        elif st is not None:
            status = st.status
            try:
                d = load_debrief(state_dir, st, now, ledger=games, runs=runs)
            except RunbookError as e:
                problem = e.message
            else:
                score = d.score if d is not None else None
        people.setdefault(g.operator, []).append(
            Played(g.game_id, g.run_id, created, g.scenario, list(g.faults), g.seed, status, score, problem))
    out: list[Person] = []
    for who, played in sorted(people.items()):
        played.sort(key=lambda p: p.created_at)
        ended = [p for p in played if p.ended]
        last = ended[-1].created_at if ended else None
        age = max(0.0, (now - last).total_seconds() / 86400) if last else None
        out.append(Person(who, played, last, age, stale=last is None or now - last > STALE_GAME_DAY))
    practised = {f for person in out for p in person.played if p.ended for f in p.faults}
    return Progress(out, [f for f in sorted(fault_names) if f not in practised], sorted(fault_names))

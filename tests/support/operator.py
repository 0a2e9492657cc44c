"""A scripted operator for unattended drills and game days.

It plays `runbook demo --headless` (or `runbook run`/`resume --headless`) as a real child process, with per-step
answers (`--answers FILE`, runbook.cli.answers): confirm, skip, retry, type a typed confirmation (rightly or
wrongly), stop, or stop to change a parameter and resume with `--set`. Each play records what the run printed,
and reads what it journaled and what its report says: everything the operator is shown before the debrief
(`Play.operator_view`), which a game-day test searches for anything of the injected fault (`assert_no_leak`).

    op = ScriptedOperator(state_dir)
    play = op.demo(runbook, sandbox_dir, faults=["corrupt-newest-backup"], seed=7,
                   answers={"fetch": ["confirm", {"set": {"backup_id": "..."}}]})
    if play.sets_asked():
        play = op.resume(play.run_id, answers={"fetch": ["retry"]}, sets=play.sets_asked())
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runbook.journal import read_journal
from tests.conftest import run_cli

RUN_ID = re.compile(r"· run (\d{8}T\d{6}Z-[a-z0-9-]+-[0-9a-f]{4})\b")
SETS = re.compile(r"resume it with ((?:--set \S+=\S*\s?)+)")
Answers = dict[str, list[Any]]
DEBRIEF_MARK = ": game day debrief (score "  # runbook.cli.gamedays.say_debrief's first line
DEBRIEF_SECTION = "## Game day debrief"  # the report's section (runbook.gameday.debrief_markdown)


@dataclass
class Play:
    """One child process of the drill: its exit code and output, and the run it drove."""

    code: int
    stdout: str
    stderr: str
    run_id: str | None
    state_dir: Path
    argv: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def events(self) -> list[dict[str, Any]]:
        if self.run_id is None:
            return []
        return read_journal(self.state_dir / "runs" / self.run_id / "journal.jsonl").events

    def of_type(self, kind: str, step: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("type") == kind and (step is None or e.get("step") == step)]

    def outputs(self, step: str) -> dict[str, Any]:
        """The step's outputs, the last value of each."""
        return {e["name"]: e["value"] for e in self.of_type("step-output", step)}

    def status(self) -> str | None:
        from runbook.state import load_state

        return load_state(self.state_dir, self.run_id).status if self.run_id else None

    def report(self, fmt: str = "md") -> str:
        if self.run_id is None:
            return ""
        r = run_cli("report", self.run_id, "--format", fmt, "--state-dir", str(self.state_dir), timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def sets_asked(self) -> dict[str, str]:
        """The parameters the operator stopped to change (an answer `{set: {K: V}}`), as printed."""
        found = list(SETS.finditer(self.stdout))
        if not found:
            return {}
        m = found[-1]
        out = {}
        for item in m.group(1).split("--set")[1:]:
            key, _, value = item.strip().partition("=")
            out[key] = value
        return out

    def operator_view(self) -> str:
        """Everything the operator is shown before the debrief: what was printed, the run's journal, its report;
        the debrief itself (printed once the run ended, the report's section) is where the fault is named."""
        journal = ""
        if self.run_id is not None:
            journal = (self.state_dir / "runs" / self.run_id / "journal.jsonl").read_text()
        report = self.report().split(DEBRIEF_SECTION)[0] if self.run_id else ""
        return "\n".join((self.stdout.split(DEBRIEF_MARK)[0], self.stderr, journal, report))

    def debrief(self) -> str:
        """The debrief as printed when the game-day run ended ("" when none was)."""
        found = self.stdout.find(DEBRIEF_MARK)
        return self.stdout[found:] if found >= 0 else ""


def assert_no_leak(plays: Iterable[Play], words: Iterable[str]) -> None:
    """Nothing of the fault (its name, its title, the words of its story) in what any play showed the operator."""
    views = [p.operator_view() for p in plays]
    for w in words:
        for v in views:
            assert w.lower() not in v.lower(), f"{w!r} leaked to the operator before the debrief"


def fault_words(fault: Any) -> list[str]:
    """What would name a fault: its name (and with spaces), its title."""
    return [fault.name, fault.name.replace("-", " "), fault.title]


class ScriptedOperator:
    def __init__(self, state_dir: Path, *, env: dict[str, str] | None = None, timeout: float = 600) -> None:
        self.state_dir = state_dir
        self.env = env or {}
        self.timeout = timeout

    def _answers_file(self, answers: Answers | None) -> list[str]:
        if not answers:
            return []
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir.parent / f"answers-{secrets.token_hex(3)}.yaml"
        path.write_text(yaml.safe_dump(answers, sort_keys=False))
        return ["--answers", str(path)]

    def _play(self, argv: list[str], run_id: str | None = None) -> Play:
        r = run_cli(*argv, timeout=self.timeout, env=self.env)
        found = RUN_ID.search(r.stdout)
        return Play(code=r.returncode, stdout=r.stdout, stderr=r.stderr,
                    run_id=found.group(1) if found else run_id, state_dir=self.state_dir, argv=argv)

    def demo(self, runbook: Path, sandbox_dir: Path, *, answers: Answers | None = None, scenario: str = "restore-latest",
             faults: Iterable[str] = (), seed: int | None = None, operator: str | None = None, yes: bool = True,
             files: int = 60, extra: Iterable[str] = ()) -> Play:
        """`runbook demo --headless` with the answers (and --yes for the steps they leave)."""
        argv = ["demo", "--headless", "--runbook", str(runbook), "--dir", str(sandbox_dir), "--state-dir",
                str(self.state_dir), "--scenario", scenario, "--files", str(files), *(["--yes"] if yes else [])]
        for f in faults:
            argv += ["--fault", f]
        if seed is not None:
            argv += ["--seed", str(seed)]
        if operator:
            argv += ["--operator", operator]
        return self._play(argv + self._answers_file(answers) + list(extra))

    def run(self, runbook: Path, *, answers: Answers | None = None, profile: Path | None = None,
            sets: dict[str, str] | None = None, yes: bool = True, extra: Iterable[str] = ()) -> Play:
        argv = ["run", str(runbook), "--headless", "--state-dir", str(self.state_dir), *(["--yes"] if yes else [])]
        if profile is not None:
            argv += ["--profile", str(profile)]
        for k, v in (sets or {}).items():
            argv += ["--set", f"{k}={v}"]
        return self._play(argv + self._answers_file(answers) + list(extra))

    def resume(self, run_id: str, *, answers: Answers | None = None, sets: dict[str, str] | None = None,
               yes: bool = True, confirms: dict[str, str] | None = None, extra: Iterable[str] = ()) -> Play:
        """`runbook resume RUN_ID --headless`, with `--set` for what the operator stopped to change."""
        argv = ["resume", run_id, "--headless", "--state-dir", str(self.state_dir), *(["--yes"] if yes else [])]
        for k, v in (sets or {}).items():
            argv += ["--set", f"{k}={v}"]
        for k, v in (confirms or {}).items():
            argv += ["--confirm", f"{k}={v}"]
        return self._play(argv + self._answers_file(answers) + list(extra), run_id=run_id)

    def reveal(self, run_id: str, sandbox_dir: Path) -> str:
        r = run_cli("demo", "--reveal", run_id, "--dir", str(sandbox_dir), "--state-dir", str(self.state_dir))
        assert r.returncode == 0, r.stderr
        return r.stdout


def journal_text(play: Play) -> str:
    return json.dumps(play.events())


def assert_debrief(play: Play, fault: Any) -> Any:
    """The debrief of a game-day play whose run ended (runbook.gameday.Debrief): printed at the end of the run
    (its score, the fault named with its title), in the report's section, with the fault's evidence timed. Each
    fault's drills assert its score rule by rule on what this returns."""
    from datetime import UTC, datetime

    from runbook.gameday import load_debrief
    from runbook.state import load_state

    assert play.run_id is not None
    d = load_debrief(play.state_dir, load_state(play.state_dir, play.run_id), datetime.now(UTC))
    assert d is not None, "not a game-day run that ended"
    printed = play.debrief()
    assert f"game day debrief (score {d.score}/100" in printed, play.output[-3000:]
    assert f"Fault      {fault.name}: {fault.title}" in printed
    report = play.report()
    assert DEBRIEF_SECTION in report and f"**Score: {d.score}/100**" in report and fault.name in report
    named = [f for f in d.faults if f.name == fault.name]
    assert named and named[0].evidence_at is not None, "the tool never showed the fault's evidence"
    return d


def points(d: Any) -> dict[str, int]:
    """A debrief's deductions by rule (detect, recover, data, mistakes)."""
    return {x.rule: x.points for x in d.deductions}


def data_points(d: Any) -> int:
    """The data rule: a point per 15 s lost beyond what a clean run loses (20 per 300 s, 20 at the most), none when
    the window is no longer than a clean run's."""
    assert d.window_s is not None and d.baseline_rpo_s is not None
    extra = d.window_s - d.baseline_rpo_s
    return 0 if extra <= 0 else min(20, math.ceil(round(20 * extra / 300, 6)))


def assert_scored(d: Any, *, detect: int, recover: int = 0, mistakes: int = 0) -> int:
    """The debrief's score rule by rule: the deductions given, the data points from its window (data_points), and
    the score 100 less their sum. Returns the data points (a drill asserts what it expects of them)."""
    data = data_points(d)
    assert points(d) == {"detect": detect, "recover": recover, "data": data, "mistakes": mistakes}
    assert d.score == 100 - sum(points(d).values())
    return data


def assert_handled(play: Play, d: Any, retried: list[str]) -> None:
    """A handled PITR drill's debrief: the evidence and the action told, the steps retried, nothing skipped, no
    mistake, restored; no clean drill in its state directory, so the RTO is judged by its target."""
    assert "evidence shown " in play.debrief() and "acted on " in play.debrief()
    assert d.retried == retried and d.skipped == [] and d.mistakes == [] and d.restored
    assert d.baseline_rto_s is None


def assert_not_handled(play: Play, fault: Any) -> Any:
    """A play that ended with the fault's evidence shown and nothing that handles it, none of the fault told
    before the debrief: its debrief (assert_debrief), of that one fault."""
    events = play.events()
    assert fault.evidence_event is not None and fault.handled is not None
    assert fault.evidence_event(events) is not None and not fault.handled(events)
    assert_no_leak([play], fault_words(fault))
    d = assert_debrief(play, fault)
    assert len(d.faults) == 1
    return d


def assert_skipped(play: Play, d: Any, step: str, why: str) -> None:
    """A drill's debrief where the operator acted on the fault's evidence wrongly, by skipping the step: not
    handled, the skip and its reason told."""
    (fd,) = d.faults
    assert fd.acted == f"skipped step {step} ({why})" and fd.handled is False
    assert d.skipped == [(step, why)]
    assert "handled: NO" in play.debrief()


def reaction_points(fd: Any) -> int:
    """The detect rule for a handled fault: 2 points a whole minute between its evidence and the action."""
    return 2 * int((fd.reaction_s or 0) // 60)

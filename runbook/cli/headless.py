"""The headless front end: the engine's events printed with rich, decisions read from stdin or flags.

`--yes` confirms every step except typed ones (those need `--confirm STEP=VALUE`; in rehearsal, where
nothing runs, `--yes` passes them too, journaled as such). Without `--yes` the operator answers prompts.
`--answers FILE` (runbook.cli.answers) scripts the answers step by step; a step with none left falls back to
`--yes`, else to the prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from runbook import events as ev
from runbook.durations import format_duration
from runbook.engine import ConfirmRefused, Engine
from runbook.errors import Exit, RunbookError
from runbook.events import StepStatus, Wait

if TYPE_CHECKING:
    from runbook.cli.answers import Answer

GONE = "\0gone"  # what `_ask` answers when the run left this session while it waited


class _Gone(Exception):
    """The run left this session (taken over) while a question waited for its answer."""


@dataclass
class HeadlessOptions:
    yes: bool = False
    confirms: dict[str, str] = field(default_factory=dict)  # step id -> typed value
    rerun_interrupted: bool = False
    retry_failed: bool = False  # resume: try the step the run failed at once more (then, failing again, stop)
    quiet_output: bool = False
    answers: dict[str, list[Answer]] = field(default_factory=dict)  # step id -> scripted answers, used in order


STATUS_STYLE = {
    StepStatus.succeeded: "green",
    StepStatus.failed: "bold red",
    StepStatus.skipped: "yellow",
    StepStatus.interrupted: "bold magenta",
}


class Headless:
    def __init__(self, engine: Engine, opts: HeadlessOptions, console: Console | None = None) -> None:
        self.engine = engine
        self.opts = opts
        self.out = console or Console(highlight=False, soft_wrap=True)
        self._numbers = {sid: i for i, sid in enumerate(engine.state.order, start=1)}
        self._total = len(engine.state.order)
        self._retried: set[str] = set()  # steps --retry-failed tried again in this session
        self._last_step: str | None = None
        self._inbuf = b""  # what stdin gave beyond the last line answered (runbook.cli.headless._ask)
        self._eof = False

    async def run(self) -> ev.RunFinished:
        mode = self.engine.state.mode.upper()
        st = self.engine.state
        badge = {"LIVE": "bold white on red", "DRILL": "bold black on yellow", "REHEARSAL": "bold black on cyan"}[mode]
        self.out.print(
            f"[{badge}] {mode} [/] [bold]{escape(st.runbook_name)}[/] · scenario [bold]{escape(st.scenario)}[/]"
            f" · run {st.run_id}"
        )
        self.out.print(f"  incident start {st.incident_start:%Y-%m-%d %H:%M:%S %Z} · RTO target "
                       f"{format_duration(st.targets.get('rto_s'))} · {self._clock()}")
        finished: ev.RunFinished | None = None
        async for e in self.engine.events():
            if isinstance(e, ev.RunFinished):
                finished = e
                break
            await self._on(e)
        assert finished is not None
        self._print_end(finished)
        return finished

    # ---- printing --------------------------------------------------------------------------------

    def _clock(self) -> str:
        c = self.engine.clock_status()
        colour = {"green": "green", "amber": "yellow", "red": "bold red"}[c.level]
        proj = ""
        if not c.stopped and c.projected_s is not None:
            lower = "≥" if c.unknown_steps else ""
            proj = f" · projected {lower}{format_duration(c.projected_s)} ({c.verdict})"
        state = "service restored at" if c.stopped else "RTO"
        return (f"[{colour}]{state} {format_duration(c.elapsed_s)} of {format_duration(c.target_s)}"
                f" · {'left' if c.remaining_s >= 0 else 'over by'} {format_duration(abs(c.remaining_s))}[/]{proj}")

    def _header(self, step_id: str) -> None:
        if step_id == self._last_step:
            return
        self._last_step = step_id
        step = self.engine.ctx.runbook.step(step_id)
        n = self._numbers.get(step_id, 0)
        danger = " [bold white on red] DANGER [/]" if step.danger else ""
        self.out.rule(f"[bold]{n}/{self._total} {escape(step.display_title)}[/]{danger}", align="left")
        if step.description.strip():
            for line in step.description.strip().splitlines():
                self.out.print(f"  [dim]{escape(line)}[/]")

    async def _on(self, e: ev.Event) -> None:
        if isinstance(e, ev.RunOpened):
            if e.resumed:
                self.out.print(f"[bold]resuming run {e.run_id}[/]")
        elif isinstance(e, ev.Waiting):
            self._header(e.step_id)
            await self._decide(e)
        elif isinstance(e, ev.StepStarted):
            self._header(e.step_id)
            again = " (re-attached)" if e.reattached else ""
            self.out.print(f"  [bold cyan]▶ running[/] attempt {e.attempt}{again}")
        elif isinstance(e, ev.OutputLines):
            if not self.opts.quiet_output:
                text = "\n".join(
                    f"  {'!' if ln.stream == 'err' else '│'} {ln.text}" for ln in e.lines
                )
                self.out.out(text, highlight=False)
        elif isinstance(e, ev.Progress):
            total = f"/{e.total:g}" if e.total else ""
            self.out.print(f"  [dim]progress {e.done:g}{total} {escape(e.unit)} {escape(e.label)}[/]")
        elif isinstance(e, ev.CheckReported):
            colour = {"ok": "green", "warning": "yellow"}.get(e.status, "red")
            hint = f" — {escape(e.hint)}" if e.hint else ""
            self.out.print(f"  [{colour}]check {escape(e.name)}: {e.status}[/]{hint}")
        elif isinstance(e, ev.OutputValue):
            self.out.print(f"  [dim]output {escape(e.name)} = {escape(str(e.value))}[/]")
        elif isinstance(e, ev.StepFinished):
            style = STATUS_STYLE.get(e.status, "bold")
            dur = f" in {format_duration(e.duration_s)}" if e.duration_s is not None else ""
            retry = " — will retry" if e.will_retry else ""
            self.out.print(f"  [{style}]{e.status.icon} {e.status.value}{dur}[/] {escape(e.detail)}{retry}")
            self.out.print(f"  {self._clock()}")
        elif isinstance(e, ev.Notice):
            colour = {"warning": "yellow", "error": "bold red", "note": "cyan"}.get(e.level, "bold")
            self.out.print(f"  [{colour}]{e.level}: {escape(e.text)}[/]")

    def _print_end(self, f: ev.RunFinished) -> None:
        colour = {"completed": "bold green", "detached": "bold yellow"}.get(f.status, "bold red")
        self.out.rule(f"[{colour}]run {f.status}[/]", align="left")
        if f.detail:
            self.out.print(f"  {escape(f.detail)}")
        self.out.print(f"  {self._clock()}")
        from runbook.report import end_story, report_command, resume_command

        for line in end_story(self.engine.state, self.engine.clock.now()):
            self.out.print(f"  [bold red]{escape(line.text)}[/]" if line.alarm else f"  {escape(line.text)}")
        taken = f.summary.get("taken_over_by")
        if taken:
            self.out.print(f"  [bold yellow]taken over by {escape(str(taken.get('user')))}@"
                           f"{escape(str(taken.get('host')))} at {escape(str(taken.get('at')))}[/]: they drive "
                           "this run now")
            if taken.get("remote"):
                self.out.print("  from another host; follow it with "
                               f"[bold]runbook watch -c {escape(str(taken.get('repository')))} "
                               f"{escape(self.engine.run_id)}[/]")
        elif f.status == "detached":
            self.out.print("  the run stays open: "
                           f"[bold]{escape(resume_command(self.engine.run_id, self.engine.ctx.state_dir))}[/]")
        elif f.status == "failed" and any(s.status == StepStatus.failed for s in self.engine.state.steps.values()):
            self.out.print("  to try the failed step again: [bold]"
                           f"{escape(resume_command(self.engine.run_id, self.engine.ctx.state_dir))} --headless --yes "
                           "--retry-failed[/] (or resume it in the cockpit to retry, skip or abort)")
        self.out.print(f"  journal: {self.engine.ctx.rdir / 'journal.jsonl'}")
        self.out.print(f"  report:  {escape(report_command(self.engine.run_id, self.engine.ctx.state_dir))}")

    # ---- deciding --------------------------------------------------------------------------------

    async def _decide(self, w: ev.Waiting) -> None:
        eng = self.engine
        rehearsal = eng.state.mode == "rehearsal"
        if w.command:
            self.out.print("  [bold]$[/] " + escape(w.command.rstrip()).replace("\n", "\n    "))
        if w.detail and w.wait in (Wait.failed, Wait.interrupted, Wait.value):
            self.out.print(f"  [yellow]{escape(w.detail)}[/]")
        if w.wait == Wait.approval:  # the engine ends this wait itself, when a verified approval arrives
            from runbook.report import alone_command, approve_command

            self.out.print(f"  [bold yellow]waiting for approval by another operator[/]: they run "
                           f"[bold]{escape(approve_command(eng.run_id, w.step_id, eng.ctx.state_dir))}[/] from "
                           "their own session" + (f", or from another host [bold]runbook approve -c REPO_CONFIG "
                                                  f"{escape(eng.run_id)} {escape(w.step_id)}[/] (through the "
                                                  "repository)" if eng.ctx.mirror is not None else ""))
            self.out.print(f"  nobody else on call: stop here (Ctrl-C), then run "
                           f"[bold]{escape(alone_command(eng.run_id, eng.ctx.state_dir))}[/] (journaled)")
            return
        if self.opts.answers.get(w.step_id) and await self._decide_answers(w):
            return
        if self.opts.yes:
            await self._decide_yes(w, rehearsal)
        else:
            await self._decide_prompt(w)

    async def _decide_answers(self, w: ev.Waiting) -> bool:
        """The step's next scripted answers (--answers), until one decides the wait: True; False when none is
        left (the caller falls back to --yes or the prompt)."""
        eng = self.engine
        queue = self.opts.answers[w.step_id]
        while queue:
            a = queue.pop(0)
            self.out.print(f"  [bold cyan]answer[/] [dim](--answers)[/]: {escape(a.describe())}"
                           + (f" {escape(a.text)!r}" if a.text and a.kind in ("type", "value") else ""))
            if a.kind == "wait":
                await asyncio.sleep(a.seconds)
                continue
            if a.kind == "note":
                await eng.note(a.text)
                continue
            if a.kind == "stop":
                await eng.detach("the operator stopped (--answers)")
                return True
            if a.kind == "set":
                sets = " ".join(f"--set {k}={v}" for k, v in a.sets.items())
                self.out.print(f"  [bold]the operator leaves the run open to change parameters: resume it with {sets}[/]")
                await eng.detach(f"the operator stopped to change parameters ({', '.join(a.sets)}) (--answers)")
                return True
            if a.kind == "abort":
                await eng.abort(a.text)
                return True
            if a.kind == "skip":
                await eng.skip(w.step_id, a.text)
                return True
            fits = {
                "confirm": Wait.confirm, "type": Wait.confirm, "ack": Wait.ack, "retry": Wait.failed,
                "rerun": Wait.interrupted, "done": Wait.interrupted, "value": Wait.value,
            }
            if fits.get(a.kind) != w.wait:
                await eng.detach(f"--answers: {a.describe()} is not an answer to step {w.step_id}, which waits for "
                                 f"{w.wait.value}")
                return True
            if a.kind in ("confirm", "type"):
                typed = a.text if a.kind == "type" else w.typed_expected
                try:
                    await eng.confirm(w.step_id, typed=typed, how="--answers")
                except ConfirmRefused:
                    continue  # refused and journaled, as at the prompt: the next answer
            elif a.kind == "ack":
                await eng.ack(w.step_id, how="--answers")
            elif a.kind == "retry":
                await eng.retry(w.step_id)
            elif a.kind == "rerun":
                await eng.rerun(w.step_id)
            elif a.kind == "done":
                await eng.mark_done(w.step_id, a.text)
            elif a.kind == "value":
                await eng.provide_value(w.step_id, a.text)
            return True
        return False

    async def _decide_yes(self, w: ev.Waiting, rehearsal: bool) -> None:
        eng = self.engine
        if w.wait == Wait.confirm:
            if w.typed_expected is None:
                await eng.confirm(w.step_id, how="--yes")
            elif w.step_id in self.opts.confirms:
                try:
                    await eng.confirm(w.step_id, typed=self.opts.confirms[w.step_id], how="--confirm")
                except ConfirmRefused:
                    await eng.detach(f"--confirm {w.step_id}=... does not match what step {w.step_id} asks for")
            else:
                await eng.detach(
                    f"step {w.step_id} needs typed confirmation: pass --confirm {w.step_id}=VALUE "
                    "(the value the step names), or run without --yes"
                )
        elif w.wait == Wait.ack:
            self.out.print(f"  [green]☑[/] {escape(w.item or '')} [dim](--yes)[/]")
            await eng.ack(w.step_id, how="--yes")
        elif w.wait == Wait.mark:
            typed = " (typed confirmation passed by --yes in rehearsal)" if w.typed_expected else ""
            self.out.print(f"  [cyan]rehearsal: shown, not run; marked succeeded by --yes{typed}[/]")
            await eng.mark(w.step_id, True, "marked by --yes" + typed)
        elif w.wait == Wait.failed:
            step = w.step_id or ""
            if self.opts.retry_failed and step not in self._retried:
                self._retried.add(step)
                self.out.print("  [bold]retrying (--retry-failed)[/]")
                await eng.retry(w.step_id)
            else:
                await eng.stop_failed(w.step_id)
        elif w.wait == Wait.interrupted:
            if self.opts.rerun_interrupted:
                await eng.rerun(w.step_id)
            else:
                await eng.detach(
                    f"step {w.step_id} was interrupted (its process vanished without a result); "
                    "re-run it with --rerun-interrupted, or resume interactively to choose"
                )
        elif w.wait == Wait.value:
            await eng.detach(f"step {w.step_id} needs a value for {w.value_key}; resume interactively to give it")

    async def _ask(self, prompt: str) -> str | None:
        """A line from stdin (None at its end), or GONE when the run left this session while the prompt waited
        (a take-over). Stdin is watched by the event loop (its own line buffer, no reader thread left behind);
        a stdin the loop cannot watch (a regular file) is read by a thread as before."""
        loop = asyncio.get_running_loop()
        try:
            fd = sys.stdin.fileno()
            loop.add_reader(fd, lambda: None)
            loop.remove_reader(fd)
        except (AttributeError, ValueError, OSError, NotImplementedError, PermissionError):
            try:
                return (await asyncio.to_thread(input, prompt)).strip()
            except EOFError:
                return None
        sys.stdout.write(prompt)
        sys.stdout.flush()
        ready = asyncio.Event()
        loop.add_reader(fd, ready.set)
        try:
            while True:
                if b"\n" in self._inbuf:
                    line, _, self._inbuf = self._inbuf.partition(b"\n")
                    return line.decode("utf-8", "replace").strip()
                if self._eof:
                    line, self._inbuf = self._inbuf, b""
                    return line.decode("utf-8", "replace").strip() if line else None
                if self.engine.finished is not None:
                    sys.stdout.write("\n")
                    return GONE
                ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), timeout=0.25)
                if ready.is_set():
                    try:
                        data = os.read(fd, 4096)
                    except BlockingIOError:
                        continue
                    self._inbuf += data
                    self._eof = not data
        finally:
            loop.remove_reader(fd)

    async def _ask_more(self, prompt: str) -> str | None:
        """A follow-up question (a reason, a note): the run leaving this session ends the decision."""
        answer = await self._ask(prompt)
        if answer is GONE:
            raise _Gone
        return answer

    async def _decide_prompt(self, w: ev.Waiting) -> None:
        eng = self.engine
        while True:
            prompts = {
                Wait.confirm: (f"  type {eng.ctx.redactor.redact(w.typed_expected)!r} to run" if w.typed_expected
                               else "  run it? [y]es")
                + ", [s]kip, [a]bort, [n]ote, [q]uit: ",
                Wait.ack: f"  ☐ {w.item} — done? [y]es, [s]kip step, [a]bort, [n]ote, [q]uit: ",
                Wait.mark: "  rehearsal — outcome? [y] succeeded, [f]ailed, [s]kip, [a]bort, [n]ote, [q]uit: ",
                Wait.failed: "  step failed — [r]etry, [s]kip, [a]bort, [n]ote, [q]uit: ",
                Wait.interrupted: "  step interrupted — [r]erun, [d]one (it finished), [s]kip, [a]bort, [q]uit: ",
                Wait.value: f"  value for {w.value_key} (or :skip, :abort, :quit): ",
            }
            answer = await self._ask(prompts[w.wait])
            if answer is GONE or self.engine.finished is not None:  # taken over while the prompt waited
                return
            if answer is None:
                await eng.detach("stdin closed")
                return
            try:
                if await self._apply(w, answer):
                    return
            except _Gone:
                return
            except ConfirmRefused:
                continue
            except RunbookError as err:
                self.out.print(f"  [red]{escape(err.message)}[/]")

    async def _apply(self, w: ev.Waiting, a: str) -> bool:
        eng = self.engine
        low: str = a.lower()
        if w.wait == Wait.value:
            if low in (":skip", ":abort", ":quit"):
                low = low[1:2]
            else:
                await eng.provide_value(w.step_id, a)
                return True
        if low in ("q", "quit"):
            await eng.detach("the operator quit")
            return True
        if low in ("a", "abort"):
            reason = await self._ask_more("  reason for aborting: ") or "aborted by the operator"
            await eng.abort(reason)
            return True
        if low in ("n", "note"):
            text = await self._ask_more("  note: ")
            if text:
                await eng.note(text)
            return False
        if low in ("s", "skip"):
            reason = await self._ask_more("  reason for skipping (required): ") or ""
            if not reason:
                self.out.print("  [red]a skip needs a reason[/]")
                return False
            await eng.skip(w.step_id, reason)
            return True
        if w.wait == Wait.confirm:
            if w.typed_expected is not None:
                await eng.confirm(w.step_id, typed=a, how="typed at the prompt")
                return True
            if low in ("y", "yes"):
                await eng.confirm(w.step_id, how="prompt")
                return True
        elif w.wait == Wait.ack and low in ("y", "yes"):
            await eng.ack(w.step_id, how="prompt")
            return True
        elif w.wait == Wait.mark:
            if low in ("y", "yes"):
                await eng.mark(w.step_id, True)
                return True
            if low in ("f", "failed"):
                note = await self._ask_more("  what went wrong (required): ")
                if note:
                    await eng.mark(w.step_id, False, note)
                    return True
        elif w.wait == Wait.failed and low in ("r", "retry"):
            await eng.retry(w.step_id)
            return True
        elif w.wait == Wait.interrupted:
            if low in ("r", "rerun"):
                await eng.rerun(w.step_id)
                return True
            if low in ("d", "done"):
                note = await self._ask_more("  how do you know it finished? (required): ")
                if note:
                    await eng.mark_done(w.step_id, note)
                    return True
        self.out.print("  [red]not an answer here[/]")
        return False


def run_headless(engine: Engine, opts: HeadlessOptions) -> int:
    """Exit code: 0 only when the run completed."""
    finished = asyncio.run(Headless(engine, opts).run())
    if finished.status == "completed":
        return Exit.OK
    return Exit.LEFT_OPEN if finished.status == "detached" else Exit.RUN_FAILED

"""The run screen: where are we, how long is left, and what exactly happens if I press the key.

One worker consumes the engine's events and redraws; key handlers call the engine's decision methods.
Run/confirm keys are ignored for 750 ms after the current step changes (keys typed ahead are dropped);
Enter and Space never run a step here.
"""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Log, Markdown, ProgressBar, Static
from textual.worker import Worker, WorkerState

from runbook import events as ev
from runbook.durations import format_duration
from runbook.engine import ConfirmRefused, Engine
from runbook.errors import RunbookError
from runbook.events import StepStatus, Wait
from runbook.tui.modals import ConfirmModal, TextModal, TypedConfirmModal
from runbook.tui.widgets import checklist, facts, header, hint_for, step_list, steps_width

ARM_DELAY_S = 0.75
OUTPUT_MAX_LINES = 5000
OUTPUT_MIN_ROWS = 4  # the output pane keeps at least this many rows (its border included) when room is short
COMMAND_MAX_ROWS = 6
WHY_MAX_ROWS = 5


def fold(line: str, width: int) -> list[str]:
    """`line` cut into pieces of at most `width` characters, each piece after the first indented by two spaces
    (so that a folded line reads as one); a piece breaks after a space when one is near the end."""
    if len(line) <= width:
        return [line]
    out: list[str] = []
    rest, room = line, width
    while len(rest) > room:
        cut = rest.rfind(" ", room // 2, room + 1)
        cut = room if cut <= 0 else cut + 1
        out.append(("  " if out else "") + rest[:cut].rstrip())
        rest, room = rest[cut:], width - 2
    out.append(("  " if out else "") + rest)
    return out
NAG_EVERY_S = 60.0  # an overdue timed duty is said again this often
GUARDED = ("go", "mark_failed", "retry", "rerun")
REDRAW_FAILURES_MAX = 3  # after this many failures the consumer only follows the stream to its end, drawing nothing


class RunScreen(Screen[None]):
    BINDINGS = [
        # Quit first: the footer cuts what does not fit at its right end, and leaving must always show.
        Binding("q", "quit_run", "Quit", id="run.quit", tooltip="Leave; the run stays resumable"),
        Binding("r", "go", "Run/confirm", id="run.go", tooltip="Run or confirm the current step (it is shown first)"),
        Binding("f", "mark_failed", "Failed", id="run.failed", tooltip="Rehearsal: mark the step failed, with a note"),
        Binding("t", "retry", "Retry", id="run.retry", tooltip="Run the failed step again"),
        Binding("e", "rerun", "Re-run", id="run.rerun", tooltip="Re-run an interrupted step (asks first)"),
        Binding("d", "mark_done", "Done", id="run.done", tooltip="Mark an interrupted step done, with a note"),
        Binding("s", "skip", "Skip", id="run.skip", tooltip="Skip the current step; a reason is required"),
        Binding("c", "cancel_step", "Cancel", id="run.cancel", tooltip="Stop the running step (asks first)"),
        Binding("a", "abort", "Abort", id="run.abort", tooltip="Abort the whole run (asks first)"),
        Binding("n", "note", "Note", id="run.note", tooltip="Add a note to the journal"),
        Binding("o", "toggle_output", "Output", id="run.output", tooltip="Output full screen, or back"),
        Binding("w", "toggle_wrap", "Wrap", id="run.wrap",
                tooltip="Output lines wrap at the pane's width (default), or raw: one line each, scroll sideways"),
        Binding("j", "journal", "Journal", id="run.journal", tooltip="The journal as a timeline"),
        Binding("u", "duty_done", "Duty done", id="run.duty", show=False,
                tooltip="Mark the next timed duty done (e.g. the stakeholder update; asks first)"),
        Binding("question_mark", "help", "Help", id="run.help", key_display="?", tooltip="What every key does"),
    ]

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.waiting: ev.Waiting | None = None
        self.running: str | None = None
        self.focus_step: str | None = engine.state.order[0] if engine.state.order else None
        self._armed_at = 0.0
        self._pending_modal = False
        self._consumer_failures = 0
        self._ended = False
        # The output pane's lines as they came (the last OUTPUT_MAX_LINES): folded to the pane's width when
        # `wrap` (a recovery point or a "post this by hand" line is read whole at 80 columns), raw otherwise.
        self._lines: list[str] = []
        self.wrap = True
        self._facts: tuple[Text, Text] = (Text(), Text())  # the facts in full, and with passed checks counted
        self._command_text: str | None = None
        self._steps_width = 30
        self._rows: dict[str, int] = {}  # rows of the title, checklist and hint at the panel's width
        self._nagged_at: dict[str, float] = {}  # timed duty id -> when it was last said overdue (monotonic)

    # ---- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with Horizontal(id="body"):
            yield Static(id="steps")
            with Vertical(id="panel"):
                yield Static(id="step-title")
                with VerticalScroll(id="why-box"):
                    yield Markdown(id="why")
                yield Static(id="command")
                yield Static(id="checklist")
                yield Static(id="hint")
                yield Static(id="facts")
                yield ProgressBar(id="progress", show_eta=False)
                yield Log(id="output", max_lines=OUTPUT_MAX_LINES, auto_scroll=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#progress", ProgressBar).display = False
        self.query_one("#output", Log).border_title = "output"
        self.redraw()
        self.set_interval(1.0, self._tick)
        self.consume()

    def _tick(self) -> None:
        self.query_one("#header", Static).update(header(self.engine, self.size.width))
        self._nag()

    def _nag(self) -> None:
        """An overdue timed duty (runbook.duties) is said once a minute until it is done (u)."""
        from runbook.duties import next_duty

        if not isinstance(self.engine, Engine) or self.engine.finished is not None:
            return
        d = next_duty(self.engine.ctx.runbook, self.engine.state)
        if d is None or d.overdue_s(self.engine.clock.now()) < 0:
            return
        now = time.monotonic()
        if now - self._nagged_at.get(d.id, -NAG_EVERY_S) >= NAG_EVERY_S:
            self._nagged_at[d.id] = now
            self.notify(f"{d.title} — press u when it is done", title="Timed duty overdue", severity="warning",
                        timeout=20)

    @work(group="keys", exit_on_error=False)
    async def action_duty_done(self) -> None:
        from runbook.duties import next_duty

        d = next_duty(self.engine.ctx.runbook, self.engine.state)
        if d is None or self._pending_modal:
            return
        if await self._yes("Timed duty done?", f"{d.title}\n\nJournaled now; the next one is due in "
                           f"{format_duration(d.every_s)}.", "Done"):
            await self._call(self.engine.duty_done(d.id, how="key u in the TUI"))
            self._nagged_at.pop(d.id, None)
            self._tick()

    def redraw(self) -> None:
        self._tick()
        steps = self.query_one("#steps", Static)
        if self.size.width:
            longest = max((len(s.display_title) for s in self.engine.ctx.runbook.steps
                           if s.id in self.engine.state.steps), default=0)
            self._steps_width = steps_width(self.size.width, longest)
            steps.styles.width = self._steps_width
        steps.update(step_list(self.engine, self.focus_step, self._steps_width - 2))  # inside its border
        self._draw_panel()
        self.refresh_bindings()
        self._fit()

    def _panel_width(self) -> int:
        """Columns inside the step panel (its border and padding taken off), from the screen's width: known
        before the panel's first layout."""
        used = 0 if self.has_class("output-full") else self._steps_width
        return max(20, (self.size.width or 80) - used - 4)

    def _fit(self) -> None:
        """Share the panel's rows: the title, the hint, the checklist and the named outputs and checks are
        always whole; the command, then the description, get what is left (each scrolls within its box), and
        the output pane keeps at least OUTPUT_MIN_ROWS rows. Short of rows, the checks that passed are counted
        instead of named, and the command shrinks to one row unless it waits to be run. At 80x24 nothing falls
        off the panel's bottom. Heights are counted from the texts at the panel's width, not read from the
        last layout: the same screen always gets the same shares."""
        if not self.is_attached or not self.query("#panel") or self.has_class("output-full"):
            return
        panel = self.query_one("#panel", Vertical)
        rows = panel.content_region.height or (self.size.height - 5)  # header 2, footer 1, the panel's border 2
        if rows <= 0:
            return
        fixed = sum(self._rows.values()) + (1 if self.query_one("#progress").display else 0) + 1  # why: 1 at least
        room = max(0, rows - fixed - OUTPUT_MIN_ROWS)
        cmd = self.query_one("#command", Static)
        cmd_need = min(COMMAND_MAX_ROWS, self._command_lines(self._panel_width())) if cmd.display else 0
        w = self.waiting
        to_run = w is not None and w.step_id == self.focus_step and w.wait in (Wait.confirm, Wait.mark)
        cmd_rows = min(cmd_need, 3 if to_run else 1, room)  # what r runs first: up to 3 rows
        room -= cmd_rows
        facts_box = self.query_one("#facts", Static)
        facts_need = 0
        if facts_box.display:
            full, compact = self._facts
            text = full if self._lines_of(full, self._panel_width()) <= room else compact
            facts_need = self._lines_of(text, self._panel_width())
            facts_box.update(text)
        facts_rows = min(facts_need, room)
        room -= facts_rows
        more = min(cmd_need - cmd_rows, room)  # then the command's rest, then the why
        cmd_rows += more
        room -= more
        cmd.styles.max_height = max(1, cmd_rows)
        if facts_box.display:  # its rows given, as RunScreen._show gives them (it scrolls when short of them)
            facts_box.styles.height = max(1, facts_rows)
        self.query_one("#why-box", VerticalScroll).styles.max_height = 1 + min(WHY_MAX_ROWS - 1, room)

    def _show(self, box_id: str, text: Text) -> None:
        """Put a text in one of the boxes whose rows `_fit` counts, and give the box those rows. Not Textual's
        auto height: a Static updated twice before a layout pass can keep the first text's height for good
        (textual 8.2: its box model is cached under a count that the second update does not move), and the
        running hint lost its second line at 80x24 on a loaded machine."""
        rows = self._lines_of(text, self._panel_width())
        self._rows[box_id] = rows
        box = self.query_one(f"#{box_id}", Static)
        box.update(text)
        box.styles.height = rows

    def _lines_of(self, text: Text, width: int) -> int:
        return len(text.wrap(self.app.console, max(1, width))) if text.plain else 0

    def _command_lines(self, width: int) -> int:
        text = self._command_text or ""
        room = max(1, width - 2)  # the command box's own padding
        return sum(max(1, -(-len(line) // room)) for line in text.split("\n"))

    def _draw_panel(self) -> None:
        sid = self.focus_step
        if sid is None:
            return
        eng = self.engine
        step = eng.ctx.runbook.step(sid)
        s = eng.state.steps[sid]
        n = eng.state.order.index(sid) + 1
        title = Text.assemble((f"{n}/{len(eng.state.order)} {step.display_title}", "bold"))
        if step.danger:
            title.append("  ⚠ DANGER", style="bold white on red")
        title.append(f"   {s.status.icon} {s.status.value}", style="dim")
        width = self._panel_width()
        self._rows = {}
        self._show("step-title", title)
        self.query_one("#why", Markdown).update(step.description.strip() or "_No description._")
        w = self.waiting if self.waiting and self.waiting.step_id == sid else None
        command = (w.command if w and w.command else None) or s.command or eng.display_command(step)
        cmd = self.query_one("#command", Static)
        if command:
            self._command_text = "$ " + command.rstrip().replace("\n", "\n  ")
            cmd.update(Text(self._command_text, style="bold"))
            cmd.display = True
        else:
            self._command_text = None
            cmd.display = False
        chk = self.query_one("#checklist", Static)
        if step.manual:
            current = w.item_index if w and w.wait == Wait.ack else None
            self._show("checklist", checklist(step, s.acked, current, width))
            chk.display = True
        else:
            chk.display = False
        hint = hint_for(w, step, self.running == sid, eng.state.mode == "rehearsal")
        if w and w.detail and w.wait in (Wait.failed, Wait.interrupted, Wait.value):
            hint = Text.assemble(hint, "\n", (w.detail, "yellow"))
        self._show("hint", hint)
        self._draw_facts()

    def _draw_facts(self) -> None:
        """The run's recovery point, and the named outputs and checks of the focused step (or of the nearest
        step before it that has any), in their own lines between the hint and the output pane: the log
        scrolls, they stay (widgets.facts)."""
        box = self.query_one("#facts", Static)
        width = self._panel_width()
        text = facts(self.engine, self.focus_step, width)
        if text is None:
            box.display = False
            return
        compact = facts(self.engine, self.focus_step, width, compact=True)
        self._facts = (text, compact or text)
        box.update(text)
        box.styles.height = self._lines_of(text, width)  # _fit shares the rows out unless the output is full
        box.display = True
        self._fit()

    # ---- the engine's events ---------------------------------------------------------------------

    @work(exclusive=True, exit_on_error=False, group="engine")
    async def consume(self, *, draw: bool = True, resync: bool = False) -> None:
        if resync:  # the failed consumer may have dropped an event: take the engine's word for where we are
            self.waiting = self.engine.waiting
            current = self.engine.current
            running = current is not None and self.engine.state.steps[current].status == StepStatus.running
            self.running = current if running else None
            self._armed_at = time.monotonic() + ARM_DELAY_S
            if draw:
                self.redraw()
        async for e in self.engine.events():
            if draw:
                self._on_event(e)
            if isinstance(e, ev.RunFinished):
                self._ended = True
                self.app.post_message(RunEnded(e))
                return

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Relayed to the app's one handler (this message does not bubble). A failed consumer is started
        again, in step with the engine, so the screen keeps following the run and q still leaves it."""
        self.app.post_message(Worker.StateChanged(event.worker, event.state))
        if event.state != WorkerState.ERROR or event.worker.group != "engine" or self._ended:
            return
        self._consumer_failures += 1
        draw = self._consumer_failures < REDRAW_FAILURES_MAX
        if not draw:
            self.notify(f"This screen no longer follows the run. Press q to leave; the run stays open: "
                        f"`runbook resume {self.engine.run_id}`.", title="Screen stopped", severity="error",
                        timeout=24 * 3600)
        self.consume(draw=draw, resync=True)

    def _on_event(self, e: ev.Event) -> None:
        log = self.query_one("#output", Log)
        if isinstance(e, ev.Waiting):
            if self.waiting is None or self.waiting.step_id != e.step_id or self.waiting.wait != e.wait:
                self._armed_at = time.monotonic() + ARM_DELAY_S
                if e.wait == Wait.interrupted:
                    self._show_past_output(e.step_id)
            self.waiting = e
            self.focus_step = e.step_id
            self.redraw()
        elif isinstance(e, ev.StepStarted):
            self.waiting = None
            self.running = e.step_id
            self.focus_step = e.step_id
            log.clear()
            self._lines.clear()
            again = " (re-attached)" if e.reattached else ""
            self._out([f"── {e.step_id}: attempt {e.attempt}{again} ──"])
            self.query_one("#progress", ProgressBar).display = False
            self.redraw()
        elif isinstance(e, ev.OutputLines):
            # The pane keeps the last OUTPUT_MAX_LINES; the full output is in the step log on disk.
            lines = e.lines[-OUTPUT_MAX_LINES:]
            self._out([("! " if ln.stream == "err" else "") + ln.text for ln in lines])
        elif isinstance(e, ev.Progress):
            bar = self.query_one("#progress", ProgressBar)
            bar.display = True
            bar.update(total=e.total, progress=e.done)
        elif isinstance(e, ev.CheckReported):
            mark = {"ok": "✓", "warning": "!"}.get(e.status, "✗")
            redact = self.engine.ctx.redactor.redact
            self._out([redact(f"{mark} check {e.name}: {e.status}" + (f" — {e.hint}" if e.hint else ""))])
            self._draw_facts()
        elif isinstance(e, ev.OutputValue):
            self._out([self.engine.ctx.redactor.redact(f"→ {e.name} = {e.value}")])
            self._draw_facts()
        elif isinstance(e, ev.StepFinished):
            if self.running == e.step_id:
                self.running = None
            self.waiting = None
            self._out([f"{e.status.icon} {e.status.value} {e.detail}"])
            if e.status == StepStatus.failed:
                self.notify(f"{e.step_id}: {e.detail}", title="Step failed", severity="error", timeout=8)
            self.redraw()
        elif isinstance(e, ev.Notice):
            severity = {"warning": "warning", "error": "error"}.get(e.level, "information")
            self.notify(escape(e.text), title=e.level, severity=severity)  # type: ignore[arg-type]

    # ---- keys ------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        w = self.waiting
        rehearsal = self.engine.state.mode == "rehearsal"
        if action == "go":
            return True if (w is not None and w.wait in (Wait.confirm, Wait.ack, Wait.mark, Wait.value)) else None
        if action == "mark_failed":
            return rehearsal and w is not None and w.wait == Wait.mark
        if action == "retry":
            return w is not None and w.wait == Wait.failed
        if action in ("rerun", "mark_done"):
            return w is not None and w.wait == Wait.interrupted
        if action == "skip":
            return True if w is not None else None
        if action == "cancel_step":
            return self.running is not None
        return True

    def _armed(self, action: str) -> bool:
        """Run-like keys within 750 ms of the step changing are dropped (typed ahead on a laggy link)."""
        if action in GUARDED and time.monotonic() < self._armed_at:
            return False
        return not self._pending_modal

    async def _call(self, coro: Any) -> bool:
        try:
            await coro
            return True
        except ConfirmRefused:
            pass  # the engine journals the refusal and says so in a notice
        except RunbookError as e:
            self.notify(escape(e.message), title="Not now", severity="warning")
        return False

    @work(group="keys", exit_on_error=False)
    async def action_go(self) -> None:
        w = self.waiting
        if w is None or not self._armed("go"):
            return
        eng = self.engine
        step = eng.ctx.runbook.step(w.step_id)
        if w.wait == Wait.confirm and w.typed_expected is not None:
            typed = await self._typed(step.display_title, w.typed_expected, w.command)
            if typed is not None:
                await self._call(eng.confirm(w.step_id, typed=typed, how="typed in the TUI"))
        elif w.wait == Wait.confirm:
            await self._call(eng.confirm(w.step_id, how="key r in the TUI"))
        elif w.wait == Wait.ack:
            await self._call(eng.ack(w.step_id, how="key r in the TUI"))
        elif w.wait == Wait.mark and w.typed_expected is not None:
            # Rehearsal: nothing runs, but the operator practises the typed confirmation.
            typed = await self._typed(step.display_title, w.typed_expected, w.command)
            if typed is None:
                return
            if typed.strip() != w.typed_expected:
                self.notify("The typed value does not match: in a live run nothing would run.", severity="error")
                await eng.note(f"rehearsal: typed confirmation of {w.step_id} did not match")
                return
            await self._call(eng.mark(w.step_id, True, "typed confirmation practised"))
        elif w.wait == Wait.mark:
            await self._call(eng.mark(w.step_id, True))
        elif w.wait == Wait.value:
            value = await self._ask(f"A value for {w.value_key}", w.detail or "", required=False)
            if value is not None:
                await self._call(eng.provide_value(w.step_id, value))

    async def _typed(self, title: str, expected: str, command: str | None) -> str | None:
        self._pending_modal = True
        try:
            return await self.app.push_screen_wait(TypedConfirmModal(title, expected, command))
        finally:
            self._pending_modal = False

    async def _ask(self, title: str, body: str, *, required: bool = True) -> str | None:
        self._pending_modal = True
        try:
            return await self.app.push_screen_wait(TextModal(title, escape(body), required=required))
        finally:
            self._pending_modal = False

    async def _yes(self, title: str, body: str, yes: str, danger: bool = False) -> bool:
        self._pending_modal = True
        try:
            modal: ConfirmModal = ConfirmModal(title, escape(body), yes, danger)
            return bool(await self.app.push_screen_wait(modal))  # type: ignore[arg-type]
        finally:
            self._pending_modal = False

    @work(group="keys", exit_on_error=False)
    async def action_mark_failed(self) -> None:
        w = self.waiting
        if w is None or w.wait != Wait.mark or not self._armed("mark_failed"):
            return
        note = await self._ask("Mark failed", "What went wrong? (journaled)")
        if note:
            await self._call(self.engine.mark(w.step_id, False, note))

    async def action_retry(self) -> None:
        w = self.waiting
        if w is not None and w.wait == Wait.failed and self._armed("retry"):
            await self._call(self.engine.retry(w.step_id))

    @work(group="keys", exit_on_error=False)
    async def action_rerun(self) -> None:
        w = self.waiting
        if w is None or w.wait != Wait.interrupted or not self._armed("rerun"):
            return
        step = self.engine.ctx.runbook.step(w.step_id)
        if await self._yes("Re-run an interrupted step?",
                           f"{step.display_title} started earlier and its process vanished without a result; "
                           "part of it may have run. Run it again from the start?", "Re-run", danger=True):
            await self._call(self.engine.rerun(w.step_id))

    @work(group="keys", exit_on_error=False)
    async def action_mark_done(self) -> None:
        w = self.waiting
        if w is None or w.wait != Wait.interrupted:
            return
        note = await self._ask("Mark done", "How do you know it finished? (journaled)")
        if note:
            await self._call(self.engine.mark_done(w.step_id, note))

    @work(group="keys", exit_on_error=False)
    async def action_skip(self) -> None:
        w = self.waiting
        if w is None or self._pending_modal:
            return
        reason = await self._ask("Skip this step", "Why is it skipped? (required, journaled)")
        if reason:
            await self._call(self.engine.skip(w.step_id, reason))

    @work(group="keys", exit_on_error=False)
    async def action_cancel_step(self) -> None:
        if self.running is None or self._pending_modal:
            return
        sid = self.running
        if await self._yes("Cancel the running step?", f"Stop {sid}: SIGTERM to its processes, SIGKILL after a "
                           "grace period.", "Cancel the step", danger=True) and self.running == sid:
            await self.engine.cancel(sid)

    @work(group="keys", exit_on_error=False)
    async def action_abort(self) -> None:
        if self._pending_modal:
            return
        reason = await self._ask("Abort the run", "Why is the run aborted? (required; a running step is cancelled)")
        if reason:
            await self.engine.abort(reason)

    @work(group="keys", exit_on_error=False)
    async def action_note(self) -> None:
        if self._pending_modal:
            return
        text = await self._ask("Note", "Added to the journal with the time and the current step.")
        if text:
            await self.engine.note(text)

    def action_toggle_output(self) -> None:
        self.toggle_class("output-full")
        self.call_after_refresh(self._rewrite)
        self.call_after_refresh(self._draw_facts)  # packed again for the pane's new width

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap
        self._rewrite()
        self.notify("Output lines wrap at the pane's width" if self.wrap else
                    "Raw output: one line each; scroll sideways with the arrow keys (w: wrap again)", timeout=4)

    # ---- the output pane ---------------------------------------------------------------------------

    def _width(self) -> int:
        log = self.query_one("#output", Log)
        return max(20, log.scrollable_content_region.width - 1)

    def _folded(self, lines: list[str]) -> list[str]:
        if not self.wrap:
            return lines
        width = self._width()  # once a batch: asked per line, it cost 1 s of 200,000 lines (bench/tui_bench.py)
        if all(len(line) <= width for line in lines):
            return lines
        return [part for line in lines for part in fold(line, width)]

    def _out(self, lines: list[str]) -> None:
        self._lines.extend(lines)
        del self._lines[:-OUTPUT_MAX_LINES]
        self.query_one("#output", Log).write_lines(self._folded(lines))

    def _show_past_output(self, step_id: str) -> None:
        """An interrupted step's output as its log kept it (the process is gone, nothing streams): what it did
        before it vanished is what the operator decides on."""
        from runbook.executor import read_output
        from runbook.state import step_dir

        attempt = self.engine.state.steps[step_id].attempt
        if attempt < 1:
            return
        past = read_output(step_dir(self.engine.ctx.rdir, step_id, attempt))
        self.query_one("#output", Log).clear()
        self._lines.clear()
        shown = past[-OUTPUT_MAX_LINES:]
        self._out([f"── {step_id}: attempt {attempt}, interrupted: {len(past)} line(s) of output from its log ──"]
                  + [("! " if ln.stream == "err" else "") + ln.text for ln in shown])

    def _rewrite(self) -> None:
        """The pane's lines again, folded to today's width (a resize, the full-screen toggle) or raw."""
        log = self.query_one("#output", Log)
        log.clear()
        log.write_lines(self._folded(self._lines))

    def on_resize(self) -> None:
        self.redraw()
        if self._lines:
            self.call_after_refresh(self._rewrite)

    def action_journal(self) -> None:
        from runbook.tui.journal_screen import JournalScreen

        self.app.push_screen(JournalScreen(self.engine.ctx.rdir / "journal.jsonl"))

    def action_help(self) -> None:
        from runbook.tui.help_screen import HelpScreen

        self.app.push_screen(HelpScreen([b for b in self.BINDINGS if isinstance(b, Binding)]))

    @work(group="keys", exit_on_error=False)
    async def action_quit_run(self) -> None:
        if self._pending_modal:
            return
        if self.running is not None:
            ok = await self._yes("Quit while a step runs?",
                                 f"{self.running} goes on under its supervisor. Resume with "
                                 f"`runbook resume {self.engine.run_id}` to watch it again.", "Quit")
            if not ok:
                return
        await self.engine.detach("the operator quit the TUI")


class RunEnded(Message):
    """The run finished (completed, failed, aborted) or the operator left it (detached)."""

    def __init__(self, finished: ev.RunFinished) -> None:
        super().__init__()
        self.finished = finished

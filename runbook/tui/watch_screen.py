"""The watch cockpit: a run followed from outside, read-only (`runbook watch`, `runbook serve`).

It is the driver's run screen (runbook.tui.run_screen.RunScreen: the same step list, panel, output pane, RTO
clock, projection and facts lines, drawn by the same code) fed by a runbook.watching.WatchedRun instead of an
engine: the journal's events as an EventSource hands them over, folded by the fold a resumed run uses. Its keys
only look (quit, output, wrap, journal, help): the keys that would change the run are not bound here at all,
and a watcher has no engine to call. A banner says whose run it is, and when its driver went silent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from rich.markup import escape
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Log, ProgressBar, Static

from runbook import events as ev
from runbook.clock import parse_iso
from runbook.durations import format_duration
from runbook.engine import Engine
from runbook.errors import RunbookError
from runbook.events import StepStatus, Wait
from runbook.tui.run_screen import RunEnded, RunScreen
from runbook.tui.summary_screen import SummaryScreen
from runbook.watching import WatchedRun, read_output

POLL_S = 0.25  # how often the source is asked for new events (the latency a watcher adds)

WATCH_CSS = """
#watch-banner {
    height: auto;
    padding: 0 1;
    background: $accent-darken-2;
    color: $text;
    text-style: bold;
}
#watch-banner.silent, #watch-banner.broken {
    background: $error;
}
#watch-banner.ended {
    background: $success-darken-2;
}
"""


def clock_time(ts: str | datetime | None) -> str:
    """A journal time as this host's local HH:MM:SS (the banner's times)."""
    if ts is None or ts == "":
        return "?"
    try:
        dt = parse_iso(ts) if isinstance(ts, str) else ts
    except ValueError:
        return str(ts)
    return dt.astimezone().strftime("%H:%M:%S")


def banner_text(view: WatchedRun) -> tuple[str, str]:
    """The banner's words and its class (`""`, `silent`, `ended`): whose run, read-only, and what is wrong."""
    status = view.last_status
    driver = view.driver
    who = f"driven by {driver.describe()} since {clock_time(driver.since)}" if driver else "waiting for its first event"
    note = f" · {status.note}" if status.note else ""
    if status.ended:
        return f"WATCHED — read-only · the run has ended ({view.state.status}); it was {who}{note}", "ended"
    if status.silent_s is not None:
        heard = clock_time(status.last_heard) if status.last_heard else "its start"
        name = driver.describe() if driver else "its driver"
        return (f"WATCHING — read-only · the driver {name} is SILENT: nothing heard since {heard} "
                f"({format_duration(status.silent_s)} ago){note}", "silent")
    return f"WATCHING — read-only, {who}{note}", ""


def watcher_hint(view: WatchedRun, waiting: ev.Waiting | None, running: bool) -> Text:
    """What the driver is being asked now, said to someone who cannot answer it."""
    driver = view.driver.describe() if view.driver else "the driver"
    if running:
        return Text(f"Running; {driver} drives. This screen only watches.", style="bold cyan")
    if waiting is None:
        return Text("")
    words = {
        Wait.confirm: f"Waiting for {driver} to run or skip this step.",
        Wait.ack: f"Waiting for {driver} to tick the next item.",
        Wait.mark: f"Rehearsal: waiting for {driver} to mark this step.",
        Wait.failed: f"The step failed: {driver} decides (retry, skip or abort).",
        Wait.interrupted: f"Interrupted: {driver} decides (re-run, mark done, skip or abort).",
        Wait.value: f"Waiting for {driver} to give a value.",
        Wait.approval: "Waiting for approval by another operator (two-person rule): "
                       + (waiting.detail or "").partition(": ")[2],
    }
    style = {Wait.failed: "bold red", Wait.interrupted: "bold magenta"}.get(waiting.wait, "bold")
    return Text(words.get(waiting.wait, ""), style=style)


class WatchScreen(RunScreen, inherit_bindings=False):
    """The run screen, watching. See the module's docstring."""

    BINDINGS = [
        Binding("q", "quit_watch", "Quit", id="watch.quit", tooltip="Stop watching; the run goes on"),
        Binding("o", "toggle_output", "Output", id="watch.output", tooltip="Output full screen, or back"),
        Binding("w", "toggle_wrap", "Wrap", id="watch.wrap",
                tooltip="Output lines wrap at the pane's width (default), or raw: one line each, scroll sideways"),
        Binding("j", "journal", "Journal", id="watch.journal", tooltip="The journal as a timeline"),
        Binding("a", "approve", "Approve", id="watch.approve",
                tooltip="A step waits for another operator's approval: see its command, type its id, approve "
                        "(as `runbook approve`; never the driver's own user)"),
        Binding("question_mark", "help", "Help", id="watch.help", key_display="?", tooltip="What every key does"),
    ]

    def __init__(self, view: WatchedRun, *, poll_s: float = POLL_S) -> None:
        super().__init__(cast(Engine, view))  # the screen reads an engine's state, clock and runbook, nothing more
        self.view = view
        self.poll_s = poll_s
        self._tail: tuple[str, int, int] | None = None  # the step whose output is followed: id, attempt, offset
        self._broken: str | None = None
        self._banner_shown: tuple[str, str] | None = None
        self._sent: str | None = None  # the nonce of this cockpit's approval through the repository, until answered

    def compose(self) -> ComposeResult:
        yield Static(id="watch-banner")
        yield from super().compose()

    def on_mount(self) -> None:
        self.query_one("#progress", ProgressBar).display = False
        self.query_one("#output", Log).border_title = "output"
        self.follow()  # the journal so far, then what comes
        self.set_interval(1.0, self._tick)
        self._poller = self.set_interval(self.poll_s, self.follow)

    # ---- following ---------------------------------------------------------------------------------

    def follow(self) -> None:
        """Take the source's new events, draw them, and say how the driver is."""
        if self._broken is not None:
            return
        try:
            new = self.view.update()
        except RunbookError as e:  # a journal that cannot be trusted past a line: stop there, and say so
            self._broken = e.message
            self._poller.stop()
            self._banner()
            return
        for event in new:
            self._watch_event(event)
        self._read_output()
        self._banner()
        if new:
            self.redraw()
        if self.view.last_status.ended and not self._ended:
            self._ended = True
            st = self.view.state
            self.app.post_message(RunEnded(ev.RunFinished(st.status, st.detail)))

    def _banner(self) -> None:
        banner = self.query_one("#watch-banner", Static)
        if self._broken is not None:
            text, cls = f"WATCHING — read-only · stopped following: {self._broken}", "broken"
        else:
            text, cls = banner_text(self.view)
        if (text, cls) == self._banner_shown:
            return  # unchanged: nothing to redraw (the poll comes four times a second)
        self._banner_shown = (text, cls)
        banner.update(Text(text, overflow="fold"))
        banner.set_classes(cls)

    def _watch_event(self, e: dict[str, Any]) -> None:
        t = e.get("type")
        sid = e.get("step")
        st = self.view.state
        if self._sent is not None and str(e.get("request", "")).endswith(f"approve-{self._sent}.json"):
            if t == "approved":  # the driver's verdict on this cockpit's approval through the repository
                self._sent = None
                self.notify(escape(f"the driver's process accepted your approval of step {sid}"), title="Approved",
                            timeout=8)
            elif t == "approval-refused":
                self._sent = None
                self.notify(escape(f"the driver's process refused your approval: {e.get('reason')}"),
                            title="Not approved", severity="error", timeout=15)
        if not isinstance(sid, str) or sid not in st.steps:
            if t in ("note", "warning"):
                self.notify(escape(str(e.get("text", ""))), title=str(t),
                            severity="warning" if t == "warning" else "information")
            elif t == "run-resumed" and self.view.driver is not None:
                self.notify(escape(f"{self.view.driver.describe()} took the run up again"), title="Resumed")
            return
        step = st.steps[sid]
        if t == "step-awaiting":
            kind = e.get("kind")
            wait = Wait.ack if kind == "manual" else (Wait.mark if st.mode == "rehearsal" else Wait.confirm)
            self.waiting = ev.Waiting(sid, wait, command=e.get("command"), item_index=self._next_item(sid))
            self.focus_step = sid
        elif t == "approval-awaited":  # the two-person rule: shown to watchers too, with the command to approve
            from runbook.report import approve_command

            if self.view.ctx.state_dir:
                how = approve_command(st.run_id, sid, self.view.ctx.state_dir)
            else:  # through the repository: here (a), or `approve -c` on any host that trusts the driver's key
                cfg = getattr(self.view.source, "config_path", "") or "REPO_CONFIG"
                how = f"press a here, or runbook approve -c {cfg} {st.run_id} {sid}"
            self.waiting = ev.Waiting(sid, Wait.approval, command=self.waiting.command if self.waiting else None,
                                      detail=f"waiting for approval: {how}")
            self.focus_step = sid
        elif t == "approved" and self.waiting is not None and self.waiting.step_id == sid:
            self.waiting = ev.Waiting(sid, Wait.confirm, command=self.waiting.command)
        elif t == "item-acked" and self.waiting is not None and self.waiting.step_id == sid:
            self.waiting = ev.Waiting(sid, Wait.ack, item_index=self._next_item(sid))
        elif t == "step-started":
            self.waiting = None
            self.running = sid
            self.focus_step = sid
            self._start_output(sid, step.attempt, "")
        elif t == "step-reattached":
            self.running = sid
            if self._tail is None or self._tail[:2] != (sid, step.attempt):
                self._start_output(sid, step.attempt, " (re-attached)")
        elif t in ("step-output", "value-provided"):
            self._read_output()
            self._out([f"→ {e.get('name')} = {e.get('value')}"])
        elif t == "step-check":
            self._read_output()
            mark = {"ok": "✓", "warning": "!"}.get(str(e.get("status")), "✗")
            hint = f" — {e.get('hint')}" if e.get("hint") else ""
            self._out([f"{mark} check {e.get('name')}: {e.get('status')}{hint}"])
        elif t in ("step-finished", "step-skipped"):
            self._read_output()
            self._tail = None
            if self.running == sid:
                self.running = None
            self.waiting = ev.Waiting(sid, Wait.failed, detail=step.detail) \
                if step.status == StepStatus.failed else None
            self._out([f"{step.status.icon} {step.status.value} {step.detail}".rstrip()])
            if step.status == StepStatus.failed:
                self.notify(escape(f"{sid}: {step.detail}"), title="Step failed", severity="error", timeout=8)
        elif t == "step-interrupted":
            self.running = None
            self.waiting = ev.Waiting(sid, Wait.interrupted, detail=step.detail)
            self.focus_step = sid
        elif t == "note":
            self.notify(escape(str(e.get("text", ""))), title=f"note on {sid}")

    # ---- the two-person rule: the one thing a watcher may send ------------------------------------------

    def action_approve(self) -> None:
        """Approve the step that waits for another operator: the pending approval the driver wrote (its command
        with secrets masked) is shown, the step id typed, and the request goes into the run's `requests/`, where
        the driver's process verifies it as any `runbook approve` (runbook.requests)."""
        import os

        from runbook.requests import approver_refusal, read_pending
        from runbook.state import run_dir
        from runbook.tui.modals import TextModal

        w = self.waiting
        st = self.view.state
        if w is None or w.wait != Wait.approval or self._broken is not None:
            self.notify("no step waits for approval now", title="Approve", severity="warning")
            return
        if self.view.ctx.state_dir is None:  # through the repository: a signed approval (runbook.remote_approve)
            self._approve_remote(w.step_id)
            return
        rdir = run_dir(self.view.ctx.state_dir, st.run_id)
        try:
            pending = read_pending(rdir)
        except RunbookError as e:
            self.notify(escape(e.message), title="Not approved", severity="error", timeout=10)
            return
        if pending is None or pending.get("run_id") != st.run_id or pending.get("step") != w.step_id:
            self.notify(f"step {w.step_id} no longer waits for approval", title="Approve", severity="warning")
            return
        why = approver_refusal(pending, os.geteuid())
        if why is not None:
            self.notify(escape(why + "; another operator, logged in as another user, approves"),
                        title="Not approved", severity="error", timeout=10)
            return
        sid = w.step_id
        driver = pending.get("driver") or {}
        shown = [f"$ {pending['command']}".rstrip()] if pending.get("command") else []
        shown += [f"☐ {item}" for item in pending.get("items") or []]
        modal = TextModal(f"Approve: {pending.get('title') or sid}",
                          f"Run {escape(st.run_id)} ({escape(str(pending.get('mode', '')).upper())}), driven by "
                          f"{escape(str(driver.get('user')))}@{escape(str(driver.get('host')))}. Type the step id "
                          f"[b]{escape(sid)}[/b] to approve it; anything else approves nothing.",
                          placeholder="the step id shown above")
        modal.command = "\n".join(shown) or None

        def typed(value: str | None) -> None:
            self._send_approval(rdir, pending, sid, value)

        self.app.push_screen(modal, typed)

    def _send_approval(self, rdir: Any, pending: dict[str, Any], sid: str, value: str | None) -> None:
        from runbook.requests import send_approval

        if value is None:
            return
        if value.strip() != sid:
            self.notify(escape(f"typed {value.strip()!r}, not {sid!r}: nothing was approved"), title="Not approved",
                        severity="warning")
            return
        try:
            send_approval(rdir, self.view.state.run_id, pending)
        except RunbookError as e:
            self.notify(escape(e.message), title="Not approved", severity="error", timeout=10)
            return
        self.notify(escape(f"your approval of step {sid} is sent: the driver's process verifies it (the step starts "
                           "when it is accepted)"), title="Approval sent", timeout=8)

    def _approve_remote(self, step_id: str) -> None:
        """Approve from another host, through the repository: the command as the verified mirror shows it
        (secrets masked), the step id typed, then a signed approval into `runs/<id>/requests/`; the driver's
        verdict comes back through the mirror (`_watch_event`)."""
        from runbook.remote_approve import RemoteApproval
        from runbook.tui.modals import TextModal

        st = self.view.state
        try:
            job = RemoteApproval.watching(self.view.source, st.events, self.view.clock)
            p = job.check(step_id)
        except RunbookError as e:
            self.notify(escape(e.message + (f" ({e.hint})" if e.hint else "")), title="Not approved",
                        severity="error", timeout=10)
            return
        shown = [f"$ {p.command}".rstrip()] if p.command else []
        shown += [f"☐ {item}" for item in p.items or []]
        modal = TextModal(f"Approve: {p.title}",
                          f"Run {escape(st.run_id)} ({escape(p.mode.upper())}), driven by "
                          f"{escape(str(p.driver.get('user')))}@{escape(str(p.driver.get('host')))}, through the "
                          f"repository (signed with this host's key {escape(job.signer.key_id)}). Type the step id "
                          f"[b]{escape(p.step)}[/b] to approve it; anything else approves nothing.",
                          placeholder="the step id shown above")
        modal.command = "\n".join(shown) or None

        def typed(value: str | None) -> None:
            if value is None:
                return
            if value.strip() != p.step:
                self.notify(escape(f"typed {value.strip()!r}, not {p.step!r}: nothing was approved"),
                            title="Not approved", severity="warning")
                return
            self.run_worker(self._send_remote(job, p), group="approve")

        self.app.push_screen(modal, typed)

    async def _send_remote(self, job: Any, p: Any) -> None:
        import asyncio

        try:
            nonce = await asyncio.to_thread(job.send, p)
        except RunbookError as e:
            self.notify(escape(f"{e.message} ({e.hint})" if e.hint else e.message), title="Not approved",
                        severity="error", timeout=15)
            return
        self._sent = nonce
        self.notify(escape(f"your approval of step {p.step} is in the repository (signed with key "
                           f"{job.signer.key_id}): the driver's process verifies it"), title="Approval sent",
                    timeout=8)

    def _next_item(self, sid: str) -> int | None:
        step = self.view.ctx.runbook.step(sid)
        acked = self.view.state.steps[sid].acked
        return next((i for i in range(len(step.manual or [])) if i not in acked), None)

    # ---- output --------------------------------------------------------------------------------------

    def _start_output(self, sid: str, attempt: int, again: str) -> None:
        self.query_one("#output", Log).clear()
        self._lines.clear()
        self._out([f"── {sid}: attempt {attempt}{again} ──"])
        self._tail = (sid, attempt, 0)

    def _read_output(self) -> None:
        """The followed step's new output lines (a source without output shows the journal's lines only)."""
        lines, self._tail = read_output(self.view.source, self._tail)
        if lines:
            self._out([("! " if ln.stream == "err" else "") + ln.text for ln in lines])

    # ---- drawing ---------------------------------------------------------------------------------------

    def _draw_panel(self) -> None:
        super()._draw_panel()
        if self.focus_step is None:
            return
        hint = watcher_hint(self.view, self.waiting if self.waiting and self.waiting.step_id == self.focus_step
                            else None, self.running == self.focus_step)
        w = self.waiting
        if w is not None and w.step_id == self.focus_step and w.detail and w.wait in (Wait.failed, Wait.interrupted):
            hint = Text.assemble(hint, "\n", (w.detail, "yellow"))
        self._show("hint", hint)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "approve":  # shown (and run) only while a step waits for another operator's approval
            return self.waiting is not None and self.waiting.wait == Wait.approval
        return True  # every other key bound here only looks

    # ---- keys ------------------------------------------------------------------------------------------

    def action_quit_watch(self) -> None:
        self.app.exit(0)

    def action_journal(self) -> None:
        if self.view.ctx.rdir is None:
            self.notify(escape(f"The journal is not on this host: {self.view.source.describe()}"), severity="warning")
            return
        super().action_journal()

    def consume(self, *, draw: bool = True, resync: bool = False) -> Any:  # type: ignore[override]
        """A watcher has no engine to consume: `follow` reads the source instead."""
        return None


class WatchSummaryScreen(SummaryScreen, inherit_bindings=False):
    """The end of a watched run: the driver's summary, without writing anything (the report is `runbook report`)."""

    BINDINGS = [
        Binding("j", "journal", "Journal", id="watch-summary.journal", tooltip="The journal as a timeline"),
        Binding("q", "quit_app", "Quit", id="watch-summary.quit", tooltip="Leave"),
    ]
    report_hint = ""

    def __init__(self, view: WatchedRun, finished: ev.RunFinished) -> None:
        super().__init__(cast(Engine, view), finished)
        self.view = view

    def compose(self) -> ComposeResult:
        text, cls = banner_text(self.view)
        yield Static(Text(text, overflow="fold"), id="watch-banner", classes=cls)
        yield from super().compose()

    def action_write_report(self) -> None:
        """Not here: a watcher writes nothing into the run directory."""

    def journal_place(self) -> str:
        if self.view.ctx.rdir is None:
            return f"not on this host: {self.view.source.describe()}"
        return super().journal_place()

    def report_line(self) -> str:
        if self.view.ctx.state_dir is None:
            return f"runbook report {self.view.run_id}, on the host that ran it"
        return super().report_line()

    def action_journal(self) -> None:
        if self.view.ctx.rdir is None:
            self.notify(escape(f"The journal is not on this host: {self.view.source.describe()}"), severity="warning")
            return
        super().action_journal()

    def action_quit_app(self) -> None:
        self.app.exit(0)


class WatchApp(App[int]):
    """`runbook watch` in a terminal (or a browser, through `runbook serve`)."""

    CSS_PATH = "app.tcss"
    CSS = WATCH_CSS
    TITLE = "runbook watch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+c", "quit", "Quit", show=False, priority=True, id="watch-app.quit", tooltip="")]

    def __init__(self, view: WatchedRun, *, poll_s: float = POLL_S) -> None:
        super().__init__()
        self.view = view
        self.poll_s = poll_s

    def on_mount(self) -> None:
        self.push_screen(WatchScreen(self.view, poll_s=self.poll_s))

    def on_run_ended(self, message: RunEnded) -> None:
        self.switch_screen(WatchSummaryScreen(self.view, message.finished))


def watch(view: WatchedRun) -> int:
    """Run the watch cockpit until the watcher quits."""
    return WatchApp(view).run() or 0

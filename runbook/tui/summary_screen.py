"""The end of a run: RTO achieved against the target, failed and skipped steps, where the report is."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Static

from runbook import events as ev
from runbook.durations import format_duration
from runbook.engine import Engine
from runbook.errors import RunbookError
from runbook.events import StepStatus
from runbook.gameday import Debrief, load_debrief
from runbook.report import end_story, render_markdown, report_command
from runbook.report_html import render_html


class SummaryScreen(Screen[None]):
    BINDINGS = [
        Binding("w", "write_report", "Write report", id="summary.report",
                tooltip="Write the report: Markdown and one self-contained HTML file"),
        Binding("j", "journal", "Journal", id="summary.journal", tooltip="The journal as a timeline"),
        Binding("d", "debrief", "Debrief", id="summary.debrief",
                tooltip="The game day's debrief: the fault, your timings, the score"),
        Binding("q", "quit_app", "Quit", id="summary.quit", tooltip="Leave"),
    ]

    report_hint = "press w, or: "  # how the report is written from here (a watcher's summary has no w)

    def __init__(self, engine: Engine, finished: ev.RunFinished) -> None:
        super().__init__()
        self.engine = engine
        self.finished = finished
        self.debrief, self.debrief_problem = self._load_debrief()

    def _load_debrief(self) -> tuple[Debrief | None, str | None]:
        """A game-day run that ended has a debrief (runbook.gameday); any other run, and one left open, none."""
        sdir = self.engine.ctx.state_dir  # a watcher far from the run has none
        if sdir is None:
            return None, None
        try:
            return load_debrief(sdir, self.engine.state, self.engine.clock.now()), None
        except RunbookError as e:
            return None, e.message

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self.debrief is not None if action == "debrief" else True

    def compose(self) -> ComposeResult:
        with Vertical(id="summary"):
            yield Static(self._body(), id="summary-body")
            yield Static("", id="report-path")
        yield Footer()

    def _body(self) -> Table:
        eng = self.engine
        st = eng.state
        c = eng.clock_status()
        colour = {"completed": "bold green"}.get(self.finished.status, "bold red")
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold", no_wrap=True)
        t.add_column()
        t.add_row("Run", Text(f"{self.finished.status.upper()}", style=colour))
        if self.finished.detail:
            t.add_row("", self.finished.detail)
        t.add_row("Mode", st.mode.upper())
        rto_style = "bold red" if c.impossible or c.elapsed_s > c.target_s else "bold green"
        restored = "service restored" if st.rto_end_at else "service not restored"
        t.add_row("RTO", Text(f"{format_duration(c.elapsed_s)} of {format_duration(c.target_s)} ({restored})"
                              + (": IMPOSSIBLE, the service is back before the incident start" if c.impossible
                                 else ""), style=rto_style))
        for line in end_story(st, eng.clock.now()):
            t.add_row("", Text(line.text, style="bold red" if line.alarm else ""))
        for label, status in (("Failed", StepStatus.failed), ("Skipped", StepStatus.skipped),
                              ("Interrupted", StepStatus.interrupted)):
            rows = [f"{s}: {st.steps[s].detail}" for s in st.order if st.steps[s].status == status]
            if rows:
                t.add_row(label, "\n".join(rows))
        if self.debrief is not None:
            t.add_row("Game day", Text(f"score {self.debrief.score}/100: press d for the debrief (the fault, "
                                       "your timings, the score)", style="bold"))
        elif self.debrief_problem:
            t.add_row("Game day", Text(f"no debrief: {self.debrief_problem}", style="bold red", overflow="fold"))
        # Paths fold at the pane's edge instead of being cut: at 80 columns a run's path is longer than the row.
        t.add_row("Journal", Text(self.journal_place(), overflow="fold"))
        t.add_row("Report", Text(f"{self.report_hint}{self.report_line()}", overflow="fold"))
        return t

    def journal_place(self) -> str:
        """Where the run's journal is (a watcher far from the run says where it reads it instead)."""
        return str(self.engine.ctx.rdir / "journal.jsonl")

    def report_line(self) -> str:
        return report_command(self.engine.run_id, self.engine.ctx.state_dir)

    def action_write_report(self) -> None:
        eng = self.engine
        titles = {s.id: s.display_title for s in eng.ctx.runbook.steps}
        now = eng.clock.now()
        md, html = eng.ctx.rdir / "report.md", eng.ctx.rdir / "report.html"
        md.write_text(render_markdown(eng.state, titles, now, debrief=self.debrief))
        html.write_text(render_html(eng.state, titles, now, debrief=self.debrief), encoding="utf-8")
        said = f"Report written: {md}\nand {html.name} beside it (open it in a browser)"
        self.query_one("#report-path", Static).update(Text(said, style="bold green", overflow="fold"))
        self.notify(f"Report written: {md.name} and {html.name} in {eng.ctx.rdir}")

    def action_journal(self) -> None:
        from runbook.tui.journal_screen import JournalScreen

        self.app.push_screen(JournalScreen(self.engine.ctx.rdir / "journal.jsonl"))

    def action_debrief(self) -> None:
        if self.debrief is None:
            return
        from runbook.tui.debrief_screen import DebriefScreen

        self.app.push_screen(DebriefScreen(self.debrief, 0 if self.finished.status == "completed" else 1))

    def action_quit_app(self) -> None:
        self.app.exit(0 if self.finished.status == "completed" else 1)

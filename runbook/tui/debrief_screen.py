"""The game day's debrief, after the summary of a game-day run that ended: what was injected, when the tool
showed it, when the operator acted, RTO and data loss against a clean run, mistakes and the score
(runbook.gameday). Nothing of it exists on screen before the run ended."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from runbook.gameday import Debrief, debrief_lines


class DebriefScreen(Screen[None]):
    BINDINGS = [
        Binding("escape,b", "close", "Back", id="debrief.close", tooltip="Back to the run's summary"),
        Binding("q", "quit_app", "Quit", id="debrief.quit", tooltip="Leave"),
    ]

    def __init__(self, debrief: Debrief, exit_code: int) -> None:
        super().__init__()
        self.debrief = debrief
        self.exit_code = exit_code

    def compose(self) -> ComposeResult:
        d = self.debrief
        style = "bold green" if d.score >= 80 else "bold yellow" if d.score >= 50 else "bold red"
        yield Static(Text.assemble(("Game day debrief", "bold"), " · score ", (f"{d.score}/100", style),
                                   " · rules: docs/game-days.md"), id="debrief-title")
        with VerticalScroll(id="debrief"):
            yield Static(self._body(), id="debrief-body")
        yield Footer()

    def _body(self) -> Table:
        t = Table.grid(padding=(0, 1))
        t.add_column(style="bold", no_wrap=True)
        t.add_column(overflow="fold")
        for line in debrief_lines(self.debrief):
            t.add_row(line.label, Text(line.text, style="bold red" if line.alarm else ""))
        return t

    def on_mount(self) -> None:
        self.query_one("#debrief", VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_quit_app(self) -> None:
        self.app.exit(self.exit_code)

"""Help: every key of the run screen and what it does."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Static

SAFETY = (
    "Nothing runs on a stray key: each step is shown first, run keys are ignored for 750 ms after the step "
    "changes, Enter and Space never run a step, and dangerous steps need their value typed."
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help.close", tooltip="Back to the run")]

    def __init__(self, bindings: list[Binding]) -> None:
        super().__init__()
        self.keys = bindings

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for b in self.keys:
            table.add_row(b.key_display or b.key, f"{b.description}: {b.tooltip}")
        # The safety rule first, then the keys: at 80x24 it all fits; lower, the dialog scrolls (nothing is cut).
        with Vertical(classes="modal help", id="help"):
            yield Label("Keys · Esc, ? or q: back to the run", classes="modal-title")
            yield Static(SAFETY, classes="help-safety")
            yield Static(table)

    def action_close(self) -> None:
        self.dismiss(None)

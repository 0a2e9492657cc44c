"""The journal as a timeline, read from disk (what is written there is what happened)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from runbook.errors import RunbookError
from runbook.journal import read_journal
from runbook.report import event_detail, event_text


class JournalScreen(Screen[None]):
    BINDINGS = [Binding("escape,j,q", "close", "Back", id="journal.close", tooltip="Back to the run")]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        yield Static(Text(f"Journal · {self.path}", overflow="fold"), id="journal-title")
        yield DataTable(id="journal", zebra_stripes=True, cursor_type="row")
        yield Static(id="journal-detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("time", "step", "event", "detail")
        try:
            events = read_journal(self.path).events
        except RunbookError as e:
            self.query_one("#journal-title", Static).update(f"Journal cannot be read: {e.message}")
            return
        self.details: list[str] = []
        for entry in events:
            detail = event_detail(entry)
            self.details.append(detail)
            table.add_row(str(entry["ts"])[11:19], str(entry.get("step") or ""), event_text(entry), detail[:200])
        table.move_cursor(row=len(events) - 1)
        table.focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The highlighted event's whole detail, wrapped, under the table: a row's cell ends at the edge."""
        details = getattr(self, "details", [])
        detail = details[event.cursor_row] if 0 <= event.cursor_row < len(details) else ""
        self.query_one("#journal-detail", Static).update(Text(detail, overflow="fold"))
        self.query_one("#journal-detail", Static).display = bool(detail)

    def action_close(self) -> None:
        self.dismiss(None)

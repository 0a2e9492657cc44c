"""Modal dialogs: yes/no confirmation, typed confirmation, a required text (reason, note, value), an error.

Every modal focuses its safe choice (Cancel), except the text ones, where Enter submits the typed text,
and the error one, which only has OK.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class ConfirmModal(ModalScreen[bool]):
    """A question answered yes or no; Cancel has the focus."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="modal.cancel", tooltip="Close without doing anything")]

    def __init__(self, title: str, body: str, yes_label: str = "Yes", danger: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.yes_label = yes_label
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal"):
            yield Label(self.title_text, classes="modal-title")
            yield Static(self.body, classes="modal-body")
            with Horizontal(classes="modal-buttons"):
                yield Button("Cancel", id="cancel", variant="primary")
                yield Button(self.yes_label, id="yes", variant="error" if self.danger else "warning")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_cancel(self) -> None:
        self.dismiss(False)


class TextModal(ModalScreen[str | None]):
    """Asks for a text; `required` refuses an empty one. Enter submits, Escape cancels (None)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="modal.cancel", tooltip="Close without doing anything")]

    def __init__(self, title: str, body: str, placeholder: str = "", *, required: bool = True,
                 password: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.placeholder = placeholder
        self.required = required
        self.password = password
        self.command: str | None = None  # shown in a scrolling box of its own above the body (TypedConfirmModal)

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal"):
            yield Label(self.title_text, classes="modal-title")
            if self.command:
                with VerticalScroll(classes="modal-command"):
                    yield Static(Text(self.command, overflow="fold"))
            yield Static(self.body, classes="modal-body")
            yield Input(placeholder=self.placeholder, password=self.password, id="text")
            yield Static("", id="modal-error", classes="modal-error")
            with Horizontal(classes="modal-buttons"):
                yield Button("Cancel", id="cancel", variant="primary")
                yield Button("OK", id="ok", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#text", Input).focus()

    def _submit(self) -> None:
        value = self.query_one("#text", Input).value
        if self.required and not value.strip():
            error = self.query_one("#modal-error", Static)
            error.update("This is required.")
            error.display = True
            return
        self.dismiss(value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TypedConfirmModal(TextModal):
    """`confirm: typed`: the operator types the named value; the step runs only when it matches.

    The command scrolls in its own box (an action's arguments run to a dozen lines); what to type, the input
    and both buttons are always in sight, at 80x24 too."""

    def __init__(self, step_title: str, expected: str, command: str | None) -> None:
        body = f"Type [b]{escape(expected)}[/b] to run it. Anything else runs nothing."
        super().__init__(f"Run: {step_title}", body, placeholder="type the value shown above")
        self.expected = expected
        self.command = command.rstrip() if command else None


class ErrorModal(ModalScreen[None]):
    """An error the operator must see: it stays until dismissed (OK, Enter or Escape). Never a traceback."""

    BINDINGS = [Binding("escape", "close", "Close", id="modal.close", tooltip="Close this message")]

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal error-modal"):
            yield Label(self.title_text, classes="modal-title")
            yield Static(self.body, classes="modal-body", id="error-body")
            with Horizontal(classes="modal-buttons"):
                yield Button("OK", id="ok", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#ok", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)

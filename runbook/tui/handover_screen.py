"""The cockpit of a driver whose run was taken over (`runbook take-over`): the watch cockpit, read-only.

The run goes on in the new driver's session; this one follows it as any watcher does (runbook.tui.watch_screen),
with a banner above the watcher's saying who took the run over and when. No key changes the run any more: the
watch screen binds none, and this process no longer holds the run's lock nor writes its journal.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Static

from runbook.tui.watch_screen import WATCH_CSS, WatchScreen, clock_time
from runbook.watching import WatchedRun

HANDOVER_CSS = """
#handover-banner {
    height: auto;
    padding: 0 1;
    background: $warning;
    color: $text;
    text-style: bold;
}
"""


def taken_over_text(who: dict[str, Any]) -> str:
    where = " from another host (followed through the repository)" if who.get("remote") else ""
    return (f"TAKEN OVER by {who.get('user')}@{who.get('host')}{where} at {clock_time(str(who.get('at') or ''))}: "
            "they drive this run now; this screen only watches")


class TakenOverScreen(WatchScreen, inherit_bindings=False):
    """The watch screen, after a hand-over, with the hand-over's banner."""

    BINDINGS = WatchScreen.BINDINGS
    DEFAULT_CSS = WATCH_CSS + HANDOVER_CSS  # the driver's app has not the watch app's CSS

    def __init__(self, view: WatchedRun, who: dict[str, Any]) -> None:
        super().__init__(view)
        self.who = who

    def action_quit_watch(self) -> None:
        from runbook.errors import Exit

        self.app.exit(int(Exit.LEFT_OPEN))  # the run stays open, in its new driver's hands

    def compose(self) -> ComposeResult:
        yield Static(Text(taken_over_text(self.who), overflow="fold"), id="handover-banner")
        yield from super().compose()

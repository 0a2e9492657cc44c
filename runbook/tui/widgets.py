"""The run screen's pieces: the header with the mode badge and RTO clock, the step list, the step panel.

Each renders from the engine's state only; none of them changes anything.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from runbook.durations import format_duration, short_duration
from runbook.engine import Engine
from runbook.events import StepStatus, Wait, Waiting
from runbook.model import Step
from runbook.rto import RtoClock

BADGES = {
    "live": ("LIVE", "bold white on red"),
    "drill": ("DRILL", "bold black on yellow"),
    "rehearsal": ("REHEARSAL", "bold black on cyan"),
}
LEVEL_STYLE = {"green": "bold green", "amber": "bold yellow", "red": "bold white on red"}
STATUS_STYLE = {
    StepStatus.succeeded: "green",
    StepStatus.failed: "bold red",
    StepStatus.skipped: "yellow",
    StepStatus.interrupted: "bold magenta reverse",
    StepStatus.running: "bold cyan",
    StepStatus.awaiting: "bold",
    StepStatus.pending: "dim",
}


def rto_bar(c: RtoClock, width: int) -> Text:
    frac = min(1.0, max(0.0, c.fraction))
    filled = int(round(frac * width))
    style = LEVEL_STYLE[c.level]
    bar = Text("█" * filled, style=style) + Text("░" * (width - filled), style="dim")
    return bar


def header(engine: Engine, width: int) -> RenderableType:
    st = engine.state
    label, badge_style = BADGES.get(st.mode, (st.mode.upper(), "reverse"))
    c = engine.clock_status()
    top = Table.grid(expand=True)
    top.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    top.add_column(justify="right", no_wrap=True)
    top.add_row(
        Text.assemble((st.scenario, "bold"), " · ", st.runbook_name),
        Text.assemble((f" {label} ", badge_style), "  ", _clock_text(c)),
    )
    bottom = Table.grid(expand=True)
    bottom.add_column(no_wrap=True)
    bottom.add_column(ratio=1, no_wrap=True, justify="right")
    pct = Text(f" {c.fraction * 100:3.0f} % ", style=LEVEL_STYLE[c.level] if c.level != "green" else "")
    bottom.add_row(rto_bar(c, max(10, min(40, width // 3))) + pct, _projection_text(c))
    return Group(top, bottom)


def _clock_text(c: RtoClock) -> Text:
    style = LEVEL_STYLE[c.level]
    word = "restored in" if c.stopped else "RTO"
    return Text(f"{word} {format_duration(c.elapsed_s)} of {format_duration(c.target_s)}", style=style)


def _projection_text(c: RtoClock) -> Text:
    if c.impossible:
        return Text("the service is back BEFORE the incident start: check --incident-start and this host's clock",
                    style="bold red")
    if c.stopped:
        verdict = "target met" if c.verdict == "met" else "TARGET MISSED"
        return Text(f"service restored · {verdict}", style="bold green" if c.verdict == "met" else "bold red")
    left = f"{format_duration(abs(c.remaining_s))} {'left' if c.remaining_s >= 0 else 'OVER'}"
    if c.projected_s is None:
        return Text(f"{left} · projected finish unknown")
    lower = "≥" if c.unknown_steps else ""
    style = "bold red" if c.verdict == "at risk" else "green"
    return Text.assemble(f"{left} · projected {lower}{format_duration(c.projected_s)} ", (c.verdict, style))


def abbreviate(title: str, width: int) -> str:
    """`title` in `width` characters: shortened in the middle, never at the end, where a step's title says what
    it acts on ("Restore into a new database" at 16: "Restore…database"); whole words where they fit."""
    if len(title) <= width:
        return title
    budget = width - 1  # the ellipsis takes one
    words = title.split(" ")
    tail = ""
    for i in range(len(words) - 1, 0, -1):  # the longest run of last words that fits in half the room
        candidate = " ".join(words[i:])
        if len(candidate) > budget // 2 + budget % 2 and tail:
            break
        if len(candidate) <= budget - 1:
            tail = candidate
    if not tail:
        tail = title[len(title) - budget // 2:]
    room = budget - len(tail)
    head = title[:room]
    if " " in head and not title[room:room + 1].isspace():
        head = head[: head.rfind(" ")]  # end the head on a word when it can
    return head.rstrip() + "…" + tail


def step_list(engine: Engine, current: str | None, width: int) -> Text:
    st = engine.state
    out = Text(no_wrap=True, overflow="ellipsis")
    title_w = max(8, width - 12)
    for n, sid in enumerate(st.order, start=1):
        s = st.steps[sid]
        step = engine.ctx.runbook.step(sid)
        if s.duration_s is not None and s.status in (StepStatus.succeeded, StepStatus.failed):
            dur = short_duration(s.duration_s)
        elif sid in engine.ctx.expected and not s.status.done:
            dur = "~" + short_duration(engine.ctx.expected[sid])
        else:
            dur = ""
        danger = "⚠" if step.danger else " "
        title = abbreviate(step.display_title, title_w)
        line = Text(f"{s.status.icon} {n:>2} {title:<{title_w}}{danger}{dur:>6}", style=STATUS_STYLE[s.status])
        if sid == current:
            line.stylize("reverse")
        out.append(line)
        out.append("\n")
    return out


def hint_for(w: Waiting | None, step: Step, running: bool, rehearsal: bool) -> Text:
    """One line saying exactly what the keys do now."""
    if running:
        return Text("Running. c cancels this step (asks first); n adds a note.", style="bold cyan")
    if w is None:
        return Text("")
    if w.wait == Wait.confirm:
        if w.typed_expected is not None:
            return Text.assemble(("r", "bold reverse"), " then type ", (w.typed_expected, "bold"),
                                 " to run this step · s skip · a abort")
        return Text.assemble(("r", "bold reverse"), " runs this step · s skip · a abort")
    if w.wait == Wait.ack:
        return Text.assemble(("r", "bold reverse"), " marks the next item done · s skip the step")
    if w.wait == Wait.mark:
        return Text.assemble("Rehearsal: nothing runs. ", ("r", "bold reverse"), " it worked · ",
                             ("f", "bold reverse"), " it failed (note) · s skip")
    if w.wait == Wait.failed:
        return Text.assemble(("Step failed: ", "bold red"), ("t", "bold reverse"), " retry · s skip (reason) · a abort")
    if w.wait == Wait.interrupted:
        return Text.assemble(("Interrupted: ", "bold magenta"), ("e", "bold reverse"), " re-run · ",
                             ("d", "bold reverse"), " mark done (note) · s skip · a abort")
    if w.wait == Wait.value:
        return Text.assemble(("r", "bold reverse"), f" enter a value for {w.value_key} · s skip")
    return Text("")


def checklist(step: Step, acked: list[int], current_index: int | None) -> Text:
    out = Text()
    for i, item in enumerate(step.manual or []):
        mark = "☑" if i in acked else ("☐" if i != current_index else "▶")
        style = "green" if i in acked else ("bold" if i == current_index else "")
        out.append(f" {mark} {item}\n", style=style)
    return out


class Pane(Static):
    """A Static that is only ever refreshed from the engine's state."""

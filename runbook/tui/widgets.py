"""The run screen's pieces: the header with the mode badge and RTO clock, the step list, the step panel.

Each renders from the engine's state only; none of them changes anything.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

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
    right = Text.assemble((f" {label} ", badge_style), "  ", _clock_text(c))
    duty = duty_text(engine)
    if duty is not None:
        right = Text.assemble(duty, "  ", right)
    top.add_row(
        Text.assemble((st.scenario, "bold"), " · ", st.runbook_name),
        right,
    )
    bottom = Table.grid(expand=True)
    bottom.add_column(no_wrap=True)
    bottom.add_column(ratio=1, no_wrap=True, justify="right")
    pct = Text(f" {c.fraction * 100:3.0f} % ", style=LEVEL_STYLE[c.level] if c.level != "green" else "")
    bottom.add_row(rto_bar(c, max(10, min(40, width // 3))) + pct, _projection_text(c))
    return Group(top, bottom)


def duty_text(engine: Engine) -> Text | None:
    """The next timed duty beside the RTO clock (runbook.duties): its due time, or how late it is."""
    from runbook.duties import next_duty

    d = next_duty(engine.ctx.runbook, engine.state)
    if d is None:
        return None
    late = d.overdue_s(engine.clock.now())
    if late >= 0:
        return Text(f"DUTY {format_duration(late)} LATE", style="bold white on red")
    return Text(f"next duty {d.due_at.astimezone():%H:%M}", style="bold")


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
    if w.wait == Wait.approval:  # the two-person rule: no key of the driver's runs this step
        how = (w.detail or "").partition(": ")[2]
        return Text.assemble(("Waiting for approval by another operator", "bold yellow"),
                             (f" (they run: {how})" if how else ""), " · s skip · a abort")
    return Text("")


CHECKLIST_FULL_LINES = 8  # a checklist longer than this (wrapped) shows its other items on one line each


def checklist(step: Step, acked: list[int], current_index: int | None, width: int | None = None) -> Text:
    """The checklist, the item to do now (▶) always whole. When the whole list, wrapped at `width`, would take
    more than CHECKLIST_FULL_LINES lines, the other items take one line each, shortened at their end (each is
    shown whole when its turn comes)."""
    items = step.manual or []
    room = (width or 0) - 3
    compact = width is not None and current_index is not None and \
        sum(-(-len(item) // max(1, room)) for item in items) > CHECKLIST_FULL_LINES
    out = Text()
    for i, item in enumerate(items):
        mark = "☑" if i in acked else ("☐" if i != current_index else "▶")
        style = "green" if i in acked else ("bold" if i == current_index else "")
        if compact and i != current_index and len(item) > room:
            item = item[: room - 1].rstrip() + "…"
        elif width is not None and len(item) > room > 10:
            item = "\n   ".join(textwrap.wrap(item, room))  # wrapped under its own first word
        out.append(("\n" if i else "") + f" {mark} {item}", style=style)
    return out


FACT_SEPARATOR = " · "


def facts_step(engine: Engine, focus: str | None) -> str | None:
    """The step whose named outputs and checks the panel shows: the focused step once it has any, else the
    nearest step before it that has (the PITR step's recovery point stays in sight while the next step waits)."""
    st = engine.state
    if focus is None or focus not in st.order:
        return None
    for sid in reversed(st.order[: st.order.index(focus) + 1]):
        s = st.steps[sid]
        if s.outputs or s.checks:
            return sid
    return None


def _value_text(value: object) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "), default=str)


def facts(engine: Engine, focus: str | None, width: int, *, compact: bool = False) -> Text | None:
    """What the panel keeps in sight under the hint: the run's recovery point once a step reported one
    ("recovered to …", unless the facts below are that step's own), then the named outputs (`name value`) and
    checks (`✓ name`; `!` a warning, `✗` a failure) of the step `facts_step` picks, packed into lines of at
    most `width` columns; `compact` counts the checks that passed instead of naming them (when the panel is
    short of rows: what failed or warned is always named). None: nothing to show yet. Values are shown masked,
    like everything on screen."""
    from runbook.report import rpo_facts

    st = engine.state
    redact = engine.ctx.redactor.redact
    sid = facts_step(engine, focus)
    rpo = rpo_facts(st)
    point = rpo.recovery_point_raw if rpo is not None and rpo.source_step != sid else ""
    if sid is None and not point:
        return None
    out = Text(overflow="fold")
    if point:
        out.append("recovered to ", style="bold")
        out.append(redact(point), style="bold green")
    if sid is not None:
        n = st.order.index(sid) + 1
        label = f"{n} {sid}" if sid == focus else f"from {n} {sid}"
        if point:
            out.append("\n")
        out.append_text(facts_text(label, st.steps[sid].outputs, st.steps[sid].checks, width, redact,
                                   compact=compact))
    return out


def facts_text(label: str, outputs: dict[str, Any], checks: list[dict[str, Any]], width: int,
               redact: Callable[[str], str], *, compact: bool = False) -> Text:
    """`facts`, from the values themselves. A pair longer than a line keeps its name on the line and its value
    starts the next one, indented (a value longer than a whole line is folded by the screen, never cut)."""
    width = max(20, width)
    pieces: list[tuple[Text, Text | None]] = []
    for key, raw in outputs.items():
        pieces.append((Text(key, style="dim"), Text(redact(_value_text(raw)), style="bold")))
    passed = sum(1 for c in checks if c.get("status") == "ok")
    if compact and passed:
        pieces.append((Text.assemble(("✓", "green"), f" {passed} check{'s' if passed > 1 else ''} ok"), None))
    for c in checks:
        status = str(c.get("status") or "")
        if compact and status == "ok":
            continue
        mark, style = {"ok": ("✓", "green"), "warning": ("!", "bold yellow")}.get(status, ("✗", "bold red"))
        words = f"{c.get('name')}" + ("" if status == "ok" else f" ({status})")
        pieces.append((Text.assemble((mark, style), " ", redact(words)), None))
    lines: list[Text] = []
    current = Text(label + ":", style="bold")
    sep = " "  # the label and the first fact: no separator between them
    for name, value in pieces:
        whole = name.copy()
        if value is not None:
            whole.append(" ")
            whole.append_text(value)
        if current.cell_len + len(sep) + whole.cell_len <= width:
            current.append(sep, style="dim")
            current.append_text(whole)
        elif whole.cell_len <= width or value is None:
            lines.append(current)
            current = whole
        else:
            if current.cell_len + len(sep) + name.cell_len <= width:
                current.append(sep, style="dim")
                current.append_text(name)
                lines.append(current)
            else:
                lines.append(current)
                lines.append(name)
            current = Text("  ")
            current.append_text(value)
        sep = FACT_SEPARATOR
    lines.append(current)
    out = Text(overflow="fold")
    for i, line in enumerate(lines):
        if i:
            out.append("\n")
        out.append_text(line)
    return out


def steps_width(total: int, longest_title: int) -> int:
    """The step list's width in a terminal `total` columns wide: as wide as its longest title needs (with the
    status icon, number, danger mark, duration and border: 14 more), at least 30, and never so wide that the
    step panel gets fewer than 50 columns or three fifths of the terminal."""
    room = max(30, total - max(50, total * 3 // 5))
    return max(30, min(longest_title + 14, room))


class Pane(Static):
    """A Static that is only ever refreshed from the engine's state."""

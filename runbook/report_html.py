"""The recovery report as one self-contained HTML page: inline CSS, inline SVG, no script, no assets.

It draws the facts of `runbook.report` (the RTO, the RPO, each step's span): a header with the mode badge,
summary cards, the RTO and RPO sections, a Gantt chart of the steps against the RTO target, the steps,
the verification checks, notes, skips, failures and the full timeline. Every string from the journal
(titles, outputs, notes, details) is escaped: they are user data. It prints on A4 as it shows on screen.

Why one module of ~600 lines: a quarter of it is the page's stylesheet (`CSS`), the rest one section
function each, in the order the page shows them; split, a reader would jump between files to follow one page.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from runbook import __version__
from runbook.durations import format_duration, short_duration
from runbook.events import StepStatus
from runbook.report import (
    MODE_BADGE,
    WATCHERS_TEXT,
    WINDOW_LABEL,
    RpoFacts,
    RtoFacts,
    StepSpan,
    approvals,
    driver_spans,
    event_detail,
    event_text,
    fmt_time,
    outcome_detail,
    outcome_text,
    refusals,
    rpo_facts,
    rpo_rows,
    rto_facts,
    step_counts,
    step_spans,
    window_text,
)
from runbook.state import RunState

if TYPE_CHECKING:
    from runbook.gameday import Debrief

# Outcome colours: distinct in print and for the common colour-vision deficiencies (with the labels and
# the skipped hatch, colour is never the only cue).
STATUS_COLOUR = {
    StepStatus.succeeded: "#2f855a",
    StepStatus.failed: "#c53030",
    StepStatus.skipped: "#a0aec0",
    StepStatus.interrupted: "#dd6b20",
    StepStatus.running: "#2b6cb0",
    StepStatus.awaiting: "#2b6cb0",
    StepStatus.pending: "#e2e8f0",
}
CHECK_CLASS = {"ok": "ok", "passed": "ok", "warning": "warn", "warn": "warn", "failed": "bad", "error": "bad"}
TARGET_COLOUR = "#c53030"
RESTORED_COLOUR = "#2f855a"
CLOSED_COLOUR = "#4a5568"
DRIVER_BANDS = ("#fff4cc", "#e3f0ff")  # who drove when: alternating bands behind the timeline's rows

CSS = """
:root { --ok:#2f855a; --bad:#c53030; --warn:#c05621; --info:#2b6cb0; --muted:#5a6678; --line:#dfe4ea;
        --soft:#f5f7fa; --ink:#1a202c; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; color: var(--ink); background: #fff;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 40px; }
header.top { border-bottom: 3px solid var(--ink); padding-bottom: 12px; }
.eyebrow { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .08em; margin: 0; }
h1 { font-size: 25px; margin: 2px 0 8px; }
h1 .badge { font-size: 14px; margin-left: 6px; position: relative; top: -3px; }
h2 { font-size: 18px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 700;
         font-size: 12px; letter-spacing: .06em; text-transform: uppercase; vertical-align: middle; }
.mode-live { background: var(--bad); } .mode-drill { background: var(--info); } .mode-rehearsal { background: #6b46c1; }
.st-completed { background: var(--ok); } .st-failed { background: var(--bad); }
.st-aborted { background: var(--warn); } .st-open { background: var(--info); }
dl.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr) max-content minmax(0, 1fr);
           gap: 3px 14px; margin: 10px 0 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 12px; margin: 18px 0 4px; }
.card { border: 1px solid var(--line); border-left: 6px solid var(--muted); border-radius: 6px; padding: 10px 14px; }
.card.good { border-left-color: var(--ok); } .card.bad { border-left-color: var(--bad); }
.card.open { border-left-color: var(--info); }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .07em; }
.card .big { font-size: 26px; font-weight: 700; font-variant-numeric: tabular-nums; }
.card .of { color: var(--muted); font-size: 14px; font-weight: 400; }
.verdict { font-weight: 700; text-transform: uppercase; letter-spacing: .05em; }
.verdict.good { color: var(--ok); } .verdict.bad { color: var(--bad); } .verdict.open { color: var(--info); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--soft); color: #4a5568; font-size: 11.5px; text-transform: uppercase; letter-spacing: .05em; }
table.kv th { width: 190px; text-transform: none; font-size: 13.5px; letter-spacing: 0; background: none;
              color: var(--muted); font-weight: 500; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.nowrap { white-space: nowrap; }
td.wrap, .pre { white-space: pre-wrap; overflow-wrap: anywhere; }
.pill { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
        white-space: nowrap; border: 1px solid transparent; }
.pill.ok { background: #e6f4ea; color: #1e6b3f; border-color: #b7dfc4; }
.pill.bad { background: #fde8e8; color: #9b2c2c; border-color: #f5b5b5; }
.pill.warn { background: #fff4e5; color: #9c4215; border-color: #f6cfa3; }
.pill.info { background: #e8f0fb; color: #24548f; border-color: #b9cff0; }
.pill.muted { background: #eef1f4; color: #4a5568; border-color: #d5dbe2; }
.callout { border-left: 5px solid var(--warn); background: #fff8ee; padding: 9px 14px; margin: 12px 0; }
.callout.bad { border-left-color: var(--bad); background: #fff3f3; }
td.bad { color: var(--bad); font-weight: 600; }
.callout.info { border-left-color: #6b46c1; background: #f6f2ff; }
.muted { color: var(--muted); }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
figure { margin: 0; }
svg.gantt, svg.meter { display: block; width: 100%; height: auto; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 6px 0 0; padding: 0; list-style: none;
          color: var(--muted); font-size: 12.5px; }
.legend .sw { display: inline-block; width: 14px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.legend .ln { display: inline-block; width: 16px; height: 0; border-top: 2px solid; margin-right: 5px; vertical-align: 3px; }
ul.plain { margin: 0; padding-left: 20px; }
ul.plain li { margin: 3px 0; }
table.timeline td { font-size: 12.5px; padding: 3px 8px; }
footer { margin-top: 30px; padding-top: 8px; border-top: 1px solid var(--line); color: var(--muted); font-size: 12px; }
@page { size: A4; margin: 12mm; }
@media print {
  body { font-size: 11pt; }
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; }
  figure, .cards, table.kv, .callout { break-inside: avoid; }
  tr { break-inside: avoid; }
}
"""


def h(value: object) -> str:
    """Escape for HTML text and attribute values alike."""
    return html.escape(str(value), quote=True)


def _code(text: str) -> str:
    """Escape, then show `quoted` words as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", h(text))


def _dur(seconds: float | None) -> str:
    """Step durations: tenths of a second below a minute, else the clock form."""
    if seconds is None:
        return ""
    return _seconds(seconds) if seconds < 60 else format_duration(seconds)


def _when(ts: str) -> str:
    """A journal time without milliseconds: `2026-11-25 03:20:00 UTC`."""
    try:
        return fmt_time(datetime.fromisoformat(ts))
    except ValueError:
        return ts


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _status_pill(status: StepStatus, rehearsed: bool = False, label: str | None = None) -> str:
    cls = {
        StepStatus.succeeded: "ok", StepStatus.failed: "bad", StepStatus.interrupted: "warn",
        StepStatus.skipped: "muted", StepStatus.running: "info", StepStatus.awaiting: "info",
    }.get(status, "muted")
    label = (label or f"{status.icon} {status.value}") + (" (rehearsed)" if rehearsed else "")
    return f'<span class="pill {cls}">{h(label)}</span>'


def _verdict_class(verdict: str) -> str:
    return {"met": "good", "missed": "bad", "impossible": "bad"}.get(verdict, "open")


def _span_text(seconds: float) -> str:
    return _seconds(seconds) if seconds < 60 else short_duration(seconds)


def _seconds(seconds: float) -> str:
    """`0.3 s`, `4.2 s`, `48 s`."""
    return f"{seconds:.1f} s" if seconds < 10 else f"{round(seconds)} s"


def _tplus(st: RunState, ts: str) -> str:
    origin = st.incident_start or st.started_at
    if origin is None:
        return ""
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return ""
    return "T+" + format_duration((dt - origin).total_seconds())


# ---- charts ------------------------------------------------------------------------------------------

_NICE_STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800,
               21600, 43200, 86400]


def tick_step(domain_s: float, max_ticks: int = 10) -> float:
    """The smallest round step that puts at most `max_ticks` ticks on the axis."""
    for step in _NICE_STEPS:
        if domain_s / step <= max_ticks:
            return step
    return math.ceil(domain_s / max_ticks / 86400) * 86400


def tick_label(t: float, step: float) -> str:
    """Minutes: `15`, `30` for minute steps; `1:30` (minutes:seconds) for finer ones."""
    if step >= 60:
        return f"{t / 60:g}"
    m, s = divmod(round(t, 1), 60)
    return f"{int(m)}:{int(s):02d}" if float(s).is_integer() else f"{int(m)}:{s:04.1f}"


def _rto_meter(rto: RtoFacts) -> str:
    """A bar: the RTO achieved (or so far) against the target."""
    if rto.achieved_s is None or rto.target_s <= 0:
        return ""
    w, x0, x1 = 1000, 10, 990
    full = max(rto.target_s, rto.achieved_s) * 1.02
    def x(t: float) -> float:
        return x0 + (x1 - x0) * t / full
    colour = {"met": "#2f855a", "missed": "#c53030", "impossible": "#c53030"}.get(rto.verdict, "#2b6cb0")
    tx = x(rto.target_s)
    anchor = "end" if tx > w - 160 else "start"
    dx = -6 if anchor == "end" else 6
    return (
        f'<svg class="meter" viewBox="0 0 {w} 58" role="img" '
        f'aria-label="RTO {h(format_duration(rto.achieved_s))} of {h(format_duration(rto.target_s))}">'
        f'<rect x="{x0}" y="22" width="{x1 - x0}" height="18" rx="3" fill="#edf0f4"/>'
        f'<rect x="{x0}" y="22" width="{max(2.0, x(rto.achieved_s) - x0):.1f}" height="18" rx="3" fill="{colour}"/>'
        f'<line x1="{tx:.1f}" y1="14" x2="{tx:.1f}" y2="48" stroke="{TARGET_COLOUR}" stroke-width="2.5"/>'
        f'<text x="{tx + dx:.1f}" y="13" font-size="12.5" text-anchor="{anchor}" fill="{TARGET_COLOUR}" '
        f'font-weight="600">target {h(format_duration(rto.target_s))}</text>'
        f'<text x="{x0}" y="56" font-size="12.5" fill="#4a5568">0</text>'
        f'<text x="{x0 + 2}" y="13" font-size="12.5" fill="{colour}" font-weight="600">'
        f'{"achieved" if rto.restored else "so far"} {h(format_duration(rto.achieved_s))}</text>'
        "</svg>"
    )


def gantt_svg(st: RunState, titles: dict[str, str], rto: RtoFacts, now: datetime) -> str:
    """The steps on a time axis from the incident start: one bar per step that was reached, coloured by
    outcome, with vertical lines at the RTO target, at "service restored" and at "run closed"."""
    spans = {s.step_id: s for s in step_spans(st, now)}
    origin = st.incident_start or st.started_at or now

    def off(dt: datetime) -> float:
        return (dt - origin).total_seconds()

    restored_s = rto.achieved_s if rto.restored else None
    closed_s = rto.closed_after_s
    run_start_s = off(st.started_at) if st.started_at else 0.0
    latest = max([off(s.end) for s in spans.values()] + [v for v in (restored_s, closed_s, run_start_s) if v] + [1.0])
    target = rto.target_s
    target_in = target > 0 and target <= latest * 3
    domain = (max(latest, target) if target_in else latest) * 1.04

    w, x0, x1 = 1000, 272, 984  # step labels on the left of x0
    head, row_h, bar_h, axis_h = 50, 26, 15, 44
    n = len(st.order)
    plot_top, plot_bottom = head, head + row_h * max(n, 1)
    total_h = plot_bottom + axis_h
    pw = x1 - x0

    def x(t: float) -> float:
        return x0 + pw * max(0.0, min(t, domain)) / domain

    out: list[str] = [
        f'<svg class="gantt" viewBox="0 0 {w} {total_h}" role="img" '
        f'aria-label="Timeline of the steps from the incident start, against the RTO target">',
        '<defs><pattern id="hatch" patternUnits="userSpaceOnUse" width="6" height="6" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#cbd2db"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#7b8794" stroke-width="2.2"/></pattern></defs>',
    ]
    # zebra rows
    for i in range(n):
        if i % 2 == 0:
            out.append(f'<rect x="0" y="{plot_top + i * row_h}" width="{w}" height="{row_h}" fill="#f7f9fb"/>')
    # before the run started (detection, decision to recover)
    if run_start_s > 0:
        bx = x(run_start_s)
        out.append(f'<rect x="{x0}" y="{plot_top}" width="{bx - x0:.1f}" height="{plot_bottom - plot_top}" '
                   f'fill="#e9edf2" opacity="0.85"><title>From the incident start to the start of the run: '
                   f'{h(format_duration(run_start_s))}</title></rect>')
        if bx - x0 > 200:
            out.append(f'<text x="{x0 + 6}" y="{plot_bottom - 7}" font-size="11.5" fill="#5a6678">'
                       f'before the run started ({h(format_duration(run_start_s))})</text>')
        elif bx - x0 > 90:
            out.append(f'<text x="{x0 + 6}" y="{plot_bottom - 21}" font-size="11.5" fill="#5a6678">before the run'
                       f'<tspan x="{x0 + 6}" dy="14">started ({h(format_duration(run_start_s))})</tspan></text>')
    # who drove when: bands behind the rows, drawn only when the run changed hands (a resume or a hand-over)
    drivers = driver_spans(st)
    if len(drivers) > 1:
        for i, d in enumerate(drivers):
            bx0, bx1 = x(off(d.start)), x(off(d.end or now))
            fill = DRIVER_BANDS[i % len(DRIVER_BANDS)]
            label = f"{d.user}@{d.host} ({d.how})"
            out.append(f'<rect class="driver-band" data-driver="{h(d.user)}@{h(d.host)}" x="{bx0:.1f}" '
                       f'y="{plot_top}" width="{max(1.0, bx1 - bx0):.1f}" height="{plot_bottom - plot_top}" '
                       f'fill="{fill}" opacity="0.55"><title>Driven by {h(label)}: {h(fmt_time(d.start))} to '
                       f'{h(fmt_time(d.end) if d.end else "now")}</title></rect>')
            out.append(f'<line x1="{bx0:.1f}" y1="{plot_top}" x2="{bx0:.1f}" y2="{plot_bottom}" stroke="#8a6d00" '
                       f'stroke-width="1" stroke-dasharray="3 3"/>')
            if bx1 - bx0 > 60:
                out.append(f'<text x="{bx0 + 4:.1f}" y="{plot_top + 11}" font-size="10.5" fill="#6b5400">'
                           f'{h(_clip(f"{d.user}@{d.host}", max(6, int((bx1 - bx0) / 7))))}</text>')
    # ticks and grid
    step = tick_step(domain)
    k = 0
    while k * step <= domain + 1e-9:
        t = k * step
        tx = x(t)
        out.append(f'<line x1="{tx:.1f}" y1="{plot_top}" x2="{tx:.1f}" y2="{plot_bottom + 5}" '
                   f'stroke="#cfd6de" stroke-width="1"/>')
        out.append(f'<text x="{tx:.1f}" y="{plot_bottom + 18}" font-size="12" text-anchor="middle" '
                   f'fill="#4a5568">{h(tick_label(t, step))}</text>')
        k += 1
    unit = "minutes" if step >= 60 else "minutes:seconds"
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{plot_bottom + 36}" font-size="12" text-anchor="middle" '
               f'fill="#4a5568">{unit} since the incident start</text>')
    out.append(f'<line x1="{x0}" y1="{plot_bottom}" x2="{x1}" y2="{plot_bottom}" stroke="#4a5568" stroke-width="1"/>')
    # rows: label and bar
    for i, sid in enumerate(st.order):
        y = plot_top + i * row_h
        title = titles.get(sid, sid)
        out.append(f'<text x="8" y="{y + row_h / 2 + 4.5:.1f}" font-size="12.5" fill="#1a202c">'
                   f'<tspan fill="#5a6678">{i + 1}</tspan>  {h(_clip(title, 36))}<title>{h(title)}</title></text>')
        span = spans.get(sid)
        if span is None:
            out.append(f'<text x="{x0 + 4}" y="{y + row_h / 2 + 4:.1f}" font-size="11.5" fill="#8a94a3" '
                       f'font-style="italic">not reached</text>')
            continue
        out.append(_bar(span, sid, title, x, off, y + (row_h - bar_h) / 2, bar_h, x0, x1))
    # vertical markers, labels stacked in the header so they never collide
    marks: list[tuple[float, str, str, str]] = []
    if target_in:
        marks.append((target, f"RTO target {format_duration(target)}", TARGET_COLOUR, "6 4"))
    if restored_s is not None:
        marks.append((restored_s, f"service restored {format_duration(restored_s)}", RESTORED_COLOUR, ""))
    if closed_s is not None and (restored_s is None or abs(closed_s - restored_s) > domain / 200):
        marks.append((closed_s, f"run closed {format_duration(closed_s)}", CLOSED_COLOUR, "2 3"))
    first = 0
    if not target_in and target > 0:
        first = 1
        out.append(f'<text x="{x1}" y="13" font-size="12" font-weight="600" fill="{TARGET_COLOUR}" '
                   f'text-anchor="end">RTO target {h(format_duration(target))} is off this scale →</text>')
    for row, (t, text, colour, dash) in enumerate(marks, start=first):
        mx = x(t)
        ly = 13 + row * 14
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{mx:.1f}" y1="{ly + 3}" x2="{mx:.1f}" y2="{plot_bottom}" stroke="{colour}" '
                   f'stroke-width="2"{dash_attr}/>')
        anchor, dx = ("end", -5) if mx > x1 - 200 else ("start", 5)
        out.append(f'<text x="{mx + dx:.1f}" y="{ly}" font-size="12" font-weight="600" fill="{colour}" '
                   f'text-anchor="{anchor}">{h(text)}</text>')
    out.append("</svg>")
    return "".join(out)


def _bar(span: StepSpan, sid: str, title: str, x: Callable[[float], float], off: Callable[[datetime], float],
         y: float, bar_h: float, x0: float, x1: float) -> str:
    sx, ex = x(off(span.start)), x(off(span.end))
    width = max(4.0, ex - sx)
    if sx + width > x1:
        sx = x1 - width
    fill = "url(#hatch)" if span.status == StepStatus.skipped else STATUS_COLOUR.get(span.status, "#a0aec0")
    seconds = (span.end - span.start).total_seconds()
    dur = "skipped" if span.status == StepStatus.skipped else _span_text(seconds) + (" so far" if span.open else "")
    tip = f"{title}: {span.status.value}, {fmt_time(span.start)} → {fmt_time(span.end)} ({dur})"
    stroke = ' stroke="#7b8794" stroke-width="1"' if span.status == StepStatus.skipped else ""
    parts = [
        f'<rect class="bar" data-step="{h(sid)}" data-status="{h(span.status.value)}" x="{sx:.1f}" y="{y:.1f}" '
        f'width="{width:.1f}" height="{bar_h}" rx="2.5" fill="{fill}"{stroke}><title>{h(tip)}</title></rect>'
    ]
    for a_start, a_end in span.failed_attempts:
        ax, bx = x(off(a_start)), x(off(a_end))
        parts.append(f'<rect class="attempt" x="{ax:.1f}" y="{y:.1f}" width="{max(2.0, bx - ax):.1f}" '
                     f'height="{bar_h}" fill="{STATUS_COLOUR[StepStatus.failed]}"><title>failed attempt: '
                     f'{h(fmt_time(a_start))} → {h(fmt_time(a_end))}</title></rect>')
    ty = y + bar_h - 3.5
    colour = "#c53030" if span.status == StepStatus.failed else "#4a5568"
    if sx + width + 70 <= x1:
        parts.append(f'<text x="{sx + width + 5:.1f}" y="{ty:.1f}" font-size="11.5" fill="{colour}">{h(dur)}</text>')
    elif sx - 70 >= x0:
        parts.append(f'<text x="{sx - 5:.1f}" y="{ty:.1f}" font-size="11.5" fill="{colour}" '
                     f'text-anchor="end">{h(dur)}</text>')
    return "".join(parts)


def _legend() -> str:
    items = [
        f'<li><span class="sw" style="background:{STATUS_COLOUR[StepStatus.succeeded]}"></span>succeeded</li>',
        f'<li><span class="sw" style="background:{STATUS_COLOUR[StepStatus.failed]}"></span>failed</li>',
        f'<li><span class="sw" style="background:{STATUS_COLOUR[StepStatus.interrupted]}"></span>interrupted</li>',
        '<li><span class="sw" style="background:repeating-linear-gradient(45deg,#cbd2db 0 3px,#7b8794 3px 5px)">'
        "</span>skipped</li>",
        f'<li><span class="sw" style="background:{STATUS_COLOUR[StepStatus.running]}"></span>still open</li>',
        f'<li><span class="ln" style="border-color:{TARGET_COLOUR};border-top-style:dashed"></span>RTO target</li>',
        f'<li><span class="ln" style="border-color:{RESTORED_COLOUR}"></span>service restored</li>',
        f'<li><span class="ln" style="border-color:{CLOSED_COLOUR};border-top-style:dotted"></span>run closed</li>',
    ]
    return '<ul class="legend">' + "".join(items) + "</ul>"


# ---- sections ----------------------------------------------------------------------------------------


def _header(st: RunState) -> str:
    mode = MODE_BADGE.get(st.mode, st.mode.upper() or "?")
    op = st.operator
    facts = [
        ("Runbook", st.runbook_name),
        ("Run", st.run_id),
        ("Scenario", st.scenario),
        ("Status", st.status),
        ("Operator", f"{op.get('user', '?')}@{op.get('host', '?')}"),
        ("Target", st.target or "—"),
        ("Incident start", fmt_time(st.incident_start)),
        ("Run started", fmt_time(st.started_at)),
        ("Run closed", fmt_time(st.ended_at) if st.ended_at else "still open"),
        ("Data lost at", fmt_time(st.data_lost_at or st.incident_start)),
    ]
    dl = "".join(f"<dt>{h(k)}</dt><dd>{h(v)}</dd>" for k, v in facts)
    closing = f'<p class="callout info"><strong>Closing note:</strong> {h(st.detail)}</p>' if st.detail else ""
    return (
        '<header class="top">'
        '<p class="eyebrow">Recovery report</p>'
        f'<h1>{h(st.runbook_name)} <span class="badge mode-{h(st.mode)}">{h(mode)}</span> '
        f'<span class="badge st-{h(st.status)}">{h(st.status)}</span></h1>'
        f'<dl class="facts">{dl}</dl>{closing}</header>'
    )


def _cards(st: RunState, rto: RtoFacts, rpo: RpoFacts | None) -> str:
    cards: list[str] = []
    vc = _verdict_class(rto.verdict)
    if rto.achieved_s is not None:
        cards.append(
            f'<div class="card {vc}"><div class="label">RTO · {"service restored" if rto.restored else "so far"}</div>'
            f'<div class="big">{h(format_duration(rto.achieved_s))} <span class="of">of '
            f'{h(format_duration(rto.target_s))}</span></div>'
            f'<div class="verdict {vc}">{h(rto.verdict)}</div></div>'
        )
    if rpo is not None and rpo.impossible:
        cards.append('<div class="card bad"><div class="label">RPO · data-loss window</div>'
                     '<div class="big">—</div><div class="verdict bad">impossible</div></div>')
    if rpo is not None and rpo.window_s is not None:
        pc = _verdict_class(rpo.verdict)
        of = f'<span class="of">of {h(format_duration(rpo.target_s))}</span>' if rpo.target_s is not None else ""
        cards.append(
            f'<div class="card {pc}"><div class="label">RPO · data-loss window</div>'
            f'<div class="big">{h(window_text(rpo.window_s))} {of}</div>'
            f'<div class="verdict {pc}">{h(rpo.verdict)}</div></div>'
        )
    counts = step_counts(st)
    parts = [f"{n} {s.value}" for s, n in counts.items() if n]
    bad = counts.get(StepStatus.failed, 0) + counts.get(StepStatus.interrupted, 0)
    sc = "bad" if bad else ("good" if st.status == "completed" else "open")
    cards.append(
        f'<div class="card {sc}"><div class="label">Steps</div>'
        f'<div class="big">{len(st.order)} <span class="of">steps</span></div>'
        f'<div class="muted">{h(", ".join(parts))}</div></div>'
    )
    return '<div class="cards">' + "".join(cards) + "</div>"


def _rto_section(st: RunState, titles: dict[str, str], rto: RtoFacts) -> str:
    out = ['<section id="rto"><h2>RTO</h2>']
    if rto.achieved_s is None:
        out.append("<p>No incident start recorded.</p></section>")
        return "".join(out)
    vc = _verdict_class(rto.verdict)
    rows = [
        ("Target", format_duration(rto.target_s), ""),
        ("Achieved", format_duration(rto.achieved_s) + f" ({rto.state_text})",
         f' — <span class="verdict {vc}">{h(rto.verdict)}</span>'),
    ]
    if rto.restored:
        where = titles.get(rto.restored_step, rto.restored_step) if rto.restored_step else "end of the run"
        rows.append(("Service restored", f"{fmt_time(rto.restored_at)} — at the end of step: {where}", ""))
    if rto.protected_at is not None:
        after = f" ({format_duration(rto.protected_after_s)} after the incident start)" \
            if rto.protected_after_s is not None else ""
        where = titles.get(rto.protected_step or "", rto.protected_step or "")
        rows.append(("Protection restored", f"{fmt_time(rto.protected_at)}{after} — archiving and fresh backups of "
                                            f"the recovered server, step: {where}", ""))
    if rto.closed_at and rto.closed_after_s is not None:
        rows.append(("Run closed", f"{fmt_time(rto.closed_at)} ({format_duration(rto.closed_after_s)} after the "
                                   "incident start)", ""))
    out.append('<table class="kv">')
    out += [f"<tr><th>{h(k)}</th><td>{h(v)}{extra}</td></tr>" for k, v, extra in rows]
    out.append("</table>")
    out.append(_rto_meter(rto))
    if rto.problem:
        out.append(f'<p class="callout bad"><strong>The RTO cannot be trusted.</strong> {h(rto.problem)}.</p>')
    if rto.rehearsal:
        out.append('<p class="callout info">This was a rehearsal: commands were shown, not run; durations are '
                   "the time the team took.</p>")
    out.append("</section>")
    return "".join(out)


def _rpo_section(rpo: RpoFacts) -> str:
    out = ['<section id="rpo"><h2>RPO</h2><table class="kv">']
    for label, value in rpo_rows(rpo):
        extra = ""
        if label == WINDOW_LABEL and rpo.verdict != "unknown":
            extra = f' — <span class="verdict {_verdict_class(rpo.verdict)}">{h(rpo.verdict)}</span>'
        out.append(f"<tr><th>{h(label)}</th><td>{h(value)}{extra}</td></tr>")
    out.append("</table>")
    if rpo.impossible:
        out.append(f'<p class="callout bad"><strong>RPO: impossible, not met.</strong> {h(rpo.problem or "")}.</p>')
    elif rpo.problem:
        out.append(f'<p class="callout bad">The RPO could not be measured: {h(rpo.problem)}.</p>')
    if rpo.logical_warning:
        out.append(f'<p class="callout"><strong>Logical backup.</strong> {_code(rpo.logical_warning)}</p>')
    out.append("</section>")
    return "".join(out)


def _steps_table(st: RunState, titles: dict[str, str]) -> str:
    out = ['<section id="steps"><h2>Steps</h2><table><thead><tr><th>#</th><th>Step</th><th>Outcome</th>'
           "<th>Exit</th><th>Attempts</th><th>Duration</th><th>Detail</th></tr></thead><tbody>"]
    for i, sid in enumerate(st.order, start=1):
        s = st.steps[sid]
        title = titles.get(sid, sid)
        ident = f' <span class="mono muted">{h(sid)}</span>' if title != sid else ""
        out.append(
            f'<tr><td class="num">{i}</td><td>{h(title)}{ident}</td><td>{_status_pill(s.status, s.rehearsed, outcome_text(s))}</td>'
            f'<td class="num">{"" if s.exit_code is None else h(s.exit_code)}</td>'
            f'<td class="num">{h(s.attempt or "")}</td>'
            f'<td class="num">{h(_dur(s.duration_s))}</td>'
            f'<td class="wrap">{h(outcome_detail(s))}</td></tr>'
        )
    out.append("</tbody></table></section>")
    return "".join(out)


def _checks_table(st: RunState, titles: dict[str, str]) -> str:
    checks = [(sid, c) for sid in st.order for c in st.steps[sid].checks]
    if not checks:
        return ""
    out = ['<section id="checks"><h2>Verification checks</h2><table><thead><tr><th>Step</th><th>Check</th>'
           "<th>Status</th><th>Hint</th></tr></thead><tbody>"]
    for sid, c in checks:
        status = str(c.get("status") or "")
        cls = CHECK_CLASS.get(status.lower(), "muted")
        out.append(f"<tr><td>{h(titles.get(sid, sid))}</td><td>{h(c.get('name') or '')}</td>"
                   f'<td><span class="pill {cls}">{h(status)}</span></td>'
                   f'<td class="wrap">{h(c.get("hint") or "")}</td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


def _notes(st: RunState, titles: dict[str, str]) -> str:
    if not st.notes:
        return ""
    out = ['<section id="notes"><h2>Notes</h2><table><thead><tr><th>Time</th><th>Step</th><th>Note</th></tr>'
           "</thead><tbody>"]
    for n in st.notes:
        step = titles.get(n["step"], n["step"]) if n.get("step") else ""
        out.append(f'<tr><td class="nowrap">{h(_tplus(st, n["ts"]))}<br><span class="muted">{h(_when(n["ts"]))}</span>'
                   f'</td><td>{h(step)}</td><td class="pre">{h(n["text"])}</td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


def _skips_and_failures(st: RunState, titles: dict[str, str]) -> str:
    out: list[str] = []
    skipped = [st.steps[s] for s in st.order if st.steps[s].status == StepStatus.skipped]
    if skipped:
        out.append('<section id="skipped"><h2>Skipped steps</h2><ul class="plain">')
        out += [f"<li><strong>{h(titles.get(s.id, s.id))}</strong> — reason: {h(s.detail)}</li>" for s in skipped]
        out.append("</ul></section>")
    failed = [st.steps[s] for s in st.order if st.steps[s].status in (StepStatus.failed, StepStatus.interrupted)]
    if failed:
        out.append('<section id="failed"><h2>Failed or interrupted steps</h2><ul class="plain">')
        out += [f"<li><strong>{h(titles.get(s.id, s.id))}</strong>: {h(s.status.value)} — {h(s.detail)}</li>"
                for s in failed]
        out.append("</ul></section>")
    return "".join(out)


def _people(st: RunState) -> str:
    """Who drove when, who approved what (and what was refused); watchers are not recorded."""
    out = ['<section id="people"><h2>Drivers and approvals</h2><table class="timeline"><thead><tr><th>From</th>'
           "<th>To</th><th>Driver</th><th>How</th></tr></thead><tbody>"]
    for d in driver_spans(st):
        out.append(f'<tr class="driver"><td class="nowrap mono">{h(fmt_time(d.start))}</td><td class="nowrap mono">'
                   f'{h(fmt_time(d.end) if d.end else "still driving")}</td><td>{h(d.user)}@{h(d.host)}</td>'
                   f"<td>{h(d.how)}</td></tr>")
    out.append("</tbody></table>")
    ok = approvals(st)
    if ok:
        out.append('<table class="timeline"><thead><tr><th>Step</th><th>Approved by</th><th>At</th>'
                   "<th>Command hash</th></tr></thead><tbody>")
        out += [f'<tr class="approval"><td class="mono">{h(a.step)}</td><td>{h(a.approver)}</td>'
                f'<td class="nowrap mono">{h(_when(a.at))}</td><td class="mono">{h(a.command_hash[:16])}</td></tr>'
                for a in ok]
        out.append("</tbody></table>")
    refused = refusals(st)
    if refused:
        out.append('<ul class="plain">')
        out += [f"<li>{h(_when(str(e['ts'])))}: {h(event_text(e))} — {h(event_detail(e))}</li>" for e in refused]
        out.append("</ul>")
    out.append(f'<p class="muted">Watchers: {h(WATCHERS_TEXT)}.</p></section>')
    return "".join(out)


def _timeline_table(st: RunState) -> str:
    out = ['<section id="timeline"><h2>Timeline</h2><table class="timeline"><thead><tr><th>Since incident</th>'
           "<th>Time</th><th>Step</th><th>Event</th><th>Detail</th></tr></thead><tbody>"]
    for e in st.events:
        ts = str(e.get("ts", ""))
        out.append(f'<tr><td class="nowrap mono">{h(_tplus(st, ts))}</td><td class="nowrap mono">{h(_when(ts))}</td>'
                   f'<td class="mono nowrap">{h(e.get("step") or "")}</td><td class="nowrap">{h(event_text(e))}</td>'
                   f'<td class="wrap">{h(event_detail(e))}</td></tr>')
    out.append("</tbody></table></section>")
    return "".join(out)


def _debrief_section(d: Debrief) -> str:
    """A game-day run's debrief: the same labelled lines as the Markdown report and the screens."""
    from runbook.gameday import debrief_lines

    out = ['<section id="debrief"><h2>Game day debrief</h2>',
           f'<p class="callout"><strong>Score: {d.score}/100</strong> (the rules: docs/game-days.md)</p>',
           '<table class="kv">']
    for line in debrief_lines(d):
        cls = ' class="bad"' if line.alarm else ""
        out.append(f"<tr><th>{h(line.label)}</th><td{cls}>{h(line.text)}</td></tr>")
    out.append("</table></section>")
    return "".join(out)


def render_html(st: RunState, titles: dict[str, str], now: datetime, debrief: Debrief | None = None) -> str:
    """The whole report as one HTML document; `debrief` as in `runbook.report.render_markdown`."""
    rto = rto_facts(st, now)
    rpo = rpo_facts(st)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Recovery report · {h(st.runbook_name)} · {h(st.run_id)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        _header(st),
        _cards(st, rto, rpo),
        _rto_section(st, titles, rto),
        _rpo_section(rpo) if rpo is not None else "",
        _debrief_section(debrief) if debrief is not None else "",
        '<section id="chart"><h2>Timeline chart</h2><figure>',
        gantt_svg(st, titles, rto, now),
        _legend(),
        "</figure></section>",
        _steps_table(st, titles),
        _checks_table(st, titles),
        _notes(st, titles),
        _skips_and_failures(st, titles),
        _people(st),
        _timeline_table(st),
    ]
    if st.warnings:
        parts.append('<section id="warnings"><h2>Journal warnings</h2><ul class="plain">')
        parts += [f"<li>{h(w)}</li>" for w in st.warnings]
        parts.append("</ul></section>")
    parts.append(
        f"<footer>Journal: {len(st.events)} events, hash chain verified. Report made {h(fmt_time(now))} "
        f"by runbook {h(__version__)} from the journal alone; secrets were masked when it was written.</footer>"
    )
    parts.append("</main></body></html>\n")
    return "\n".join(p for p in parts if p)

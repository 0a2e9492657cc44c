"""Durations as people write them in a runbook: `90s`, `5m`, `2h`, `1h30m`, `1d`."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> timedelta:
    """Parse `2h`, `5m`, `1h30m`, `45s`, `1.5h`, or a bare number of seconds.

    Raises ValueError with a message that says what is accepted.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 5m, 2h, 1h30m)")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"{text!r} is negative; a duration must be 0 or more")
        return timedelta(seconds=float(text))
    s = str(text).strip().lower()
    if not s:
        raise ValueError("empty duration (use e.g. 90s, 5m, 2h, 1h30m)")
    pos = 0
    total = 0.0
    for m in _PART.finditer(s):
        if m.start() != pos and s[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 5m, 2h, 1h30m)")
    return timedelta(seconds=total)


def format_duration(td: timedelta | float | None) -> str:
    """`0:42:10` style for clocks; negative values get a leading minus."""
    if td is None:
        return "?"
    secs = td.total_seconds() if isinstance(td, timedelta) else float(td)
    sign = "-" if secs < 0 else ""
    secs = abs(int(round(secs)))
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    return f"{sign}{h}:{m:02d}:{s:02d}"


def short_duration(td: timedelta | float | None) -> str:
    """Compact form for step lists: `45s`, `3m`, `1h05m`."""
    if td is None:
        return ""
    secs = td.total_seconds() if isinstance(td, timedelta) else float(td)
    secs = max(0, int(round(secs)))
    if secs < 60:
        return f"{secs}s"
    if secs < 3600:
        return f"{round(secs / 60)}m"
    h, rem = divmod(secs, 3600)
    return f"{h}h{rem // 60:02d}m"


def rough_duration(seconds: float) -> str:
    """An age or a span for people, at the precision that matters: `45 s`, `12 min`, `3.5 h`, `2.1 days`."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"

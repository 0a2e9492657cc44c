"""Retention as a pure function: which backups to keep and which to delete, given "now".

Keep, per series (one database, or the attachments): the newest `keep_last` backups, every backup younger
than `keep_days` days, and — whatever its age — the newest backup at `readable` or better, so that newer
backups which failed or were never verified can never cost the last good one (the plan's
`find -mtime +7 -exec rm` can). Everything else is deleted. The caller applies it only after a new backup
succeeded (`backup`) or on purpose (`prune`); this module never touches a repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from steps.repository.manifest import Level


@dataclass(frozen=True)
class Item:
    id: str
    time: datetime
    level: Level


@dataclass(frozen=True)
class Plan:
    keep: dict[str, str] = field(default_factory=dict)  # id -> why it is kept
    delete: dict[str, str] = field(default_factory=dict)  # id -> why it goes


def plan(items: Sequence[Item], *, now: datetime, keep_last: int, keep_days: float,
         min_good: Level = Level.readable) -> Plan:
    if keep_last < 1:
        raise ValueError("keep_last must be at least 1")
    ordered = sorted(items, key=lambda i: (i.time, i.id), reverse=True)
    horizon = now - timedelta(days=keep_days)
    newest_good = next((i.id for i in ordered if i.level >= min_good), None)
    keep: dict[str, str] = {}
    delete: dict[str, str] = {}
    for n, item in enumerate(ordered):
        reasons = []
        if item.id == newest_good:
            reasons.append(f"the newest backup at {min_good.name} or better")
        if n < keep_last:
            reasons.append(f"among the newest {keep_last}")
        if item.time > horizon:
            reasons.append(f"younger than {keep_days:g} days")
        if reasons:
            keep[item.id] = "; ".join(reasons)
        else:
            delete[item.id] = f"older than {keep_days:g} days and not among the newest {keep_last}"
    return Plan(keep=keep, delete=delete)

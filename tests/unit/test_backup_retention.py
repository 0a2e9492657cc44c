"""Retention: a pure function, checked by examples and by properties over random histories.

The plan's `find -mtime +7 -exec rm` deletes the only good backup when the newer ones failed. Here:
keep the newest N, everything younger than D days, and always the newest backup at readable or better.
The simulation runs the daily job over random histories (days where the backup failed, was published but
never verified, or was good) with retention after each success, and checks that the newest good backup
always survives.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from steps.repository.manifest import Level
from steps.repository.retention import Item, plan

NOW = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


def item(days_ago: float, level: Level = Level.readable, name: str | None = None) -> Item:
    t = NOW - timedelta(days=days_ago)
    return Item(name or t.strftime("%Y%m%dT%H%M%SZ"), t, level)


def test_keeps_the_newest_n_and_the_young_ones() -> None:
    items = [item(d) for d in range(20)]
    p = plan(items, now=NOW, keep_last=3, keep_days=7)
    kept = sorted(p.keep, reverse=True)
    assert kept == sorted((i.id for i in items[:7]), reverse=True)  # 0..6 days old are younger than 7 days
    assert set(p.delete) == {i.id for i in items[7:]}
    p = plan(items, now=NOW, keep_last=10, keep_days=2)
    assert set(p.keep) == {i.id for i in items[:10]}


def test_the_last_good_backup_survives_when_every_newer_one_failed() -> None:
    good = item(30, Level.readable)
    bad = [item(d, Level.none) for d in range(1, 10)] + [item(d, Level.checksummed) for d in (0.5, 0.2)]
    p = plan([good, *bad], now=NOW, keep_last=2, keep_days=3)
    assert good.id in p.keep and "newest backup at readable" in p.keep[good.id]
    assert item(9, Level.none).id in p.delete


def test_restored_counts_as_good_and_ties_break_by_id() -> None:
    a = item(40, Level.restored, "a")
    b = item(50, Level.readable, "b")
    p = plan([a, b], now=NOW, keep_last=1, keep_days=1)
    assert set(p.keep) == {"a"} and set(p.delete) == {"b"}


levels = st.sampled_from([Level.none, Level.checksummed, Level.readable, Level.restored])
histories = st.lists(st.tuples(st.floats(min_value=0, max_value=400, allow_nan=False), levels), max_size=40)


@settings(max_examples=300, deadline=None)
@given(histories, st.integers(min_value=1, max_value=10), st.floats(min_value=0, max_value=30))
def test_plan_properties(history: list[tuple[float, Level]], keep_last: int, keep_days: float) -> None:
    items = [item(d, lv, f"b{i:03d}") for i, (d, lv) in enumerate(history)]
    p = plan(items, now=NOW, keep_last=keep_last, keep_days=keep_days)
    ids = {i.id for i in items}
    assert set(p.keep) | set(p.delete) == ids and not set(p.keep) & set(p.delete)
    ordered = sorted(items, key=lambda i: (i.time, i.id), reverse=True)
    good = [i for i in ordered if i.level >= Level.readable]
    if good:
        assert good[0].id in p.keep
    for n, i in enumerate(ordered):
        young = i.time > NOW - timedelta(days=keep_days)
        must_keep = n < keep_last or young or (good and i.id == good[0].id)
        assert (i.id in p.keep) == bool(must_keep), (i, n)


outcomes = st.sampled_from(["failed", "unverified", "good"])


@settings(max_examples=300, deadline=None)
@given(st.lists(outcomes, min_size=1, max_size=60), st.integers(min_value=1, max_value=7),
       st.integers(min_value=0, max_value=7), st.integers(min_value=0, max_value=60))
def test_daily_job_never_loses_the_last_good_backup(days: list[str], keep_last: int, keep_days: int,
                                                    failing_tail: int) -> None:
    """Random histories whose last days all fail. Each day the backup runs (local retention only after a
    success) and then `prune` runs on the off-site copy whatever the backup did (its own timer)."""
    days = days + ["failed"] * failing_tail
    start = NOW - timedelta(days=len(days))
    local: dict[str, Item] = {}
    offsite: dict[str, Item] = {}
    newest_good: str | None = None
    published = 0
    for n, outcome in enumerate(days):
        now = start + timedelta(days=n, minutes=n)
        if outcome != "failed":  # failed: no manifest, so not a backup, and no local retention
            bid = f"d{n:04d}"
            level = Level.readable if outcome == "good" else Level.checksummed
            local[bid] = offsite[bid] = Item(bid, now, level)
            published += 1
            if level >= Level.readable:
                newest_good = bid
                for gone in plan(list(local.values()), now=now, keep_last=keep_last, keep_days=keep_days).delete:
                    del local[gone]
        for gone in plan(list(offsite.values()), now=now + timedelta(hours=1), keep_last=keep_last,
                         keep_days=keep_days).delete:
            del offsite[gone]
        if newest_good is not None:
            assert newest_good in local and newest_good in offsite, (n, newest_good)
        assert len(local) >= min(keep_last, published) and len(offsite) >= min(keep_last, published)

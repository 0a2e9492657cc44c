"""The catalogue's choice of a usable copy: what a recovery restores, decided without a repository.

`copy_level` turns verification records into a copy's level (a failed check demotes it until a later one
passes); `pick` and `pick_base` choose the newest backup with a usable copy, local before s3.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from steps.repository.catalogue import Copy, Entry, copy_level, pick, pick_base, usable_copies
from steps.repository.manifest import Check, Level, Tool, VerificationRecord
from steps.repository.store import Store

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
SHA = "a" * 64


def record(level: str, passed: bool, hours: float, sha: str = SHA) -> VerificationRecord:
    return VerificationRecord(backup_id="b", level=level, passed=passed, checked_at=T0 + timedelta(hours=hours),
                              repository="local", manifest_sha256=sha,
                              checks=[Check(name="x", status="ok" if passed else "failed")], tool=Tool(version="t"))


def copy(level: Level, name: str = "local") -> Copy:
    return Copy(store=cast(Store, None), prefix=f"{name}/p/", manifest_sha256=SHA, level=level, records=[], keys=[])


def entry(backup_id: str, hours: float, *, db: str = "app", kind: Any = "logical", cluster: str = "1",
          **copies: Level) -> Entry:
    return Entry(kind=kind, backup_id=backup_id, db=db if kind == "logical" else "", cluster=cluster,
                 time=T0 + timedelta(hours=hours), size_bytes=1, manifest=cast(Any, None),
                 copies={n: copy(lv, n) for n, lv in copies.items()})


def test_a_copy_is_at_the_highest_level_that_passed() -> None:
    recs = [record("checksummed", True, 1), record("readable", True, 2), record("restored", True, 3)]
    assert copy_level(recs, SHA) == Level.restored
    assert copy_level([], SHA) == Level.none


def test_a_failed_check_demotes_until_a_later_one_passes() -> None:
    recs = [record("restored", True, 1), record("restored", False, 2)]
    assert copy_level(recs, SHA) == Level.none
    assert copy_level([*recs, record("readable", True, 3)], SHA) == Level.readable


def test_records_for_another_manifest_vouch_for_nothing() -> None:
    assert copy_level([record("restored", True, 1, sha="b" * 64)], SHA) == Level.none
    # ...and do not demote this manifest either
    assert copy_level([record("readable", True, 1), record("readable", False, 2, sha="b" * 64)], SHA) == Level.readable


def test_pick_takes_the_newest_backup_with_a_readable_copy_of_that_database() -> None:
    entries = [  # newest first, as the catalogue keeps them
        entry("b4", 4, db="other", local=Level.restored),
        entry("b3", 3, local=Level.checksummed),  # never read back: not good enough
        entry("b2", 2, local=Level.none, s3=Level.readable),
        entry("b1", 1, local=Level.restored),
    ]
    chosen = pick(entries, "app")
    assert chosen is not None and chosen.backup_id == "b2"
    assert [c.prefix for c in usable_copies(chosen)] == ["s3/p/"]
    restored = pick(entries, "app", min_level=Level.restored)
    assert restored is not None and restored.backup_id == "b1"
    assert pick(entries, "missing") is None


def test_pick_honours_the_source_and_prefers_local_copies() -> None:
    entries = [entry("b2", 2, s3=Level.readable), entry("b1", 1, local=Level.readable, s3=Level.readable)]
    only_local = pick(entries, "app", source="local")
    assert only_local is not None and only_local.backup_id == "b1"
    assert [c.prefix for c in usable_copies(entries[1])] == ["local/p/", "s3/p/"]
    assert usable_copies(entries[1], source="s3")[0].prefix == "s3/p/"


def test_pick_base_needs_a_backup_that_ended_before_the_target() -> None:
    entries = [
        entry("x3", 3, kind="base", local=Level.readable),
        entry("x2", 2, kind="base", cluster="2", local=Level.readable),
        entry("x1", 1, kind="base", local=Level.checksummed),
        entry("x0", 0, kind="base", local=Level.readable),
    ]
    newest = pick_base(entries)
    assert newest is not None and newest.backup_id == "x3"
    before = pick_base(entries, before=T0 + timedelta(hours=3))  # x3 ended exactly then: not before it
    assert before is not None and before.backup_id == "x2"
    same_cluster = pick_base(entries, before=T0 + timedelta(hours=3), cluster="1")
    assert same_cluster is not None and same_cluster.backup_id == "x0"  # x1 is only checksummed
    assert pick_base(entries, before=T0) is None


def test_pitr_never_starts_from_a_base_backup_of_another_cluster_than_expected() -> None:
    import pytest

    from steps.pitr.args import Args
    from steps.pitr.backup import choose_backup
    from steps.pitr.errors import PitrError

    entries = [entry("new", 2, kind="base", cluster="222", local=Level.readable),
               entry("old", 1, kind="base", cluster="111", local=Level.readable)]
    target = (T0 + timedelta(hours=3)).isoformat()
    args = Args(config="/c.yaml", pgdata="/x", target=target, cluster="111")
    assert choose_backup(entries, args).backup_id == "old"  # not the newer one of cluster 222
    with pytest.raises(PitrError, match="no base backup of cluster 333.*holds base backups of 111, 222 only"):
        choose_backup(entries, Args(config="/c.yaml", pgdata="/x", target=target, cluster="333"))
    assert choose_backup(entries, Args(config="/c.yaml", pgdata="/x", target=target, cluster="")).backup_id == "new"

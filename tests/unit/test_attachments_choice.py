"""restore-attachments: which snapshot is restored for a recovery point, and a restore that never writes through
a symbolic link planted at the destination or beside it."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from runbook.errors import RunbookError
from steps.backup.attachments import AttachmentsError, capture, extract
from steps.restore_attachments import Args, choose, describe_distance

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


@dataclass
class Snap:
    backup_id: str
    time: datetime


SNAPS = [Snap("run-0200", T0), Snap("run-0300", T0 + timedelta(hours=1)), Snap("run-0400", T0 + timedelta(hours=2))]


def test_the_newest_snapshot_not_after_the_recovery_point() -> None:
    at = T0 + timedelta(hours=1, minutes=30)
    c = choose(SNAPS, at=at)
    assert c is not None and c.entry.backup_id == "run-0300" and c.how == "before" and c.warning is None
    assert c.distance_s(at) == 1800
    assert describe_distance(c.entry.time, at) == "30 min before the recovery point"


def test_a_snapshot_exactly_at_the_recovery_point_is_taken() -> None:
    at = T0 + timedelta(hours=1)
    c = choose(list(reversed(SNAPS)), at=at)
    assert c is not None and c.entry.backup_id == "run-0300" and c.distance_s(at) == 0
    assert describe_distance(c.entry.time, at) == "taken at the recovery point"


def test_every_snapshot_after_the_recovery_point_gives_the_nearest_with_a_warning() -> None:
    at = T0 - timedelta(seconds=42)
    c = choose(SNAPS, at=at)
    assert c is not None and c.entry.backup_id == "run-0200" and c.how == "after"
    assert c.warning is not None and "newer than the recovery point" in c.warning and "42 s after" in c.warning
    assert c.distance_s(at) == -42


def test_no_snapshot_at_all() -> None:
    assert choose([], at=T0) is None
    assert choose([]) is None
    assert choose([], backup_id="run-0200") is None


def test_without_a_time_the_newest() -> None:
    c = choose(SNAPS)
    assert c is not None and c.entry.backup_id == "run-0400" and c.how == "newest"


def test_the_database_s_backup_run_wins_over_time() -> None:
    # the same run's snapshot is taken after the dumps: seconds after the dump's snapshot time, still the pair
    at = T0 + timedelta(hours=1) - timedelta(seconds=3)
    c = choose(SNAPS, at=at, backup_id="run-0300")
    assert c is not None and c.entry.backup_id == "run-0300" and c.how == "backup run" and c.warning is None
    assert describe_distance(c.entry.time, at) == "3 s after the recovery point"
    assert describe_distance(at + timedelta(milliseconds=500), at) == "less than 1 s after the recovery point"
    assert describe_distance(at - timedelta(hours=3), at) == "3.0 h before the recovery point"


def test_a_backup_run_without_attachments_falls_back_to_time_with_a_warning() -> None:
    at = T0 + timedelta(hours=2, minutes=5)
    c = choose(SNAPS, at=at, backup_id="run-0500")
    assert c is not None and c.entry.backup_id == "run-0400" and c.how == "before"
    assert c.warning is not None and "run-0500 has no attachments snapshot" in c.warning
    assert choose(SNAPS, backup_id="run-0500") is None  # without a time: nothing to fall back on


@pytest.mark.parametrize("bad", ["2026-11-25T03:10:00", "yesterday", "2026-13-01T00:00:00Z"])
def test_a_recovery_point_without_a_zone_or_unreadable_is_bad_arguments(bad: str) -> None:
    with pytest.raises(ValidationError, match="time zone|ISO 8601"):
        Args.model_validate({"dest": "/x", "at": bad})
    assert Args.model_validate({"dest": "/x", "at": "", "backup_id": " "}).at is None  # an empty template value
    assert Args.model_validate({"dest": "/x", "at": "2026-11-25T03:10:00Z"}).at == "2026-11-25T03:10:00Z"


# ---- never through a symbolic link --------------------------------------------------------------------------------

def _archive(tmp_path: Path) -> tuple[Path, list]:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    cap = capture(src, tmp_path / "a.tar")
    return tmp_path / "a.tar", cap.files


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "b.txt").write_text("precious")
    (victim / "a.txt").write_text("precious")
    return victim


def test_a_symlink_at_the_destination_is_refused(tmp_path: Path) -> None:
    tar, files = _archive(tmp_path)
    victim = _victim(tmp_path)
    dest = tmp_path / "uploads"
    dest.symlink_to(victim)
    with pytest.raises(AttachmentsError, match="symbolic link"):
        extract(tar, files, dest)
    with pytest.raises(AttachmentsError, match="symbolic link"):
        extract(tar, files, dest, overwrite=True)
    assert sorted(p.name for p in victim.iterdir()) == ["a.txt", "b.txt"]
    assert (victim / "a.txt").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".uploads.")]  # no staging left behind


def test_links_planted_inside_the_destination_are_replaced_or_refused_never_followed(tmp_path: Path) -> None:
    tar, files = _archive(tmp_path)
    victim = _victim(tmp_path)
    dest = tmp_path / "uploads"
    dest.mkdir()
    (dest / "a.txt").symlink_to(victim / "a.txt")
    extract(tar, files, dest, overwrite=True)  # a link at a file's name is replaced by the file
    assert not (dest / "a.txt").is_symlink() and (dest / "a.txt").read_text() == "a"
    assert (victim / "a.txt").read_text() == "precious"
    # a directory of the archive planted as a link into somewhere else: refused, nothing written there
    (dest / "sub" / "b.txt").unlink()
    (dest / "sub").rmdir()
    (dest / "sub").symlink_to(victim)
    with pytest.raises(AttachmentsError, match="symbolic link or not a directory"):
        extract(tar, files, dest, overwrite=True)
    assert (victim / "b.txt").read_text() == "precious"


def test_the_files_are_staged_in_a_private_directory_and_renamed_into_place(tmp_path: Path, monkeypatch) -> None:
    tar, files = _archive(tmp_path)
    dest = tmp_path / "uploads"
    seen: list[tuple[str, int]] = []
    real_rename = os.rename

    def spy(src, dst, *a, **kw):  # type: ignore[no-untyped-def]
        work = Path(src).parent
        seen.append((work.name, stat.S_IMODE(work.stat().st_mode)))
        return real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", spy)
    assert extract(tar, files, dest) == 2
    (work_name, work_mode), = seen
    assert work_name.startswith(".uploads.restore-") and work_mode == 0o700
    assert (dest / "sub" / "b.txt").read_text() == "b" and not dest.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_an_existing_empty_destination_keeps_its_owner_and_mode_and_its_owner_gets_the_files(tmp_path: Path) -> None:
    tar, files = _archive(tmp_path)
    dest = tmp_path / "uploads"
    dest.mkdir(mode=0o750)
    os.chown(dest, 65534, 65534)  # the application's user, not root
    assert extract(tar, files, dest) == 2
    st = dest.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o750)
    for p in (dest / "a.txt", dest / "sub", dest / "sub" / "b.txt"):
        assert p.stat().st_uid == 65534 and p.stat().st_gid == 65534, p
    assert (dest / "sub" / "b.txt").read_text() == "b"


@pytest.mark.skipif(os.geteuid() != 0, reason="a parent owned by another user needs root to make")
def test_a_destination_whose_parent_another_user_owns_is_refused(tmp_path: Path) -> None:
    tar, files = _archive(tmp_path)
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, 65534, 65534)  # they could swap what the restore stages there
    with pytest.raises(RunbookError, match="not to root or to us"):
        extract(tar, files, parent / "uploads")
    assert list(parent.iterdir()) == []

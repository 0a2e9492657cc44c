"""The pure parts of PITR and verify-backup with engine pgbackrest: the backup set chosen for a target (the own
engine's rule), the archive's end derived from info, the target options, pgBackRest verify's
text read."""

from __future__ import annotations

from datetime import datetime

import pytest

from steps.engines.facts import ArchiveRange, PhysicalBackup
from steps.engines.pgbackrest.restore import archive_end_lsn
from steps.pitr.args import Args
from steps.pitr.errors import PitrError
from steps.pitr.pgbackrest import choose_set, target_options
from steps.proof.verify_pgbackrest import parse_verify


def _b(label: str, stop: str, start_lsn: str = "0/700028", stop_lsn: str = "0/700100",
       start_wal: str = "000000010000000000000007") -> PhysicalBackup:
    t = datetime.fromisoformat(stop)
    return PhysicalBackup(label=label, kind="full", started_at=t, stopped_at=t, start_wal=start_wal,
                          stop_wal=start_wal, start_lsn=start_lsn, stop_lsn=stop_lsn, size_bytes=1,
                          system_identifier="42")


OLD = _b("20261207-100000F", "2026-12-07T10:00:05+00:00", stop_lsn="0/700100")
NEW = _b("20261207-110000F", "2026-12-07T11:00:05+00:00", stop_lsn="0/B00100")


def _args(**kw: object) -> Args:
    return Args.model_validate({"config": "/c.yaml", "pgdata": "/x/data", **kw})


def test_the_newest_backup_that_ended_before_the_target_is_chosen() -> None:
    assert choose_set([NEW, OLD], _args(target="2026-12-07T10:30:00+00:00")) is OLD
    assert choose_set([OLD, NEW], _args(target="2026-12-07T12:00:00+00:00")) is NEW
    assert choose_set([NEW, OLD], _args(target_kind="lsn", target="0/900000")) is OLD
    assert choose_set([NEW, OLD], _args(target_kind="immediate")) is NEW
    assert choose_set([NEW, OLD], _args(target_kind="latest", backup_id=OLD.label)) is OLD
    with pytest.raises(PitrError, match="target before the backup ends.*20261207-100000F"):
        choose_set([NEW, OLD], _args(target="2026-12-07T09:00:00+00:00"))
    # pgBackRest's stop time is whole seconds: within the second after it, the backup may not have ended yet
    with pytest.raises(PitrError, match="target before the backup ends"):
        choose_set([NEW, OLD], _args(target="2026-12-07T10:00:05.5+00:00"))
    assert choose_set([NEW, OLD], _args(target="2026-12-07T11:00:06+00:00")) is NEW
    with pytest.raises(PitrError, match="no pgBackRest backup of cluster 7"):
        choose_set([NEW, OLD], _args(target_kind="latest", cluster="7"))
    with pytest.raises(PitrError, match="no pgBackRest backup in the stanza"):
        choose_set([], _args(target_kind="latest"))


def test_the_archive_end_comes_from_its_newest_segment_and_the_backups_segment_size() -> None:
    class St:
        backups = [OLD]  # 0/700028 in segment 7: 1 MB segments
        archive = ArchiveRange("000000010000000000000006", "00000001000000000000000B")

    assert archive_end_lsn(St()) == 0xC << 20

    class Unknown:
        backups = [_b("20261207-100000F", "2026-12-07T10:00:05+00:00", start_lsn="0/28",
                      start_wal="000000010000000000000000")]  # segment 0 fits every size: not told
        archive = ArchiveRange("000000010000000000000006", "00000001000000000000000B")

    assert archive_end_lsn(Unknown()) is None  # then nothing is refused early: the server's FATAL says it


def test_target_options() -> None:
    assert target_options(_args(target_kind="immediate")) == ["--type=immediate"]
    assert target_options(_args(target_kind="latest")) == ["--type=default"]
    assert target_options(_args(target="2026-12-07T10:30:00+07:00", inclusive=False)) == [
        "--type=time", "--target=2026-12-07 10:30:00+07:00", "--target-exclusive"]
    assert target_options(_args(target_kind="name", target="before-upgrade")) == [
        "--type=name", "--target=before-upgrade"]


VERIFY = """\
2026-12-07 12:26:55.547 P01   INFO: invalid checksum '20261207-122503F/pg_data/base/5/2601.gz'
stanza: demo
status: error
  archiveId: 15-1, total WAL checked: 6, total valid WAL: 5
    missing: 0, checksum invalid: 1, size invalid: 0, other: 0
  backup: 20261207-122455F, status: valid, total files checked: 964, total valid files: 964
    missing: 0, checksum invalid: 0, size invalid: 0, other: 0
  backup: 20261207-122503F, status: invalid, total files checked: 965, total valid files: 964
    missing: 0, checksum invalid: 1, size invalid: 0, other: 0
"""


def test_pgbackrest_verify_text_is_read_per_backup() -> None:
    status, files, counts, archive = parse_verify(VERIFY, "20261207-122503F")
    assert status == "invalid" and files == ["invalid checksum 20261207-122503F/pg_data/base/5/2601.gz"]
    assert "checksum invalid: 1" in counts and archive == [
        "archive 15-1: missing: 0, checksum invalid: 1, size invalid: 0, other: 0"]
    status, files, _counts, _ = parse_verify(VERIFY, "20261207-122455F")
    assert status == "valid" and files == []
    assert parse_verify(VERIFY, "20261207-000000F")[0] is None

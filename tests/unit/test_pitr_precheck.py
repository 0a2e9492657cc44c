"""steps.pitr.precheck: what a recovery refuses before it restores anything (the binaries' major version, the WAL
archive's gaps), on real files and real child processes."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from steps.pitr.args import Args
from steps.pitr.errors import PitrError
from steps.pitr.precheck import binary_version, check_binaries, refuse_beyond_gap, wal_gap
from steps.wal.store import LocalWal

SYSID = "7300000000000000001"
SEG = 1 << 20


class Events:
    def __init__(self) -> None:
        self.checks: list[tuple[str, str, str]] = []
        self.outputs: dict[str, object] = {}

    def check(self, name: str, status: str, hint: str = "") -> None:
        self.checks.append((name, status, hint))

    def output(self, name: str, value: object) -> None:
        self.outputs[name] = value


def _fake_bin(d: Path, version: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name in ("postgres", "pg_ctl"):
        p = d / name
        p.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
        p.chmod(0o755)
    return d


def _manifest(start_wal: str = "000000010000000000000003") -> SimpleNamespace:
    return SimpleNamespace(backup_id="20261207T120000Z", start_wal=start_wal, wal_segment_size=SEG,
                           cluster=SimpleNamespace(server_version="15.10", server_version_num=150010))


def _args(tmp_path: Path, **kw: object) -> Args:
    return Args(config="/etc/runbook/repository.yaml", pgdata=str(tmp_path / "pgdata"), **kw)  # type: ignore[arg-type]


def test_the_binaries_of_another_major_version_are_refused_naming_both(tmp_path: Path) -> None:
    bindir = _fake_bin(tmp_path / "pg16" / "bin", "16.4")
    assert binary_version(str(bindir / "postgres")) == ("16.4", 16)
    events = Events()
    with pytest.raises(PitrError) as e:
        check_binaries(_args(tmp_path, target_kind="latest", bindir=str(bindir)), _manifest(), events)
    assert "PostgreSQL 16.4" in e.value.message and "PostgreSQL 15.10" in e.value.message
    assert "nothing was restored" in e.value.message and "postgresql-15" in (e.value.hint or "")
    assert events.checks[-1][:2] == ("server major version", "failed")


def test_the_binaries_of_the_backups_major_version_pass(tmp_path: Path) -> None:
    bindir = _fake_bin(tmp_path / "pg15" / "bin", "15.8")
    events = Events()
    assert check_binaries(_args(tmp_path, target_kind="latest", bindir=str(bindir)), _manifest(), events) == "15.8"
    assert events.checks[-1][:2] == ("server major version", "ok")


def test_a_binary_that_does_not_say_its_version_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "postgres"
    p.write_text("#!/bin/sh\necho hello\n")
    p.chmod(0o755)
    with pytest.raises(PitrError, match="did not say which PostgreSQL"):
        binary_version(str(p))
    with pytest.raises(PitrError, match="cannot be run"):
        binary_version(str(tmp_path / "missing"))


def _archive(tmp_path: Path, segments: dict[int, datetime]) -> LocalWal:
    wal = tmp_path / "repo" / "clusters" / SYSID / "wal"
    wal.mkdir(parents=True)
    for n, at in segments.items():
        p = wal / f"00000001000000000000{n:04X}.zst"
        p.write_bytes(b"x")
        os.utime(p, (at.timestamp(), at.timestamp()))
    return LocalWal(tmp_path / "repo")


def test_a_missing_segment_between_archived_ones_is_a_gap_with_its_reachable_point(tmp_path: Path) -> None:
    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    store = _archive(tmp_path, {3: t0, 4: t0 + timedelta(seconds=30), 6: t0 + timedelta(seconds=90)})
    entry = SimpleNamespace(cluster=SYSID, manifest=_manifest())
    gap = wal_gap([store], entry)
    assert gap is not None
    assert gap.missing == ["000000010000000000000005"] and gap.last_before == "000000010000000000000004"
    assert gap.after == "000000010000000000000006" and gap.reachable_lsn == 5 * SEG
    assert gap.last_before_archived == t0 + timedelta(seconds=30)
    assert "0/500000" in gap.describe()
    # contiguous: no gap; nothing before the backup's first segment counts
    assert wal_gap([_archive(tmp_path / "b", {2: t0, 3: t0, 4: t0})], entry) is None


def test_a_target_the_listing_proves_past_the_gap_is_refused_with_the_best_reachable_point(tmp_path: Path) -> None:
    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    store = _archive(tmp_path, {3: t0, 4: t0 + timedelta(seconds=30), 6: t0 + timedelta(seconds=90)})
    gap = wal_gap([store], SimpleNamespace(cluster=SYSID, manifest=_manifest()))
    assert gap is not None
    late = _args(tmp_path, target_time=(t0 + timedelta(seconds=120)).isoformat())
    events = Events()
    with pytest.raises(PitrError) as e:
        refuse_beyond_gap(late, gap, events, "HOW")
    assert "000000010000000000000005" in e.value.message and "Nothing was restored" in e.value.message
    assert "target_kind latest" in (e.value.hint or "") and "HOW" in (e.value.hint or "")
    assert events.outputs["reachable_lsn"] == "0/500000"
    # latest is refused too, unless the gap is accepted
    with pytest.raises(PitrError):
        refuse_beyond_gap(_args(tmp_path, target_kind="latest"), gap, Events(), "HOW")
    ok = Events()
    refuse_beyond_gap(_args(tmp_path, target_kind="latest", accept_gap=True), gap, ok, "HOW")
    assert ok.checks[-1][:2] == ("gap in the WAL accepted", "warning")
    # a time before the segment after the gap was archived may be reachable: a warning, the replay decides
    early = Events()
    refuse_beyond_gap(_args(tmp_path, target_time=(t0 + timedelta(seconds=40)).isoformat()), gap, early, "HOW")
    assert early.checks[-1][:2] == ("WAL continuity", "warning") and "best reachable point" in early.checks[-1][2]


def test_a_segment_in_another_repository_is_no_gap(tmp_path: Path) -> None:
    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    local = _archive(tmp_path / "a", {3: t0, 5: t0})
    offsite = _archive(tmp_path / "b", {4: t0})
    entry = SimpleNamespace(cluster=SYSID, manifest=_manifest())
    assert wal_gap([local], entry) is not None
    assert wal_gap([local, offsite], entry) is None  # wal-fetch reads from whichever has it


def test_a_lost_tail_the_signed_ledgers_list_is_a_gap(tmp_path: Path) -> None:
    from steps.pitr.precheck import ledger_gap

    t0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    store = _archive(tmp_path, {3: t0, 4: t0 + timedelta(seconds=30)})
    entry = SimpleNamespace(cluster=SYSID, manifest=_manifest())
    names = [f"00000001000000000000000{n}" for n in (2, 3, 4, 5, 6)] + ["00000002.history"]
    index = SimpleNamespace(segments={n: "0" * 64 for n in names})
    assert wal_gap([store], entry) is None  # the listing alone shows nothing
    gap = ledger_gap([store], entry, index)
    assert gap is not None and gap.missing == ["000000010000000000000005", "000000010000000000000006"]
    assert gap.after == "" and gap.reachable_lsn == 5 * SEG and "signed WAL ledgers list it" in gap.describe()
    with pytest.raises(PitrError):
        refuse_beyond_gap(_args(tmp_path, target_kind="latest"), gap, Events(), "HOW")
    whole = _archive(tmp_path / "whole", {3: t0, 4: t0, 5: t0, 6: t0})
    assert ledger_gap([whole], entry, index) is None
    from steps.pitr.precheck import cut_index

    cut = cut_index(index, gap)
    assert sorted(cut.segments) == ["000000010000000000000002", "000000010000000000000003",
                                    "000000010000000000000004", "00000002.history"]

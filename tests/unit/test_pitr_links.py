"""PITR's own directories never go through a link: a data directory or tablespace target that is a symlink is
refused (its target never chmodded or chowned), pg_wal is emptied only as a real directory of the data
directory, tablespace_map is rewritten without following a link at its name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from steps.pitr.datadir import check_empty, prepare_bare
from steps.pitr.errors import PitrError
from steps.pitr.recovery import empty_pg_wal
from steps.pitr.tablespaces import (
    TablespacePlan,
    make_tablespace_dirs,
    precheck_tablespaces,
    write_tablespace_map,
)
from tests.support.victims import snapshot


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    os.chmod(v, 0o755)
    (v / "000000010000000000000001").write_bytes(b"\x01" * 128)
    (v / "inner").mkdir()
    return v


def test_a_data_directory_that_is_a_link_to_an_empty_directory_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "root-owned-empty"
    empty.mkdir()
    os.chmod(empty, 0o755)
    os.symlink(empty, tmp_path / "pgdata")
    before = snapshot(empty)
    with pytest.raises(PitrError, match="is a symlink"):
        check_empty(tmp_path / "pgdata")
    with pytest.raises(PitrError, match="is a symlink"):
        prepare_bare(tmp_path / "pgdata")
    assert snapshot(empty) == before


def test_a_tablespace_target_that_is_a_link_is_refused(tmp_path: Path, victim: Path) -> None:
    from steps.pitr.args import Args

    os.symlink(victim / "inner", tmp_path / "ts")
    before = snapshot(victim)
    args = Args(config="/c.yaml", pgdata=str(tmp_path / "pgdata"), target_kind="latest",
                tablespaces={"16384": str(tmp_path / "ts")})
    with pytest.raises(PitrError, match="is a symlink"):
        precheck_tablespaces(args, tmp_path / "pgdata", ["16384"])
    with pytest.raises(PitrError, match="is a symlink"):
        make_tablespace_dirs([TablespacePlan("16384", "/prod/ts", tmp_path / "ts", "16384")], probe=False)
    assert snapshot(victim) == before


def test_pg_wal_as_a_link_is_never_emptied(tmp_path: Path, victim: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    os.symlink(victim, pgdata / "pg_wal")
    before = snapshot(victim)
    with pytest.raises(PitrError, match="never emptied through a link"):
        empty_pg_wal(pgdata)
    assert snapshot(victim) == before


def test_pg_wal_is_emptied_of_everything_but_archive_status_and_links_in_it_are_not_followed(
        tmp_path: Path, victim: Path) -> None:
    pgdata = tmp_path / "pgdata"
    wal = pgdata / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    (wal / "000000010000000000000002").write_bytes(b"x")
    (wal / "dir").mkdir()
    os.symlink(victim, wal / "dir" / "link")
    os.symlink(victim, wal / "link")
    before = snapshot(victim)
    empty_pg_wal(pgdata)
    assert sorted(p.name for p in wal.iterdir()) == ["archive_status"]
    assert snapshot(victim) == before
    fresh = tmp_path / "fresh"  # no pg_wal yet: made, with archive_status
    fresh.mkdir()
    empty_pg_wal(fresh)
    assert (fresh / "pg_wal" / "archive_status").is_dir()


def test_tablespace_map_is_rewritten_without_following_a_link_at_its_name(tmp_path: Path, victim: Path) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    os.symlink(victim / "000000010000000000000001", pgdata / "tablespace_map")
    before = snapshot(victim)
    write_tablespace_map(pgdata, [TablespacePlan("16384", "/prod/ts", tmp_path / "new-ts")])
    assert snapshot(victim) == before
    assert (pgdata / "tablespace_map").read_text() == f"16384 {tmp_path / 'new-ts'}\n"
    assert not (pgdata / "tablespace_map").is_symlink()
    assert oct((pgdata / "tablespace_map").stat().st_mode & 0o777) == "0o600"


def test_the_server_log_and_pid_file_are_never_read_through_a_link(tmp_path: Path) -> None:
    from steps.pitr.recovery import log_tail, postmaster_alive

    (tmp_path / "secret").write_text(f"{os.getpid()}\nroot:$6$hash\n")
    os.symlink(tmp_path / "secret", tmp_path / "data.recovery.log")
    assert "hash" not in log_tail(tmp_path / "data.recovery.log")
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    os.symlink(tmp_path / "secret", pgdata / "postmaster.pid")
    assert postmaster_alive(pgdata) is False  # our own pid, read through the link, would say alive

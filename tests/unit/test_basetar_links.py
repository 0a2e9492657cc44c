"""A base backup's tars are data: forged members (links, traversal, a directory through a link, a name
reused) are refused, and nothing outside the directory restored into is created, changed, chmodded or
deleted (a victim directory's content, modes, owners and mtimes are compared before and after)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from steps.backup.basetar import BaseBackupInvalid, check_tars, parse_server_manifest, tar_files
from tests.support.victims import snapshot
from tests.unit.test_base_units import FILES, _manifest


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir(mode=0o755)
    os.chmod(v, 0o755)
    (v / "precious").write_bytes(b"keep me\n")
    os.chmod(v / "precious", 0o644)
    (v / "sub").mkdir()
    (v / "sub" / "deep").write_bytes(b"deep\n")
    return v


def _file(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _link(tf: tarfile.TarFile, name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tf.addfile(info)


def _dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tf.addfile(info)


def _backup(tmp_path: Path, write: object, files: dict[str, bytes] | None = None) -> tuple[Path, Path]:
    """A backup directory (base.tar written by `write(tf)`, a backup_manifest of `files`) and an empty pgdata."""
    d = tmp_path / "bb"
    d.mkdir()
    with tarfile.open(d / "base.tar", "w") as tf:
        write(tf)  # type: ignore[operator]
    (d / "backup_manifest").write_bytes(_manifest(files or FILES))
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir(mode=0o700)
    return d, pgdata


def _extract(d: Path, pgdata: Path | None) -> None:
    check_tars(tar_files(d), parse_server_manifest((d / "backup_manifest").read_bytes()), dest=pgdata,
               skip=lambda p: p.startswith("pg_wal/"))


def _refused_untouched(victim: Path, d: Path, pgdata: Path, match: str) -> None:
    """Extracting backup `d` into `pgdata` is refused (BaseBackupInvalid matching `match`), and nothing under
    `victim` changed."""
    before = snapshot(victim)
    with pytest.raises(BaseBackupInvalid, match=match):
        _extract(d, pgdata)
    assert snapshot(victim) == before


def _all_files(tf: tarfile.TarFile) -> None:
    for name, data in FILES.items():
        _file(tf, name, data)


def test_a_pg_wal_symlink_member_is_refused_and_its_target_untouched(tmp_path: Path, victim: Path) -> None:
    def write(tf: tarfile.TarFile) -> None:
        _link(tf, "pg_wal", str(victim))
        _all_files(tf)

    d, pgdata = _backup(tmp_path, write)
    _refused_untouched(victim, d, pgdata, r"'pg_wal' is a symlink .*refusing")
    assert not os.path.lexists(pgdata / "pg_wal")
    with pytest.raises(BaseBackupInvalid, match="symlink"):  # the check alone (backup's `readable`) refuses it too
        _extract(d, None)


def test_a_symlink_then_a_regular_member_of_the_same_name_cannot_write_through(tmp_path: Path, victim: Path) -> None:
    def write(tf: tarfile.TarFile) -> None:
        _link(tf, "PG_VERSION", str(victim / "precious"))
        _all_files(tf)  # PG_VERSION, listed in the backup_manifest with these very bytes

    d, pgdata = _backup(tmp_path, write)
    _refused_untouched(victim, d, pgdata, "symlink")
    assert (victim / "precious").read_bytes() == b"keep me\n"


@pytest.mark.parametrize("member", ["global", "global/sub"])
def test_a_directory_member_through_a_planted_link_never_chmods_its_target(tmp_path: Path, victim: Path,
                                                                            member: str) -> None:
    """The link is already in the directory restored into (planted there, e.g. by a user who owns it)."""
    def write(tf: tarfile.TarFile) -> None:
        _dir(tf, member)
        _all_files(tf)

    d, pgdata = _backup(tmp_path, write)
    os.symlink(victim, pgdata / "global")
    _refused_untouched(victim, d, pgdata, "not a plain directory")
    assert not (victim / "sub" / "x").exists()


def test_a_symlink_member_then_a_directory_member_of_its_name_is_refused(tmp_path: Path, victim: Path) -> None:
    def write(tf: tarfile.TarFile) -> None:
        _link(tf, "global", str(victim))
        _dir(tf, "global")
        _all_files(tf)

    d, pgdata = _backup(tmp_path, write)
    _refused_untouched(victim, d, pgdata, "symlink")


def test_a_regular_member_over_a_planted_link_is_refused(tmp_path: Path, victim: Path) -> None:
    d, pgdata = _backup(tmp_path, _all_files)
    os.symlink(victim / "precious", pgdata / "PG_VERSION")
    _refused_untouched(victim, d, pgdata, "exists already")
    assert [p.name for p in pgdata.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_a_hardlink_member_is_refused(tmp_path: Path, victim: Path) -> None:
    def write(tf: tarfile.TarFile) -> None:
        _link(tf, "PG_VERSION", str(victim / "precious"), tarfile.LNKTYPE)
        _all_files(tf)

    d, pgdata = _backup(tmp_path, write)
    _refused_untouched(victim, d, pgdata, "hardlink")


@pytest.mark.parametrize("name", ["../victim/precious", "/victim/precious", "global/../../victim/precious"])
def test_a_member_name_leaving_the_directory_is_refused(tmp_path: Path, victim: Path, name: str) -> None:
    def write(tf: tarfile.TarFile) -> None:
        _file(tf, name.replace("/victim", str(victim)) if name.startswith("/") else name, b"owned\n")
        _all_files(tf)

    d, pgdata = _backup(tmp_path, write)
    _refused_untouched(victim, d, pgdata, "unsafe member name")


def test_a_data_directory_that_is_a_symlink_is_refused(tmp_path: Path, victim: Path) -> None:
    d, _ = _backup(tmp_path, _all_files)
    link = tmp_path / "link"
    os.symlink(victim, link)
    _refused_untouched(victim, d, link, "is a symlink")


def test_a_file_that_fails_its_check_is_never_at_its_name(tmp_path: Path) -> None:
    files = dict(FILES)
    files["PG_VERSION"] = b"16\n"  # the manifest says 15

    def write(tf: tarfile.TarFile) -> None:
        for name, data in files.items():
            _file(tf, name, data)

    d, pgdata = _backup(tmp_path, write)
    with pytest.raises(BaseBackupInvalid, match="PG_VERSION: SHA-256"):
        _extract(d, pgdata)
    assert not os.path.lexists(pgdata / "PG_VERSION")
    assert [p.name for p in pgdata.rglob(".*")] == []  # its temporary file is gone too


def test_a_genuine_tar_extracts_private_files_and_directories(tmp_path: Path) -> None:
    def write(tf: tarfile.TarFile) -> None:
        _dir(tf, "global")
        _dir(tf, "pg_wal")
        _all_files(tf)

    d, pgdata = _backup(tmp_path, write)
    _extract(d, pgdata)
    assert sorted(p.name for p in pgdata.iterdir()) == ["PG_VERSION", "backup_label", "global", "pg_wal"]
    assert (pgdata / "PG_VERSION").read_bytes() == b"15\n"
    assert oct((pgdata / "global").stat().st_mode & 0o777) == "0o700"
    assert oct((pgdata / "global" / "pg_control").stat().st_mode & 0o777) == "0o600"

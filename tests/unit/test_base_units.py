"""Pure parts of base backups and PITR: WAL arithmetic, WAL retention, the tar check, target parsing."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from steps.backup.base import parse_label_time
from steps.backup.basetar import BaseBackupInvalid, check_tars, parse_server_manifest, tar_files
from steps.pg.walnames import (
    format_lsn,
    parse_lsn,
    parse_segment,
    segment_name,
    segments_between,
)
from steps.pitr.args import Args
from steps.pitr.backup import choose_backup
from steps.pitr.recovery import recovery_settings
from steps.repository.layout import archived_segment
from steps.repository.prune import wal_to_delete

MB = 1024 * 1024


def test_lsn_and_segment_names() -> None:
    assert parse_lsn("0/D00028") == 0xD00028 and format_lsn(parse_lsn("1A/FF000028")) == "1A/FF000028"
    # 16 MB segments: 256 per log id; 1 MB segments: 4096 per log id
    assert segment_name(1, 0x100, 16 * MB) == "000000010000000100000000"
    assert segment_name(2, 0xD, MB) == "00000002000000000000000D"
    assert parse_segment("000000010000000100000003", MB) == (1, 4096 + 3)
    assert segments_between(1, parse_lsn("0/D00028"), parse_lsn("0/F00100"), MB) == [
        "00000001000000000000000D", "00000001000000000000000E", "00000001000000000000000F"]
    # a stop LSN exactly on a segment boundary does not need the next segment
    assert segments_between(1, parse_lsn("0/D00028"), parse_lsn("0/E00000"), MB) == ["00000001000000000000000D"]
    with pytest.raises(ValueError):
        parse_lsn("not/an-lsn")


def test_archived_segment_names() -> None:
    assert archived_segment("clusters/1/wal/00000001000000000000000D.zst") == "00000001000000000000000D"
    assert archived_segment("00000001000000000000000D") == "00000001000000000000000D"
    for other in ("00000002.history.zst", "00000001000000000000000D.00000028.backup.zst",
                  "00000001000000000000000D.partial.zst", "junk"):
        assert archived_segment(other) is None


def test_wal_retention_keeps_what_kept_backups_need() -> None:
    keys = [f"clusters/1/wal/{segment_name(1, n, MB)}.zst" for n in range(1, 9)]
    keys += ["clusters/1/wal/00000002.history.zst", f"clusters/1/wal/{segment_name(1, 2, MB)}.00000028.backup.zst",
             f"clusters/1/wal/{segment_name(2, 3, MB)}.zst"]
    gone = wal_to_delete(keys, [(segment_name(1, 5, MB), MB), (segment_name(1, 7, MB), MB)], MB)
    assert sorted(k.rsplit("/", 1)[1][:24] for k in gone) == sorted(
        [segment_name(1, n, MB) for n in range(1, 5)] + [segment_name(1, 2, MB), segment_name(2, 3, MB)])
    assert all(".history" not in k for k in gone)
    assert wal_to_delete(keys, [], MB) == []  # no kept base backup: WAL is all there is, keep it


def _manifest(files: dict[str, bytes]) -> bytes:
    """A backup_manifest in PostgreSQL 15's exact shape, with its own checksum."""
    lines = ['{ "PostgreSQL-Backup-Manifest-Version": 1,', '"Files": [']
    entries = [f'{{ "Path": "{p}", "Size": {len(d)}, "Last-Modified": "2026-11-25 14:31:50 GMT", '
               f'"Checksum-Algorithm": "SHA256", "Checksum": "{hashlib.sha256(d).hexdigest()}" }}'
               for p, d in files.items()]
    lines.append(",\n".join(entries))
    lines += ["],", '"WAL-Ranges": [', '{ "Timeline": 1, "Start-LSN": "0/D00028", "End-LSN": "0/D00100" }', "],"]
    body = ("\n".join(lines) + "\n").encode()
    return body + f'"Manifest-Checksum": "{hashlib.sha256(body).hexdigest()}"}}\n'.encode()


def _tar(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tf:
        for d in ("global", "pg_wal"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


FILES = {"backup_label": b"START WAL LOCATION: 0/D00028\nSTART TIME: 2026-11-25 14:35:02 UTC\n",
         "PG_VERSION": b"15\n", "global/pg_control": (1234).to_bytes(8, "little") + b"\0" * 8184}


def test_a_backup_matching_its_manifest_is_readable_and_extracts(tmp_path: Path) -> None:
    d = tmp_path / "bb"
    d.mkdir()
    _tar(d / "base.tar", FILES)
    subprocess.run(["zstd", "-q", "--rm", str(d / "base.tar")], check=True)
    (d / "backup_manifest").write_bytes(_manifest(FILES))
    m = parse_server_manifest((d / "backup_manifest").read_bytes())
    assert m.wal_ranges == [(1, "0/D00028", "0/D00100")]
    out = tmp_path / "pgdata"
    out.mkdir()
    res = check_tars(tar_files(d), m, dest=out)
    assert res.files == 3 and res.captured["global/pg_control"][:8] == (1234).to_bytes(8, "little")
    assert (out / "PG_VERSION").read_bytes() == b"15\n" and (out / "pg_wal").is_dir()
    assert parse_label_time(res.captured["backup_label"]) == datetime(2026, 11, 25, 14, 35, 2, tzinfo=UTC)


@pytest.mark.parametrize("damage", ["flip", "missing", "extra", "manifest"])
def test_a_damaged_backup_is_refused(tmp_path: Path, damage: str) -> None:
    d = tmp_path / "bb"
    d.mkdir()
    files = dict(FILES)
    listed = dict(FILES)
    if damage == "flip":
        files["PG_VERSION"] = b"16\n"
    elif damage == "missing":
        del files["PG_VERSION"]
    elif damage == "extra":
        files["global/extra"] = b"x"
    _tar(d / "base.tar", files)
    manifest = _manifest(listed)
    if damage == "manifest":
        manifest = manifest.replace(b'"Size": 3', b'"Size": 4')
    (d / "backup_manifest").write_bytes(manifest)
    with pytest.raises(BaseBackupInvalid):
        check_tars(tar_files(d), parse_server_manifest((d / "backup_manifest").read_bytes()))


def test_pitr_arguments() -> None:
    with pytest.raises(ValidationError, match="no time zone"):
        Args(config="/c.yaml", pgdata="/x", target="2026-11-25 10:00:00")
    with pytest.raises(ValidationError, match="absolute"):
        Args(config="/c.yaml", pgdata="relative", target_kind="latest")
    with pytest.raises(ValidationError):
        Args(config="/c.yaml", pgdata="/x", target_kind="xid", target="abc")
    a = Args.model_validate({"config": "/c.yaml", "pgdata": "/x", "target_time": "2026-11-25T10:00:00+07:00",
                             "target": "", "debian_cluster": "", "restore_command": "cp /a/%f %p"})
    s = recovery_settings(a, Path("/c.yaml"))
    assert s["recovery_target_time"] == "2026-11-25 10:00:00+07:00" and s["recovery_target_action"] == "promote"
    assert s["restore_command"] == "cp /a/%f %p" and a.debian_cluster is None
    b = Args(config="/c.yaml", pgdata="/x", target_kind="name", target="before", runbook_exe="/opt/rb/bin/runbook")
    s = recovery_settings(b, Path("/etc/runbook/repository.yaml"))
    assert s["recovery_target_name"] == "before"
    assert s["restore_command"] == "/opt/rb/bin/runbook wal-fetch -c /etc/runbook/repository.yaml %f %p"


def test_no_base_backup_before_the_target_is_a_clear_error() -> None:
    from steps.pitr.errors import PitrError

    with pytest.raises(PitrError, match="no readable base backup"):
        choose_backup([], Args(config="/c.yaml", pgdata="/x", target="2026-11-25T10:00:00Z"))
    assert json.dumps(recovery_settings(Args(config="/c.yaml", pgdata="/x", target_kind="latest",
                                             restore_command="true"), Path("/c")))


def test_extraction_never_follows_a_symlink_out_of_the_data_directory(tmp_path: Path) -> None:
    d = tmp_path / "bb"
    d.mkdir()
    outside = tmp_path / "production"
    outside.mkdir()
    with tarfile.open(d / "base.tar", "w") as tf:
        link = tarfile.TarInfo("global")
        link.type = tarfile.SYMTYPE
        link.linkname = str(outside)
        tf.addfile(link)
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (d / "backup_manifest").write_bytes(_manifest(FILES))
    out = tmp_path / "pgdata"
    out.mkdir()
    with pytest.raises(BaseBackupInvalid, match="is a symlink"):
        check_tars(tar_files(d), parse_server_manifest((d / "backup_manifest").read_bytes()), dest=out)
    assert not any(outside.iterdir())


def test_the_restored_copy_never_archives_into_production() -> None:
    from steps.pitr.recovery import server_settings

    a = Args(config="/c.yaml", pgdata="/x", target_kind="latest")
    assert server_settings(a, "/run")["archive_mode"] == "off"
    b = Args(config="/c.yaml", pgdata="/x", target_kind="latest", archive_to="/srv/restored-wal")
    s = server_settings(b, "/run")
    assert s["archive_mode"] == "on" and s["archive_command"].startswith("test ! -f /srv/restored-wal/%f")


def test_redo_facts_read_the_servers_own_redo_timing() -> None:
    from steps.pitr.recovery import redo_facts

    log = ("2026-12-06 22:50:01.100 UTC [9] LOG:  starting archive recovery\n"
           "2026-12-06 22:50:01.200 UTC [9] LOG:  redo starts at 0/2000028\n"
           "2026-12-06 22:50:03.900 UTC [9] LOG:  redo done at 0/6000100 system usage: CPU: user: 1.20 s, "
           "system: 0.30 s, elapsed: 2.70 s\n")
    assert redo_facts(log) == (0x6000100 - 0x2000028, 2.70)
    assert redo_facts("LOG:  redo starts at 0/2000028\n") is None  # still replaying, or crashed: no claim
    assert redo_facts("") is None

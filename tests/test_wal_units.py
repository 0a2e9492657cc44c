"""The pure parts of WAL archiving: names and keys, segment headers, the archive's framing, the config cache,
the fast path's argument forms, and what the hot paths import."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from steps.layout import (
    next_segment,
    parse_wal_name,
    segment_name,
    wal_key,
    wal_name_from_key,
    wal_prefix,
)
from steps.walconf import WalSettings, load_config_dict
from steps.walfast import _simple, is_segment_name
from steps.walfile import CorruptWal, WalFileError, check_segment, pack, read_header, segment_header, unpack
from tests.conftest import ROOT

MB = 1024 * 1024


def fake_segment(sysid: int, segno: int, size: int = MB) -> bytes:
    """A segment's first page: magic, XLP_LONG_HEADER, timeline 1, page address, then sysid/seg size/block size."""
    head = struct.pack("<HHIQI4xQII", 0xD110, 0x0002, 1, segno * size, 0, sysid, size, 8192)
    return head + os.urandom(4096) + bytes(size - len(head) - 4096)


def test_names_kinds_and_keys() -> None:
    assert parse_wal_name("000000010000000A000000FF").kind == "segment"
    assert parse_wal_name("000000020000000000000003.partial").kind == "partial"
    h = parse_wal_name("0000000A.history")
    assert (h.kind, h.timeline, h.has_header) == ("history", 10, False)
    assert parse_wal_name("000000010000000000000002.00000028.backup").kind == "backup"
    for bad in ("00000001000000000000000g", "x/000000010000000000000001", "000000010000000000000001.zst", ""):
        with pytest.raises(ValueError):
            parse_wal_name(bad)
    assert wal_prefix("123") == "clusters/123/wal/"
    assert wal_key("123", "00000002.history") == "clusters/123/wal/00000002.history.zst"
    assert wal_name_from_key("clusters/1/wal/000000010000000000000001.zst") == "000000010000000000000001"
    assert wal_name_from_key("clusters/1/wal/.tmp-x") is None
    with pytest.raises(ValueError):
        wal_prefix("../x")


def test_segment_arithmetic_reads_the_segment_size() -> None:
    assert next_segment("0000000100000000000000FF", 16 * MB) == "000000010000000100000000"
    assert next_segment("000000010000000000000FFF", MB) == "000000010000000100000000"
    assert segment_name(3, 4096 + 5, MB) == "000000030000000100000005"
    assert parse_wal_name("000000010000000100000005").segno(MB) == 4096 + 5


def test_segment_headers_are_checked_against_name_and_size() -> None:
    seg = fake_segment(42, 7)
    hdr = segment_header(seg)
    assert (hdr.system_identifier, hdr.segment_size, hdr.page_address) == (42, MB, 7 * MB)
    assert check_segment("000000010000000000000007", seg, 7) == hdr
    with pytest.raises(WalFileError, match="renamed"):
        check_segment("000000010000000000000008", seg, 8)
    with pytest.raises(WalFileError, match="cut short"):
        check_segment("000000010000000000000007", seg[: MB // 2], 7)
    with pytest.raises(WalFileError, match="long header"):
        segment_header(bytes(64))


def test_the_archive_framing_round_trips_and_every_damage_is_named() -> None:
    data = fake_segment(42, 1)
    blob, meta = pack("000000010000000000000001", data, system_identifier=42)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() and len(blob) < len(data) // 10
    assert read_header(blob)[0]["name"] == "000000010000000000000001"
    assert unpack(blob, "000000010000000000000001")[0] == data
    import zstandard  # the object is a plain .zst file too: zstd skips our header frame

    assert zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read() == data
    with pytest.raises(CorruptWal, match="holds"):
        unpack(blob, "000000010000000000000002")
    flipped = bytearray(blob)
    flipped[-50] ^= 1
    with pytest.raises(CorruptWal):
        unpack(bytes(flipped), "000000010000000000000001")
    other, _ = pack("000000010000000000000001", fake_segment(42, 1), system_identifier=42)
    swapped = blob[:read_header(blob)[1]] + other[read_header(other)[1]:]  # our header, another segment's body
    with pytest.raises(CorruptWal, match="sha256"):
        unpack(swapped, "000000010000000000000001")
    with pytest.raises(CorruptWal, match="no runbook WAL header"):
        unpack(b"\x28\xb5\x2f\xfd" + bytes(100), "000000010000000000000001")


def test_the_config_is_validated_once_then_read_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path}/repo}}\nwal: {{async: true, max_parallel: 3}}\n")
    data, path = load_config_dict(str(cfg))
    assert data["wal"]["async"] is True and path == cfg
    (cache,) = (tmp_path / "cache" / "runbook").iterdir()
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    doc = json.loads(cache.read_text())
    doc["config"]["wal"]["max_parallel"] = 9  # served from the cache while the file is unchanged
    cache.write_text(json.dumps(doc))
    assert WalSettings.load(str(cfg)).max_parallel == 9
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path}/repo}}\nwal: {{max_parallel: 2}}\n")
    s = WalSettings.load(str(cfg))
    assert (s.max_parallel, s.async_mode, s.prefetch) == (2, False, 8)
    cfg.write_text("version: 1\nlocal: {path: relative}\nwal: {asynch: true}\n")
    from runbook.errors import InvalidFile

    with pytest.raises(InvalidFile) as e:
        WalSettings.load(str(cfg))
    assert "repo.yaml:3:7" in str(e.value) and "asynch" in str(e.value)


def test_the_fast_path_takes_only_the_plain_forms() -> None:
    assert _simple(["-c", "x.yaml", "pg_wal/1"], 1) == ("x.yaml", ["pg_wal/1"])
    assert _simple(["--config=x.yaml", "a", "b"], 2) == ("x.yaml", ["a", "b"])
    assert _simple(["a", "b"], 2) == (None, ["a", "b"])
    assert _simple(["-c", "x", "--from", "s3", "a", "b"], 2) is None
    assert _simple(["-c", "x", "a"], 2) is None
    assert is_segment_name("000000010000000000000001") and not is_segment_name("00000001.history")


def test_the_hot_paths_import_neither_pydantic_boto3_psycopg_textual_nor_rich(tmp_path: Path) -> None:
    code = ("import sys; from steps.walfast import main; from steps import wal, walspool, walrepo;"
            "heavy = {'pydantic', 'boto3', 'psycopg', 'textual', 'rich', 'yaml'} & set(sys.modules);"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    code = "import sys, runbook.launch; print('runbook.cli' in sys.modules, 'argparse' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False False"

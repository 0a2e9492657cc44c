"""The pure parts of WAL archiving: names and keys, segment headers, the archive's framing, the config cache,
the fast path's argument forms, and what the hot paths import."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runbook.cli.wal_fast import plain_args
from steps.repository.layout import (
    next_segment,
    parse_wal_name,
    segment_name,
    wal_key,
    wal_name_from_key,
    wal_prefix,
)
from steps.repository.store import RepositoryError
from steps.wal.fast import (
    RECORD_MAGIC,
    RECORDS_MARK,
    confirms,
    format_record,
    in_window,
    is_segment_name,
    parse_record,
    push_root,
    short_hash,
    take,
    wait_prefetched,
)
from steps.wal.segment import (
    CorruptWal,
    WalFileError,
    check_segment,
    pack,
    read_header,
    segment_header,
    unpack,
)
from steps.wal.settings import WalSettings, load_config_dict
from steps.wal.store import open_wal_stores
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


def test_the_hot_cache_holds_what_the_quick_answers_read_and_goes_stale_with_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick answers read the config from the hot cache (steps.wal.hot), written by every full load beside
    the JSON one, keyed the same way; a changed file, a changed tool, a repository symlink moved, or a cache that
    does not parse: no hot settings (the caller loads in full, which writes it again)."""
    from steps.wal import hot

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path}/link}}\nwal: {{async: true, push_timeout_s: 7.5}}\n"
                   f"cluster: {{data_directory: {tmp_path}/pg}}\n")
    assert hot.load_hot(str(cfg)) is None  # nothing loaded yet
    full = WalSettings.load(str(cfg))
    quick = hot.load_hot(str(cfg))
    assert quick is not None
    assert oct(os.stat(hot.hot_file(hot.config_key(str(cfg)))).st_mode & 0o777) == "0o600"
    for attr in ("destinations", "dest_hash", "async_mode", "push_timeout_s", "prefetch", "wal_key", "data_directory"):
        assert getattr(quick, attr) == getattr(full, attr), attr
    assert (quick.path, quick.spool_dir) == (str(full.path), os.fspath(full.spool_dir))
    assert push_root(quick, 5, "/d/pg_wal") == push_root(full, 5, "/d/pg_wal")
    assert str(tmp_path / "a") in quick.destinations

    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to(tmp_path / "b")  # the same config, another directory: another destination
    assert hot.load_hot(str(cfg)) is None
    assert str(tmp_path / "b") in WalSettings.load(str(cfg)).destinations
    moved = hot.load_hot(str(cfg))
    assert moved is not None and str(tmp_path / "b") in moved.destinations

    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path}/a}}\nwal: {{spool_dir: {tmp_path}/sp, prefetch: 3}}\n")
    assert hot.load_hot(str(cfg)) is None  # the file changed
    WalSettings.load(str(cfg))
    quick = hot.load_hot(str(cfg))
    assert quick is not None and (quick.async_mode, quick.prefetch, quick.spool_dir) == (False, 3, f"{tmp_path}/sp")
    assert quick.data_directory is None

    monkeypatch.setattr(hot, "__version__", "0.0.0-other")  # another build of the tool
    assert hot.load_hot(str(cfg)) is None
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rec = Path(hot.hot_file(hot.config_key(str(cfg))))
    for broken in (rec.read_text()[:-20], "not a record\n", rec.read_text().replace("prefetch=3", "prefetch=x")):
        rec.write_text(broken)
        assert hot.load_hot(str(cfg)) is None


def test_records_are_key_value_lines_that_escape_line_breaks_and_refuse_what_is_not_whole() -> None:
    rec = {"name": "n", "tricky": "a=b\\nc\nd\\\\", "identity": [1, 2, 3], "stored": {"local": "stored"},
           "gone": None}
    text = format_record(rec)
    assert text.count("\n") == 5  # the magic line and four fields: no line break of a value is written raw
    assert parse_record(text) == {"name": "n", "tricky": "a=b\\nc\nd\\\\", "identity": "1 2 3",
                                  "stored.local": "stored"}
    assert parse_record(text[:-1]) is None  # cut short
    assert parse_record(text.replace("runbook-record 1", "runbook-record 2")) is None
    assert parse_record(text + "no equals sign\n") is None
    assert parse_record("") is None and parse_record("{not json") is None and parse_record("[1]") is None
    # what an uploader started before the upgrade still writes: read the same way
    assert parse_record(json.dumps({"size": 5, "identity": [1, 2], "system_identifier": "7"})) == {
        "size": "5", "identity": "1 2", "system_identifier": "7"}


def test_the_uploader_pushes_sixteen_ahead_unless_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from runbook.errors import InvalidFile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path}/repo}}\nwal: {{async: true}}\n")
    assert WalSettings.load(str(cfg)).push_ahead == 16
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path}/repo}}\nwal: {{async: true, push_ahead: 3}}\n")
    assert WalSettings.load(str(cfg)).push_ahead == 3
    for bad in (0, 65):
        cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path}/repo}}\nwal: {{push_ahead: {bad}}}\n")
        with pytest.raises(InvalidFile) as e:
            WalSettings.load(str(cfg))
        assert "push_ahead" in str(e.value)


def test_the_fast_path_takes_only_the_plain_forms() -> None:
    assert plain_args(["-c", "x.yaml", "pg_wal/1"], 1) == ("x.yaml", ["pg_wal/1"], "any", None)
    assert plain_args(["--config=x.yaml", "a", "b"], 2) == ("x.yaml", ["a", "b"], "any", None)
    assert plain_args(["a", "b"], 2) == (None, ["a", "b"], "any", None)
    assert plain_args(["-c", "x", "--from", "s3", "a", "b"], 2, source=True) == ("x", ["a", "b"], "s3", None)
    assert plain_args(["--from=local", "a", "b"], 2, source=True) == (None, ["a", "b"], "local", None)
    assert plain_args(["-c", "x", "--verified", "/i", "a", "b"], 2, source=True) == ("x", ["a", "b"], "any", "/i")
    assert plain_args(["--verified=/i", "a", "b"], 2, source=True) == (None, ["a", "b"], "any", "/i")
    assert plain_args(["-c", "x", "--from", "s3", "a", "b"], 2) is None  # wal-push has no --from
    assert plain_args(["-c", "x", "--verified", "/i", "a"], 1) is None  # nor --verified
    assert plain_args(["--from", "ftp", "a", "b"], 2, source=True) is None  # argparse says what is wrong
    assert plain_args(["-c", "x", "a"], 2) is None
    assert is_segment_name("000000010000000000000001") and not is_segment_name("00000001.history")


def test_the_read_ahead_window_follows_timeline_and_segment_size() -> None:
    want = {"name": "0000000100000000000000FE", "segment_size": 16 * MB, "source": "any"}
    assert in_window(want, "0000000100000000000000FF", 8)
    assert in_window(want, "000000010000000100000000", 8)  # 256 segments of 16 MB per log file
    assert in_window(want, "000000010000000100000006", 8) and not in_window(want, "000000010000000100000007", 8)
    assert not in_window(want, "0000000100000000000000FE", 8)  # itself: already taken
    assert not in_window(want, "0000000200000000000000FF", 8)  # another timeline
    big = {"name": "00000001000000000000003F", "segment_size": 64 * MB}  # 64 segments of 64 MB per log file
    assert in_window(big, "000000010000000100000000", 1)
    assert not in_window({"name": "junk"}, "000000010000000100000000", 8)


def _spooled(spool: Path, name: str, data: bytes) -> None:
    (spool / name).write_bytes(data)
    (spool / f"{name}.json").write_text(format_record({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


def test_a_spooled_segment_is_taken_whole_or_not_at_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool, dest = tmp_path / "spool", tmp_path / "pg_wal" / "RECOVERYXLOG"
    spool.mkdir()
    dest.parent.mkdir()
    name = "000000010000000000000003"
    assert not take(str(spool), name, str(dest))  # nothing there
    (spool / name).write_bytes(b"x" * 100)  # the file without its record: still being written
    assert not take(str(spool), name, str(dest)) and not dest.exists()
    _spooled(spool, name, b"y" * 100)
    (spool / name).write_bytes(b"y" * 99)  # cut short after it was recorded
    assert not take(str(spool), name, str(dest)) and not dest.exists()
    assert "99 bytes, not the 100 archived" in capsys.readouterr().err
    assert not (spool / name).exists()  # dropped: the repository is read instead
    _spooled(spool, name, b"z" * 100)
    assert take(str(spool), name, str(dest)) and dest.read_bytes() == b"z" * 100
    assert os.listdir(spool) == []


def test_a_wait_for_the_prefetcher_ends_when_it_cannot_help(tmp_path: Path) -> None:
    spool, dest = tmp_path / "spool", tmp_path / "RECOVERYXLOG"
    spool.mkdir()
    cfg = tmp_path / "repo.yaml"
    cfg.write_text(f"version: 1\nlocal: {{path: {tmp_path / 'repo'}}}\n")
    settings = WalSettings.load(str(cfg))
    name = "000000010000000000000003"
    t0 = time.monotonic()
    assert not wait_prefetched(settings, str(spool), name, str(dest), "any")  # nothing asked for
    (spool / ".want").write_text(format_record({"name": "000000010000000000000002", "segment_size": 16 * MB,
                                             "source": "any"}))
    assert not wait_prefetched(settings, str(spool), name, str(dest), "s3")  # asked for another repository
    assert not wait_prefetched(settings, str(spool), name, str(dest), "any")  # no prefetcher holds the lock
    fd = os.open(spool / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a prefetcher at work
    try:
        assert not wait_prefetched(settings, str(spool), name, str(dest), "any")  # of an older build: no wait
        (spool / RECORDS_MARK).write_text(RECORD_MAGIC)  # one that reads our `.want`
        (spool / f"{name}.none").touch()  # ... that could not get it
        assert not wait_prefetched(settings, str(spool), name, str(dest), "any")
        assert time.monotonic() - t0 < 2  # every case above answers at once
        (spool / f"{name}.none").unlink()

        def deliver() -> None:
            time.sleep(0.3)
            _spooled(spool, name, b"w" * 10)

        threading.Thread(target=deliver).start()
        assert wait_prefetched(settings, str(spool), name, str(dest), "any") and dest.read_bytes() == b"w" * 10
    finally:
        os.close(fd)


def test_the_destination_names_every_repository_and_only_where_it_is(tmp_path: Path) -> None:
    """WalSettings.destinations: another local directory (a symbolic link followed), bucket, prefix, endpoint or
    region is another destination; credentials, encryption and tuning are not. A record confirms a segment
    only for its destination, cluster, size and sha256, and the spool is kept per destination."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "repo")
    s3 = {"bucket": "b1", "prefix": "p", "endpoint_url": "http://127.0.0.1:9000", "region": "us-east-1"}

    def dest(local: str | None = "repo", **s3_more: object) -> WalSettings:
        data: dict[str, object] = {"wal": {"spool_dir": str(tmp_path / "spool")}, "s3": {**s3, **s3_more}}
        if local:
            data["local"] = {"path": str(tmp_path / local)}
        return WalSettings(tmp_path / "r.yaml", data)

    base = dest()
    assert json.loads(base.destinations) == {"local": str(tmp_path / "repo"), "s3": s3}
    same = [dest("link"), dest(prefix="/p/"), dest(credentials_file="/x", profile="p", sse="AES256", max_attempts=9)]
    assert {s.destinations for s in same} == {base.destinations}
    others = [dest("other"), dest(None), dest(bucket="b2"), dest(prefix="q"), dest(endpoint_url="http://h:9000"),
              dest(region="eu-west-1")]
    assert len({base.destinations, *(s.destinations for s in others)}) == len(others) + 1
    assert len({push_root(s, 1, "/d/pg_wal") for s in [base, *others]}) == len(others) + 1
    assert push_root(base, 1, "/d/pg_wal") == push_root(same[0], 1, "/d/pg_wal")
    # the directories' names are what they were with hashlib (the built-in _sha256 gives the same digest)
    old = (f"push-{hashlib.sha256(b'/d/pg_wal').hexdigest()[:12]}-"
           f"{hashlib.sha256(base.destinations.encode()).hexdigest()[:12]}")
    assert push_root(base, 1, "/d/pg_wal") == os.path.join(str(tmp_path / "spool"), "1", old)
    assert short_hash("/ü/x") == hashlib.sha256("/ü/x".encode()).hexdigest()[:12]

    rec = parse_record(format_record({"sha256": "ab" * 32, "size": MB, "system_identifier": "1",
                                      "destinations": base.destinations}))
    assert rec is not None and confirms(rec, base, 1, MB, "ab" * 32)
    assert not confirms(rec, others[0], 1, MB, "ab" * 32)  # another destination
    assert not confirms(rec, base, 2, MB, "ab" * 32)  # another cluster's directory
    assert not confirms(rec, base, 1, MB, "cd" * 32)  # the file changed
    assert not confirms(rec, base, 1, MB - 1, "ab" * 32)
    assert not confirms({k: v for k, v in rec.items() if k != "destinations"}, base, 1, MB, "ab" * 32)  # old record


def test_a_local_read_opens_no_s3_client_and_a_missing_repository_is_an_error(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from steps.wal.store import open_wal_stores;"
            f"stores = open_wal_stores(Path({str(tmp_path)!r}), {{'bucket': 'b'}}, 'local');"
            "print([s.name for s in stores], 'boto3' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "['local'] False"
    with pytest.raises(RepositoryError, match="no s3 repository is configured"):
        open_wal_stores(tmp_path, None, "s3")


def test_the_hot_paths_import_neither_pydantic_boto3_psycopg_textual_nor_rich(tmp_path: Path) -> None:
    code = ("import sys; from runbook.cli.wal_fast import main; import runbook.cli.wal, steps.wal.fast, steps.wal.archive,"
            " steps.wal.spool, steps.wal.store;"
            "heavy = {'pydantic', 'boto3', 'psycopg', 'textual', 'rich', 'yaml', 'cryptography'} & set(sys.modules);"
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    code = ("import sys, runbook.launch, runbook.cli.wal_fast, runbook.cli.wal;"
            "print('runbook.cli.main' in sys.modules, 'argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False False"


def test_a_read_ahead_whose_spool_is_removed_stops_at_once(tmp_path: Path) -> None:
    """The recovering cluster and its spool were removed (a drill torn down): the prefetcher does not wait out
    worker_idle_s for a `.want` nobody will write."""
    import shutil

    from steps.wal.spool import run_prefetch_worker

    spool = tmp_path / "in-x"
    spool.mkdir()
    settings = WalSettings(tmp_path / "repository.yaml", {"local": {"path": str(tmp_path / "repo")},
                                                         "wal": {"worker_idle_s": 60}})
    done = threading.Event()
    t = threading.Thread(target=lambda: (run_prefetch_worker(settings, spool, 1), done.set()), daemon=True)
    t.start()
    time.sleep(0.3)
    assert not done.is_set()  # idle, waiting to be asked
    shutil.rmtree(spool)
    assert done.wait(5), "the prefetcher outlived its spool"

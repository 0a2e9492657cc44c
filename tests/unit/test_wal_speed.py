"""The fast WAL paths of issue 16: the read-ahead that deepens while replay waits, the confirmation that need not
hash a file the uploader saw unchanged, and the first push of a burst made by its caller while the uploader starts."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from steps.wal.fast import (
    RACY_NS,
    RECORD_MAGIC,
    RECORDS_MARK,
    confirms_unchanged,
    file_identity,
    format_record,
    parse_record,
    prefetch_cap,
    push_myself,
    read_identity,
    wait_prefetched,
    window_depth,
)
from steps.wal.settings import WalSettings
from steps.wal.spool import GROW_AFTER_WAIT_MS, _adapt_depth, _pushed_by_its_caller
from tests.conftest import ROOT

MB = 1024 * 1024


def _settings(tmp_path: Path, **wal: object) -> WalSettings:
    data: dict[str, object] = {"local": {"path": str(tmp_path / "repo")},
                               "wal": {"spool_dir": str(tmp_path / "spool"), **wal}}
    return WalSettings(tmp_path / "r.yaml", data)


def test_the_read_ahead_deepens_only_while_replay_waits_and_never_past_its_cap(tmp_path: Path) -> None:
    settings = _settings(tmp_path, prefetch=8)
    spool = tmp_path / "in"
    spool.mkdir()
    cap = prefetch_cap(settings)
    assert cap == 32 and window_depth(settings, str(spool)) == 8  # nothing published: wal.prefetch
    waits: list[float] = []
    depth = 8
    for _ in range(5):  # replay finds its segments ready: the window stays
        depth = _adapt_depth(spool, {"name": "x", "waited_ms": 0.0}, waits, depth, cap)
    depth = _adapt_depth(spool, {"name": "x", "waited_ms": GROW_AFTER_WAIT_MS}, waits, depth, cap)
    assert depth == 8 and not (spool / ".depth").exists()
    depth = _adapt_depth(spool, {"name": "x", "waited_ms": 40.0}, waits, depth, cap)  # replay waited: deeper
    assert depth == 12 and window_depth(settings, str(spool)) == 12
    depth = _adapt_depth(spool, {"name": "x", "waited_ms": "junk"}, waits, depth, cap)  # not a number: no wait
    assert depth == 12
    for _ in range(10):
        depth = _adapt_depth(spool, {"name": "x", "waited_ms": 300.0}, waits, depth, cap)
    assert depth == cap and window_depth(settings, str(spool)) == cap
    (spool / ".depth").write_text("1000")  # never trusted past the cap, nor below wal.prefetch
    assert window_depth(settings, str(spool)) == cap
    (spool / ".depth").write_text("2")
    assert window_depth(settings, str(spool)) == 8
    (spool / ".depth").write_text("junk")
    assert window_depth(settings, str(spool)) == 8


def test_a_wal_fetch_waits_for_a_segment_of_the_grown_window_only(tmp_path: Path) -> None:
    """The 12th segment after the last one asked for: waited for once the prefetcher says it reads 16 ahead,
    read from the repository at once (no wait for a segment nobody fetches) while it reads 8."""
    settings = _settings(tmp_path, prefetch=8)
    spool, dest = tmp_path / "in", tmp_path / "RECOVERYXLOG"
    spool.mkdir()
    (spool / ".want").write_text(format_record({"name": "000000010000000000000010", "segment_size": 16 * MB,
                                             "source": "any"}))
    name = "00000001000000000000001C"  # 12 after
    (spool / RECORDS_MARK).write_text(RECORD_MAGIC)
    fd = os.open(spool / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a prefetcher at work
    try:
        t0 = time.monotonic()
        assert not wait_prefetched(settings, str(spool), name, str(dest), "any")
        assert time.monotonic() - t0 < 1
        (spool / ".depth").write_text("16")

        def deliver() -> None:
            time.sleep(0.3)
            (spool / name).write_bytes(b"v" * 10)
            (spool / f"{name}.json").write_text(format_record({"size": 10, "sha256": hashlib.sha256(b"v" * 10).hexdigest()}))

        threading.Thread(target=deliver).start()
        assert wait_prefetched(settings, str(spool), name, str(dest), "any") and dest.read_bytes() == b"v" * 10
    finally:
        os.close(fd)


def test_a_confirmation_without_a_second_hash_needs_the_very_file_the_uploader_read(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    seg = tmp_path / "000000010000000000000003"
    seg.write_bytes(b"a" * 1000)
    time.sleep(RACY_NS / 1e9 + 0.01)  # as the uploader records it: a change from now on moves the ctime
    rec = parse_record(format_record({  # as the uploader writes it, as wal-push reads it
        "sha256": hashlib.sha256(b"a" * 1000).hexdigest(), "size": 1000, "system_identifier": "7",
        "destinations": settings.destinations, "identity": file_identity(os.stat(seg))}))
    assert rec is not None and rec["identity"] == " ".join(str(i) for i in file_identity(os.stat(seg)))
    assert confirms_unchanged(rec, settings, 7, str(seg))
    assert not confirms_unchanged(rec, settings, 8, str(seg))  # another cluster's directory
    assert not confirms_unchanged({**rec, "destinations": "{}"}, settings, 7, str(seg))  # another destination
    assert not confirms_unchanged({k: v for k, v in rec.items() if k != "identity"}, settings, 7, str(seg))
    assert not confirms_unchanged({**rec, "size": "999"}, settings, 7, str(seg))
    st = os.stat(seg)
    time.sleep(RACY_NS / 1e9 + 0.01)
    os.utime(seg, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same times set again: the ctime still moves
    assert not confirms_unchanged(rec, settings, 7, str(seg))
    rec["identity"] = " ".join(str(i) for i in file_identity(os.stat(seg)))
    assert confirms_unchanged(rec, settings, 7, str(seg))
    time.sleep(RACY_NS / 1e9 + 0.01)
    seg.unlink()
    seg.write_bytes(b"a" * 1000)  # the same bytes in another file: another life, hashed again by the caller
    assert not confirms_unchanged(rec, settings, 7, str(seg))
    seg.unlink()
    assert not confirms_unchanged(rec, settings, 7, str(seg))


def test_the_uploader_records_no_identity_for_a_file_that_changed_while_or_just_before_it_was_read(
        tmp_path: Path) -> None:
    seg = tmp_path / "000000010000000000000003"
    seg.write_bytes(b"a" * 1000)
    time.sleep(RACY_NS / 1e9 + 0.01)
    looked, before = time.time_ns(), os.stat(seg)
    assert read_identity(before, os.stat(seg), looked) == file_identity(before)
    seg.write_bytes(b"b" * 1000)  # changed while read
    assert read_identity(before, os.stat(seg), looked) is None
    looked, before = time.time_ns(), os.stat(seg)  # just written: a change now could keep its ctime
    assert read_identity(before, os.stat(seg), looked) is None


def test_the_uploader_leaves_a_file_to_the_wal_push_pushing_it_and_takes_it_back_when_that_one_is_gone(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    name = "000000010000000000000003"
    assert not _pushed_by_its_caller(out, name)  # nobody said anything: the uploader's
    holder = subprocess.Popen(  # a wal-push pushing the first file of a burst itself
        [sys.executable, "-c", "import sys, time; from steps.wal.fast import push_myself;"
         f"assert push_myself({str(out)!r}, {name!r}); print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert _pushed_by_its_caller(out, name)
        assert not push_myself(str(out), name)  # a second wal-push of the file does not push it beside it
    finally:
        holder.kill()
        holder.wait()
    assert (out / f"{name}.self").exists()  # killed mid-push: its marker stays, held by nobody
    assert not _pushed_by_its_caller(out, name) and not (out / f"{name}.self").exists()  # the uploader's again


@pytest.mark.parametrize("waited", [0.0, 50.0])
def test_the_request_says_how_long_replay_waited(tmp_path: Path, waited: float) -> None:
    from steps.wal.fast import request_after

    settings = _settings(tmp_path)
    spool = tmp_path / "in"
    spool.mkdir()
    fd = os.open(spool / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a prefetcher runs: none is started
    try:
        request_after(settings, str(spool), 7, None, "000000010000000000000003", 16 * MB, "local", waited)
    finally:
        os.close(fd)
    want = parse_record((spool / ".want").read_text())
    assert want == {"name": "000000010000000000000003", "segment_size": str(16 * MB), "source": "local",
                    "waited_ms": str(waited)}

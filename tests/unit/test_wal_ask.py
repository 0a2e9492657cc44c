"""The records of a wal-fetch's ask to the running prefetcher (steps.wal.ask): what is asked, what an ask is."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from steps.wal.ask import ASKS, WAKE, askable, fetch_asked, format_ask, parse_ask
from steps.wal.fast import fetch_spool
from steps.wal.settings import WalSettings


def test_only_segments_and_history_files_are_asked() -> None:
    assert askable("000000010000000000000003") and askable("0000000A.history")
    for name in ("000000010000000000000003.partial", "000000010000000000000003.00000028.backup", "0000000a.history",
                 "00000001.history.zst", "../00000001.history", "00000001000000000000000", "RECOVERYHISTORY"):
        assert not askable(name), name


def test_an_ask_is_read_back_whole_or_not_at_all() -> None:
    dest = '{"local":"/srv/repo","s3":null}'
    text = format_ask("123-456", "s3", dest)
    assert parse_ask(text) == ("123-456", "s3", dest)
    for broken in (text[:-1], text[: text.index("\n") + 1], "\n" + text, text.replace("s3", "ftp", 1),
                   text + "more\n", ""):
        assert parse_ask(broken) is None, broken


def _recovering(tmp_path: Path) -> tuple[WalSettings, str, str]:
    """(settings, the read-ahead spool, DEST) of a data directory under recovery (its pg_control's identifier)."""
    data = tmp_path / "data"
    (data / "global").mkdir(parents=True)
    (data / "pg_wal").mkdir()
    (data / "global" / "pg_control").write_bytes((7).to_bytes(8, "little") + b"\0" * 100)
    settings = WalSettings(tmp_path / "r.yaml", {"local": {"path": str(tmp_path / "repo")},
                                                 "wal": {"spool_dir": str(tmp_path / "spool")}})
    spool = fetch_spool(settings, 7, str(data))
    assert spool is not None
    return settings, spool, str(data / "pg_wal" / "RECOVERYHISTORY")


def test_no_ask_without_a_prefetcher_that_answers_asks(tmp_path: Path) -> None:
    """A prefetcher holds its lock, but no FIFO of asks has a reader (a prefetcher of an older build, or its FIFO
    left by one that is gone): nothing is asked, the full path answers at once."""
    settings, spool, dest = _recovering(tmp_path)
    fd = os.open(os.path.join(spool, ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        t0 = time.monotonic()
        assert fetch_asked(settings, "00000002.history", dest) is None
        os.makedirs(os.path.join(spool, ASKS))
        os.mkfifo(os.path.join(spool, ASKS, WAKE))  # left by a prefetcher that is gone: nobody reads it
        assert fetch_asked(settings, "00000002.history", dest) is None
        assert time.monotonic() - t0 < 1
        assert os.listdir(os.path.join(spool, ASKS)) == [WAKE]  # no ask left for nobody
    finally:
        os.close(fd)


def test_an_ask_answered_with_its_nonce_and_a_foreign_answer_ignored(tmp_path: Path) -> None:
    """The answering side played by a thread (the FIFO read, the lock held): a `.missing` of another nonce is not
    taken; the answer to this ask is; `.none` sends to the full path; so does a prefetcher that lets go."""
    settings, spool, dest = _recovering(tmp_path)
    asks = os.path.join(spool, ASKS)
    os.makedirs(asks)
    os.mkfifo(os.path.join(asks, WAKE))
    reader = os.open(os.path.join(asks, WAKE), os.O_RDONLY | os.O_NONBLOCK)
    lock = os.open(os.path.join(spool, ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    name = "00000002.history"

    def answer(kind: str, delay: float = 0.05) -> threading.Thread:
        def run() -> None:
            while not os.path.exists(os.path.join(asks, f"{name}.ask")):
                time.sleep(0.002)
            with open(os.path.join(asks, f"{name}.ask")) as f:
                ask = parse_ask(f.read())
            assert ask is not None
            os.unlink(os.path.join(asks, f"{name}.ask"))
            time.sleep(delay)
            with open(os.path.join(asks, f"{name}.{kind}"), "w") as f:
                f.write(ask[0] + "\n")
        t = threading.Thread(target=run)
        t.start()
        return t

    try:
        with open(os.path.join(asks, f"{name}.missing"), "w") as f:
            f.write("1-1\n")  # another ask's answer
        t = answer("none")
        assert fetch_asked(settings, name, dest) is None  # not the foreign miss: this ask's `.none`
        t.join()
        t = answer("missing")
        assert fetch_asked(settings, name, dest) == 1
        t.join()
        assert os.read(reader, 100) == b"\n\n"  # each ask woke the prefetcher
        os.unlink(os.path.join(asks, f"{name}.missing"))
        threading.Timer(0.3, lambda: fcntl.flock(lock, fcntl.LOCK_UN)).start()  # the prefetcher lets go without an answer
        t0 = time.monotonic()
        assert fetch_asked(settings, name, dest) is None
        assert 0.25 < time.monotonic() - t0 < 2
    finally:
        os.close(reader)
        os.close(lock)


def test_the_prefetcher_answers_as_the_full_path_would(tmp_path: Path) -> None:
    """The prefetcher's side (steps.wal.spool._AskServer) in a thread, a real local repository: a `.history` file
    found is taken byte for byte; a name the repository does not hold, with its marker, is a miss; with the
    repository gone (an empty mount point) no miss is answered. Something unexpected in `.asks` (a directory)
    does not stop it from serving."""
    from steps.wal.archive import push_data
    from steps.wal.spool import _AskServer
    from steps.wal.store import open_wal_stores

    settings, spool, dest = _recovering(tmp_path)
    history = b"1\t0/3000000\tno recovery target specified\n"
    push_data(open_wal_stores(settings.local_path, settings.s3), "00000002.history", history, 7, 1)
    os.makedirs(os.path.join(spool, ASKS, "junk"))
    lock = os.open(os.path.join(spool, ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    stop = threading.Event()
    server = _AskServer(settings, Path(spool), 7, None, {})

    def serve() -> None:
        while not stop.is_set():
            server.poll()
            server.wait(0.01)
        server.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert fetch_asked(settings, "00000002.history", dest) == 0
        assert Path(dest).read_bytes() == history
        assert fetch_asked(settings, "00000003.history", dest) == 1
        os.rename(tmp_path / "repo", tmp_path / "repo-elsewhere")
        os.mkdir(tmp_path / "repo")  # the mount point, empty
        assert fetch_asked(settings, "00000003.history", dest) is None
        assert fetch_asked(settings, "00000002.history", dest) is None
    finally:
        stop.set()
        t.join()
        os.close(lock)

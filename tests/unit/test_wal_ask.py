"""The records of a wal-fetch's ask to the running prefetcher (steps.wal.ask): what is asked, what an ask is."""

from __future__ import annotations

from steps.wal.ask import askable, format_ask, parse_ask


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

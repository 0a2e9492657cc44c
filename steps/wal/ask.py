"""`wal-fetch` asks the running prefetcher for a name it does not hold: the standard library alone (os, sys, time).

At the end of every recovery PostgreSQL asks for names that do not exist (the segment after the last one,
twice; the next timeline's `.history`; others), and a `.history` file is never in the read-ahead, which holds
segments. Each of those used to take the full path (steps.wal.archive.fetch_file): a cold process importing the
stores (from S3: boto3, a client, a GET and the marker's HEAD, ~300 ms a call). While a prefetcher runs for this
recovery (its lock held) and answers asks (its FIFO `.asks/.wake` has a reader: not a prefetcher of an older
build, which would leave the ask unanswered), it has all of that open already, so `fetch_asked`:

- writes an ask, `<spool>/.asks/NAME.ask`: three lines, a nonce (pid and time), the repository asked
  (`--from`) and the config's destinations (every repository configured: a prefetcher started with another
  config answers nothing); then a byte into the FIFO, which wakes the prefetcher's loop;
- waits (polling every 2 ms, at most ASK_WAIT_S, the prefetcher's lock probed every ASK_PROBE_S) for the
  answer carrying its nonce (steps.wal.spool answers it with steps.wal.archive.fetch_checked, exactly as the full
  path reads a name):
  `NAME.found`: the file and its record are in `.asks/`, taken as the read-ahead's are (`fast.take`: its size,
  and with `--verified` the signed sha256); `NAME.missing`: every repository said it does not exist and proved it
  is the repository (its REPOSITORY marker, or the cluster's archived WAL: steps.wal.store.proves_absence, asked
  when the answer was made); `NAME.none`: anything else.
- answers exit 1 on its own `NAME.missing` (with `--verified`: only for a name the signed ledgers do not list;
  a listed one is "deleted", which the full path refuses), 0 on a file taken, and None for everything else (the
  prefetcher gone, the bound passed, `NAME.none`, a file `take` refuses, an answer with another nonce): the full
  path then runs and gives its verdict. Nothing here can make a miss out of a file that exists or a repository
  that cannot be read: only the prefetcher's proven miss, for this very ask, is a miss.

Standard library only, and none of json, pathlib, hashlib (imports on the per-segment path cost more than the
interpreter): the records are lines of text.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: typing costs an import
if TYPE_CHECKING:
    from typing import Protocol

    class AskSettings(Protocol):
        """What the asking side reads of the config (steps.wal.settings.WalSettings has these)."""

        @property
        def destinations(self) -> str: ...
        @property
        def spool_dir(self) -> str | os.PathLike[str]: ...
        @property
        def prefetch(self) -> int: ...
        @property
        def data_directory(self) -> str | None: ...

ASKS = ".asks"  # under the read-ahead spool: the prefetcher's sweep of its window never looks in a dot-name
WAKE = ".wake"  # in ASKS: the prefetcher's FIFO; a byte written wakes its loop at once (else it looks every 10 ms)
ASK_WAIT_S = 10.0  # the longest an ask waits (the prefetcher reads with the full path's attempts and backoff)
ASK_PROBE_S = 0.1  # how often a waiting ask makes sure the prefetcher still runs
ANSWERS = ("found", "missing", "none")
_HEX = frozenset("0123456789ABCDEF")


def askable(name: str) -> bool:
    """A name the prefetcher is asked for: a segment, or a timeline history file (`NNNNNNNN.history`)."""
    if len(name) == 24:
        return set(name) <= _HEX
    return len(name) == 16 and name.endswith(".history") and set(name[:8]) <= _HEX


def format_ask(nonce: str, source: str, destinations: str) -> str:
    return f"{nonce}\n{source}\n{destinations}\n"


def parse_ask(text: str) -> tuple[str, str, str] | None:
    """(nonce, source, destinations) of an ask, or None when it is not one whole."""
    parts = text.split("\n")
    if len(parts) != 4 or parts[3] or not parts[0] or parts[1] not in ("local", "s3", "any"):
        return None
    return parts[0], parts[1], parts[2]


def _answer(asks: str, name: str, nonce: str) -> str | None:
    """Which answer the prefetcher gave to this very ask, if any yet."""
    for kind in ANSWERS:
        try:
            with open(os.path.join(asks, f"{name}.{kind}")) as f:
                if f.read().strip() == nonce:
                    return kind
        except OSError:
            continue
    return None


def _listed_or_unreadable(verified: str, name: str) -> bool:
    """With a verified index: does it list NAME (a miss is then a deletion), or can it not be read? Either way
    the full path decides (and stops recovery with the reason)."""
    from steps.wal.fast import index_lookup

    try:
        return index_lookup(verified, name)[0] is not None
    except (OSError, ValueError, UnicodeDecodeError):
        return True


def fetch_asked(settings: AskSettings, name: str, dest: str, source: str = "any",
                verified: str | None = None) -> int | None:
    """`wal-fetch NAME DEST` answered by the running prefetcher: 0 (DEST written), 1 (a proven miss), or None:
    the full path answers (no prefetcher, not askable, no answer in time, or any doubt)."""
    if settings.prefetch <= 0 or not askable(name):
        return None
    from steps.wal.fast import cluster_identity, fetch_spool, take, worker_alive, write_record

    sysid, datadir = cluster_identity(dest, settings.data_directory)
    if sysid is None or datadir is None:
        return None
    spool = fetch_spool(settings, sysid, datadir)  # type: ignore[arg-type]  # the attributes it reads are here
    if spool is None:
        return None
    lock = os.path.join(spool, ".lock")
    if not worker_alive(lock):
        return None
    asks = os.path.join(spool, ASKS)
    try:  # its FIFO open for reading: a prefetcher that answers asks (not one of an older build) runs
        wake = os.open(os.path.join(asks, WAKE), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        nonce = f"{os.getpid()}-{time.time_ns()}"
        write_record(os.path.join(asks, f"{name}.ask"), format_ask(nonce, source, settings.destinations))
        os.write(wake, b"\n")  # its loop takes the ask up at once
    except BlockingIOError:
        pass  # the pipe is full of wake-ups: it finds the ask within 10 ms
    except OSError:
        return None
    finally:
        os.close(wake)
    t0 = time.monotonic()
    deadline, next_probe = t0 + ASK_WAIT_S, t0 + ASK_PROBE_S
    gone = False
    while True:
        kind = _answer(asks, name, nonce)
        if kind == "found":
            if not take(asks, name, dest, verified):
                return None
            if len(name) == 24:  # the read-ahead goes on from here (a segment outside its window: a new timeline)
                from steps.wal.fast import request_after, segment_size_of

                request_after(settings, spool, sysid, datadir, name, segment_size_of(dest), source,  # type: ignore[arg-type]
                              (time.monotonic() - t0) * 1000)
            return 0
        if kind == "missing":
            if verified is not None and _listed_or_unreadable(verified, name):
                return None
            return 1
        if kind == "none":
            return None
        now = time.monotonic()
        if gone or now >= deadline:
            return None
        if now >= next_probe:
            gone = not worker_alive(lock)  # a prefetcher answers what it took before it lets go: one more look
            next_probe = now + ASK_PROBE_S
        time.sleep(0.002)

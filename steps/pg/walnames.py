"""WAL positions and segment names: the arithmetic base backups, retention and PITR share.

An LSN is written `X/Y` (two hex numbers, the high and low 32 bits). A segment's name is
`TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the segment number split into "log id" and the segment within
it, where one log id holds 2^32 / segment size segments. The segment size is read from the cluster
(`wal_segment_size`), never assumed to be 16 MB: tests use `initdb --wal-segsize=1`.
"""

from __future__ import annotations

import re

LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


def parse_lsn(text: str) -> int:
    m = LSN_RE.match(text.strip())
    if m is None:
        raise ValueError(f"not an LSN (X/Y in hex): {text!r}")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def _per_id(segment_size: int) -> int:
    if segment_size <= 0 or segment_size & (segment_size - 1):
        raise ValueError(f"a WAL segment size is a power of two, not {segment_size}")
    return 0x100000000 // segment_size


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    per = _per_id(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segment_number(lsn: int, segment_size: int) -> int:
    return lsn // segment_size


def parse_segment(name: str, segment_size: int) -> tuple[int, int]:
    """(timeline, segment number) of a 24-hex-digit segment name."""
    if not SEGMENT_RE.match(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    return int(name[:8], 16), int(name[8:16], 16) * _per_id(segment_size) + int(name[16:], 16)


def segments_between(timeline: int, start_lsn: int, stop_lsn: int, segment_size: int) -> list[str]:
    """The segments holding the WAL from `start_lsn` up to (not including) `stop_lsn`, on one timeline:
    what a base backup needs to become consistent."""
    first = segment_number(start_lsn, segment_size)
    last = segment_number(max(stop_lsn - 1, start_lsn), segment_size)
    return [segment_name(timeline, n, segment_size) for n in range(first, last + 1)]

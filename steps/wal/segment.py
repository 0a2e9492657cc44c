"""WAL files as PostgreSQL writes them and as the archive stores them: headers, identity, framing.

- `segment_header` reads the long page header at the start of a segment: the system identifier (bytes 24-31,
  little-endian), the segment size (bytes 32-35) and the page address, so a segment can be checked against
  the cluster it is pushed from and its own name, without trusting the file's size or name.
- `read_file` maps a segment instead of copying it (sha256 and zstd read the mapping directly).
- `pack`/`unpack`: an archived object is a zstd **skippable frame** holding a small JSON header (the name, the
  sha256 and size of the original bytes, the system identifier), then one zstd frame with its own content
  checksum. `zstd -d` skips the header and restores the file as it is; `unpack` checks every part and
  raises `CorruptWal` naming what does not match.

Only the standard library at import time; `zstandard` is imported when something is (de)compressed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKIPPABLE_MAGIC = 0x184D2A5B  # one of zstd's 16 skippable-frame magics (0x184D2A50..0x184D2A5F)
TAG = b"runbook-wal\n"
FORMAT = 1
XLP_LONG_HEADER = 0x0002
LONG_HEADER_SIZE = 40


Buffer = bytes | memoryview | mmap.mmap


class WalFileError(Exception):
    """A WAL file that cannot be what its name says (not a segment, the wrong size, another cluster)."""


class CorruptWal(Exception):
    """An archived object whose bytes do not match what was archived."""


@dataclass(frozen=True)
class SegmentHeader:
    system_identifier: int
    segment_size: int
    block_size: int
    timeline: int
    page_address: int


def segment_header(data: Buffer) -> SegmentHeader:
    """The long page header of a segment's first page (XLogLongPageHeaderData)."""
    if len(data) < LONG_HEADER_SIZE:
        raise WalFileError(f"{len(data)} bytes: too short for a WAL segment header")
    _magic, info, tli, pageaddr = struct.unpack_from("<HHIQ", data, 0)
    sysid, seg_size, blcksz = struct.unpack_from("<QII", data, 24)
    if not info & XLP_LONG_HEADER:
        raise WalFileError("the first page has no long header: not the start of a WAL segment")
    if not _power_of_two(seg_size) or not 1 << 20 <= seg_size <= 1 << 30:
        raise WalFileError(f"the header's segment size {seg_size} is not a valid WAL segment size")
    if not _power_of_two(blcksz) or not 1024 <= blcksz <= 32768:
        raise WalFileError(f"the header's block size {blcksz} is not a valid WAL block size")
    return SegmentHeader(sysid, seg_size, blcksz, tli, pageaddr)


def check_segment(name: str, data: Buffer, segno: int) -> SegmentHeader:
    """A segment's header, checked against its name and its length: the size is the header's, never assumed."""
    hdr = segment_header(data)
    if len(data) != hdr.segment_size:
        raise WalFileError(f"{name} is {len(data)} bytes but its header says segments are {hdr.segment_size} bytes "
                           "(a segment still being written, or cut short)")
    if hdr.page_address != segno * hdr.segment_size:
        raise WalFileError(f"{name}: its first page is at {hdr.page_address:X}, not where segment {name} starts "
                           f"({segno * hdr.segment_size:X}): the file was renamed or is damaged")
    return hdr


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def read_file(path: Path) -> bytes | mmap.mmap:
    """A WAL file's bytes without copying them: a read-only mapping, populated up front (a segment is
    complete and never rewritten once PostgreSQL has marked it ready). Small files are simply read."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 1 << 20:
            return f.read()
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)


# --- the archive's framing ----------------------------------------------------------------------------


def pack(name: str, data: Buffer, *, system_identifier: int, level: int = 1,
         sha256: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """The archived form of `data`: (object bytes, header)."""
    import zstandard

    digest: list[str] = [sha256] if sha256 else []
    hasher = None
    if not digest:
        # Hashing and compressing both release the GIL: on two cores the sha256 costs no wall time.
        import threading

        hasher = threading.Thread(target=lambda: digest.append(hashlib.sha256(data).hexdigest()))
        hasher.start()
    body = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True).compress(
        data  # type: ignore[arg-type]  # a mmap is a buffer too
    )
    if hasher is not None:
        hasher.join()
    meta: dict[str, Any] = {
        "format": FORMAT, "name": name, "size": len(data), "sha256": digest[0],
        "system_identifier": str(system_identifier), "compression": "zstd",
    }
    payload = TAG + json.dumps(meta, separators=(",", ":")).encode()
    return struct.pack("<II", SKIPPABLE_MAGIC, len(payload)) + payload + body, meta


def read_header(blob: bytes | memoryview) -> tuple[dict[str, Any], int]:
    """(header, offset of the zstd frame); CorruptWal when the object does not start with our header."""
    if len(blob) < 8:
        raise CorruptWal(f"{len(blob)} bytes: too short to be an archived WAL file")
    magic, n = struct.unpack_from("<II", blob, 0)
    if magic != SKIPPABLE_MAGIC or n > 65536 or len(blob) < 8 + n:
        raise CorruptWal("no runbook WAL header at the start of the object")
    payload = bytes(blob[8:8 + n])
    if not payload.startswith(TAG):
        raise CorruptWal("no runbook WAL header at the start of the object")
    try:
        meta = json.loads(payload[len(TAG):])
    except ValueError:
        raise CorruptWal("the object's header is not readable") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("sha256"), str):
        raise CorruptWal(f"unknown header format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta, 8 + n


def unpack(blob: bytes | memoryview, name: str) -> tuple[bytes, dict[str, Any]]:
    """The original bytes of an archived object, checked: header, zstd frame, size and sha256."""
    import zstandard

    meta, offset = read_header(blob)
    if meta.get("name") != name:
        raise CorruptWal(f"the object holds {meta.get('name')!r}, not {name}")
    try:
        data = zstandard.ZstdDecompressor().decompress(blob[offset:], max_output_size=int(meta["size"]) or 1)
    except zstandard.ZstdError as e:
        raise CorruptWal(f"the compressed data is damaged ({e})") from None
    if len(data) != meta["size"]:
        raise CorruptWal(f"{len(data)} bytes after decompression, the header says {meta['size']}")
    got = hashlib.sha256(data).hexdigest()
    if got != meta["sha256"]:
        raise CorruptWal(f"sha256 {got} after decompression, archived as {meta['sha256']}")
    return data, meta

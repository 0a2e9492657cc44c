"""The mirror's keys in the repository (steps.mirror describes them) and the sizes a reader accepts."""

from __future__ import annotations

import re

PREFIX = "runs/"
CHUNK_RE = re.compile(r"^(\d{6,})-(\d{6,})-(\d{6,})\.jsonl$")
MAX_CHUNK_BYTES = 16 * 1024 * 1024  # a chunk larger than this is refused unread (a journal line is small)
MAX_LIVE_BYTES = 64 * 1024


def journal_prefix(run_id: str) -> str:
    return f"{PREFIX}{run_id}/journal/"


def live_key(run_id: str) -> str:
    return f"{PREFIX}{run_id}/live.json"


def chunk_key(run_id: str, number: int, first: int, last: int) -> str:
    return f"{journal_prefix(run_id)}{number:06d}-{first:06d}-{last:06d}.jsonl"

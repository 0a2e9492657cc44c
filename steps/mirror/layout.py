"""The mirror's keys in the repository (steps.mirror describes them) and the sizes a reader accepts."""

from __future__ import annotations

import re

PREFIX = "runs/"
# <chunk>-<first>-<last>.jsonl, or encrypted (the repository says encrypt: true): <chunk>-<first>-<last>.<epoch>.jsonl.age
CHUNK_RE = re.compile(r"^(\d{6,})-(\d{6,})-(\d{6,})(?:\.jsonl|\.(\d{8}T\d{6}Z-[0-9a-f]{8})\.jsonl\.age)$")
MAX_CHUNK_BYTES = 16 * 1024 * 1024  # a chunk larger than this is refused unread (a journal line is small)
MAX_LIVE_BYTES = 64 * 1024
# the run's copy of its runbook: runbook.yaml, or encrypted: runbook.<epoch>.yaml.age (written once, at the start)
RUNBOOK_RE = re.compile(r"^runbook(?:\.yaml|\.(\d{8}T\d{6}Z-[0-9a-f]{8})\.yaml\.age)$")
MAX_RUNBOOK_BYTES = 4 * 1024 * 1024  # a runbook copy larger than this is refused unread


def journal_prefix(run_id: str) -> str:
    return f"{PREFIX}{run_id}/journal/"


def live_key(run_id: str) -> str:
    return f"{PREFIX}{run_id}/live.json"


def chunk_key(run_id: str, number: int, first: int, last: int, epoch: str | None = None) -> str:
    """A chunk's key: in clear, or age-encrypted to the data key of `epoch` (steps.crypto.epochs)."""
    tail = f".{epoch}.jsonl.age" if epoch else ".jsonl"
    return f"{journal_prefix(run_id)}{number:06d}-{first:06d}-{last:06d}{tail}"


def run_prefix(run_id: str) -> str:
    return f"{PREFIX}{run_id}/"


def runbook_key(run_id: str, epoch: str | None = None) -> str:
    """The key of the run's runbook copy: in clear, or age-encrypted to the data key of `epoch`."""
    return f"{run_prefix(run_id)}runbook" + (f".{epoch}.yaml.age" if epoch else ".yaml")

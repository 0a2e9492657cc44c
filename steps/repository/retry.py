"""Retries with exponential backoff and jitter, for operations that a transient fault may break.

Requests to S3 are retried by botocore itself (standard mode); this is for what it cannot retry, such
as a download whose body stream breaks half-way: the whole object is read again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delays(attempts: int, base_s: float = 0.5, cap_s: float = 20.0) -> list[float]:
    """Full-jitter exponential delays between `attempts` tries (one fewer than attempts)."""
    return [random.uniform(0, min(cap_s, base_s * 2**i)) for i in range(max(attempts - 1, 0))]


def retry(
    fn: Callable[[], T],
    *,
    attempts: int,
    transient: Callable[[BaseException], bool],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    base_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn` until it returns, at most `attempts` times; only errors `transient` accepts are retried."""
    delays = backoff_delays(attempts, base_s)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - filtered by `transient`, re-raised otherwise
            if attempt >= attempts or not transient(e):
                raise
            delay = delays[attempt - 1]
            if on_retry is not None:
                on_retry(attempt, e, delay)
            sleep(delay)
    raise AssertionError("unreachable")

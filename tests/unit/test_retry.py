"""Retries with backoff: transient errors are retried a bounded number of times, others never."""

from __future__ import annotations

import pytest

from steps.repository.retry import backoff_delays, retry


def test_delays_are_bounded_jittered_and_one_fewer_than_attempts() -> None:
    for attempts in (0, 1, 2, 6):
        delays = backoff_delays(attempts, base_s=0.5, cap_s=3.0)
        assert len(delays) == max(attempts - 1, 0)
        assert all(0 <= d <= min(3.0, 0.5 * 2**i) for i, d in enumerate(delays))


def test_a_transient_error_is_retried_until_it_succeeds() -> None:
    calls, slept, seen = [], [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    out = retry(flaky, attempts=5, transient=lambda e: isinstance(e, ConnectionError),
                on_retry=lambda n, e, d: seen.append((n, str(e))), sleep=slept.append)
    assert out == "ok" and len(calls) == 3 and len(slept) == 2
    assert seen == [(1, "reset"), (2, "reset")]


def test_the_last_transient_error_is_raised_after_the_last_attempt() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ConnectionError(f"try {len(calls)}")

    with pytest.raises(ConnectionError, match="try 3"):
        retry(broken, attempts=3, transient=lambda e: True, sleep=lambda s: None)
    assert len(calls) == 3


def test_an_error_that_is_not_transient_is_raised_at_once() -> None:
    calls = []

    def wrong() -> None:
        calls.append(1)
        raise PermissionError("denied")

    with pytest.raises(PermissionError):
        retry(wrong, attempts=5, transient=lambda e: isinstance(e, ConnectionError), sleep=lambda s: None)
    assert len(calls) == 1

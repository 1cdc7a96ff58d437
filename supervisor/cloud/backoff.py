"""The one retry delay rule of the binder (spec §10.3-§10.5, reference ``lib/backoff.ts``).

``min(min_s x 2^n, max_s)`` after the n-th failure in a row, spread over its upper half at random
(x 0.5-1.0): the reference's delay is deterministic, so every device that failed in one outage
would come back at the same instants; the jitter spreads a fleet's return (tests/bench/bench_fleet.py).
A server's ``Retry-After`` replaces
the computed delay: it is read as **seconds**, as RFC 9110 and the server (cloud-api.md §0.6) say;
the reference uses the number as milliseconds, which retries 1000x too early (docs/API.md).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from time import time

#: A Retry-After longer than this is taken as this (a broken header must not park a device for days).
MAX_RETRY_AFTER_S = 3600.0


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After``: delta-seconds or an HTTP date; None when absent or unusable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(when - time(), 0.0), MAX_RETRY_AFTER_S)


class Backoff:
    """Failure counter and delay; ``min_s``/``max_s`` are read at every call (config may change)."""

    def __init__(self, min_s: Callable[[], float], max_s: Callable[[], float]) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.failures = 0

    def next(self, retry_after: float | None = None) -> float:
        """The delay after one more failure."""
        self.failures += 1
        if retry_after is not None:
            return retry_after
        delay = min(self.min_s() * 2 ** (self.failures - 1), max(self.max_s(), self.min_s()))
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.failures = 0

"""The one retry delay rule of the binder (spec §10.3-§10.5, reference ``lib/backoff.ts``).

``min(min_s x 2^n, max_s)`` after the n-th failure in a row, spread over its upper half at random
(x 0.5-1.0): the reference's delay is deterministic, so every device that failed in one outage
would come back at the same instants; the jitter spreads a fleet's return (tests/bench/bench_fleet.py).
A server's ``Retry-After`` replaces
the computed delay: it is read as **seconds**, as RFC 9110 and the server (cloud-api.md §0.6) say;
the reference uses the number as milliseconds, which retries 1000x too early (docs/API.md).
"""

from __future__ import annotations

import logging
import random
import time as _time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from time import time

log = logging.getLogger(__name__)

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


class Retry:
    """The retry loop of one kind of cloud request (the state report, the tags report): a failed
    attempt gives the delay before the next (the Backoff's, or the server's Retry-After) and is
    logged with it; a success resets the count. ``what`` completes "Could not ..." in the log."""

    def __init__(self, what: str, min_s: Callable[[], float], max_s: Callable[[], float]) -> None:
        self.what = what
        self.backoff = Backoff(min_s, max_s)
        self.last_error: str | None = None

    def attempt(self, request: Callable[[], object]) -> float | None:
        """Run ``request``; None when it succeeded, else the seconds to wait before trying again.
        Only a CloudRequestError is a failed attempt; anything else propagates."""
        from .client import CloudRequestError

        try:
            request()
        except CloudRequestError as exc:
            delay = self.backoff.next(exc.retry_after)
            self.last_error = str(exc)
            log.warning("Could not %s (%s), retrying in %.1fs", self.what, exc, delay)
            return delay
        self.backoff.reset()
        self.last_error = None
        return None


def spacing(last: float, minimum: float) -> float:
    """Seconds still to wait so that requests stay ``minimum`` apart after one at ``last``
    (``time.monotonic()``); 0 when they already are."""
    return max(0.0, minimum - (_time.monotonic() - last))

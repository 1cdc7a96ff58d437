"""Current-state reports (spec §10.4, §2.3; cloud-api.md §3): ``PATCH /device/v3/state``.

What is sent is the shallow diff (per device field; ``apps`` as a whole) against the last
*successful* report, at most one every 10 s and one at a time (this thread is the only sender);
a diff of metrics only waits until 300 s after the last report, and bucketed metrics keep their
reported value while they stay in their bucket. After each success the whole reported state is
written to ``/tmp/balena-supervisor/state-report-cache``, so the first report after a restart is
a diff too. Failures back off (15 s doubling to the poll interval; ``Retry-After`` in seconds).

One departure from the reference: it prunes empty objects from the diff, so a device whose last
app went away never sends ``apps: {}`` and the dashboard keeps showing the removed services. Here
``apps`` is sent whenever it changed, empty included (docs/API.md).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import remove_orphans, write_atomic
from ..subsystem import Subsystem
from .backoff import Retry, spacing
from .client import ApiClient
from .metrics import METRIC_KEYS, with_hysteresis
from .timing import Timing

log = logging.getLogger(__name__)

_MISSING = object()


def shallow_diff(last: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The device fields of ``current`` that differ from ``last`` (removed ones are not sent)."""
    return {k: v for k, v in current.items() if last.get(k, _MISSING) != v}


class StateReporter(Subsystem):
    """Thread ``cloud-report``. ``current()`` is the device's state without metrics;
    ``metrics()`` the system metrics (None to leave them out, e.g. metrics disabled)."""

    name = "cloud-report"

    def __init__(
        self,
        client: ApiClient,
        *,
        uuid: Callable[[], str],
        key: Callable[[], str | None],
        current: Callable[[], dict[str, Any]],
        metrics: Callable[[], dict[str, Any]],
        poll_interval_s: Callable[[], float],
        timing: Timing,
        cache_path: Path,
    ) -> None:
        super().__init__()
        self.client = client
        self.uuid = uuid
        self.key = key
        self.current = current
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.timing = timing
        self.cache_path = cache_path
        self._cond = threading.Condition()
        self._changed = True
        self._last: dict[str, Any] = {}
        self._last_sent = float("-inf")  # monotonic time of the last successful report
        self.sent = 0
        self.retry = Retry("report the device state", lambda: self.timing.backoff_min, self.poll_interval_s)

    # ------------------------------------------------------------------ any thread
    def changed(self) -> None:
        """Something the report shows may have changed: report it when allowed."""
        with self._cond:
            self._changed = True
            self._cond.notify_all()

    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def last_report(self) -> dict[str, Any]:
        return dict(self._last)

    # ------------------------------------------------------------------ the thread
    def _load_cache(self) -> None:
        remove_orphans(self.cache_path)  # at load: an unchanged report is never written again
        try:
            cached = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if (
            isinstance(cached, dict)
            and cached.get("uuid") == self.uuid()
            and isinstance(cached.get("report"), dict)
        ):
            self._last = cached["report"]

    def run(self) -> None:
        self._load_cache()
        while not self.stopping:
            # The 10 s timer: deferred changes and the metrics report go out on it (§10.4).
            if self.wait_on(self._cond, lambda: self._changed, self.timing.report_min_interval):
                return
            if self.wait(spacing(self._last_sent, self.timing.report_min_interval)):
                return
            try:
                delay = self.retry.attempt(self.report_once)
            except Exception:  # a bug building the report: log it, keep the thread alive
                log.exception("Could not build the state report")
                delay = self.timing.backoff_min
            if delay is not None:
                with self._cond:
                    self._changed = True  # what was not sent is still to send
                if self.wait(delay):
                    return

    @property
    def last_error(self) -> str | None:
        """The last failed report's error, None once one succeeded."""
        return self.retry.last_error

    def build(self) -> dict[str, Any]:
        """The current state to report: device fields, apps, bucketed metrics."""
        current = dict(self.current())
        metrics = self.metrics()
        if metrics:
            current.update(with_hysteresis(metrics, self._last))
        return current

    def report_once(self) -> bool:
        """Send the diff if there is one to send now; True when a report went out."""
        with self._cond:
            self._changed = False
        current = self.build()
        diff = shallow_diff(self._last, current)
        if not diff:
            return False
        metrics_only = set(diff) <= set(METRIC_KEYS)
        if metrics_only and time.monotonic() - self._last_sent < self.timing.metrics_interval:
            return False
        uuid = self.uuid()
        self.client.request("PATCH", "/device/v3/state", key=self.key(), json={uuid: diff})
        self._last, self._last_sent = current, time.monotonic()
        self.sent += 1
        try:
            write_atomic(self.cache_path, json.dumps({"uuid": uuid, "report": current}, sort_keys=True))
        except OSError as exc:
            log.warning("Could not write the state report cache %s: %s", self.cache_path, exc)
        return True

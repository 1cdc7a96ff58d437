"""The supervisor's own metrics, served at ``GET /metrics`` in the Prometheus text format (issue #17).

The subsystems count into plain Python numbers under one lock (an increment costs a dict update, so the
reconcile loop's no-op round does not notice it, ``tests/bench/bench_reconcile.py``). prometheus_client
is imported only when ``/metrics`` is first scraped: it writes the exposition format (escaping, types,
``_total``/``_bucket`` suffixes) so we do not hand-write it, and a device nobody scrapes never loads it.
Each :class:`Metrics` (one per supervisor) has its own ``CollectorRegistry``: nothing global, so tests
run several supervisors in one process.

What is counted (names without the ``supervisor_`` prefix; table :data:`FAMILIES`):

* ``reconcile_rounds`` / ``reconcile_round_seconds``: each plan + batch of the state engine;
* ``steps{kind,outcome}``: every executed step by its action name (``fetch``, ``start``, ...);
* ``pulled_bytes`` / ``delta_bytes``: image bytes downloaded by ``docker pull`` (as the engine reports
  per layer) and delta artifacts downloaded;
* ``log_lines_received`` / ``log_lines_sent{backend}`` / ``log_lines_dropped{backend}``: the log
  pipeline (the local backend, ``/v2/local/logs``, today; the cloud backend counts with ``backend=cloud``);
* ``api_requests{route,method,status}``: one per request, by its Flask route (never the raw path, which
  may carry ids without bound);
* ``lock_waits`` / ``lock_wait_seconds``: takes of an app's process lock that had to wait;
* ``resident_memory_bytes``, ``threads``, ``open_streams``: read at scrape time; prometheus_client's
  process collector adds ``process_*`` (CPU, fds, start time).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

PREFIX: Final = "supervisor_"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: name -> (type, help, label names). Counters get ``_total`` from prometheus_client.
FAMILIES: Final[dict[str, tuple[str, str, tuple[str, ...]]]] = {
    "reconcile_rounds": ("counter", "State engine rounds (plan and run one batch)", ()),
    "reconcile_round_seconds": ("histogram", "Duration of a state engine round", ()),
    "steps": ("counter", "Executed steps by action and outcome (ok, failed)", ("kind", "outcome")),
    "pulled_bytes": ("counter", "Image bytes downloaded by pulls, as the engine reports them", ()),
    "delta_bytes": ("counter", "Delta artifact bytes downloaded", ()),
    "log_lines_received": ("counter", "Log lines that entered the log pipeline", ()),
    "log_lines_sent": ("counter", "Log lines handed to a backend's reader", ("backend",)),
    "log_lines_dropped": ("counter", "Log lines a backend dropped (slow reader, full buffer)", ("backend",)),
    "api_requests": ("counter", "API requests by route, method and status", ("route", "method", "status")),
    "lock_waits": ("counter", "Update lock takes that had to wait for another holder", ()),
    "lock_wait_seconds": ("counter", "Time spent waiting for update locks", ()),
}
#: Upper bounds (seconds) of the round-duration histogram: a no-op round is milliseconds, a pull minutes.
ROUND_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """Counters of one supervisor. ``gauges`` are read at scrape time (name -> (help, callable))."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in FAMILIES}
        self._buckets = [0] * (len(ROUND_BUCKETS) + 1)
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {
            "resident_memory_bytes": ("Resident set size of the supervisor process", resident_bytes),
            "threads": ("Threads of the supervisor process", thread_count),
            **(gauges or {}),
        }
        self._registry: Any = None

    def inc(self, name: str, value: float = 1, *labels: str) -> None:
        """Add ``value`` to a counter (labels in :data:`FAMILIES` order)."""
        with self._lock:
            series = self._values[name]
            series[labels] = series.get(labels, 0) + value

    def round_done(self, seconds: float) -> None:
        """One state engine round that took ``seconds``."""
        index = next((i for i, bound in enumerate(ROUND_BUCKETS) if seconds <= bound), len(ROUND_BUCKETS))
        with self._lock:
            rounds = self._values["reconcile_rounds"]
            rounds[()] = rounds.get((), 0) + 1
            durations = self._values["reconcile_round_seconds"]
            durations[()] = durations.get((), 0.0) + seconds
            self._buckets[index] += 1

    def value(self, name: str, *labels: str) -> float:
        with self._lock:
            return self._values[name].get(labels, 0)

    # scraping ---------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The exposition text of everything counted so far."""
        from prometheus_client import generate_latest

        return generate_latest(self._ensure_registry())

    def _ensure_registry(self) -> Any:
        with self._lock:
            if self._registry is None:
                from prometheus_client import CollectorRegistry, ProcessCollector

                registry = CollectorRegistry(auto_describe=False)
                registry.register(_Collector(self))
                ProcessCollector(registry=registry)
                self._registry = registry
            return self._registry

    def _snapshot(self) -> tuple[dict[str, dict[tuple[str, ...], float]], list[int]]:
        with self._lock:
            return {name: dict(series) for name, series in self._values.items()}, list(self._buckets)


class _Collector:
    """prometheus_client's custom-collector protocol over a :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        values, buckets = self._metrics._snapshot()
        for name, (kind, help_text, labels) in FAMILIES.items():
            series = values[name]
            if kind == "histogram":
                cumulative, total = [], 0
                for bound, count in zip((*map(str, ROUND_BUCKETS), "+Inf"), buckets, strict=True):
                    total += count
                    cumulative.append((bound, total))
                yield HistogramMetricFamily(PREFIX + name, help_text, buckets=cumulative,
                                            sum_value=series.get((), 0.0))
                continue
            family = CounterMetricFamily(PREFIX + name, help_text, labels=list(labels))
            if not labels:
                family.add_metric([], series.get((), 0))
            for key, value in sorted(series.items()):
                if labels:
                    family.add_metric(list(key), value)
            yield family
        for name, (help_text, read) in self._metrics.gauges.items():
            yield GaugeMetricFamily(PREFIX + name, help_text, value=read())


def resident_bytes() -> float:
    """VmRSS from ``/proc/self/status`` (what ``ps`` and the footprint benchmark read)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0.0


def thread_count() -> float:
    """The process's OS threads (``/proc/self/task``), waitress's and the Docker SDK's included."""
    return len(os.listdir("/proc/self/task"))

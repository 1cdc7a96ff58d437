"""Base class for the supervisor's blocking subsystems.

Each subsystem owns one thread with a clear ``start``/``stop`` and a heartbeat. ``/v1/healthy`` asks
every subsystem whether its thread is alive and has beaten recently; a loop that waits must do it
through :meth:`Subsystem.wait`, which beats while it waits, so an idle subsystem is never "stuck".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Subsystem:
    """One blocking worker thread. Override :meth:`run`; loop until :meth:`wait` returns True."""

    name: str = "subsystem"
    #: Seconds without a heartbeat after which a running subsystem counts as stuck.
    stuck_after: float = 120.0

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = time.monotonic()
        self._error: BaseException | None = None

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._stopping.clear()
        self.beat()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Ask the thread to stop and join it; returns False if it did not stop in time."""
        self._stopping.set()
        self.on_stop()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def on_stop(self) -> None:
        """Hook to interrupt a blocking call (close a socket, kill a child); runs in the caller."""

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _main(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - reported by healthy(), logged here
            self._error = exc
            log.exception("%s crashed", self.name)

    def run(self) -> None:
        """The thread body. The default idles until stopped."""
        while not self.wait(self.stuck_after / 4):
            pass

    # health ----------------------------------------------------------------------------------
    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def wait(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds (beating meanwhile); True when asked to stop."""
        deadline = time.monotonic() + timeout
        slice_ = max(0.05, self.stuck_after / 4)
        while True:
            self.beat()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._stopping.is_set()
            if self._stopping.wait(min(remaining, slice_)):
                return True

    def wait_on(self, cond: threading.Condition, predicate: Callable[[], bool] | None = None,
                timeout: float | None = None) -> bool:
        """Wait (beating) on ``cond`` until ``predicate()`` holds or ``timeout`` passes.

        ``predicate`` is checked under the condition's lock. Returns True when asked to stop. Unlike
        :meth:`wait`, a ``cond.notify()`` from a request wakes it at once; ``on_stop`` should notify
        too, so stopping is prompt.
        """
        end = None if timeout is None else time.monotonic() + timeout
        slice_ = max(0.05, self.stuck_after / 4)
        with cond:
            while True:
                self.beat()
                if self.stopping:
                    return True
                if predicate is not None and predicate():
                    return False
                remaining = slice_ if end is None else min(slice_, end - time.monotonic())
                if remaining <= 0:
                    return False
                cond.wait(remaining)

    def health(self) -> tuple[bool, str]:
        """(healthy, reason). Healthy means the thread is alive and beat within ``stuck_after``."""
        if self._thread is None:
            return False, f"{self.name} not started"
        if not self._thread.is_alive():
            if self._error is not None:
                return False, f"{self.name} crashed: {self._error!r}"
            return False, f"{self.name} stopped"
        silent = time.monotonic() - self._last_beat
        if silent > self.stuck_after:
            return False, f"{self.name} stuck for {silent:.0f}s"
        return True, "ok"

"""Rebooting and shutting the device down (spec §1.4 ``/v1/reboot``, ``/v1/shutdown``).

The API decides *whether* (update locks, the HUP guard: ``supervisor/state/actions.py``); a
:class:`PowerBackend` does it. On balenaOS that is logind over D-Bus, which arrives with host
integration; until then :class:`StubPowerBackend` records each request and logs it, so the API's
behaviour (codes, bodies, locks) is complete and testable without touching the machine.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

__all__ = ["PowerBackend", "PowerRequest", "StubPowerBackend"]


class PowerBackend(Protocol):
    """Asks the host to reboot or power off. Must return promptly: the HTTP answer (202) is sent
    after it returns, and a real backend delays the host call itself (the reference waits 1 s)."""

    def reboot(self) -> None: ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class PowerRequest:
    action: str  # "reboot" or "shutdown"
    at: float  # epoch seconds


class StubPowerBackend:
    """Records requests instead of acting on them (no host integration yet)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[PowerRequest] = []

    def reboot(self) -> None:
        self._record("reboot")

    def shutdown(self) -> None:
        self._record("shutdown")

    @property
    def requests(self) -> list[PowerRequest]:
        with self._lock:
            return list(self._requests)

    def _record(self, action: str) -> None:
        with self._lock:
            self._requests.append(PowerRequest(action, time.time()))
        log.warning("Power backend stub: %s requested; no host integration yet, nothing done", action)

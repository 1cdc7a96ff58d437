"""Rebooting and shutting the device down (spec §1.4 ``/v1/reboot``, ``/v1/shutdown``, §6.4).

The API and the state engine decide *whether* (update locks, the HUP guard: ``state/actions.py``);
:class:`Power` does it, as the reference's ``deviceState.shutdown``:

1. ``check``: logind is asked ``CanReboot``/``CanPowerOff`` first, so a device that cannot reboot (no
   system bus, no logind, ``no``/``na``) answers the request with an error instead of a 202 for
   nothing.
2. The state engine stops taking new batches and the API stops accepting connections (requests on
   open connections get 503): "when the device is about to reboot, close the API server and avoid
   applying updates". The 202 goes out on its own connection.
3. One second later (the reference's ``setTimeout(1000)``, so the reply is out) logind's
   ``Reboot(false)``/``PowerOff(false)``.
4. Beyond the reference: when logind fails, the failure is logged (``Unable to reboot: ...``) and kept
   as :attr:`Power.last_error`, and the API and the state engine come back, where the reference stays
   closed for good.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .dbus import HostUnavailableError, Login

log = logging.getLogger(__name__)

__all__ = ["LogindBackend", "Power", "PowerBackend", "PowerFailure", "PowerUnavailableError"]

#: Between the request and the logind call: the reference's 1 s, so the HTTP reply goes out first.
DELAY_S = 1.0


class PowerUnavailableError(RuntimeError):
    """The device cannot reboot or power off now; the message says why (the API's 500 body)."""


class PowerBackend(Protocol):
    """What actually reboots: logind on a device, a recording double in some tests."""

    def check(self, reboot: bool) -> None:
        """Raise :class:`PowerUnavailableError` when the action cannot be done."""

    def act(self, reboot: bool) -> None:
        """Do it now; raise on failure."""


class LogindBackend:
    """``org.freedesktop.login1`` over the shared system bus."""

    def __init__(self, login: Login) -> None:
        self.login = login

    def check(self, reboot: bool) -> None:
        what = "reboot" if reboot else "shut down"
        try:
            answer = self.login.can(reboot)
        except HostUnavailableError as err:
            self.login.bus.unavailable("Reboot and shutdown", err)
            raise PowerUnavailableError(f"Cannot {what}: {err}") from err
        except Exception as err:  # logind answered with an error
            raise PowerUnavailableError(f"Cannot {what}: logind: {err}") from err
        if answer not in ("yes", "challenge"):
            raise PowerUnavailableError(f"Cannot {what}: logind answers {answer!r}")

    def act(self, reboot: bool) -> None:
        self.login.act(reboot)


@dataclass(frozen=True)
class PowerFailure:
    action: str  # "reboot" or "shutdown"
    message: str
    at: float  # epoch seconds


class Power:
    """The reboot/shutdown sequence around a :class:`PowerBackend`.

    ``hold``/``release`` stop and restart the work that must not run while the device goes down
    (the state engine's batches and the API's listener); both are called from the power thread."""

    def __init__(self, backend: PowerBackend, *, hold: Callable[[], None], release: Callable[[], None],
                 delay: float = DELAY_S) -> None:
        self.backend = backend
        self._hold = hold
        self._release = release
        self.delay = delay
        self._lock = threading.Lock()
        self._going_down: str | None = None
        self.last_error: PowerFailure | None = None

    @property
    def going_down(self) -> str | None:
        """``"reboot"``/``"shutdown"`` between an accepted request and a logind failure, else None."""
        return self._going_down

    def request(self, reboot: bool) -> None:
        """Check now (raises :class:`PowerUnavailableError`), then go down in the background."""
        action = "reboot" if reboot else "shutdown"
        self.backend.check(reboot)
        with self._lock:
            if self._going_down is not None:
                log.info("A %s is already under way", self._going_down)
                return
            self._going_down = action
        self._hold()
        threading.Thread(target=self._go, args=(reboot, time.monotonic()), name="power", daemon=True).start()

    def _go(self, reboot: bool, since: float) -> None:
        action = "reboot" if reboot else "shutdown"
        time.sleep(max(0.0, since + self.delay - time.monotonic()))
        try:
            self.backend.act(reboot)
        except Exception as err:
            log.error("Unable to %s: %s", action, err)
            self.last_error = PowerFailure(action, str(err), time.time())
            with self._lock:
                self._going_down = None
            self._release()
            log.info("The API and the state engine are back after the failed %s", action)
            return
        log.info("The host accepted the %s", action)

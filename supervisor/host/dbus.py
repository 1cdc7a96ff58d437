"""The system D-Bus: one shared connection and the exact calls the supervisor makes (spec §6.4).

sdbus (python-sdbus, sd-bus from libsystemd) is the client: a well-kept binding of the library systemd
itself uses, so names, signatures and error names behave exactly as on balenaOS. It is imported only
when the first call is made (``_interfaces``), so a supervisor that never talks to the host pays nothing.

* The bus address is ``DBUS_SYSTEM_BUS_ADDRESS`` (balenaOS passes the host's socket; sd-bus reads the
  variable itself), else the default system socket.
* One connection is shared by every thread. sd-bus connections are not thread safe, so every call
  holds :attr:`SystemBus.lock`; a call that finds the connection broken reconnects once.
* Without a bus each feature says once (WARNING) what it cannot do, then DEBUG: :meth:`SystemBus.unavailable`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

SYSTEMD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
LOGIN = ("org.freedesktop.login1", "/org/freedesktop/login1")
HOSTNAME = ("org.freedesktop.hostname1", "/org/freedesktop/hostname1")
#: The error systemd answers ``GetUnit`` with for a unit that is not loaded.
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
#: Job mode of every unit start/stop/restart (the reference's ``"fail"``).
JOB_MODE = "fail"


class HostUnavailableError(RuntimeError):
    """A host call that cannot be made: no system bus, or the service is not on it."""


class UnitNotLoadedError(RuntimeError):
    """``GetUnit`` of a unit systemd has not loaded (``org.freedesktop.systemd1.NoSuchUnit``)."""


class DbusCallError(RuntimeError):
    """A call the service answered with an error; ``name`` is the D-Bus error name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{message} ({name})" if message else name)
        self.name = name


def bus_address() -> str:
    """Where the system bus is looked for (for messages; sd-bus reads the variable itself)."""
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"


class SystemBus:
    """The shared system-bus connection, opened on first use and re-opened after a failure."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._bus: Any = None
        self._said: set[str] = set()

    def call(self, service: str, fn: Callable[[Any], T]) -> T:
        """``fn(bus)`` under the lock, sdbus errors mapped: :class:`HostUnavailableError` when the
        bus or ``service`` is not there, :class:`UnitNotLoadedError`, else :class:`DbusCallError`."""
        from . import _interfaces as dbus

        with self.lock:
            for attempt in (1, 2):
                bus = self._connect()
                try:
                    return fn(bus)
                except dbus.sdbus.DbusDisconnectedError:
                    self._bus = None
                    if attempt == 2:
                        raise HostUnavailableError(f"the system bus at {bus_address()} went away") from None
                except (dbus.sdbus.DbusServiceUnknownError, dbus.sdbus.DbusNameHasNoOwnerError) as err:
                    raise HostUnavailableError(f"{service} is not on the system bus") from err
                except dbus.NoSuchUnitError as err:
                    raise UnitNotLoadedError(_message(err)) from err
                except dbus.sdbus.DbusFailedError as err:  # an error name sdbus knows
                    raise DbusCallError(type(err).dbus_error_name, _message(err)) from err
                except dbus.sdbus.SdBusUnmappedMessageError as err:  # any other: args (name, message)
                    name, message = (tuple(err.args) + ("", ""))[:2]
                    raise DbusCallError(str(name), str(message)) from err
                except dbus.sdbus.SdBusLibraryError as err:  # the connection broke under us
                    self._bus = None
                    if attempt == 2:
                        raise HostUnavailableError(f"system bus call failed: {err}") from err
        raise AssertionError("unreachable")

    def _connect(self) -> Any:
        from . import _interfaces as dbus

        if self._bus is None:
            try:
                self._bus = dbus.sdbus.sd_bus_open_system()
            except Exception as err:  # SdBusLibraryError: errno only, e.g. 2 for a missing socket
                raise HostUnavailableError(f"no system bus at {bus_address()} ({_errno_text(err)})") from None
        return self._bus

    def unavailable(self, feature: str, err: Exception) -> None:
        """Say once (per feature) what cannot be done and why; DEBUG afterwards."""
        with self.lock:
            first = feature not in self._said
            self._said.add(feature)
        log.log(logging.WARNING if first else logging.DEBUG, "%s: %s", feature, err)

    def close(self) -> None:
        with self.lock:
            bus, self._bus = self._bus, None
        if bus is not None:
            try:
                bus.close()
            except Exception:  # closing a broken connection: nothing to do
                log.debug("Closing the system bus failed", exc_info=True)


def _message(err: BaseException) -> str:
    args = getattr(err, "args", ())
    return str(args[0]) if args else str(err)


def _errno_text(err: BaseException) -> str:
    text = str(err)
    marker = "error number: "
    if marker in text:
        try:
            return os.strerror(int(text.rsplit(marker, 1)[1].split()[0]))
        except (ValueError, IndexError):
            pass
    return text


# ------------------------------------------------------------------------------ the services
class Systemd:
    """``org.freedesktop.systemd1``: unit lookup, properties and jobs (spec §6.4)."""

    def __init__(self, bus: SystemBus) -> None:
        self.bus = bus

    def _manager(self, bus: Any) -> Any:
        from ._interfaces import SystemdManager

        return SystemdManager(*SYSTEMD, bus)

    def unit_path(self, name: str) -> str:
        return self.bus.call(SYSTEMD[0], lambda bus: self._manager(bus).get_unit(name))

    def _unit(self, name: str, read: Callable[[Any], T]) -> T:
        from ._interfaces import SystemdUnit

        def call(bus: Any) -> T:
            path = self._manager(bus).get_unit(name)
            return read(SystemdUnit(SYSTEMD[0], path, bus))

        return self.bus.call(SYSTEMD[0], call)

    def active_state(self, name: str) -> str:
        """``Unit.ActiveState``; :class:`UnitNotLoadedError` when the unit is not loaded."""
        return str(self._unit(name, lambda unit: unit.active_state))

    def part_of(self, name: str) -> list[str]:
        """``Unit.PartOf``; :class:`UnitNotLoadedError` when the unit is not loaded."""
        return [str(v) for v in self._unit(name, lambda unit: unit.part_of)]

    def start(self, name: str) -> None:
        self.bus.call(SYSTEMD[0], lambda bus: self._manager(bus).start_unit(name, JOB_MODE))

    def stop(self, name: str) -> None:
        self.bus.call(SYSTEMD[0], lambda bus: self._manager(bus).stop_unit(name, JOB_MODE))

    def restart(self, name: str) -> None:
        self.bus.call(SYSTEMD[0], lambda bus: self._manager(bus).restart_unit(name, JOB_MODE))


class Login:
    """``org.freedesktop.login1``: reboot and power off, never interactive (spec §6.4)."""

    def __init__(self, bus: SystemBus) -> None:
        self.bus = bus

    def _manager(self, bus: Any) -> Any:
        from ._interfaces import LoginManager

        return LoginManager(*LOGIN, bus)

    def can(self, reboot: bool) -> str:
        """``CanReboot``/``CanPowerOff``: ``yes``, ``no``, ``challenge`` or ``na``."""
        return str(self.bus.call(LOGIN[0], lambda bus: (
            self._manager(bus).can_reboot() if reboot else self._manager(bus).can_power_off())))

    def act(self, reboot: bool) -> None:
        """``Reboot(false)`` or ``PowerOff(false)``."""
        self.bus.call(LOGIN[0], lambda bus: (
            self._manager(bus).reboot(False) if reboot else self._manager(bus).power_off(False)))


class Hostname:
    """``org.freedesktop.hostname1``: the static hostname."""

    def __init__(self, bus: SystemBus) -> None:
        self.bus = bus

    def _service(self, bus: Any) -> Any:
        from ._interfaces import Hostname1

        return Hostname1(*HOSTNAME, bus)

    def static_hostname(self) -> str:
        return str(self.bus.call(HOSTNAME[0], lambda bus: self._service(bus).static_hostname))

    def set_static_hostname(self, name: str) -> None:
        self.bus.call(HOSTNAME[0], lambda bus: self._service(bus).set_static_hostname(name, False))

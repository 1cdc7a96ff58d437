"""sdbus proxy classes of the interfaces the supervisor calls; imported only when a call is made.

Names and signatures are systemd's (``busctl introspect``): ``GetUnit(s) -> o``, ``StartUnit(ss) -> o``,
``Reboot(b)``, ``CanReboot() -> s``, ``SetStaticHostname(sb)``; properties ``ActiveState`` (s),
``PartOf`` (as), ``StaticHostname`` (s).
"""

from __future__ import annotations

import sdbus
from sdbus import DbusInterfaceCommon, dbus_method, dbus_property

__all__ = ["Hostname1", "LoginManager", "NoSuchUnitError", "SystemdManager", "SystemdUnit", "sdbus"]


class NoSuchUnitError(sdbus.DbusFailedError):
    dbus_error_name = "org.freedesktop.systemd1.NoSuchUnit"


class SystemdManager(DbusInterfaceCommon, interface_name="org.freedesktop.systemd1.Manager"):
    @dbus_method("s", "o")
    def get_unit(self, name: str) -> str:
        raise NotImplementedError

    @dbus_method("ss", "o")
    def start_unit(self, name: str, mode: str) -> str:
        raise NotImplementedError

    @dbus_method("ss", "o")
    def stop_unit(self, name: str, mode: str) -> str:
        raise NotImplementedError

    @dbus_method("ss", "o")
    def restart_unit(self, name: str, mode: str) -> str:
        raise NotImplementedError


class SystemdUnit(DbusInterfaceCommon, interface_name="org.freedesktop.systemd1.Unit"):
    @dbus_property("s")
    def active_state(self) -> str:
        raise NotImplementedError

    @dbus_property("as")
    def part_of(self) -> list[str]:
        raise NotImplementedError


class LoginManager(DbusInterfaceCommon, interface_name="org.freedesktop.login1.Manager"):
    @dbus_method("b")
    def reboot(self, interactive: bool) -> None:
        raise NotImplementedError

    @dbus_method("b")
    def power_off(self, interactive: bool) -> None:
        raise NotImplementedError

    @dbus_method("", "s")
    def can_reboot(self) -> str:
        raise NotImplementedError

    @dbus_method("", "s")
    def can_power_off(self) -> str:
        raise NotImplementedError


class Hostname1(DbusInterfaceCommon, interface_name="org.freedesktop.hostname1"):
    @dbus_property("s")
    def static_hostname(self) -> str:
        raise NotImplementedError

    @dbus_method("sb")
    def set_static_hostname(self, hostname: str, interactive: bool) -> None:
        raise NotImplementedError

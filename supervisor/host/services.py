"""What the supervisor asks of the host OS: hostname, proxy units, VPN, discoverability, firewall.

One :class:`HostServices` per supervisor, over one shared system bus (``dbus.py``). Each piece works
on its own: without a system bus (a dev board without systemd, a test) each says once what it cannot
do and the others run. The entry points the config-variable plumbing calls are
:meth:`~HostServices.apply_firewall` (``HOST_FIREWALL_MODE``, ``localMode``),
:meth:`~HostServices.set_discoverability` (``HOST_DISCOVERABILITY``) and :meth:`~HostServices.set_vpn`
(``SUPERVISOR_VPN_CONTROL``); :meth:`~HostServices.apply_config` applies all three from a config dict.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from .dbus import DbusCallError, Hostname, HostUnavailableError, Login, SystemBus, Systemd, UnitNotLoadedError
from .firewall import Firewall, FirewallError, FirewallSettings, normalise_mode

log = logging.getLogger(__name__)

VPN_UNIT = "openvpn.service"
#: Started in this order, stopped in the reverse (the socket first, or it would start the daemon again).
AVAHI_UNITS = ("avahi-daemon.service", "avahi-daemon.socket")
PROXY_CONFIG_UNITS = ("balena-proxy-config.service", "resin-proxy-config.service")
REDSOCKS_UNIT = "redsocks.service"
REDSOCKS_TARGET = "redsocks-conf.target"
#: ``SUPERVISOR_VPN_CONTROL`` is applied at most this often (§5.4), unless an apply succeeds meanwhile.
VPN_RATE_LIMIT_S = 3600.0
_INACTIVE = ("inactive", "deactivating")
_TRUE = ("true", "1", "on")


class HostServices:
    """The host side of the supervisor.

    ``listen_port()``: the API port the firewall opens; ``host_network_services()``: whether a target
    service uses ``network_mode: host`` (firewall ``auto``); ``firewall``: replaceable (tests run it in
    a network namespace)."""

    def __init__(self, *, listen_port: Callable[[], int],
                 host_network_services: Callable[[], bool] = lambda: False,
                 firewall: Firewall | None = None) -> None:
        self.bus = SystemBus()
        self.systemd = Systemd(self.bus)
        self.login = Login(self.bus)
        self.hostnamed = Hostname(self.bus)
        self.firewall = firewall or Firewall()
        self._listen_port = listen_port
        self._host_network_services = host_network_services
        self._lock = threading.Lock()  # one config apply at a time
        self._discoverable: bool | None = None
        self._vpn_attempt: float | None = None  # monotonic time of the last VPN start/stop

    def close(self) -> None:
        self.bus.close()

    # ------------------------------------------------------------------------------ hostname
    def hostname(self, fallback: Callable[[], str]) -> str | None:
        """hostnamed's static hostname; ``fallback()`` (the hostname file) without hostnamed or when
        no static hostname is set."""
        try:
            name = self.hostnamed.static_hostname()
        except (HostUnavailableError, DbusCallError) as err:
            self.bus.unavailable("Hostname (reading /etc/hostname instead of asking hostnamed)", err)
            return fallback()
        return name or fallback()

    def set_hostname(self, name: str) -> None:
        """``SetStaticHostname(name, false)``; without hostnamed only said once (config.json still
        carries the name for balenaOS's own hostname service). A refusal raises :class:`DbusCallError`."""
        try:
            self.hostnamed.set_static_hostname(name)
        except HostUnavailableError as err:
            self.bus.unavailable("Hostname (written to config.json only, hostnamed not told)", err)
            return
        log.info("Hostname set to %s", name)

    # ----------------------------------------------------------------------------- proxy units
    def restart_proxy_units(self) -> None:
        """Spec §6.3: restart the proxy-config unit and redsocks unless they are ``PartOf``
        ``redsocks-conf.target`` (newer OSes restart them themselves when the files change)."""
        try:
            for unit in PROXY_CONFIG_UNITS:  # whichever is loaded, balena- first
                try:
                    part_of = self.systemd.part_of(unit)
                except UnitNotLoadedError:
                    continue
                if REDSOCKS_TARGET not in part_of:
                    self.systemd.restart(unit)
                    log.info("Restarted %s", unit)
                break
            try:
                if REDSOCKS_TARGET not in self.systemd.part_of(REDSOCKS_UNIT):
                    self.systemd.restart(REDSOCKS_UNIT)
                    log.info("Restarted %s", REDSOCKS_UNIT)
            except UnitNotLoadedError:
                log.warning("%s is not loaded: the new proxy configuration is not applied", REDSOCKS_UNIT)
        except HostUnavailableError as err:
            self.bus.unavailable("Proxy (files written, redsocks not restarted)", err)

    # ------------------------------------------------------------------------------------- VPN
    def vpn_enabled(self) -> bool | None:
        """openvpn.service active (ActiveState neither ``inactive`` nor ``deactivating``); False when
        the unit is not loaded (the reference means to, but its error check never fires, §15); None
        when there is no bus to ask."""
        try:
            return self.systemd.active_state(VPN_UNIT) not in _INACTIVE
        except UnitNotLoadedError:
            return False
        except (HostUnavailableError, DbusCallError) as err:
            self.bus.unavailable("VPN (state unknown, control not possible)", err)
            return None

    def set_vpn(self, enabled: bool, *, force: bool = False) -> bool:
        """Start or stop openvpn.service (§5.4), at most once per :data:`VPN_RATE_LIMIT_S` unless
        ``force`` or :meth:`reset_vpn_rate_limit`; True when a job was queued."""
        now = time.monotonic()
        if not force and self._vpn_attempt is not None and now - self._vpn_attempt < VPN_RATE_LIMIT_S:
            log.debug("VPN %s skipped: last attempt less than an hour ago", "start" if enabled else "stop")
            return False
        self._vpn_attempt = now
        try:
            (self.systemd.start if enabled else self.systemd.stop)(VPN_UNIT)
        except (HostUnavailableError, UnitNotLoadedError, DbusCallError) as err:
            if isinstance(err, HostUnavailableError):
                self.bus.unavailable("VPN (state unknown, control not possible)", err)
            else:
                log.error("Could not %s the VPN: %s", "start" if enabled else "stop", err)
            return False
        log.info("VPN %s", "enabled" if enabled else "disabled")
        return True

    def reset_vpn_rate_limit(self) -> None:
        """After a successful apply the next VPN change may go at once (§5.4)."""
        self._vpn_attempt = None

    # --------------------------------------------------------------------------- discoverability
    def set_discoverability(self, enabled: bool) -> bool:
        """``HOST_DISCOVERABILITY`` (§13.3): start avahi's service then socket, or stop the socket then
        the service. Errors are logged; True when every job was queued."""
        units = AVAHI_UNITS if enabled else tuple(reversed(AVAHI_UNITS))
        action = self.systemd.start if enabled else self.systemd.stop
        try:
            for unit in units:
                action(unit)
        except HostUnavailableError as err:
            self.bus.unavailable("Discoverability (avahi not started or stopped)", err)
            return False
        except (UnitNotLoadedError, DbusCallError) as err:
            log.error("Could not %s host discoverability: %s", "enable" if enabled else "disable", err)
            return False
        self._discoverable = enabled
        log.info("Host discoverability %s", "enabled" if enabled else "disabled")
        return True

    # -------------------------------------------------------------------------------- firewall
    def apply_firewall(self, mode: str | None, local_mode: bool, *, port_override: int | None = None) -> bool:
        """``HOST_FIREWALL_MODE`` (§13.1) with the current local mode; re-applied only when something
        it depends on changed since the last success. Failures are logged, never raised."""
        settings = FirewallSettings(
            mode=normalise_mode(mode), local_mode=local_mode, listen_port=self._listen_port(),
            port_override=port_override,
            host_network_services=self._host_network_services() if mode == "auto" else False,
        )
        if settings == self.firewall.applied:
            return True
        try:
            self.firewall.apply(settings)
        except FirewallError as err:
            log.error("Firewall mode not applied due to error: %s", err)
            return False
        return True

    # ------------------------------------------------------------------------------- together
    def apply_config(self, config: Mapping[str, str], *, local_mode: bool, managed: bool) -> None:
        """Apply the host-side config variables of a target config (defaults filled in): firewall,
        discoverability when it changed (or at start), VPN when managed and the unit differs."""
        with self._lock:
            self.apply_firewall(config.get("HOST_FIREWALL_MODE"), local_mode)
            discoverable = str(config.get("HOST_DISCOVERABILITY", "true")).lower() in _TRUE
            if discoverable != self._discoverable:
                self.set_discoverability(discoverable)
            vpn = str(config.get("SUPERVISOR_VPN_CONTROL", "")).lower()
            if managed and vpn:
                wanted = vpn in _TRUE
                current = self.vpn_enabled()
                if current is not None and current != wanted:
                    self.set_vpn(wanted)


class HostVpn:
    """The config steps' VPN control (``state.device_config.VpnControl``) over openvpn.service. It
    shares :meth:`HostServices.set_vpn`'s one-hour limit (§5.4) with :meth:`HostServices.apply_config`,
    which applies the same target at start and on each new one, so the unit is started or stopped
    once whichever of the two gets there first."""

    def __init__(self, services: HostServices) -> None:
        self._services = services

    def enabled(self) -> bool:
        """The unit's state; without a bus to ask, on (as a balenaOS device boots)."""
        state = self._services.vpn_enabled()
        return True if state is None else state

    def set_enabled(self, enabled: bool) -> None:
        self._services.set_vpn(enabled)

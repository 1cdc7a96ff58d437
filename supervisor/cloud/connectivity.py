"""The connectivity check (spec §10.7): a TCP connection to the API host every 10 s.

A TCP connect, not an HTTP request, as the reference (network-checker ``checkHost``): the port is
the endpoint's own, else 443 for https and 80 for http. It is bypassed (counts as connected) when
the config variable ``SUPERVISOR_CONNECTIVITY_CHECK`` is false or while the VPN is up (its status
directory holds ``active``). Changes are logged with the reference's messages.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from ..subsystem import Subsystem
from .timing import Timing

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


def endpoint_address(endpoint: str) -> tuple[str, int] | None:
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def tcp_check(address: tuple[str, int], timeout: float = CONNECT_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


class ConnectivityMonitor(Subsystem):
    """Thread ``cloud-connectivity``; :attr:`connected` is the last result (True until checked)."""

    name = "cloud-connectivity"

    def __init__(
        self,
        endpoint: Callable[[], str],
        enabled: Callable[[], bool],
        vpn_status: Path,
        timing: Timing,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.enabled = enabled
        self.vpn_status = vpn_status
        self.timing = timing
        self.on_change = on_change
        self.connected = True

    def check(self) -> bool:
        if not self.enabled() or (self.vpn_status / "active").exists():
            return True
        address = endpoint_address(self.endpoint())
        if address is None:
            return True
        return tcp_check(address, min(CONNECT_TIMEOUT_S, max(self.timing.connectivity_interval, 1.0)))

    def run(self) -> None:
        while not self.stopping:
            now = self.check()
            if now != self.connected:
                self.connected = now
                log.info("Internet Connectivity: OK" if now else "Waiting for connectivity...")
                if self.on_change is not None:
                    self.on_change(now)
            if self.wait(self.timing.connectivity_interval):
                return

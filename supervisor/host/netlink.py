"""IP and MAC addresses from the kernel over netlink (spec §10.7, §13.7), and noticing when they change.

pyroute2 speaks rtnetlink for us (a maintained library; parsing netlink by hand is not this project's
core). It is imported where used: a subsystem that is never started costs no memory.

* IP addresses (§10.7): every IPv4 address and every IPv6 address of scope 0 (global: Node's
  ``scopeid == 0``; link-local addresses have a scope id) on an interface that is not a loopback and
  whose name the reference does not exclude. Order as Node's ``os.networkInterfaces()``: interfaces in
  the order ``getifaddrs`` first names them (IPv4 addresses come first, by interface index), each
  interface's IPv4 addresses before its IPv6 ones. Joined with spaces.
* MAC addresses (§13.7): links of type ether (``ARPHRD_ETHER`` = 1) that are not enslaved (no master:
  bond and bridge ports) and not excluded, uppercased, de-duplicated, by interface name, space separated.

The :class:`NetworkFacts` subsystem keeps the IP list current: it subscribes to the kernel's address and
link events and re-reads on each (coalesced), and falls back to the reference's 30 s poll when it cannot
subscribe. The MAC list is read once at start, as the reference reports it (its initial state report):
container veths appear unenslaved for a moment on every container start, which would make it flap.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from ..subsystem import Subsystem

log = logging.getLogger(__name__)

#: Interfaces never reported (the reference's filter, §10.7, also used for MACs, §13.7).
EXCLUDED_INTERFACES = re.compile(
    r"^(?:(?:balena|docker|rce|tun)[0-9]+|tun[0-9]+|resin-vpn|lo|resin-dns|supervisor0|"
    r"balena-redsocks|resin-redsocks|br-[0-9a-f]{12})$"
)
ARPHRD_ETHER = 1
IFF_LOOPBACK = 0x8
POLL_SECONDS = 30.0
#: Events that come together (a link with its addresses) are read once, this long after the first.
COALESCE_SECONDS = 0.2


def _iproute(netns: str | None) -> Any:
    from pyroute2 import IPRoute

    return IPRoute(netns=netns) if netns else IPRoute()


def _links(ipr: Any) -> dict[int, dict[str, Any]]:
    links = {}
    for msg in ipr.get_links():
        links[msg["index"]] = {
            "name": msg.get("IFLA_IFNAME") or "", "type": msg["ifi_type"], "flags": msg["flags"],
            "address": msg.get("IFLA_ADDRESS"), "master": msg.get("IFLA_MASTER"),
        }
    return links


def read_addresses(netns: str | None = None) -> tuple[list[str], list[str]]:
    """(IP addresses, MAC addresses) of the namespace (the current one by default)."""
    with _iproute(netns) as ipr:
        links = _links(ipr)
        v4 = [(m["index"], m.get("IFA_ADDRESS")) for m in ipr.get_addr(family=socket.AF_INET)]
        v6 = [(m["index"], m.get("IFA_ADDRESS")) for m in ipr.get_addr(family=socket.AF_INET6)
              if m["scope"] == 0]
    return ip_addresses(links, v4, v6), mac_addresses(links)


def _reported(link: dict[str, Any] | None) -> bool:
    return (link is not None and not link["flags"] & IFF_LOOPBACK
            and not EXCLUDED_INTERFACES.match(link["name"]))


def ip_addresses(links: dict[int, dict[str, Any]], v4: list[tuple[int, str]],
                 v6: list[tuple[int, str]]) -> list[str]:
    """The §10.7 rule over netlink dumps: ``v4``/``v6`` are (link index, address) in dump order,
    ``v6`` already limited to global scope."""
    by_link: dict[int, list[str]] = {}
    for index, address in [*v4, *v6]:  # getifaddrs order: every IPv4 address, then every IPv6 one
        if address and _reported(links.get(index)):
            by_link.setdefault(index, []).append(address)
    return [address for addresses in by_link.values() for address in addresses]


def mac_addresses(links: dict[int, dict[str, Any]]) -> list[str]:
    """The §13.7 rule over a link dump."""
    found: list[str] = []
    for link in sorted(links.values(), key=lambda link: link["name"]):
        if EXCLUDED_INTERFACES.match(link["name"]) or link["master"] or link["type"] != ARPHRD_ETHER:
            continue
        address = (link["address"] or "").upper()
        if address and address not in found:
            found.append(address)
    return found


class NetworkFacts(Subsystem):
    """The device's IP addresses, kept current, and MAC addresses, read at start (thread ``netlink``).

    ``ip_address``/``mac_address`` are the reported strings (space separated; ``""``/None before the
    first read or when netlink cannot be read). ``on_change(ips)`` is called when the IP list changes
    (the state report sends it only then, §10.7)."""

    name = "netlink"

    def __init__(self, *, netns: str | None = None, poll_seconds: float = POLL_SECONDS,
                 on_change: Callable[[list[str]], None] | None = None) -> None:
        super().__init__()
        self.netns = netns
        self.poll_seconds = poll_seconds
        self.on_change = on_change
        self._lock = threading.Lock()
        self._ips: list[str] = []
        self._macs: list[str] | None = None
        self._read_failed = False
        self._wake_r, self._wake_w = -1, -1  # a pipe that ends the select() at stop

    @property
    def ip_address(self) -> str:
        with self._lock:
            return " ".join(self._ips)

    @property
    def mac_address(self) -> str | None:
        with self._lock:
            return None if self._macs is None else " ".join(self._macs)

    def refresh(self) -> None:
        """Read both lists now; a failure is logged once (until a read works again)."""
        try:
            ips, macs = read_addresses(self.netns)
        except Exception as err:  # no netlink (a sandbox), or pyroute2 missing
            if not self._read_failed:
                log.warning("Cannot read the network addresses over netlink: %s", err)
            self._read_failed = True
            return
        self._read_failed = False
        with self._lock:
            changed = ips != self._ips
            self._ips = ips
            if self._macs is None:  # read once, as the reference: engine veths come and go all the time
                self._macs = macs
        if changed:
            log.info("IP addresses: %s", " ".join(ips) or "none")
            if self.on_change is not None:
                self.on_change(ips)

    def start(self) -> None:
        self.refresh()  # the API has the facts from its first request on
        self._wake_r, self._wake_w = os.pipe()
        super().start()

    def on_stop(self) -> None:
        with self._lock:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _subscribe(self) -> Any:
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

        ipr = _iproute(self.netns)
        try:
            ipr.bind(groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_LINK)
        except Exception:
            ipr.close()
            raise
        return ipr

    def run(self) -> None:
        try:
            self._watch()
        finally:
            with self._lock:
                for fd in (self._wake_r, self._wake_w):
                    os.close(fd)
                self._wake_r = self._wake_w = -1

    def _watch(self) -> None:
        import select

        try:
            events = self._subscribe()
        except Exception as err:
            log.warning("No netlink address events (%s): reading the addresses every %.0f s", err,
                        self.poll_seconds)
            while not self.wait(self.poll_seconds):
                self.refresh()
            return
        try:
            while not self.stopping:
                ready, _, _ = select.select([events.fileno(), self._wake_r], [], [], self.stuck_after / 4)
                self.beat()
                if events.fileno() not in ready:
                    continue
                if self.wait(COALESCE_SECONDS):
                    return
                self._drain(events)
                self.refresh()
        finally:
            events.close()

    @staticmethod
    def _drain(events: Any) -> None:
        """Read every queued event (their content does not matter: the lists are read again)."""
        import select

        while select.select([events.fileno()], [], [], 0)[0]:
            events.get()

"""IP and MAC addresses from the kernel over netlink (spec §10.7, §13.7), and noticing when they change.

rtnetlink is spoken here with the standard library's ``AF_NETLINK`` socket, not pyroute2: importing any
part of pyroute2 runs its package ``__init__``, which loads the whole library (asyncio, every netlink
family, psutil), 12-17 MB resident for two dumps and a subscription (issue #17). What is read is small
and fixed (two message kinds, five attributes), so it is a table below, tested against the kernel in a
network namespace (tests/test_host_netlink.py).

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

import errno
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
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

# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h) ------------------
NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 18, 20, 22
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_RTATTR = struct.Struct("=HH")  # len, type
_RECV_BYTES = 65536  # a dump part is at most 32 KiB


def _mac(raw: bytes, _family: int) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _name(raw: bytes, _family: int) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _u32(raw: bytes, _family: int) -> int:
    return int(struct.unpack_from("=I", raw)[0])


def _ip(raw: bytes, family: int) -> str:
    return socket.inet_ntop(family, raw)


#: message type -> (fixed header struct, its field names, {attribute type: (key, decoder)}).
#: ``ifinfomsg``: family, pad, type, index, flags, change; ``ifaddrmsg``: family, prefixlen, flags,
#: scope, index. Attributes not listed are skipped.
Decoder = Callable[[bytes, int], Any]  # (attribute payload, address family) -> value
MESSAGES: dict[int, tuple[struct.Struct, tuple[str, ...], dict[int, tuple[str, Decoder]]]] = {
    RTM_NEWLINK: (struct.Struct("=BxHiII"), ("family", "type", "index", "flags", "change"),
                  {1: ("address", _mac), 3: ("name", _name), 10: ("master", _u32)}),  # IFLA_*
    RTM_NEWADDR: (struct.Struct("=BBBBI"), ("family", "prefixlen", "flags", "scope", "index"),
                  {1: ("address", _ip)}),  # IFA_ADDRESS
}


def parse(data: bytes) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(type, seq, fields) of each message in one ``recv``; types not in :data:`MESSAGES` get no
    fields, except ``NLMSG_ERROR`` (``error``: the negative errno)."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return  # cut short: never read past the datagram
        body = data[offset + _NLMSGHDR.size:offset + length]
        fields: dict[str, Any] = {}
        if kind == NLMSG_ERROR:
            fields["error"] = struct.unpack_from("=i", body)[0]
        elif kind in MESSAGES:
            header, names, attrs = MESSAGES[kind]
            fields.update(zip(names, header.unpack_from(body), strict=True))
            at = header.size
            while at + _RTATTR.size <= len(body):
                attr_len, attr_type = _RTATTR.unpack_from(body, at)
                if attr_len < _RTATTR.size:
                    break
                known = attrs.get(attr_type & 0x3FFF)  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
                if known is not None:
                    key, decode = known
                    fields[key] = decode(body[at + _RTATTR.size:at + attr_len], fields["family"])
                at += (attr_len + 3) & ~3
        yield kind, seq, fields
        offset += (length + 3) & ~3


def open_socket(groups: int = 0) -> socket.socket:
    """A route netlink socket of this thread's network namespace, subscribed to ``groups``."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


#: How sockets are opened: tests open them in a namespace of their own (a socket stays in the
#: namespace it was made in).
Opener = Callable[[int], socket.socket]


def dump(sock: socket.socket, request: int, family: int, seq: int) -> list[dict[str, Any]]:
    """Every object of one ``RTM_GET*`` dump (links or addresses of ``family``), in kernel order."""
    header, _names, _attrs = MESSAGES[request - 2]  # RTM_GETx = RTM_NEWx + 2
    body = bytes([family]) + bytes(header.size - 1)
    sock.sendto(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), request, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                + body, (0, 0))
    found: list[dict[str, Any]] = []
    while True:
        for kind, got_seq, fields in parse(sock.recv(_RECV_BYTES)):
            if got_seq != seq:
                continue
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR and fields["error"]:
                raise OSError(-fields["error"], os.strerror(-fields["error"]))
            if kind == request - 2:
                found.append(fields)


def _links(sock: socket.socket) -> dict[int, dict[str, Any]]:
    return {
        msg["index"]: {"name": msg.get("name") or "", "type": msg["type"], "flags": msg["flags"],
                       "address": msg.get("address"), "master": msg.get("master")}
        for msg in dump(sock, RTM_GETLINK, socket.AF_UNSPEC, 1)
    }


def read_addresses(opener: Opener = open_socket) -> tuple[list[str], list[str]]:
    """(IP addresses, MAC addresses) of the network namespace ``opener`` opens sockets in."""
    with opener(0) as sock:
        links = _links(sock)
        v4 = [(m["index"], m.get("address")) for m in dump(sock, RTM_GETADDR, socket.AF_INET, 2)]
        v6 = [(m["index"], m.get("address")) for m in dump(sock, RTM_GETADDR, socket.AF_INET6, 3)
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

    def __init__(self, *, opener: Opener = open_socket, poll_seconds: float = POLL_SECONDS,
                 on_change: Callable[[list[str]], None] | None = None) -> None:
        super().__init__()
        self.opener = opener
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
            ips, macs = read_addresses(self.opener)
        except Exception as err:  # no netlink (a sandbox), or a message we cannot read
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

    def _subscribe(self) -> socket.socket:
        events = self.opener(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_LINK)
        events.setblocking(False)
        return events

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
    def _drain(events: socket.socket) -> None:
        """Read every queued event (their content does not matter: the lists are read again). An
        overrun (``ENOBUFS``: events were lost) needs nothing more for the same reason."""
        while True:
            try:
                events.recv(_RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise

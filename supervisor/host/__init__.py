"""The host OS side of the supervisor (spec §6, §10.7, §13): facts about the host, the D-Bus clients
(hostname, proxy units, VPN, discoverability, reboot/shutdown), the firewall and netlink addresses.

Modules import their heavy libraries (sdbus) where they are used; importing this package
costs only the facts module.
"""

from .facts import UNKNOWN, HostFacts, read_os_release

__all__ = ["UNKNOWN", "HostFacts", "read_os_release"]

"""The host firewall (spec §13.1): ``HOST_FIREWALL_MODE`` ``on``/``off``/``auto`` as iptables rules.

The supervisor owns two chains of the ``filter`` table and one jump into each:

* ``BALENA-FIREWALL`` (IPv4 and IPv6), jumped to from ``INPUT``: established traffic, local traffic,
  the supervisor API (only from the VPN, docker0, lo and supervisor0; from anywhere in local mode),
  SSH (22222), the engine (2375), multicast (mDNS), ICMP, DNS from the engine's bridges, then ``RETURN``
  when the firewall is off (or ``auto`` without host-network services) and ``REJECT`` for the rest.
* ``BALENA-SUPERVISOR`` (IPv4), jumped to from ``DOCKER-USER``: the API port from the VPN only, when the
  port is overridden outside local mode.

Each family is written with ONE ``iptables-restore --noflush`` (``ip6tables-restore``) run, so a chain
is never seen half built: declaring a user chain in a ``--noflush`` restore flushes it, and the rules
follow. The ``INPUT`` jump is deleted and inserted again at its old position (or 1).

Deliberate differences from the reference (docs/API.md):

* IPv6 gets ``-p ipv6-icmp`` where the reference emits ``-p icmp`` for both families, which on IPv6
  matches nothing and so rejects ICMPv6 (neighbour discovery, path MTU) in ``on`` mode.
* ``DOCKER-USER`` is never declared in the restore (which would flush the engine's own rules in it, and
  on every second apply the reference's jump too); a missing jump is inserted at its top.
* Every jump to ``BALENA-FIREWALL`` in ``INPUT`` is removed, not only the first.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

MODES = ("on", "off", "auto")
FIREWALL_CHAIN = "BALENA-FIREWALL"
SUPERVISOR_CHAIN = "BALENA-SUPERVISOR"
#: Interfaces the API is reachable from outside local mode (reference ``allowedInterfaces``).
API_INTERFACES = ("resin-vpn", "tun0", "docker0", "lo", "supervisor0")
SUPERVISOR_INTERFACE = "supervisor0"
COMMAND_TIMEOUT_S = 30


class FirewallError(RuntimeError):
    """The rules could not be read or written; the message says which command and why."""


def normalise_mode(mode: str | None) -> str:
    """A valid mode; anything else is ``off`` with a warning (the reference's rule)."""
    if mode in MODES:
        return mode  # type: ignore[return-value]
    if mode not in (None, ""):
        log.warning("Invalid firewall mode: %s. Reverting to state: off", mode)
    return "off"


@dataclass(frozen=True)
class FirewallSettings:
    mode: str
    local_mode: bool
    listen_port: int
    #: ``listenPortOverride``: the API is reached on this port through supervisor0 only.
    port_override: int | None = None
    #: ``auto`` is ``on`` only when some target service uses ``network_mode: host``.
    host_network_services: bool = False

    @property
    def enforcing(self) -> bool:
        return self.mode == "on" or (self.mode == "auto" and self.host_network_services)


def firewall_rules(settings: FirewallSettings, family: int) -> list[str]:
    """The ``BALENA-FIREWALL`` rules (``-A`` lines without the chain), in chain order."""
    api: list[str] = []
    if settings.port_override is not None:
        port = settings.port_override
        api.append(f"-p tcp --dport {port} -i {SUPERVISOR_INTERFACE} -j ACCEPT")
    else:
        port = settings.listen_port
        interfaces: Sequence[str | None] = (None,) if settings.local_mode else API_INTERFACES
        api += [f"-p tcp --dport {port}" + (f" -i {i}" if i else "") + " -j ACCEPT" for i in interfaces]
    api.append(f"-p tcp --dport {port} -j REJECT")
    icmp = "icmp" if family == 4 else "ipv6-icmp"
    return [
        "-m state --state ESTABLISHED,RELATED -j ACCEPT",
        "-m addrtype --src-type LOCAL -j ACCEPT",
        *api,
        "-p tcp --dport 22222 -j ACCEPT",  # SSH
        "-p tcp --dport 2375 -j ACCEPT",  # balenaEngine (development images)
        "-m addrtype --dst-type MULTICAST -j ACCEPT",  # mDNS
        f"-p {icmp} -j ACCEPT",
        "-p udp --dport 53 -i balena0 -j ACCEPT",  # DNS from the default engine bridge
        "-p udp --dport 53 -i br+ -j ACCEPT",  # DNS from apps' engine networks
        *([] if settings.enforcing else ["-j RETURN"]),
        "-j REJECT",
    ]


def supervisor_rules(settings: FirewallSettings) -> list[str]:
    """The IPv4 ``BALENA-SUPERVISOR`` rules: with an override port outside local mode, the API port
    from the VPN only (the engine's own forwarding rules control the rest)."""
    if settings.port_override is None or settings.local_mode:
        return []
    port = settings.listen_port
    return [f"-p tcp --dport {port} -i resin-vpn -j ACCEPT", f"-p tcp --dport {port} -j REJECT"]


@dataclass(frozen=True)
class ChainState:
    """What the restore needs to know about the live tables of one family."""

    #: 1-based positions of the jumps to BALENA-FIREWALL in INPUT.
    input_jumps: tuple[int, ...] = ()
    docker_user_exists: bool = False
    docker_user_jump: bool = False


def restore_input(settings: FirewallSettings, family: int, live: ChainState) -> str:
    """The ``iptables-restore --noflush`` input for one family (4 or 6)."""
    chains = [FIREWALL_CHAIN, SUPERVISOR_CHAIN]
    lines = ["*filter", *(f":{chain} - [0:0]" for chain in chains)]
    if family == 4 and not live.docker_user_exists:
        lines.append(":DOCKER-USER - [0:0]")
    # Deleting by position from the last, so earlier positions stay valid.
    lines += [f"-D INPUT {pos}" for pos in sorted(live.input_jumps, reverse=True)]
    lines.append(f"-I INPUT {live.input_jumps[0] if live.input_jumps else 1} -j {FIREWALL_CHAIN}")
    lines += [f"-A {FIREWALL_CHAIN} {rule}" for rule in firewall_rules(settings, family)]
    if family == 4:
        if not live.docker_user_jump:
            lines.append(f"-I DOCKER-USER 1 -j {SUPERVISOR_CHAIN}")
        lines += [f"-A {SUPERVISOR_CHAIN} {rule}" for rule in supervisor_rules(settings)]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def parse_chain_state(input_rules: str, docker_user_rules: str | None) -> ChainState:
    """From ``iptables -S INPUT`` and ``iptables -S DOCKER-USER`` (None: no such chain)."""
    appended = [line.split() for line in input_rules.splitlines() if line.startswith("-A ")]
    jumps = tuple(i for i, words in enumerate(appended, 1) if words[-2:] == ["-j", FIREWALL_CHAIN])
    has_jump = docker_user_rules is not None and any(
        line.split()[-2:] == ["-j", SUPERVISOR_CHAIN] for line in docker_user_rules.splitlines()
    )
    return ChainState(input_jumps=jumps, docker_user_exists=docker_user_rules is not None,
                      docker_user_jump=has_jump)


class Firewall:
    """Applies :class:`FirewallSettings` with the iptables tools (in ``netns`` when given: tests)."""

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns
        self.applied: FirewallSettings | None = None

    def _run(self, args: list[str], stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess:
        if shutil.which(args[0]) is None:
            raise FirewallError(f"{args[0]} is not installed")
        command = (["ip", "netns", "exec", self.netns] if self.netns else []) + args
        try:
            result = subprocess.run(command, input=stdin, capture_output=True, text=True,
                                    timeout=COMMAND_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FirewallError(f"{' '.join(args)}: {err}") from err
        if check and result.returncode != 0:
            raise FirewallError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def _live(self, family: int) -> ChainState:
        tool = "iptables" if family == 4 else "ip6tables"
        input_rules = self._run([tool, "-w", "10", "-S", "INPUT"]).stdout
        docker_user = None
        if family == 4:
            listed = self._run([tool, "-w", "10", "-S", "DOCKER-USER"], check=False)
            docker_user = listed.stdout if listed.returncode == 0 else None
        return parse_chain_state(input_rules, docker_user)

    def apply(self, settings: FirewallSettings) -> None:
        """Write both families; :class:`FirewallError` when a tool fails (IPv6 is still tried
        after an IPv4 failure, and the first error is raised)."""
        log.info("Applying firewall mode: %s", settings.mode)
        errors: list[FirewallError] = []
        for family, tool in ((4, "iptables-restore"), (6, "ip6tables-restore")):
            try:
                ruleset = restore_input(settings, family, self._live(family))
                self._run([tool, "-w", "10", "--noflush"], stdin=ruleset)
            except FirewallError as err:
                errors.append(err)
        if errors:
            raise errors[0]
        self.applied = settings
        log.info("Firewall mode applied")

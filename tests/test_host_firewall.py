"""The firewall (spec §13.1; issue #15) in network namespaces of the test's own.

The supervisor runs inside namespace ``dev`` (``ip netns exec``) with host setup on and applies its
rules there; ``iptables-save``/``ip6tables-save`` in ``dev`` must match the expected rules exactly.
A client namespace reaches ``dev`` over two veth pairs: one whose ``dev`` end is named ``tun0`` (an
interface the API is open to outside local mode) and one named ``eth1`` (any other interface). A
plain TCP listener on another port in ``dev`` shows what "everything else" gets.
"""

from __future__ import annotations

import errno
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.host.firewall import (
    ChainState,
    Firewall,
    FirewallSettings,
    parse_chain_state,
    restore_input,
)
from tests.fixtures.apps import local_target, main_service_app, store_managed_target
from tests.fixtures.device import MANAGED, SupervisorProcess, global_api_key, wait_for, write_config_json
from tests.fixtures.netns import NetNs, in_netns, veth

TUN0, ETH1 = "10.81.0.1", "10.82.0.1"
OTHER_PORT = 8080


@pytest.fixture
def lab(netns_factory) -> Iterator[tuple[NetNs, NetNs]]:
    dev, client = netns_factory(), netns_factory()
    veth(dev, "tun0", f"{TUN0}/24", client, "c0", "10.81.0.2/24")
    veth(dev, "eth1", f"{ETH1}/24", client, "c1", "10.82.0.2/24")

    def listen() -> socket.socket:
        sock = socket.socket()
        sock.bind(("0.0.0.0", OTHER_PORT))
        sock.listen(16)
        return sock

    other = in_netns(dev, listen)
    yield dev, client
    other.close()


def reachable(client: NetNs, address: str, port: int) -> bool:
    """A TCP connect from ``client``: True when accepted, False when refused (REJECT answers
    icmp-port-unreachable, which connect() reports as refused)."""

    def connect() -> bool:
        try:
            socket.create_connection((address, port), timeout=5).close()
        except OSError as err:
            if err.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                return False
            raise
        return True

    return in_netns(client, connect)


def saved(ns: NetNs, tool: str) -> str:
    """``iptables-save`` without its comment lines, counters zeroed (traffic changes them)."""
    lines = [line for line in ns.exec(tool).splitlines() if not line.startswith("#")]
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in lines) + "\n"


def expected_v4(port: int, *, local_mode: bool, enforcing: bool) -> str:
    api = ([f"-A BALENA-FIREWALL -p tcp -m tcp --dport {port} -j ACCEPT"] if local_mode else
           [f"-A BALENA-FIREWALL -i {i} -p tcp -m tcp --dport {port} -j ACCEPT"
            for i in ("resin-vpn", "tun0", "docker0", "lo", "supervisor0")])
    return "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":BALENA-FIREWALL - [0:0]", ":BALENA-SUPERVISOR - [0:0]", ":DOCKER-USER - [0:0]",
        "-A INPUT -j BALENA-FIREWALL",
        "-A BALENA-FIREWALL -m state --state RELATED,ESTABLISHED -j ACCEPT",
        "-A BALENA-FIREWALL -m addrtype --src-type LOCAL -j ACCEPT",
        *api,
        f"-A BALENA-FIREWALL -p tcp -m tcp --dport {port} -j REJECT --reject-with icmp-port-unreachable",
        "-A BALENA-FIREWALL -p tcp -m tcp --dport 22222 -j ACCEPT",
        "-A BALENA-FIREWALL -p tcp -m tcp --dport 2375 -j ACCEPT",
        "-A BALENA-FIREWALL -m addrtype --dst-type MULTICAST -j ACCEPT",
        "-A BALENA-FIREWALL -p icmp -j ACCEPT",
        "-A BALENA-FIREWALL -i balena0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A BALENA-FIREWALL -i br+ -p udp -m udp --dport 53 -j ACCEPT",
        *([] if enforcing else ["-A BALENA-FIREWALL -j RETURN"]),
        "-A BALENA-FIREWALL -j REJECT --reject-with icmp-port-unreachable",
        "-A DOCKER-USER -j BALENA-SUPERVISOR",
        "COMMIT",
    ]) + "\n"


def expected_v6(port: int, *, local_mode: bool, enforcing: bool) -> str:
    """As IPv4, but ICMPv6 accepted (the reference's ``-p icmp`` matches nothing on IPv6: docs/API.md)
    and no DOCKER-USER (the engine's IPv4 forwarding chain)."""
    v4 = expected_v4(port, local_mode=local_mode, enforcing=enforcing)
    lines = [line.replace("icmp-port-unreachable", "icmp6-port-unreachable") for line in v4.splitlines()
             if "DOCKER-USER" not in line]
    return "\n".join(line.replace("-p icmp -j", "-p ipv6-icmp -j") for line in lines) + "\n"


def start_in(dev: NetNs, root: Path, start_supervisor, **env: str) -> SupervisorProcess:
    """The supervisor in ``dev``, listening on every address, with host setup on."""
    sup = start_supervisor(root, "--host", "0.0.0.0", netns=dev,
                           env={"SUPERVISOR_HOST_SETUP": "true", **env})
    return sup


def settled(dev: NetNs, port: int, *, local_mode: bool, enforcing: bool) -> bool:
    """Both families as expected (IPv6 is written after IPv4)."""
    return (saved(dev, "iptables-save") == expected_v4(port, local_mode=local_mode, enforcing=enforcing)
            and saved(dev, "ip6tables-save") == expected_v6(port, local_mode=local_mode, enforcing=enforcing))


def both(dev: NetNs) -> str:
    return saved(dev, "iptables-save") + saved(dev, "ip6tables-save")


# --------------------------------------------------------------------------------- managed
@pytest.mark.parametrize(("mode", "enforcing"), [("on", True), ("off", False), ("auto", False),
                                                 ("bogus", False)])
def test_managed_device_modes(lab, device_root: Path, start_supervisor, mode: str, enforcing: bool) -> None:
    """Outside local mode the API answers only on the allowed interfaces, whatever the mode; ``on``
    (and ``auto`` with a host-network service) rejects everything else, ``off`` lets it through."""
    dev, client = lab
    store_managed_target(device_root, local_target({}, config={"HOST_FIREWALL_MODE": mode}),
                         MANAGED["apiEndpoint"])
    sup = start_in(dev, device_root, start_supervisor)
    wait_for(lambda: settled(dev, sup.port, local_mode=False, enforcing=enforcing), "the rules", sup,
             timeout=30, context=lambda: both(dev))
    assert reachable(client, TUN0, sup.port)  # tun0 is one of the API's interfaces
    assert not reachable(client, ETH1, sup.port)  # eth1 is not
    assert reachable(client, ETH1, OTHER_PORT) is not enforcing
    if mode == "bogus":
        assert "Invalid firewall mode: bogus. Reverting to state: off" in sup.output()


def test_rules_are_reapplied_at_start_without_duplicates(lab, device_root: Path, start_supervisor) -> None:
    """A restart with another mode rewrites the chain in place: one jump, one chain, the new rules."""
    dev, client = lab
    dev.exec("iptables", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "ACCEPT")  # someone else's
    store_managed_target(device_root, local_target({}, config={"HOST_FIREWALL_MODE": "on"}),
                         MANAGED["apiEndpoint"])
    sup = start_in(dev, device_root, start_supervisor)
    wait_for(lambda: "-A BALENA-FIREWALL -j REJECT" in saved(dev, "iptables-save"), "the rules", sup)
    sup.stop()
    store_managed_target(device_root, local_target({}, config={"HOST_FIREWALL_MODE": "off"}),
                         MANAGED["apiEndpoint"])
    again = start_in(dev, device_root, start_supervisor)
    wait_for(lambda: "-A BALENA-FIREWALL -j RETURN" in saved(dev, "iptables-save"), "the new rules", again)
    rules = saved(dev, "iptables-save")
    assert rules.count("-j BALENA-FIREWALL") == 1 and rules.count("-j BALENA-SUPERVISOR") == 1
    # the jump kept its place, ahead of the rule that was there before
    assert rules.index("-A INPUT -j BALENA-FIREWALL") < rules.index("-A INPUT -p udp")
    assert reachable(client, ETH1, OTHER_PORT)


# ------------------------------------------------------------------------------ local mode
def host_network_app() -> dict:
    """An app whose service uses the host's network (stored, never run: this supervisor has no engine)."""
    app = main_service_app("hostnet", "registry.invalid/hostnet:latest", image_id=1, service_id=1)
    app["services"]["1"]["network_mode"] = "host"
    return app


def test_local_mode_opens_the_api_everywhere_and_follows_each_new_mode(lab, device_root: Path,
                                                                       start_supervisor) -> None:
    dev, client = lab
    sup = start_in(dev, device_root, start_supervisor)  # unmanaged: local mode, default mode off
    port = sup.port
    wait_for(lambda: settled(dev, port, local_mode=True, enforcing=False), "mode off", sup,
             context=lambda: both(dev))
    assert reachable(client, ETH1, port) and reachable(client, ETH1, OTHER_PORT)

    steps = [({"HOST_FIREWALL_MODE": "on"}, {}, True),
             ({"HOST_FIREWALL_MODE": "auto"}, {}, False),
             ({"HOST_FIREWALL_MODE": "auto"}, {4242: host_network_app()}, True),  # a host-network service
             ({"HOST_FIREWALL_MODE": "off"}, {}, False)]
    for config, apps, enforcing in steps:
        response = sup.post("/v2/local/target-state", json=local_target(apps, config=config))
        assert response.status_code == 200, response.text
        wait_for(lambda enforcing=enforcing: settled(dev, port, local_mode=True, enforcing=enforcing),
                 f"the rules of {config} {list(apps)}", sup, context=lambda: both(dev))
        assert reachable(client, ETH1, port)  # local mode: the API from anywhere
        assert reachable(client, ETH1, OTHER_PORT) is not enforcing, config


# -------------------------------------------------------------------------- failures, units
def test_a_failing_firewall_is_logged_and_the_supervisor_runs_on(lab, device_root: Path, start_supervisor,
                                                                 tmp_path: Path) -> None:
    """No iptables on the PATH: one error line, and the API serves."""
    dev, _client = lab
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ip").symlink_to("/usr/sbin/ip")
    write_config_json(device_root, MANAGED)
    sup = start_in(dev, device_root, start_supervisor, PATH=f"{bin_dir}:/usr/bin:/bin")
    wait_for(lambda: "Firewall mode not applied due to error" in sup.output(), "the error", sup)
    assert "iptables is not installed" in sup.output()
    key = global_api_key(device_root)
    assert sup.get("/v1/healthy", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert "BALENA" not in dev.exec("iptables-save")


def test_restore_input_keeps_the_engines_rules_and_moves_every_old_jump() -> None:
    """Pure: DOCKER-USER is not declared when it exists (that would flush the engine's rules), its
    jump is added once; every old INPUT jump goes and the new one takes the first's place."""
    live = parse_chain_state(
        "-P INPUT ACCEPT\n-A INPUT -p udp -j ACCEPT\n-A INPUT -j BALENA-FIREWALL\n-A INPUT -i lo -j ACCEPT\n"
        "-A INPUT -j BALENA-FIREWALL\n",
        "-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n")
    assert live == ChainState(input_jumps=(2, 4), docker_user_exists=True, docker_user_jump=False)
    text = restore_input(FirewallSettings("on", False, 48484), 4, live)
    assert ":DOCKER-USER" not in text
    assert "-D INPUT 4\n-D INPUT 2\n-I INPUT 2 -j BALENA-FIREWALL\n" in text
    assert "-I DOCKER-USER 1 -j BALENA-SUPERVISOR\n" in text
    with_jump = parse_chain_state("", "-A DOCKER-USER -j BALENA-SUPERVISOR\n-A DOCKER-USER -j RETURN\n")
    assert "DOCKER-USER" not in restore_input(FirewallSettings("on", False, 48484), 4, with_jump)


def test_override_port_rules(netns_factory) -> None:
    """``listenPortOverride``: the API's override port only through supervisor0, and in
    BALENA-SUPERVISOR the listen port only from the VPN (not in local mode)."""
    ns = netns_factory()
    Firewall(netns=ns.name).apply(FirewallSettings("on", False, 48484, port_override=4000))
    rules = saved(ns, "iptables-save")
    reject = "-j REJECT --reject-with icmp-port-unreachable\n"
    assert ("-A BALENA-FIREWALL -i supervisor0 -p tcp -m tcp --dport 4000 -j ACCEPT\n"
            f"-A BALENA-FIREWALL -p tcp -m tcp --dport 4000 {reject}") in rules
    assert ("-A BALENA-SUPERVISOR -i resin-vpn -p tcp -m tcp --dport 48484 -j ACCEPT\n"
            f"-A BALENA-SUPERVISOR -p tcp -m tcp --dport 48484 {reject}") in rules
    Firewall(netns=ns.name).apply(FirewallSettings("on", True, 48484, port_override=4000))
    assert "-A BALENA-SUPERVISOR" not in saved(ns, "iptables-save")

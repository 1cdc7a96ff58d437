"""Shared fixtures: a device root and supervisor process, the Docker engine and a loopback registry."""

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.fixtures.cloud import *  # noqa: F403
from tests.fixtures.dbus import *  # noqa: F403
from tests.fixtures.device import *  # noqa: F403
from tests.fixtures.docker import *  # noqa: F403
from tests.fixtures.native import *  # noqa: F403
from tests.fixtures.netns import *  # noqa: F403
from tests.fixtures.registry import *  # noqa: F403

# Nothing in the test process, nor any supervisor it starts, reaches the machine's system bus (a real
# logind would reboot it) or firewall: tests that use a bus start a private one (tests/fixtures/dbus.py)
# and tests of host setup turn it on in a network namespace of their own.
os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/pysupervisor-test/system_bus_socket"
os.environ["SUPERVISOR_HOST_SETUP"] = "false"


@pytest.fixture(scope="session", autouse=True)
def _machine_firewall_untouched() -> Iterator[None]:
    """Tests run supervisors with host setup off or in network namespaces of their own: the machine's
    own firewall must end the run as it started (no BALENA chains appearing)."""
    before = _balena_chains()
    yield
    appeared = _balena_chains() - before
    assert not appeared, f"a test applied the supervisor's firewall to the machine: {sorted(appeared)}"


def _balena_chains() -> set[str]:
    found: set[str] = set()
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        result = subprocess.run([tool, "-w", "10", "-S"], capture_output=True, text=True, timeout=60)
        found |= {f"{tool} {line.split()[1]}" for line in result.stdout.splitlines()
                  if line.startswith("-N BALENA-")}
    return found

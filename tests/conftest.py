"""Shared fixtures: a device root and supervisor process, the Docker engine and a loopback registry."""

import os

# Nothing in the test process reaches the machine's system bus (a real logind would reboot it): tests
# that use a bus start a private one (tests/fixtures/dbus.py) and set the variable themselves.
os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/pysupervisor-test/system_bus_socket"

from tests.fixtures.cloud import *  # noqa: F403
from tests.fixtures.dbus import *  # noqa: F403
from tests.fixtures.device import *  # noqa: F403
from tests.fixtures.docker import *  # noqa: F403
from tests.fixtures.netns import *  # noqa: F403
from tests.fixtures.registry import *  # noqa: F403

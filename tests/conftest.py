"""Shared fixtures: a device root and supervisor process, the Docker engine and a loopback registry."""

from tests.fixtures.cloud import *  # noqa: F403
from tests.fixtures.device import *  # noqa: F403
from tests.fixtures.docker import *  # noqa: F403
from tests.fixtures.native import *  # noqa: F403
from tests.fixtures.registry import *  # noqa: F403

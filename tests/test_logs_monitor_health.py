"""The log monitor's heartbeat on a busy engine (issue #17's soak: ``/v1/healthy`` said 500 for
thousands of checks while the device worked). The engine's event stream carries every container's
events (the ``io.balena.supervised`` filter is applied in the monitor), so on a shared or busy
engine it may never be quiet for ``stuck_after / 4``; the monitor must still count as alive. And it
must still count as stuck when its thread really hangs (the systemd watchdog uses the same test)."""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from supervisor.logs.engine_http import EngineAddress
from supervisor.logs.monitor import LogMonitor
from tests.fixtures.docker import TEST_LABEL
from tests.fixtures.engine_proxy import EngineProxy

pytestmark = pytest.mark.docker

#: Short enough for a test; the events must come more often than its quarter (the recv timeout).
STUCK_AFTER = 3.0


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _monitor() -> LogMonitor:
    """A monitor of an app that is on no device: every event it reads is someone else's."""
    monitor = LogMonitor(EngineAddress.from_env(), {},
                         managed_apps=frozenset({str(random.randint(10**9, 2 * 10**9))}))
    monitor.stuck_after = STUCK_AFTER
    return monitor


class EventStorm:
    """Containers whose command ends at once, started again and again from a few threads: a
    ``start`` and a ``die`` event each time, many a second, for as long as it runs."""

    def __init__(self, api: docker.APIClient, image: str, cleanup: list[Any], count: int = 4) -> None:
        self.api = api
        self.ids = [api.create_container(image, command=["true"], labels={TEST_LABEL: "1"})["Id"]
                    for _ in range(count)]
        cleanup.extend(self.ids)
        self.starts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(cid,), daemon=True) for cid in self.ids]

    def _loop(self, cid: str) -> None:
        while not self._stop.is_set():
            self.api.start(cid)
            self.api.wait(cid, timeout=30)
            with self._lock:
                self.starts += 1

    def __enter__(self) -> EventStorm:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(35)


def test_the_monitor_beats_while_events_never_stop(
    docker_client: docker.DockerClient, busybox_image: str, docker_cleanup: list[Any]
) -> None:
    monitor = _monitor()
    monitor.start()
    try:
        _until(lambda: monitor._events is not None, 30, "the monitor to follow the engine's events")
        with EventStorm(docker_client.api, busybox_image, docker_cleanup) as storm:
            _until(lambda: storm.starts >= 4, 30, "the first containers to run")
            started, first = time.monotonic(), storm.starts
            unhealthy: list[str] = []
            while time.monotonic() - started < 3 * STUCK_AFTER:
                ok, reason = monitor.health()
                if not ok:
                    unhealthy.append(reason)
                time.sleep(0.1)
            rate = (storm.starts - first) / (time.monotonic() - started)
        # The scenario happened: the stream was never quiet for a recv timeout (two events a start).
        assert 2 * rate > 4 / STUCK_AFTER, f"only {rate:.1f} starts/s: the engine was too slow to tell"
        assert unhealthy == [], unhealthy[:3]
    finally:
        assert monitor.stop(5.0)


def test_a_hung_monitor_is_still_stuck(
    docker_client: docker.DockerClient, busybox_image: str, docker_cleanup: list[Any]
) -> None:
    """An engine that never answers the inspect of a started service: the monitor's thread waits in
    it (up to the 30 s read timeout) without beating, and counts as stuck after ``stuck_after``."""
    with tempfile.TemporaryDirectory(prefix="engine-proxy-") as directory:  # a short socket path
        proxy = EngineProxy(Path(directory) / "docker.sock")
        app_id = str(random.randint(10**9, 2 * 10**9))
        monitor = LogMonitor(EngineAddress.from_env({"DOCKER_HOST": proxy.docker_host}), {},
                             managed_apps=frozenset({app_id}))
        monitor.stuck_after = STUCK_AFTER
        monitor.start()
        try:
            _until(lambda: monitor._events is not None, 30, "the monitor to follow the engine's events")
            labels = {TEST_LABEL: "1", "io.balena.supervised": "true", "io.balena.app-id": app_id,
                      "io.balena.service-id": "1", "io.balena.service-name": "main"}
            cid = docker_client.api.create_container(busybox_image, labels=labels)["Id"]
            docker_cleanup.append(cid)
            held = proxy.hold("GET", f"/containers/{cid}/json")
            docker_client.api.start(cid)
            assert held.wait(30), "the monitor never inspected the started service"
            _until(lambda: not monitor.health()[0], 3 * STUCK_AFTER, "the hung monitor to count as stuck")
            assert "logs stuck for" in monitor.health()[1]
        finally:
            proxy.close()  # the held inspect fails, and the monitor can stop
            assert monitor.stop(5.0)

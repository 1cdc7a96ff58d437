"""sd_notify from a real supervisor process to a real AF_UNIX datagram socket (the protocol systemd
listens on); tests/test_systemd_unit.py runs the same under a real systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from supervisor.sdnotify import TEST_HANG_ENV, Notifier, ServiceNotifier
from tests.fixtures.device import wait_for


class NotifySocket:
    """What systemd's end of ``NOTIFY_SOCKET`` sees: one datagram per notification."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def poll(self) -> list[dict[str, str]]:
        """Every message received so far (reads what is waiting)."""
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))
        return [m for _, m in self.messages]

    def status(self, prefix: str) -> str | None:
        """The first STATUS= that starts with ``prefix``, if one came."""
        return next((m["STATUS"] for m in self.poll() if m.get("STATUS", "").startswith(prefix)), None)

    def pings_after(self, since: float) -> int:
        self.poll()
        return sum(1 for t, m in self.messages if t > since and m.get("WATCHDOG") == "1")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(tmp_path / "notify.sock")
    receiver = NotifySocket(path)
    yield path, receiver
    receiver.sock.close()


def test_ready_after_api_serves_then_pings_and_stopping(device_root, start_supervisor, notify_socket):
    path, receiver = notify_socket
    sup = start_supervisor(device_root, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "900000"},
                           wait=False)
    ready = wait_for(lambda: next((m for m in receiver.poll() if m.get("READY") == "1"), None),
                     "READY=1", sup, timeout=60)
    # READY=1 is sent once the API serves: the very first request after it answers.
    assert requests.get(f"{sup.url}/ping", timeout=5).text == "OK"
    assert ready["STATUS"] == f"API listening on port {sup.port}"
    # Healthy: WATCHDOG=1 three times per WATCHDOG_USEC.
    start = time.monotonic()
    wait_for(lambda: receiver.pings_after(start) >= 3, "three watchdog pings", sup, timeout=30)
    assert sup.get("/v1/healthy").status_code == 200
    assert sup.stop() == 0
    assert receiver.poll()[-1] == {"STOPPING": "1", "STATUS": "Stopping"}


def test_pings_stop_while_a_subsystem_hangs(device_root, start_supervisor, notify_socket):
    path, receiver = notify_socket
    trigger = device_root / "hang-now"
    sup = start_supervisor(device_root, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000",
                                             TEST_HANG_ENV: str(trigger)})
    start = time.monotonic()
    wait_for(lambda: receiver.pings_after(start) >= 2, "watchdog pings", sup, timeout=30)
    trigger.touch()
    status = wait_for(lambda: receiver.status("Unhealthy"), "an Unhealthy status", sup, timeout=30)
    assert "test-hang stuck" in status
    assert not trigger.exists()  # consumed: a restarted process would run normally
    # Same test as /v1/healthy, and no ping comes any more (a restart is systemd's job).
    assert sup.get("/v1/healthy").status_code == 500
    quiet_since = time.monotonic()
    time.sleep(1.5)  # 7 ping intervals of 0.2 s: proving an absence needs a span of time
    assert receiver.pings_after(quiet_since) == 0
    assert sup.get("/ping").status_code == 200  # the API itself still answers: only health fails


def test_no_watchdog_for_another_pid_and_abstract_socket(device_root, start_supervisor):
    name = f"pysupervisor-test-{uuid.uuid4().hex}"
    receiver = NotifySocket("\0" + name)
    try:
        # WATCHDOG_PID of another process: the watchdog is not ours, READY still is.
        sup = start_supervisor(device_root, env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "300000",
                                                 "WATCHDOG_PID": "1"}, wait=False)
        wait_for(lambda: any(m.get("READY") == "1" for m in receiver.poll()), "READY=1 on @" + name,
                 sup, timeout=60)
        ready_at = time.monotonic()
        time.sleep(1.0)  # ten ping intervals: proving an absence needs a span of time
        assert receiver.pings_after(ready_at) == 0
    finally:
        receiver.sock.close()


def test_notifier_outside_systemd_and_bad_values():
    assert not Notifier({}).enabled
    assert Notifier({}).notify("READY=1") is False
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled is False
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "abc"}).watchdog_interval is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}).watchdog_interval is None
    own = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(own).watchdog_interval == pytest.approx(1.0)
    # A socket nobody listens on: the send fails, is logged, and the caller carries on.
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent/pysupervisor/notify"}).notify("READY=1") is False


def test_a_health_check_that_raises_stops_the_pings(notify_socket):
    path, receiver = notify_socket
    calls = []

    def health():
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("subsystem table changed")
        return [(True, "ok")]

    notifier = ServiceNotifier(health, Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"}))
    notifier.ready("test")
    try:
        status = wait_for(lambda: receiver.status("Unhealthy"), "an Unhealthy status", timeout=30)
        assert "health check raised RuntimeError" in status
        pings = [m for m in receiver.poll() if m.get("WATCHDOG") == "1"]
        assert len(pings) == 2  # the two healthy rounds only
    finally:
        notifier.stopping()
    assert receiver.poll()[-1] == {"STOPPING": "1", "STATUS": "Stopping"}

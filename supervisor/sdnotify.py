"""systemd readiness and watchdog notifications for the native balenaOS service (``Type=notify``).

The unit (``yocto/meta-pysupervisor/.../balena-supervisor.service``) is ``Type=notify`` with
``WatchdogSec``: systemd counts the service started when it gets ``READY=1`` (sent once the API
serves) and kills and restarts it when ``WATCHDOG=1`` stops coming. We send ``WATCHDOG=1`` only
while every subsystem is healthy, the same test as ``GET /v1/healthy``, so a hung supervisor is
restarted. The stock balenaOS unit pings the watchdog from ``healthdog`` as long as the supervisor
*image* exists, which never notices a hung supervisor (balenaos-integration.md §2.7, §3.5).

Why our own few lines and not a library: the protocol is one datagram of ``KEY=VALUE`` lines sent to
the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (``@`` = abstract namespace), which sd_notify(3)
documents as a stable interface meant to be reimplemented without libsystemd. ``sdnotify`` (PyPI)
has had no release since 2017 and swallows send errors; ``systemd-python`` is a C extension that
needs libsystemd headers to install, which would break ``pip install`` on a laptop. Neither parses
``WATCHDOG_USEC``/``WATCHDOG_PID`` (sd_watchdog_enabled(3)), which we need anyway.

Outside systemd (no ``NOTIFY_SOCKET``) everything here does nothing.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .subsystem import Subsystem

log = logging.getLogger(__name__)

#: (healthy, reason) per subsystem, as ``Supervisor.health()`` returns it.
HealthCheck = Callable[[], Iterable[tuple[bool, str]]]

#: Test hook (never set on a device): when this env var names a path, a ``test-hang`` subsystem
#: runs, and once that file appears it consumes it and stops beating, as a deadlocked subsystem
#: would: ``/v1/healthy`` fails and the watchdog pings stop (tests/test_systemd_unit.py).
TEST_HANG_ENV = "SUPERVISOR_TEST_HANG_FILE"


class Notifier:
    """Sends sd_notify messages; a no-op when the process was not started by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        socket_path = env.get("NOTIFY_SOCKET", "")
        if socket_path.startswith("@"):
            socket_path = "\0" + socket_path[1:]
        elif socket_path and not socket_path.startswith("/"):
            log.warning("Ignoring NOTIFY_SOCKET %r: not a unix socket path", socket_path)
            socket_path = ""
        self._address = socket_path
        self.watchdog_interval = _watchdog_interval(env) if socket_path else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; False when not sent."""
        if not self._address:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:  # systemd gone or restarting: the next message may get through
            log.warning("sd_notify %s failed: %s", fields[0].split("=", 1)[0], exc)
            return False
        return True


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between pings, or None when systemd asks for none (sd_watchdog_enabled(3)).

    ``WATCHDOG_PID`` names the process the watchdog is for; anything else (a child that inherited
    the variables) must not ping. We ping three times per ``WatchdogSec`` (systemd asks for at
    least twice), which leaves room for a loaded 2-core board's scheduling delays.
    """
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000 / 3


class ServiceNotifier:
    """READY/STOPPING, and a thread that pings the watchdog only while ``health`` is all good."""

    def __init__(self, health: HealthCheck, notifier: Notifier | None = None) -> None:
        self._health = health
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ready(self, status: str) -> None:
        """The API serves: tell systemd, and start the watchdog pings if it asked for them."""
        if not self.notifier.notify("READY=1", f"STATUS={status}"):
            return
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        # systemd's WatchdogSignal (SIGABRT) then dumps every thread's stack into the journal
        # before the process dies, so a watchdog restart shows where the supervisor hung.
        faulthandler.enable(all_threads=True)
        self._thread = threading.Thread(target=self._ping, args=(interval,), name="watchdog",
                                        daemon=True)
        self._thread.start()

    def stopping(self) -> None:
        """Tell systemd we are stopping (no watchdog during a stop) and end the pings."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.notifier.notify("STOPPING=1", "STATUS=Stopping")

    def _ping(self, interval: float) -> None:
        was_healthy = True
        while True:
            try:
                problems = [reason for ok, reason in self._health() if not ok]
            except Exception as exc:  # a check that cannot tell counts as unhealthy, and says why
                log.exception("Health check failed")
                problems = [f"health check raised {exc!r}"]
            if not problems:
                fields = ["WATCHDOG=1"] + ([] if was_healthy else ["STATUS=Healthy again"])
                self.notifier.notify(*fields)
            elif was_healthy:  # once per episode: the pings stop, systemd restarts us
                log.error("Unhealthy, not pinging the systemd watchdog: %s", "; ".join(problems))
                self.notifier.notify(f"STATUS=Unhealthy: {'; '.join(problems)}")
            was_healthy = not problems
            if self._stop.wait(interval):
                return


class HangProbe(Subsystem):
    """The test-only subsystem behind ``SUPERVISOR_TEST_HANG_FILE`` (see ``TEST_HANG_ENV``)."""

    name = "test-hang"
    stuck_after = 2.0

    def __init__(self, trigger: Path) -> None:
        super().__init__()
        self.trigger = trigger

    def run(self) -> None:
        while not self.wait(0.2):
            try:
                self.trigger.unlink()  # one hang per file: the restarted process runs normally
            except FileNotFoundError:
                continue
            log.warning("Test hook: %s found, test-hang stops beating", self.trigger)
            self._stopping.wait()  # hang without beating until the process stops
            return


def hang_hooks(environ: Mapping[str, str] | None = None) -> list[Subsystem]:
    """The extra subsystems the test hook asks for (none on a device)."""
    env = os.environ if environ is None else environ
    path = env.get(TEST_HANG_ENV)
    return [HangProbe(Path(path))] if path else []


"""The idle footprint stays small (issue #17; figures in tests/bench/bench_footprint.py): an idle
supervisor loads none of the heavy libraries (they come with their first use: Flask with the first
request other than ``/ping`` and ``/v1/healthy``), holds a worker thread
for a log stream only while the stream is open, and connects to the engine at its first need."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from supervisor.state.planner import PlanContext
from supervisor.state.reconcile import Reconciler
from tests.fixtures.device import REPO, SupervisorProcess, wait_for

HEAVY = ("docker", "requests", "urllib3", "charset_normalizer", "prometheus_client", "sdbus", "pyroute2",
         "psutil", "asyncio", "flask", "werkzeug", "jinja2")

PROBE = """
import json, sys, tempfile, time, threading
from supervisor.runtime import Settings, Supervisor
sup = Supervisor(Settings(root=tempfile.mkdtemp(), port=0, host="127.0.0.1", apps=(999999999,),
                          host_setup=False))
sup.start()
time.sleep(1.5)
print(json.dumps({"modules": sorted({m.split(".")[0] for m in sys.modules}),
                  "threads": [t.name for t in threading.enumerate()]}))
sup.stop()
"""


@pytest.fixture(scope="module")
def idle() -> dict[str, Any]:
    """The modules and threads of an idle unmanaged supervisor (no engine, no request)."""
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"DOCKER_HOST": "unix:///nonexistent/docker.sock", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_an_idle_supervisor_loads_no_heavy_library(idle: dict[str, Any]) -> None:
    loaded = set(HEAVY) & set(idle["modules"])
    assert not loaded, loaded
    waitress = [name for name in idle["threads"] if name.startswith("waitress")]
    assert len(waitress) == 8, idle["threads"]  # api_threads, none for the 32 streams nobody opened


def test_an_idle_supervisor_has_no_netlink_library_loaded(idle: dict[str, Any]) -> None:
    loaded = {"pyroute2", "psutil"} & set(idle["modules"])
    assert not loaded, loaded


def _threads(sup: SupervisorProcess) -> int:
    return int(next(line.split()[1] for line in (open(f"/proc/{sup.proc.pid}/status"))
                    if line.startswith("Threads:")))


def _settled_threads(sup: SupervisorProcess) -> int:
    """The thread count once it holds still for a second: threads the start leaves running late
    must not count as a stream's."""
    seen: list[int] = []

    def steady() -> bool:
        seen.append(_threads(sup))
        return len(seen) > 1 and seen[-1] == seen[-2]

    wait_for(steady, "the thread count to settle", sup, interval=1.0, context=lambda: seen[-5:])
    return seen[-1]


def test_a_stream_holds_a_thread_only_while_open(unmanaged) -> None:
    idle = _settled_threads(unmanaged)
    streams = [unmanaged.get("/v2/local/logs", stream=True) for _ in range(3)]
    for response in streams:
        assert response.status_code == 200
        assert next(response.iter_lines()) == b'{"message":"Streaming logs","isSystem":true}'
    wait_for(lambda: _threads(unmanaged) == idle + 3, "a thread per open stream", unmanaged,
             context=lambda: _threads(unmanaged))
    assert unmanaged.get("/v2/version").status_code == 200  # the 8 request threads stay free
    for response in streams:
        response.close()
    wait_for(lambda: _threads(unmanaged) == idle, "the stream threads to end", unmanaged,
             context=lambda: _threads(unmanaged))


def test_the_engine_is_connected_at_first_need() -> None:
    connects: list[float] = []

    def connect():  # type: ignore[no-untyped-def]
        connects.append(time.monotonic())
        return object()

    loop = Reconciler(connect, lambda _engine: {}, lambda force: PlanContext(force=force),
                      poll_interval=lambda: 60.0, planner=lambda *_: [])
    loop.start()
    try:
        time.sleep(0.5)
        assert connects == []  # nothing to apply, nobody asked
        waiter = threading.Thread(target=loop.require_engine)
        waiter.start()
        waiter.join(10)
        assert len(connects) == 1 and loop.engine is not None
    finally:
        assert loop.stop(timeout=2.0)

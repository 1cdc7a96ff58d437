"""The core endpoints over real HTTP, with the reference's auth rules (spec §1.2-1.4)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests

from supervisor.client import SupervisorClient, SupervisorError
from supervisor.runtime import Settings, Supervisor
from supervisor.subsystem import Subsystem
from tests.fixtures.device import MANAGED, free_port, global_api_key, wait_for, write_config_json


def test_ping_and_healthy_need_no_key(managed) -> None:
    for path in ("/ping", "/v1/healthy"):
        response = managed.get(path)
        assert (response.status_code, response.text) == (200, "OK")


def test_version(managed) -> None:
    assert re.match(r"^\d+\.\d+\.\d+", SupervisorClient(managed.url, managed.key).version())


def test_global_key_is_32_hex(managed) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", managed.key)


@pytest.mark.parametrize(
    ("how", "ok"),
    [
        ("none", False),
        ("query", True),
        ("query-wrong", False),
        ("query-wrong-name", False),  # ?ApiKey= is not the parameter's name
        ("apikey-header", True),
        ("bearer-header", True),
        ("lowercase-scheme", True),
        ("unknown-scheme", False),
        ("bad-chars", False),
    ],
)
def test_auth_rules_when_managed(managed, how: str, ok: bool) -> None:
    key = managed.key
    kwargs = {
        "none": {},
        "query": {"params": {"apikey": key}},
        "query-wrong": {"params": {"apikey": "0" * 32}},
        "query-wrong-name": {"params": {"ApiKey": key}},
        "apikey-header": {"headers": {"Authorization": f"ApiKey {key}"}},
        "bearer-header": {"headers": {"Authorization": f"Bearer {key}"}},
        "lowercase-scheme": {"headers": {"Authorization": f"bEaReR {key}"}},
        "unknown-scheme": {"headers": {"Authorization": f"Basic {key}"}},
        "bad-chars": {"headers": {"Authorization": f"Bearer {key}-x"}},
    }[how]
    response = managed.get("/v2/version", **kwargs)
    if ok:
        assert response.status_code == 200
    else:
        assert (response.status_code, response.text) == (401, "Unauthorized")


def test_unmanaged_needs_no_key(unmanaged) -> None:
    client = SupervisorClient(unmanaged.url, api_key=None)
    assert client.version()
    client.blink()


def test_local_mode_needs_no_key_even_when_managed(device_root: Path, start_supervisor) -> None:
    write_config_json(device_root, MANAGED)
    first = start_supervisor(device_root)
    assert first.get("/v2/version").status_code == 401
    first.stop()
    db = device_root / "mnt/data/resin-data/balena-supervisor/database.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO config (key, value) VALUES ('localMode', 'true')")
    second = start_supervisor(device_root)
    assert second.get("/v2/version").status_code == 200


def test_unknown_route_is_404_json_but_only_with_a_key(managed) -> None:
    assert managed.get("/v2/nope").status_code == 401
    response = managed.get("/v2/nope", params={"apikey": managed.key})
    assert response.status_code == 404
    assert response.json() == {"status": "failed", "message": "Cannot GET /v2/nope"}


def test_regenerate_api_key(managed) -> None:
    old = managed.key
    response = managed.post("/v1/regenerate-api-key", headers={"Authorization": f"Bearer {old}"})
    assert response.status_code == 200
    new = response.text
    assert re.fullmatch(r"[0-9a-f]{32}", new) and new != old
    assert managed.get("/v2/version", params={"apikey": old}).status_code == 401
    assert managed.get("/v2/version", params={"apikey": new}).status_code == 200
    assert global_api_key(managed.root) == new
    assert old not in managed.output() and new not in managed.output()  # keys never logged


def test_regenerate_without_a_key_in_local_mode_is_a_clear_400(unmanaged) -> None:
    with pytest.raises(SupervisorError) as err:
        SupervisorClient(unmanaged.url, api_key=None).regenerate_api_key()
    assert err.value.status == 400 and "No API key" in err.value.message


def test_blink_returns_at_once_and_blinks(device_root: Path, start_supervisor, tmp_path: Path) -> None:
    led = tmp_path / "brightness"
    led.write_text("0")
    sup = start_supervisor(device_root, "--led", f"file:{led}", "--blink-seconds", "4")
    started = time.monotonic()
    assert sup.post("/v1/blink").text == "OK"
    assert time.monotonic() - started < 3  # answered at once, long before the 4 s blink ends
    seen: set[str] = set()

    def both_seen() -> bool:
        seen.add(led.read_text())
        return seen == {"0", "1"}

    wait_for(both_seen, "the LED to blink", sup, timeout=30, interval=0.01)
    wait_for(lambda: led.read_text() == "0" and time.monotonic() - started > 4, "the LED to end off", sup)


def test_blink_without_led_is_still_200(unmanaged) -> None:
    response = unmanaged.post("/v1/blink")
    assert (response.status_code, response.text) == (200, "OK")


# /v1/healthy reflects the subsystem threads: run a supervisor in-process so a test can break one.

class _Stuck(Subsystem):
    """A subsystem whose loop blocks without beating, as a hung Docker call would."""

    name = "stuck"
    # Long enough that the first request sees it healthy on a loaded machine (the test's thread
    # descheduled for a second between start() and the answer).
    stuck_after = 3.0

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def run(self) -> None:
        self.release.wait()

    def on_stop(self) -> None:
        self.release.set()


@pytest.fixture
def in_process(device_root: Path):
    sup = Supervisor(Settings(root=str(device_root), port=free_port(), host="127.0.0.1", led="none",
                              host_setup=False))  # never the machine's firewall
    sup.start()
    sup.url = f"http://127.0.0.1:{sup.server.port}"
    yield sup
    sup.stop()


def test_healthy_500_when_a_subsystem_thread_died(in_process) -> None:
    assert requests.get(in_process.url + "/v1/healthy", timeout=5).text == "OK"
    assert in_process.blinker.stop(timeout=30)  # joined: its thread is gone, not about to go
    response = requests.get(in_process.url + "/v1/healthy", timeout=5)
    assert (response.status_code, response.text) == (500, "Unhealthy")


def test_healthy_500_when_a_subsystem_is_stuck(in_process) -> None:
    stuck = _Stuck()
    in_process.subsystems.append(stuck)
    stuck.start()
    assert requests.get(in_process.url + "/v1/healthy", timeout=30).status_code == 200
    wait_for(lambda: requests.get(in_process.url + "/v1/healthy", timeout=30).status_code == 500,
             "the stuck subsystem (3 s without a beat) to fail the health check")
    response = requests.get(in_process.url + "/v1/healthy", timeout=30)
    assert (response.status_code, response.text) == (500, "Unhealthy")


def test_wrong_method_is_405_json(unmanaged) -> None:
    response = unmanaged.post("/ping")
    assert response.status_code == 405
    assert response.json()["status"] == "failed"


class _Health(Subsystem):
    """A subsystem whose health the test sets (never started)."""

    name = "toggle"

    def __init__(self) -> None:
        super().__init__()
        self.ok = True

    def health(self) -> tuple[bool, str]:
        return (True, "ok") if self.ok else (False, "toggle is down")


def test_ping_and_healthy_answer_as_flask_before_it_is_built(in_process, caplog) -> None:
    """``/ping`` and ``/v1/healthy`` are answered without Flask until a request needs it (issue #17,
    supervisor/api/server.py): same status, body, headers, request log line and metric as after."""
    toggle = _Health()
    in_process.subsystems.append(toggle)
    caplog.set_level("DEBUG", logger="supervisor.api")

    def answers() -> list[tuple[object, ...]]:
        seen = []
        for ok in (True, False):
            toggle.ok = ok
            for method in ("GET", "HEAD"):
                for path in ("/ping", "/v1/healthy"):
                    caplog.clear()
                    response = requests.request(method, in_process.url + path, timeout=30)
                    headers = {k: v for k, v in response.headers.items() if k != "Date"}
                    lines = sorted(re.sub(r"[\d.]+ ms", "ms", r.getMessage()) for r in caplog.records
                                   if r.name == "supervisor.api")
                    seen.append((method, path, response.status_code, response.reason, response.content,
                                 headers, lines))
        return seen

    before = answers()
    assert in_process.api._flask is None  # nothing needed it yet
    assert before[0][2:5] == (200, "OK", b"OK")
    assert before[5][2:5] == (500, "INTERNAL SERVER ERROR", b"Unhealthy")
    assert in_process.metrics.value("api_requests", "/v1/healthy", "GET", "500") == 1
    assert requests.get(in_process.url + "/v2/version", timeout=30).status_code == 200
    assert in_process.api._flask is not None
    assert answers() == before
    assert in_process.metrics.value("api_requests", "/v1/healthy", "GET", "500") == 2

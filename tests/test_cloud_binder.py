"""The binder's parts against the fake API, without a supervisor process: report diffs and their
cache across a restart, Retry-After in seconds, hysteresis, the backoff rule, ETag echo."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.cloud.backoff import Backoff, Retry, parse_retry_after, spacing
from supervisor.cloud.client import ApiClient, CloudRequestError
from supervisor.cloud.metrics import with_hysteresis
from supervisor.cloud.report import StateReporter, shallow_diff
from supervisor.cloud.timing import Timing
from tests.fakecloud.client import FakeCloud
from tests.fixtures.device import wait_for

UUID = "c" * 32
KEY = "k" * 32


@pytest.fixture
def device(fake_api: FakeCloud) -> FakeCloud:
    app = fake_api.create_application("unit")
    fake_api.create_device(app["id"], UUID, KEY)
    return fake_api


def _reporter(
    api: FakeCloud, cache: Path, state: dict[str, Any], timing: Timing | None = None
) -> StateReporter:
    client = ApiClient(lambda: api.url, lambda: 10.0, "Supervisor/test")
    return StateReporter(
        client,
        uuid=lambda: UUID,
        key=lambda: KEY,
        current=lambda: dict(state),
        metrics=lambda: {},
        poll_interval_s=lambda: 900.0,
        timing=timing or Timing().scaled(0.01),
        cache_path=cache,
    )


def test_reports_are_diffs_also_after_a_restart(device: FakeCloud, tmp_path: Path) -> None:
    state = {"status": "Idle", "api_port": 48484, "os_version": "balenaOS 6", "ip_address": "10.0.0.2"}
    cache = tmp_path / "tmp/balena-supervisor/state-report-cache"
    first = _reporter(device, cache, state)
    assert first.report_once() is True
    assert first.report_once() is False  # nothing changed: nothing sent
    state["ip_address"] = "10.0.0.3"
    restarted = _reporter(device, cache, state)  # a new process: the last report comes from the cache
    restarted._load_cache()
    assert restarted.report_once() is True
    bodies = [r["body"] for r in device.reports(UUID)]
    assert bodies == [state | {"ip_address": "10.0.0.2"}, {"ip_address": "10.0.0.3"}]
    assert json.loads(cache.read_text())["report"]["ip_address"] == "10.0.0.3"


def test_apps_emptied_is_reported(device: FakeCloud, tmp_path: Path) -> None:
    """The reference prunes ``apps: {}`` from its diff, so the dashboard keeps removed services;
    here an emptied ``apps`` is sent (docs/API.md)."""
    assert shallow_diff({"apps": {"a": {"releases": {}}}}, {"apps": {}}) == {"apps": {}}


def test_retry_after_is_seconds(device: FakeCloud, tmp_path: Path) -> None:
    """A 429 with ``Retry-After: 2``: the retry comes 2 s later, not 2 ms (the reference's bug),
    and not the scaled 0.15 s backoff."""
    device.fault("429", path="^/device/v3/state", retry_after=2, count=1)
    reporter = _reporter(device, tmp_path / "cache", {"status": "Idle"})
    reporter.start()
    try:
        # The fake stores the report, then logs the request: wait for the log's 200 itself.
        wait_for(lambda: any(r["kind"] == "state_patch" and r["status"] == 200 for r in device.requests()),
                 "the report after the 429", timeout=30)
    finally:
        reporter.stop()
    patches = [r for r in device.requests() if r["kind"] == "state_patch"]
    assert [p["status"] for p in patches] == [429, 200]
    assert patches[1]["at"] - patches[0]["at"] >= 1.9


def test_one_report_in_flight_and_at_most_one_per_interval(device: FakeCloud, tmp_path: Path) -> None:
    state = {"status": "Idle", "n": 0}
    timing = Timing().scaled(0.05)  # 0.5 s between reports
    reporter = _reporter(device, tmp_path / "cache", state, timing)
    device.fault("slow", path="^/device/v3/state", delay=0.3)
    reporter.start()
    stop = threading.Event()

    def change() -> None:
        while not stop.is_set():
            state["n"] += 1
            reporter.changed()
            time.sleep(0.01)

    changer = threading.Thread(target=change)
    changer.start()
    time.sleep(3)
    stop.set()
    changer.join()
    reporter.stop()
    patches = [r for r in device.requests() if r["kind"] == "state_patch"]
    starts = [p["at"] - 0.3 for p in patches]
    assert 2 <= len(patches) <= 6
    assert all(b - a >= 0.5 for a, b in zip(starts, starts[1:], strict=False))


def test_hysteresis_keeps_values_inside_their_bucket() -> None:
    last = {"cpu_usage": 21, "cpu_temp": 46, "memory_usage": 301, "storage_usage": 5}
    new = {"cpu_usage": 39, "cpu_temp": 49, "memory_usage": 311, "storage_usage": 6}
    assert with_hysteresis(new, last) == {
        "cpu_usage": 21,
        "cpu_temp": 46,
        "memory_usage": 311,
        "storage_usage": 6,
    }
    assert with_hysteresis({"cpu_usage": None}, last) == {"cpu_usage": None}


def test_backoff_rule_and_retry_after() -> None:
    backoff = Backoff(lambda: 15.0, lambda: 100.0)
    delays = [backoff.next() for _ in range(5)]
    for delay, ceiling in zip(delays, (15, 30, 60, 100, 100), strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.next(retry_after=7.0) == 7.0
    backoff.reset()
    assert backoff.next() <= 15
    assert parse_retry_after("120") == 120.0 and parse_retry_after("soon") is None
    assert parse_retry_after("99999999") == 3600.0


def test_the_shared_retry_loop_backs_off_logs_and_resets(caplog) -> None:
    retry = Retry("report the device state", lambda: 15.0, lambda: 100.0)

    def refused() -> None:
        raise CloudRequestError("503 Service Unavailable", status=503)

    def limited() -> None:
        raise CloudRequestError("429 Too Many Requests", status=429, retry_after=7.0)

    first, second = retry.attempt(refused), retry.attempt(refused)
    assert first is not None and 7.5 <= first <= 15 and second is not None and 15 <= second <= 30
    assert retry.attempt(limited) == 7.0 and retry.last_error == "429 Too Many Requests"
    assert "Could not report the device state (503 Service Unavailable), retrying in" in caplog.text
    assert retry.attempt(lambda: None) is None and retry.last_error is None
    again = retry.attempt(refused)
    assert again is not None and again <= 15  # the count started over
    with pytest.raises(ZeroDivisionError):  # a bug is not a failed request
        retry.attempt(lambda: 1 / 0)
    assert spacing(time.monotonic(), 10.0) > 9.0 and spacing(time.monotonic() - 11.0, 10.0) == 0.0


def test_timing_scales_everything_but_the_idle_check() -> None:
    scaled = Timing().scaled(0.01)
    assert (scaled.poll_jitter, scaled.report_min_interval, scaled.metrics_interval) == (0.6, 0.1, 3.0)
    assert scaled.idle_check == Timing().idle_check and scaled.ms(900_000) == 9.0


def test_client_errors_carry_status_and_never_the_key(device: FakeCloud) -> None:
    client = ApiClient(lambda: device.url + "/", lambda: 10.0, "Supervisor/test")  # a trailing slash works
    with pytest.raises(CloudRequestError) as caught:
        client.request("GET", f"/device/v3/{UUID}/state", key="wrong-key")
    assert caught.value.status == 401 and "wrong-key" not in str(caught.value)
    first = client.request("GET", f"/device/v3/{UUID}/state", key=KEY)
    etag = first.headers["ETag"]
    again = client.request(
        "GET", f"/device/v3/{UUID}/state", key=KEY, ok=(304,), headers={"If-None-Match": etag}
    )
    assert again.status_code == 304

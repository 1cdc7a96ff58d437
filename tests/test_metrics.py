"""``GET /metrics`` (issue #17): the Prometheus text format from prometheus_client, the same key rules as
every other endpoint, and counters that move with what the supervisor does: API requests by route, a real
apply's rounds, steps and pulled bytes (loopback registry, real engine), lock waits and log lines."""

from __future__ import annotations

import os
import random
import threading
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.logs.hub import LogHub
from supervisor.metrics import Metrics
from supervisor.state.locks import LockRegistry, UpdatesLockedError
from tests.fixtures.device import SupervisorProcess, global_api_key, wait_for
from tests.test_apply_errors import _apply, _service, _target
from tests.test_reconcile import OWNER_LABEL, SETTLED, remove_app, start_local


def scrape(sup: SupervisorProcess, **kw) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of every sample ``/metrics`` answers."""
    response = sup.get("/metrics", **kw)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_need_a_key_and_count_requests_by_route(managed) -> None:
    assert managed.get("/metrics").status_code == 401
    key = global_api_key(managed.root)
    auth = {"headers": {"Authorization": f"Bearer {key}"}}
    for _ in range(3):
        assert managed.get("/ping").status_code == 200
    assert managed.get("/v2/applications/12345/state", **auth).status_code in (200, 404, 409, 503)
    values = scrape(managed, **auth)
    ping = ("supervisor_api_requests_total", (("method", "GET"), ("route", "/ping"), ("status", "200")))
    assert values[ping] >= 3
    # The route, never the raw path: an id in the path must not make a series of its own.
    routes = {dict(labels)["route"] for name, labels in values if name == "supervisor_api_requests_total"}
    assert any(r.startswith("/v2/applications/<") and r.endswith(">/state") for r in routes), routes
    assert not any("12345" in r for r in routes)
    # The 401 above is counted too, under its route.
    assert values[("supervisor_api_requests_total", (("method", "GET"), ("route", "/metrics"),
                                                      ("status", "401")))] == 1
    assert values[("supervisor_resident_memory_bytes", ())] > 5e6
    assert values[("supervisor_threads", ())] >= 2
    assert values[("supervisor_open_streams", ())] == 0
    assert values[("process_resident_memory_bytes", ())] > 5e6  # prometheus_client's process collector
    assert ("supervisor_reconcile_rounds_total", ()) in values


@pytest.mark.docker
def test_an_apply_counts_rounds_steps_and_pulled_bytes(start_supervisor, device_root: Path, registry,
                                                      make_image, docker_client) -> None:
    app_id, owner = random.randint(10**6, 10**9), uuid.uuid4().hex
    local = f"pysupervisor-test/metrics-{uuid.uuid4().hex[:10]}:latest"
    make_image(local, files={"/blob": os.urandom(3 * 1024 * 1024)}, labels={OWNER_LABEL: owner})
    remote = registry.push(local, f"metrics-{uuid.uuid4().hex[:10]}")
    for ref in (remote, local):  # gone from the engine: the supervisor downloads every layer
        docker_client.api.remove_image(ref)
    try:
        sup = start_local(start_supervisor, device_root, [app_id])
        _apply(sup, _target(app_id, {"main": _service("main", remote, 101)}))
        wait_for(lambda: SETTLED in sup.output(), "the apply to settle", sup)
        values = scrape(sup)
        assert values[("supervisor_steps_total", (("kind", "fetch"), ("outcome", "ok")))] == 1
        assert values[("supervisor_steps_total", (("kind", "start"), ("outcome", "ok")))] == 1
        rounds = values[("supervisor_reconcile_rounds_total", ())]
        assert rounds >= 3  # fetch, create/start, ..., the settled round
        assert values[("supervisor_reconcile_round_seconds_count", ())] == rounds
        assert values[("supervisor_reconcile_round_seconds_bucket", (("le", "+Inf"),))] == rounds
        assert values[("supervisor_reconcile_round_seconds_sum", ())] > 0
        # The busybox layer (about 1 MiB compressed) and 3 MiB of random data, as the engine reported them.
        assert 3 * 1024 * 1024 < values[("supervisor_pulled_bytes_total", ())] <= 6 * 1024 * 1024
        assert values[("supervisor_delta_bytes_total", ())] == 0
    finally:
        remove_app(docker_client, app_id, owner)


def test_lock_waits_are_counted(tmp_path: Path) -> None:
    metrics = Metrics()
    locks = LockRegistry(str(tmp_path), engine_max_wait_ms=100,
                         on_wait=lambda s: (metrics.inc("lock_waits"), metrics.inc("lock_wait_seconds", s)))
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.with_lock([1], services={1: ["main"]}):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    with pytest.raises(UpdatesLockedError):  # the engine's take waits 100 ms, then gives up
        locks.take(1, ["main"])
    release.set()
    thread.join()
    locks.take(1, ["main"])  # free now: no wait
    locks.release(1)
    assert metrics.value("lock_waits") == 1
    assert 0.09 <= metrics.value("lock_wait_seconds") < 5


def test_log_lines_in_out_and_dropped() -> None:
    metrics = Metrics()
    hub = LogHub(queue_size=2, metrics=metrics)
    hub.publish({"message": "nobody listens"})
    with hub.subscribe() as sub:
        for i in range(5):
            hub.publish({"message": f"line {i}"})
        assert sub.get(0)["message"] == "line 0"
    assert metrics.value("log_lines_received") == 6
    assert metrics.value("log_lines_sent", "local") == 2
    assert metrics.value("log_lines_dropped", "local") == 3
    text = metrics.render().decode()
    assert 'supervisor_log_lines_dropped_total{backend="local"} 3.0' in text

"""Hypothesis fuzzes ``POST /v2/local/target-state`` with mutated real targets (issue #17).

Generic over the endpoint (the validation layer behind it is #10's): whatever the body, the answer is
a 200 or a 4xx with a JSON ``{"status": "failed", "message": ...}``, never a 5xx; a refused body
changes nothing (the stored target reads back the same and no apply is asked for); and the app the
device runs on the real engine is never touched. Accepted bodies are not applied here: the apply
trigger is recorded instead, and the original target is stored again after each.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.runtime import Settings, Supervisor
from tests.fixtures.apps import remove_app
from tests.fixtures.docker import TEST_LABEL

pytestmark = pytest.mark.docker

#: ``PYSUPERVISOR_TARGET_FUZZ_EXAMPLES`` raises it (the deep fuzz job of .ci/run: 2000).
EXAMPLES = int(os.environ.get("PYSUPERVISOR_TARGET_FUZZ_EXAMPLES", "400"))


def seeds(image: str) -> list[dict[str, Any]]:
    """Real targets: a rich two-service app (most compose fields the reference takes), a minimal one
    and an empty device."""
    rich = {"local": {"name": "fuzz-device", "config": {"BALENA_SUPERVISOR_POLL_INTERVAL": "60000",
                                                         "SUPERVISOR_DELTA": "0"},
                      "apps": {"4711": {
                          "name": "fuzzapp", "commit": "0123456789abcdef0123456789abcdef", "releaseId": 3,
                          "services": {
                              "31": {"serviceName": "web", "imageId": 301, "image": image, "running": True,
                                     "environment": {"PORT": "8080", "GREETING": "hi"},
                                     "labels": {"io.balena.features.dbus": "1", TEST_LABEL: "1"},
                                     "ports": ["8080:80", "127.0.0.1:9000:9000/udp"], "restart": "always",
                                     "command": ["sh", "-c", "httpd -f"], "depends_on": ["db"],
                                     "volumes": ["data:/data", "/tmp:/host-tmp:ro"], "networks": ["front"],
                                     "healthcheck": {"test": ["CMD", "true"], "interval": "30s",
                                                     "retries": 3},
                                     "cap_add": ["NET_ADMIN"], "ulimits": {"nofile": {"soft": 1024,
                                                                                      "hard": 2048}},
                                     "tmpfs": ["/run"], "sysctls": {"net.core.somaxconn": "1024"},
                                     "mem_limit": "64m", "cpus": 0.5, "stop_grace_period": "10s"},
                              "32": {"serviceName": "db", "imageId": 302, "image": image, "running": False,
                                     "environment": {}, "labels": {},
                                     "networks": {"front": {"aliases": ["d"]}},
                                     "devices": ["/dev/null:/dev/fake"], "privileged": False},
                          },
                          "volumes": {"data": {"driver": "local", "labels": {"k": "v"}}},
                          "networks": {"front": {"driver": "bridge", "ipam": {"config": [
                              {"subnet": "172.31.250.0/24", "gateway": "172.31.250.1"}]}}},
                      }}}}
    minimal = {"local": {"name": "fuzz-device", "config": {}, "apps": {"4712": {
        "name": "tiny", "commit": "fedcba9876543210fedcba9876543210", "releaseId": 1,
        "services": {"41": {"serviceName": "main", "imageId": 401, "image": image, "environment": {},
                            "labels": {}}},
        "volumes": {}, "networks": {}}}}}
    empty = {"local": {"name": "fuzz-device", "config": {}, "apps": {}}}
    return [rich, minimal, empty]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _slots(doc: Any, parent: Any = None, key: Any = None) -> Iterator[tuple[Any, Any]]:
    """(container, key) of every value in ``doc``; (None, None) for the root."""
    yield parent, key
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _slots(v, doc, k)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _slots(v, doc, i)


@st.composite
def mutated(draw: Any, bases: list[dict[str, Any]]) -> Any:
    """A real target with 1-4 random edits: a value replaced by any JSON, retyped (as a string, in a
    list, in an object), deleted, or a key added."""
    doc: Any = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 4))):
        parent, key = draw(st.sampled_from(list(_slots(doc))))
        value = doc if parent is None else parent[key]
        op = draw(st.sampled_from(["replace", "retype", "delete", "add"]))
        if op == "replace":
            new = draw(JSON)
        elif op == "retype":
            new = draw(st.sampled_from([json.dumps(value), str(value), [value], {"x": value}]))
        elif op == "add" and isinstance(value, dict):
            value[draw(st.text(max_size=12))] = draw(JSON)
            continue
        else:  # delete (or add on a non-object: delete)
            if parent is None:
                continue
            del parent[key]
            continue
        if parent is None:
            doc = new
        else:
            parent[key] = new
    return doc


@pytest.fixture(scope="module")
def device(docker_client, make_image, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """An unmanaged supervisor running one app on the real engine; its apply trigger recorded."""
    app_id = random.randint(10**6, 10**9)
    image = f"pysupervisor-test/fuzz-target-{uuid.uuid4().hex[:12]}:latest"
    make_image(image)
    root: Path = tmp_path_factory.mktemp("fuzz-target") / "root"
    (root / "mnt/boot").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "dev/null").symlink_to("/dev/null")  # the seed's device, on the host as the root sees it
    sup = Supervisor(Settings(root=str(root), port=0, host="127.0.0.1", led="none", apps=(app_id,),
                              host_setup=False))
    client = sup.app.test_client()
    running = {"local": {"name": "fuzz-device", "config": {}, "apps": {str(app_id): {
        "name": "running", "commit": uuid.uuid4().hex, "releaseId": 1,
        "services": {"51": {"serviceName": "main", "imageId": 501, "image": image, "running": True,
                            "environment": {}, "labels": {TEST_LABEL: "1"}, "stop_grace_period": "0s"}},
        "volumes": {}, "networks": {}}}}}
    try:
        sup.start()
        assert client.post("/v2/local/target-state", json=running).status_code == 200
        deadline = time.monotonic() + 60
        flt = {"label": f"io.balena.app-id={app_id}", "status": "running"}
        while not (docker_client.api.containers(filters=flt) and not sup.reconciler.status().applying):
            assert time.monotonic() < deadline, "the running app was not installed within 60 s"
            time.sleep(0.2)
        (container,) = docker_client.api.containers(filters=flt)
        triggers: list[dict[str, Any]] = []
        sup.reconciler.trigger = lambda **kw: triggers.append(kw)  # type: ignore[method-assign]
        yield {"sup": sup, "client": client, "image": image, "app_id": app_id, "container": container,
               "triggers": triggers, "docker": docker_client}
    finally:
        sup.stop()
        remove_app(docker_client, app_id)


def test_mutated_targets_are_refused_cleanly_or_stored(device: dict[str, Any]) -> None:
    sup, client, triggers = device["sup"], device["client"], device["triggers"]
    original = client.get("/v2/local/target-state").get_json()
    stored_device = sup.targets.get_target(sup.target_source)
    outcomes = {"accepted": 0, "refused": 0}

    @given(body=mutated(seeds(device["image"])))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def post(body: Any) -> None:
        triggers.clear()
        response = client.post("/v2/local/target-state", data=json.dumps(body),
                               content_type="application/json")
        assert response.status_code < 500, f"{response.status_code} {response.get_data(as_text=True)[:500]}"
        if response.status_code == 200:
            outcomes["accepted"] += 1
            assert triggers, "an accepted target is applied"
            sup.targets.set_target(stored_device, sup.target_source)  # back to the running app's target
            return
        outcomes["refused"] += 1
        answer = response.get_json()
        assert answer["status"] == "failed" and answer["message"], answer
        assert not triggers, "a refused target must not start an apply"
        assert client.get("/v2/local/target-state").get_json() == original, "a refused target was stored"

    post()
    assert outcomes["refused"] > EXAMPLES // 4 and outcomes["accepted"] > 0, outcomes
    # The running app was never touched.
    api = device["docker"].api
    (after,) = api.containers(filters={"label": f"io.balena.app-id={device['app_id']}"})
    assert after["Id"] == device["container"]["Id"] and after["State"] == "running"
    assert client.get("/v2/local/target-state").get_json() == original

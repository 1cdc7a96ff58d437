"""Fuzz every documented operation with schemathesis, in process over the WSGI app, against a managed
supervisor (global key required) that runs one single-service app on the real engine.

Checks per response: its status is documented, its media type is the documented one, its body
matches the documented schema, and no 5xx at all: a client's mistake is a 4xx (docs/API.md), and the
device talks to a fake balena API (tests/fixtures/cloud.py) that answers, so nothing upstream fails.
Both valid (positive) and invalid (negative) requests are generated, with a fixed seed and a bounded
number of examples so the run stays short. Reboot and shutdown go to a recording double of the power
sequence (tests/fixtures/power.py): the host is never touched.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from supervisor.api.openapi import document
from supervisor.runtime import Settings, Supervisor
from supervisor.state.target import from_v2_local
from tests.fakecloud.client import FakeCloud
from tests.fixtures.apps import local_target, main_service_app, remove_app
from tests.fixtures.device import free_port, write_config_json
from tests.fixtures.power import RecordingPower

pytestmark = pytest.mark.docker

EXAMPLES = 12  # per operation and generation mode
#: Not fuzzed, each for a reason; the client tests (tests/test_client.py) cover them instead.
EXCLUDED = {
    ("POST", "/v1/regenerate-api-key"): "replaces the key every later request needs",
    ("GET", "/v2/local/logs"): "an endless stream",
    ("POST", "/v2/journal-logs"): "an endless stream with follow=true; reads the host's journal",
}
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]

OPERATIONS = [
    (method.upper(), path)
    for path, ops in document()["paths"].items()
    for method in ops
    if (method.upper(), path) not in EXCLUDED
]


@dataclass
class FuzzDevice:
    sup: Supervisor
    app_id: int
    key: str
    schema: Any

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _running(client: docker.DockerClient, app_id: int) -> bool:
    flt = {"label": f"io.balena.app-id={app_id}", "status": "running"}
    return bool(client.api.containers(filters=flt))


@pytest.fixture(scope="module")
def fuzz(docker_client, make_image, tmp_path_factory) -> Iterator[FuzzDevice]:
    app_id = random.randint(10**6, 10**9)
    image = f"pysupervisor-test/fuzz-{uuid.uuid4().hex[:12]}:latest"
    make_image(image)
    root = tmp_path_factory.mktemp("fuzz") / "root"
    # Managed (a key is needed) and provisioned on the fake balena API, so tags can be read. Its
    # target GET fails (503) so the binder never replaces the fuzz app's stored target.
    cloud = FakeCloud(tmp_path_factory.mktemp("fakecloud"), free_port()).start()
    fleet = cloud.create_application("fuzzfleet")
    cloud.create_device(fleet["id"], "f" * 32, "d" * 32, id=4242)
    cloud.fault("status", path="^/device/v3/[0-9a-f]+/state$", status=503)
    assert requests.patch(f"{cloud.url}/device/v3/tags", json={"f" * 32: {"fuzz": "yes"}}, timeout=10,
                          headers={"Authorization": f"Bearer {'d' * 32}"}).status_code == 200
    write_config_json(root, {"uuid": "f" * 32, "apiEndpoint": cloud.url, "deviceApiKey": "d" * 32,
                             "deviceId": 4242, "registered_at": 1700000000, "deviceType": "generic-amd64"})
    (root / "mnt/boot/device-type.json").write_text('{"slug": "generic-amd64", "arch": "amd64"}')
    sup = Supervisor(Settings(root=str(root), port=free_port(), host="127.0.0.1", led="none",
                              blink_seconds=0.2, apps=(app_id,), host_setup=False))
    sup.power = RecordingPower()  # type: ignore[assignment]
    sup.config.set_db(initialConfigReported=cloud.url)  # no initial target GET (it would fail)
    try:
        sup.start()
        app = main_service_app(f"fuzz-{app_id}", image, image_id=901, service_id=91, volumes={"data": {}})
        target = local_target({app_id: app}, "fuzz-device", config={})
        sup.targets.set_target(from_v2_local(target, current_name="fuzz-device"), sup.target_source)
        sup.reconciler.trigger()
        deadline = time.monotonic() + 60
        while not (_running(docker_client, app_id) and not sup.reconciler.status().applying):
            assert time.monotonic() < deadline, "the fuzz app was not installed within 60 s"
            time.sleep(0.2)
        key = sup.api_keys.global_key()
        config = SchemathesisConfig.from_dict({
            "seed": 5, "generation": {"with-security-parameters": False},
        })
        schema = schemathesis.openapi.from_wsgi(
            "/openapi.json", sup.app, config=config, headers={"Authorization": f"Bearer {key}"})
        yield FuzzDevice(sup=sup, app_id=app_id, key=key, schema=schema)
    finally:
        sup.stop()
        cloud.stop()
        remove_app(docker_client, app_id, volumes=True)


def _check(fuzz: FuzzDevice, method: str, path: str, case: Any) -> None:
    response = case.call(headers=fuzz.auth)
    # A 401 would conform too, and hide everything else: the key must always be accepted.
    assert response.status_code != 401, f"{method} {path}: the global key was refused: {response.text}"
    case.validate_response(response, checks=CHECKS, headers=fuzz.auth)
    assert response.status_code < 500, (
        f"{method} {path} answered {response.status_code}: {response.text[:500]}\n"
        f"request: {case.as_curl_command()}")


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz(fuzz: FuzzDevice, method: str, path: str) -> None:
    operation = fuzz.schema[path][method]
    documented = document()["paths"][path][method.lower()]
    # Nothing to make invalid without parameters or a body.
    invalid = "parameters" in documented or "requestBody" in documented
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if invalid else (GenerationMode.POSITIVE,)
    for mode in modes:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            _check(fuzz, method, path, case)

        run()


APP_OPERATIONS = [(m, p) for m, p in OPERATIONS if "{appId}" in p or p in ("/v1/restart", "/v1/purge")]


@pytest.mark.parametrize(("method", "path"), APP_OPERATIONS, ids=[f"{m} {p}" for m, p in APP_OPERATIONS])
def test_installed_app_answers_as_documented(fuzz: FuzzDevice, method: str, path: str) -> None:
    """The fuzzer rarely guesses the installed app's id: each app operation once with it."""
    operation = fuzz.schema[path][method]
    kwargs: dict[str, Any] = {}
    if "{appId}" in path:
        kwargs["path_parameters"] = {"appId": fuzz.app_id}
    if "requestBody" in document()["paths"][path][method.lower()]:
        body: dict[str, Any] = {"appId": fuzz.app_id} if path in ("/v1/restart", "/v1/purge") else {}
        if path.endswith("-service"):
            body["serviceName"] = "main"
        kwargs["body"] = body
        kwargs["media_type"] = "application/json"
    case = operation.Case(**kwargs)
    response = case.call(headers=fuzz.auth)
    assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text[:300]}"
    case.validate_response(response, checks=CHECKS, headers=fuzz.auth)


def test_tags_come_from_the_fake_cloud(fuzz: FuzzDevice) -> None:
    """The fuzzed GET /v2/device/tags reaches a cloud that answers (so a 5xx there would be ours)."""
    response = fuzz.schema["/v2/device/tags"]["GET"].Case().call(headers=fuzz.auth)
    assert response.status_code == 200, response.text
    body = response.json()  # fuzzed PATCHes may have reported more tags by now
    assert body["status"] == "success" and {"id": 1, "name": "fuzz", "value": "yes"} in body["tags"]

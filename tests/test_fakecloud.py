"""The fake balena API answers as cloud-api.md says the real server does (it is the yardstick of
every cloud test, so its own rules are tested here against the document's facts)."""

from __future__ import annotations

import json

import pytest
import requests

from tests.fakecloud.client import FakeCloud
from tests.fakecloud.state import weak_etag

DEVICE_UUID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def api(fake_api: FakeCloud):
    app = fake_api.create_application("myfleet", "raspberrypi4-64")
    fake_api.app = app
    fake_api.prov = fake_api.provisioning_key(app["id"])
    fake_api.user = fake_api.create_key("user")
    fake_api.http = requests.Session()
    fake_api.http.trust_env = False
    return fake_api


def _register(api: FakeCloud, uuid: str = DEVICE_UUID, key: str = "k" * 32, **extra) -> requests.Response:
    body = {
        "application": api.app["id"],
        "uuid": uuid,
        "device_type": "raspberrypi4-64",
        "api_key": key,
        **extra,
    }
    return api.http.post(
        f"{api.url}/device/register", json=body, headers={"Authorization": f"Bearer {api.prov}"}, timeout=10
    )


def test_etag_vectors() -> None:
    """The two test vectors of cloud-api.md §2.5."""
    assert weak_etag(b"") == 'W/"0-2jmj7l5rSw0yVb/vlWAYkK/YBwk"'
    body = (
        b'{"0123456789abcdef0123456789abcdef":{"name":"quiet-lake","apps":{},'
        b'"config":{"RESIN_SUPERVISOR_POLL_INTERVAL":"600000"}}}'
    )
    assert len(body) == 121 and weak_etag(body) == 'W/"79-vNlIWiVTXzwnl27ATGS7VU72FKs"'


def test_register_rules(api: FakeCloud) -> None:
    no_key = api.http.post(f"{api.url}/device/register", json={}, timeout=10)
    assert (no_key.status_code, no_key.json()) == (401, {"error": "API key required"})
    assert (_register(api, application="x").status_code, _register(api, application="x").json()) == (
        400,
        "Application ID must be a valid integer",
    )
    bad_type = _register(api, device_type="toaster")
    assert (bad_type.status_code, bad_type.json()) == (404, "Unknown device type toaster")
    upper = _register(api, uuid=DEVICE_UUID.upper())
    assert (upper.status_code, upper.json()) == (
        400,
        "Device UUID must be a 32 or 62 character long lower case hex string.",
    )
    assert (
        _register(api, application=True).status_code == 400
        and _register(api, application=True).content == b""
    )
    first = _register(api)
    assert first.status_code == 201
    assert set(first.json()) == {"id", "uuid", "api_key"} and first.json()["uuid"] == DEVICE_UUID
    again = _register(api)
    assert again.status_code == 409 and again.text == '"uuid" must be unique.'
    assert again.headers["Content-Type"].startswith("text/html")
    assert len(api.devices()) == 1


def test_key_exchange_needs_a_user(api: FakeCloud) -> None:
    device_id = _register(api).json()["id"]
    url = f"{api.url}/api-key/device/{device_id}/device-key"
    with_prov = api.http.post(url, json={"apiKey": "n" * 32}, headers={"Authorization": f"Bearer {api.prov}"})
    assert (with_prov.status_code, with_prov.content) == (401, b"")
    as_user = api.http.post(url, json={"apiKey": "n" * 32}, headers={"Authorization": f"Bearer {api.user}"})
    assert (as_user.status_code, as_user.json()) == (200, "n" * 32)
    assert api.http.post(f"{api.url}/api-key/device/abc/device-key").text == "Device id must be a number"


def test_state_get_etag_and_304s(api: FakeCloud) -> None:
    unknown = api.http.get(f"{api.url}/device/v3/{'f' * 32}/state", headers={"Authorization": "Bearer x"})
    assert unknown.status_code == 304 and "ETag" not in unknown.headers
    _register(api)
    url = f"{api.url}/device/v3/{DEVICE_UUID}/state"
    assert api.http.get(url).status_code == 401
    assert api.http.get(url, headers={"Authorization": f"Bearer {api.prov}"}).status_code == 401
    auth = {"Authorization": f"Bearer {'k' * 32}"}
    first = api.http.get(url, headers=auth)
    assert first.status_code == 200 and first.headers["ETag"] == weak_etag(first.content)
    body = first.json()[DEVICE_UUID]
    assert list(body) == ["name", "apps", "config"]
    assert body["config"] == {"RESIN_SUPERVISOR_POLL_INTERVAL": "600000"}
    app = body["apps"][api.app["uuid"]]
    assert app == {"id": api.app["id"], "name": "myfleet", "is_host": False, "class": "fleet"}  # no releases
    etag = first.headers["ETag"]
    for inm in (etag, etag[2:], "*", f'"other", {etag}'):
        again = api.http.get(url, headers={**auth, "If-None-Match": inm})
        assert (again.status_code, again.headers.get("ETag"), again.content) == (304, etag, b"")
    no_cache = api.http.get(url, headers={**auth, "If-None-Match": etag, "Cache-Control": "no-cache"})
    assert no_cache.status_code == 200
    device = api.device(DEVICE_UUID)
    assert device["api_heartbeat_state"] == "online"


def test_state_get_release_shape_and_config(api: FakeCloud) -> None:
    device_id = _register(api).json()["id"]
    release = api.create_release(
        api.app["id"],
        {
            "main": {
                "image": "Registry.example/v2/ABC@sha256:" + "1" * 64,
                "environment": {"A": "img"},
                "labels": {"x": "1"},
                "composition": {"ports": ["80:80"], "build": "."},
            },
        },
        volumes={"data": {}},
    )
    api.set_var("app_env", api.app["id"], "A", "app")
    api.set_var("device_env", device_id, "B", "dev")
    api.set_var("app_config", api.app["id"], "RESIN_SUPERVISOR_POLL_INTERVAL", "1000")
    api.set_var("device_config", device_id, "RESIN_UI_THING", "x")
    api.set_var("device_config", device_id, "RESIN_SUPERVISOR_UPDATE_STRATEGY", "kill-then-download")
    body = api.http.get(
        f"{api.url}/device/v3/{DEVICE_UUID}/state", headers={"Authorization": f"Bearer {'k' * 32}"}
    ).json()[DEVICE_UUID]
    rel = body["apps"][api.app["uuid"]]["releases"][release["commit"]]
    assert list(rel) == ["id", "services", "volumes"]
    svc = rel["services"]["main"]
    assert svc["image"] == "registry.example/v2/abc@sha256:" + "1" * 64
    assert svc["environment"] == {"A": "app", "B": "dev"}
    assert svc["labels"] == {"x": "1", "io.resin.update.strategy": "kill-then-download"}
    assert svc["composition"] == {"ports": ["80:80"]} and "running" not in svc
    assert body["config"] == {
        "RESIN_SUPERVISOR_POLL_INTERVAL": "600000",
        "RESIN_SUPERVISOR_UPDATE_STRATEGY": "kill-then-download",
    }


def _report(api: FakeCloud, body, *, key: str = "k" * 32, content_type: str = "application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.http.patch(
        f"{api.url}/device/v3/state",
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
    )


def test_state_patch_rules(api: FakeCloud) -> None:
    _register(api)
    release = api.create_release(api.app["id"], {"main": {"image": "reg/v2/a@sha256:" + "2" * 64}})
    ok_apps = {
        api.app["uuid"]: {
            "release_uuid": release["commit"],
            "releases": {
                release["commit"]: {
                    "update_status": "done",
                    "services": {"main": {"image": "reg/v2/a@sha256:" + "2" * 64, "status": "Running"}},
                }
            },
        }
    }
    assert _report(api, {DEVICE_UUID: {"status": "Idle"}}, content_type="text/plain").status_code == 401
    assert _report(api, {"f" * 32: {"status": "Idle"}}).status_code == 401
    no_key = _report(api, {DEVICE_UUID: {"status": "Idle"}}, key="nope")
    assert (no_key.status_code, no_key.json()) == (401, {"error": "API key required"})
    for bad in (
        {"status": None},
        {"api_port": "48484"},
        {"is_undervolted": "no"},
        {"apps": {api.app["uuid"]: {"releases": {release["commit"]: {"update_status": "great"}}}}},
    ):
        answer = _report(api, {DEVICE_UUID: bad})
        assert (answer.status_code, answer.content) == (400, b""), bad
    unknown_release = {api.app["uuid"]: {"release_uuid": "0" * 32, "releases": {}}}
    assert _report(api, {DEVICE_UUID: {"status": "Idle", "apps": unknown_release}}).status_code == 401
    wrong_image = json.loads(json.dumps(ok_apps).replace("2" * 64, "3" * 64))
    assert _report(api, {DEVICE_UUID: {"apps": wrong_image}}).status_code == 401
    assert api.device(DEVICE_UUID)["fields"].get("status") is None  # all or nothing
    good = _report(api, {DEVICE_UUID: {"status": "Idle", "name": "ignored", "apps": ok_apps, "cpu_usage": 5}})
    assert (good.status_code, good.content) == (200, b"")
    device = api.device(DEVICE_UUID)
    assert device["fields"]["status"] == "Idle" and device["fields"]["update_status"] == "done"
    assert "name" not in device["state"] and device["fields"]["cpu_usage"] == 5
    assert [i["status"] for i in device["image_installs"]] == ["Running"]
    _report(api, {DEVICE_UUID: {"cpu_usage": 50}})  # metrics-only within 60 s: accepted, dropped
    assert api.device(DEVICE_UUID)["fields"]["cpu_usage"] == 5
    too_big = _report(api, {DEVICE_UUID: {"status": "x" * (513 * 1024)}})
    assert too_big.status_code == 413


def test_tags_patch_is_upsert_only(api: FakeCloud) -> None:
    _register(api)
    url = f"{api.url}/device/v3/tags"
    auth = {"Authorization": f"Bearer {'k' * 32}"}
    assert api.http.patch(url, json={DEVICE_UUID: {"a": "1", "b": "2"}}, headers=auth).status_code == 200
    assert api.http.patch(url, json={DEVICE_UUID: {"a": "3"}}, headers=auth).status_code == 200
    assert api.device(DEVICE_UUID)["tags"] == {"a": "3", "b": "2"}
    reserved = api.http.patch(url, json={DEVICE_UUID: {"io.balena.x": "1"}}, headers=auth)
    assert (reserved.status_code, reserved.content) == (400, b"")
    nothing = api.http.patch(url, json={DEVICE_UUID: {}}, headers=auth)
    assert (nothing.status_code, nothing.json()) == (400, "No tags were sent to be updated.")


def test_odata_select_filter_expand(api: FakeCloud) -> None:
    device_id = _register(api).json()["id"]
    _register(api, uuid="a" * 32, key="o" * 32)
    auth = {"Authorization": f"Bearer {'k' * 32}"}
    own = api.http.get(
        f"{api.url}/v7/device", params={"$select": "id", "$filter": f"uuid eq '{DEVICE_UUID}'"}, headers=auth
    )
    assert own.json() == {"d": [{"id": device_id}]} and own.headers["Cache-Control"] == "no-cache"
    other = api.http.get(f"{api.url}/v7/device", params={"$filter": f"uuid eq '{'a' * 32}'"}, headers=auth)
    assert other.json() == {"d": []}
    prov = api.http.get(
        f"{api.url}/v7/device", params={"$select": "id"}, headers={"Authorization": f"Bearer {api.prov}"}
    )
    assert (prov.status_code, prov.content) == (401, b"")
    expanded = api.http.get(
        f"{api.url}/v7/device({device_id})",
        headers=auth,
        params={"$select": "id", "$expand": "belongs_to__application($select=uuid)"},
    )
    assert expanded.json() == {
        "d": [{"id": device_id, "belongs_to__application": [{"uuid": api.app["uuid"]}]}]
    }
    bad = api.http.get(f"{api.url}/v7/device", params={"$filter": "uuid eq"}, headers=auth)
    assert bad.status_code == 400 and bad.json().startswith("Malformed url: ")
    created = api.http.post(
        f"{api.url}/v7/device_config_variable",
        headers=auth,
        json={"device": device_id, "name": "RESIN_HOST_CONFIG_gpu_mem", "value": "16"},
    )
    assert created.status_code == 201 and created.json()["device"] == {"__id": device_id}
    dup = api.http.post(
        f"{api.url}/v7/device_config_variable",
        headers=auth,
        json={"device": device_id, "name": "RESIN_HOST_CONFIG_gpu_mem", "value": "16"},
    )
    assert dup.status_code == 409
    unprefixed = api.http.post(
        f"{api.url}/v7/device_config_variable",
        headers=auth,
        json={"device": device_id, "name": "HOST_X", "value": "1"},
    )
    assert unprefixed.json() == (
        "Configuration variables must be part of one of the following namespaces: RESIN_, BALENA_"
    )
    renamed = api.http.patch(
        f"{api.url}/v7/device({device_id})", json={"device_name": "kitchen"}, headers=auth
    )
    assert (renamed.status_code, renamed.content) == (200, b"")
    assert api.device(DEVICE_UUID)["device_name"] == "kitchen"


def test_routing(api: FakeCloud) -> None:
    assert api.http.get(f"{api.url}/nowhere").status_code == 404
    assert api.http.get(f"{api.url}/nowhere").content == b""
    assert api.http.post(f"{api.url}/device/register/", json={}).status_code == 401  # trailing slash
    assert api.http.post(f"{api.url}//device/register", json={}).status_code == 404
    assert api.http.get(f"{api.url}/connectivity-check").status_code == 204


def test_faults_and_revoked_key(api: FakeCloud) -> None:
    _register(api)
    url = f"{api.url}/device/v3/{DEVICE_UUID}/state"
    auth = {"Authorization": f"Bearer {'k' * 32}"}
    api.fault("429", path="/state", retry_after=7, count=1)
    limited = api.http.get(url, headers=auth)
    assert (limited.status_code, limited.headers["Retry-After"], limited.json()) == (
        429,
        "7",
        "Too Many Requests",
    )
    api.fault("status", status=503, count=1)
    assert api.http.get(url, headers=auth).status_code == 503
    api.fault("malformed", count=1)
    with pytest.raises(ValueError):
        api.http.get(url, headers=auth).json()
    api.fault("reset", count=1)
    with pytest.raises(requests.ConnectionError):
        requests.get(url, headers=auth, timeout=5)
    assert api.http.get(url, headers=auth).status_code == 200
    api.revoke(key="k" * 32)
    assert api.http.get(url, headers=auth).status_code == 401


def test_data_survives_a_restart(api: FakeCloud) -> None:
    _register(api)
    api.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{api.url}/ping", timeout=2)
    api.start()
    assert [d["uuid"] for d in api.devices()] == [DEVICE_UUID]

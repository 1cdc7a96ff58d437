"""Image updates by delta, end to end: the real engine, a loopback registry and the delta server.

Two releases of a test image differ by a changed, an added and a removed file. The device has
release 1 (as pulled from the registry) and fetches release 2 through ``ImageManager.fetch`` with
release 1 as the delta source, against a ``DeltaServer`` reading the registry, over real HTTP. Faults
are injected in that server (statuses, truncated and corrupted bodies) or made real (a moved tag, a
missing base). Every case must end on release 2's exact image id, through the documented path: the
delta (with retries or a resumed download) or a regular pull. The last test drives a real
``python -m supervisor`` process with a ``python -m supervisor.delta serve`` process.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from supervisor.db import Database
from supervisor.delta.fetch import DeltaFetcher, DeltaSettings
from supervisor.delta.server import DeltaServer, RegistrySource
from supervisor.state.current import Image
from supervisor.state.images import ImageError, ImageManager
from tests.fixtures.device import free_port, write_config_json
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.docker

OWNER_LABEL = "io.pysupervisor.test.owner"
TOKEN = "device-key-" + uuid.uuid4().hex
#: Bytes moved by a delta against the compressed layer a full pull downloads: far below it.
MAX_RATIO = 0.05


@dataclass
class Releases:
    v1: str
    v2: str
    v1_id: str
    v2_id: str
    owner: str
    #: Compressed layer bytes of release 2 in the registry: what a full pull downloads.
    pull_bytes: int = 0
    repo: str = ""


def release_files(token: str, version: int) -> dict[str, str | bytes]:
    """Release 1 and 2 share most bytes; 2 changes one file, adds one and removes one."""
    rng = random.Random(token)
    files: dict[str, str | bytes] = {
        "/token": token,
        "/app/static.bin": rng.randbytes(400_000),  # incompressible: a pull must move it
        "/app/settings.conf": "".join(f"option_{i} = {i * 7}\n" for i in range(2000)),
    }
    if version == 1:
        files["/app/removed.txt"] = "gone in release 2\n" * 500
    else:
        settings = str(files["/app/settings.conf"])
        files["/app/settings.conf"] = settings.replace("option_1000 =", "option_1000 = 42 #")
        files["/app/added.txt"] = "new in release 2\n"
    return files


def manifest_layer_bytes(registry: Registry, repo: str, tag: str) -> int:
    response = requests.get(
        f"{registry.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, timeout=10,
    )
    response.raise_for_status()
    return sum(layer["size"] for layer in response.json()["layers"])


def publish_releases(client: docker.DockerClient, make_image, registry: Registry,
                     *, keep_v1: bool = True) -> Releases:
    """Both releases pushed; release 2 deleted locally (the device must fetch it), release 1 kept
    as the device's copy unless ``keep_v1`` is false."""
    token = uuid.uuid4().hex[:12]
    owner = uuid.uuid4().hex
    repo = f"delta-{token}"
    ids, refs = [], []
    for version in (1, 2):
        local = f"pysupervisor-test/{repo}:v{version}"
        ids.append(make_image(local, files=release_files(token, version), labels={OWNER_LABEL: owner}))
        refs.append(registry.push(local, repo, f"v{version}"))
        client.api.remove_image(local)
    client.api.remove_image(ids[1], force=True)
    if not keep_v1:
        client.api.remove_image(ids[0], force=True)
    rel = Releases(refs[0], refs[1], ids[0], ids[1], owner, repo=repo)
    rel.pull_bytes = manifest_layer_bytes(registry, repo, "v2")
    return rel


def remove_images(client: docker.DockerClient, owner: str) -> None:
    for entry in client.api.images(filters={"label": f"{OWNER_LABEL}={owner}"}):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_image(entry["Id"], force=True)


@pytest.fixture
def releases(docker_client, make_image, registry) -> Iterator[Releases]:
    rel = publish_releases(docker_client, make_image, registry)
    yield rel
    remove_images(docker_client, rel.owner)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DeltaServer]:
    """A delta server reading the images' own (loopback) registry. It answers "still processing"
    at once (wait 0), so every first request goes through the retry path."""
    srv = DeltaServer(RegistrySource(), tmp_path / "delta-cache", tokens=[TOKEN], wait_s=0).start()
    yield srv
    srv.stop()


@dataclass
class Device:
    images: ImageManager
    fetcher: DeltaFetcher
    progress: list[int] = field(default_factory=list)


def settings_for(server: DeltaServer, **kw: Any) -> DeltaSettings:
    values = {"enabled": True, "endpoint": server.url, "retry_count": 600, "retry_interval_s": 0.05,
              "request_timeout_s": 10.0, **kw}
    return DeltaSettings(**values)


def device(client: docker.DockerClient, tmp_path: Path, settings: DeltaSettings,
           token: str = TOKEN) -> Device:
    fetcher = DeltaFetcher(client.api, settings, tmp_path / "device-data/deltas", token=lambda s, d: token)
    db = Database(tmp_path / f"db-{uuid.uuid4().hex[:6]}.sqlite")
    dev = Device(ImageManager(client, db, delta=lambda: fetcher), fetcher)
    dev.images.on_progress = lambda _name, pct: dev.progress.append(pct)
    return dev


def record(name: str) -> Image:
    return Image(name=name, app_id=1, app_uuid="delta-app", service_id=1, service_name="main",
                 image_id=2, release_id=2, commit="c2")


def fetch(dev: Device, rel: Releases, source: str | None = None) -> Image:
    return dev.images.fetch(record(rel.v2), delta_source=source or rel.v1)


def pulled(client: docker.DockerClient, image_id: str) -> bool:
    """A pulled image has a registry digest; one built from a delta does not."""
    return bool(client.api.inspect_image(image_id).get("RepoDigests"))


def statuses(server: DeltaServer, what: str) -> list[int]:
    """The statuses the server answered to ``what`` requests, once every answer sent is recorded."""
    return [status for kind, status in server.stats.settled() if kind == what]


def warm(server: DeltaServer, rel: Releases) -> None:
    """Have the server make the artifact now."""
    deadline = time.monotonic() + 60
    while server.request_delta(rel.v1, rel.v2)[0] == "processing":
        assert time.monotonic() < deadline, "the delta server took over 60 s"
        time.sleep(0.05)


def assert_target(client: docker.DockerClient, rel: Releases, fetched: Image) -> None:
    assert fetched.docker_image_id == rel.v2_id
    info = client.api.inspect_image(rel.v2)  # tagged with its name either way
    assert info["Id"] == rel.v2_id
    # Only the two releases exist: nothing half-built was left in the engine.
    ours = {e["Id"] for e in client.api.images(filters={"label": f"{OWNER_LABEL}={rel.owner}"})}
    assert ours == {rel.v1_id, rel.v2_id}


# ------------------------------------------------------------------------------ the delta path
def test_update_via_delta_moves_a_fraction_of_a_pull(docker_client, releases, server, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    dev = device(docker_client, tmp_path, settings_for(server))
    fetched = fetch(dev, releases)
    assert_target(docker_client, releases, fetched)
    assert not pulled(docker_client, releases.v2_id)
    # Computed on the first request (502: still processing), then a redirect and one download.
    delta_statuses = statuses(server, "delta")
    assert delta_statuses[0] == 502 and delta_statuses[-1] == 302 and set(delta_statuses) == {502, 302}
    assert statuses(server, "artifact") == [200]
    assert dev.fetcher.downloaded == server.stats.artifact_bytes > 0
    ratio = dev.fetcher.downloaded / releases.pull_bytes
    assert ratio < MAX_RATIO, (dev.fetcher.downloaded, releases.pull_bytes)
    # Progress like a pull: it only goes up, and ends at 100.
    assert dev.progress[-1] == 100 and dev.progress == sorted(dev.progress) and len(set(dev.progress)) > 2
    assert f"Applied delta for image '{releases.v2}'" in caplog.text
    # The record names the engine image, as after a pull.
    assert [i.docker_image_id for i in dev.images.records()] == [releases.v2_id]


def test_still_processing_is_retried_until_the_delta_is_ready(docker_client, releases, server, tmp_path):
    server.inject("delta", 504, times=3)  # before the server is even asked to compute
    dev = device(docker_client, tmp_path, settings_for(server))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert statuses(server, "delta")[:3] == [504, 504, 504]
    assert statuses(server, "delta")[-1] == 302
    assert not pulled(docker_client, releases.v2_id)


def test_truncated_download_resumes_with_a_range_request(docker_client, releases, server, tmp_path):
    server.inject("artifact", "truncate", times=1)
    dev = device(docker_client, tmp_path, settings_for(server))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert statuses(server, "artifact") == [200, 206]
    assert not pulled(docker_client, releases.v2_id)
    # The resume did not download again what had arrived.
    assert dev.fetcher.downloaded == server.stats.artifact_bytes
    assert dev.fetcher.downloaded == next(server.cache_dir.glob("*.delta")).stat().st_size


def test_a_corrupt_copy_is_downloaded_again(docker_client, releases, server, tmp_path, caplog):
    server.inject("artifact", "corrupt", times=1)
    dev = device(docker_client, tmp_path, settings_for(server))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert statuses(server, "artifact") == [200, 200]
    assert "Delta apply attempt 1 of 2" in caplog.text
    assert not pulled(docker_client, releases.v2_id)


# ------------------------------------------------------------------------------ fallbacks to a pull
@pytest.mark.parametrize("status", [404, 400, 500])
def test_delta_server_errors_fall_back_to_a_pull(docker_client, releases, server, tmp_path, caplog, status):
    server.inject("delta", status, times=None)
    dev = device(docker_client, tmp_path, settings_for(server))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert pulled(docker_client, releases.v2_id)
    assert statuses(server, "delta") == [status] and statuses(server, "artifact") == []
    assert f"Got {status} when requesting an image from delta server" in caplog.text
    assert "falling back to a regular pull" in caplog.text


def test_a_server_that_stays_busy_ends_in_a_pull(docker_client, releases, server, tmp_path):
    server.inject("delta", 502, times=None)
    dev = device(docker_client, tmp_path, settings_for(server, retry_count=3))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert statuses(server, "delta") == [502] * 4  # the first request and 3 retries
    assert pulled(docker_client, releases.v2_id)


def test_an_always_corrupt_delta_ends_in_a_pull(docker_client, releases, server, tmp_path, caplog):
    server.inject("artifact", "corrupt", times=None)
    dev = device(docker_client, tmp_path, settings_for(server))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert statuses(server, "artifact") == [200, 200]  # two download + apply attempts
    assert "the delta failed to apply 2 times" in caplog.text
    assert pulled(docker_client, releases.v2_id)


@pytest.mark.parametrize("fault", [404, "truncate-always"])
def test_an_unusable_download_ends_in_a_pull(docker_client, releases, server, tmp_path, fault):
    if fault == "truncate-always":
        server.inject("artifact", "truncate", times=None)
    else:
        server.inject("artifact", fault, times=None)
    warm(server, releases)  # few retries: they must not be spent on "still processing"
    dev = device(docker_client, tmp_path, settings_for(server, retry_count=2))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert pulled(docker_client, releases.v2_id)
    if fault == 404:
        assert statuses(server, "artifact") == [404]
    else:  # the first response and 2 resumes, each cut short
        assert statuses(server, "artifact") == [200, 206, 206]


def test_a_delta_against_another_base_ends_in_a_pull(docker_client, make_image, registry, releases,
                                                     server, tmp_path, caplog):
    # The v1 tag moves in the registry after the device pulled it: the server diffs against an
    # image the device does not have.
    moved = f"pysupervisor-test/{releases.repo}:moved"
    moved_id = make_image(moved, files={"/other": uuid.uuid4().hex}, labels={OWNER_LABEL: releases.owner})
    registry.push(moved, releases.repo, "v1")
    docker_client.api.tag(releases.v1_id, f"{registry.host}/{releases.repo}", "v1")  # the device's copy
    docker_client.api.remove_image(moved_id, force=True)
    dev = device(docker_client, tmp_path, settings_for(server))
    fetched = fetch(dev, releases)
    assert fetched.docker_image_id == releases.v2_id
    assert statuses(server, "artifact") == [200]
    assert "against another base image" in caplog.text
    assert pulled(docker_client, releases.v2_id)


def test_a_missing_base_image_means_a_pull(docker_client, releases, server, tmp_path):
    dev = device(docker_client, tmp_path, settings_for(server))
    fetched = fetch(dev, releases, source=f"{releases.v1}-gone")
    assert fetched.docker_image_id == releases.v2_id
    assert server.stats.settled() == []
    assert pulled(docker_client, releases.v2_id)


def test_a_refused_token_fails_the_fetch_without_a_pull(docker_client, releases, server, tmp_path):
    dev = device(docker_client, tmp_path, settings_for(server), token="wrong")
    with pytest.raises(ImageError, match="401"):
        fetch(dev, releases)
    assert statuses(server, "delta") == [401]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.api.inspect_image(releases.v2_id)
    # The next attempt with the right key goes through the delta.
    dev = device(docker_client, tmp_path, settings_for(server))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert not pulled(docker_client, releases.v2_id)


def test_v3_is_asked_for_then_pulled(docker_client, releases, server, tmp_path, caplog):
    dev = device(docker_client, tmp_path, settings_for(server, version=3))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert statuses(server, "delta") == [400]  # this server serves v2 only
    assert pulled(docker_client, releases.v2_id)


def test_the_apply_timeout_ends_in_a_pull(docker_client, releases, server, tmp_path, caplog):
    dev = device(docker_client, tmp_path, settings_for(server, apply_timeout_s=1e-6))
    assert_target(docker_client, releases, fetch(dev, releases))
    assert "the delta apply timeout passed" in caplog.text
    assert pulled(docker_client, releases.v2_id)


def test_settings_from_the_target_config():
    defaults = DeltaSettings.from_config({}, None)
    assert defaults == DeltaSettings()  # off, v2, 59 s, no apply timeout, 30 x 10 s
    settings = DeltaSettings.from_config({
        "SUPERVISOR_DELTA": "1", "SUPERVISOR_DELTA_VERSION": "3", "SUPERVISOR_DELTA_REQUEST_TIMEOUT": "5000",
        "SUPERVISOR_DELTA_APPLY_TIMEOUT": "60000", "SUPERVISOR_DELTA_RETRY_COUNT": "4",
        "SUPERVISOR_DELTA_RETRY_INTERVAL": "250",
    }, "http://delta.local:8080/")
    assert settings == DeltaSettings(True, "http://delta.local:8080", 3, 5.0, 60.0, 4, 0.25)
    assert DeltaSettings.from_config({"SUPERVISOR_DELTA_RETRY_COUNT": "many"}).retry_count == 30


# ------------------------------------------------------------------------------ a real supervisor
def start_delta_server(cache: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log_path = cache.parent / "delta-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.delta", "serve", "--port", str(port), "--cache", str(cache),
             "--token", TOKEN, "--wait", "2"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{url}/", timeout=1)
            return proc, url, log_path
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"delta server did not start: {log_path.read_text()}")


def test_supervisor_updates_a_service_by_delta(docker_client, make_image, registry, device_root,
                                               start_supervisor, tmp_path):
    from tests.test_reconcile import fake_host, remove_app, wait_for

    rel = publish_releases(docker_client, make_image, registry, keep_v1=False)
    app_id = random.randint(10**6, 10**9)
    proc, url, server_log = start_delta_server(tmp_path / "delta-cache")
    sup = None
    try:
        write_config_json(device_root, {"deltaEndpoint": url, "deviceApiKey": TOKEN})
        fake_host(device_root)
        sup = start_supervisor(device_root, "--apps", str(app_id), "--no-host-setup", engine=True)
        config = {"SUPERVISOR_DELTA": "1", "SUPERVISOR_DELTA_RETRY_INTERVAL": "200"}

        def target(image: str, release: int) -> dict[str, Any]:
            service = {"serviceName": "main", "imageId": 100 + release, "image": image, "environment": {},
                       "labels": {"io.pysupervisor.test": "1"}, "running": True, "stop_grace_period": "0s"}
            app = {"name": "delta-test", "commit": uuid.uuid4().hex, "releaseId": release,
                   "services": {"11": service}, "volumes": {}, "networks": {}}
            return {"local": {"name": "delta-device", "config": config, "apps": {str(app_id): app}}}

        def running_image() -> str | None:
            flt = {"label": f"io.balena.app-id={app_id}", "status": "running"}
            found = docker_client.api.containers(filters=flt)
            return found[0]["ImageID"] if len(found) == 1 else None

        for release, image, image_id in ((1, rel.v1, rel.v1_id), (2, rel.v2, rel.v2_id)):
            response = sup.post("/v2/local/target-state", json=target(image, release))
            assert response.status_code == 200, response.text
            wait_for(lambda image_id=image_id: running_image() == image_id, f"release {release}", sup,
                     timeout=90, context=running_image)
        log = sup.output()
        # Release 1 had no delta source: a pull. Release 2 came by delta.
        assert pulled(docker_client, rel.v1_id) and not pulled(docker_client, rel.v2_id)
        match = re.search(rf"Applied delta for image '{re.escape(rel.v2)}' \((\d+) bytes downloaded\)", log)
        assert match, log[-4000:]
        assert int(match.group(1)) / rel.pull_bytes < MAX_RATIO
        assert "falling back" not in log
    finally:
        if sup is not None:
            sup.stop(signal.SIGKILL)  # dead first: a live loop would recreate what is removed
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        remove_app(docker_client, app_id, rel.owner)
    assert "Delta" in server_log.read_text()  # the server logged the delta it made


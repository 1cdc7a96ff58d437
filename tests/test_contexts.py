"""The one ServiceContext constructor (state/contexts.py app_context) and the engine socket services
get bound (``DOCKER_SOCKET``, balenaos-integration.md §2.9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.compose import Service
from supervisor.runtime import Settings, Supervisor, default_docker_socket
from supervisor.state.admission import placeholder_context
from supervisor.state.contexts import app_context, device_context
from supervisor.state.target import TargetApp, TargetRelease, TargetService


def _app() -> TargetApp:
    svc = TargetService(name="main", id=3, image_id=4, image="busybox", environment={}, labels={})
    release = TargetRelease(commit="c0ffee", id=2, services={"main": svc})
    return TargetApp(uuid="1", id=1, name="app", release=release)


def test_the_placeholder_and_the_device_build_contexts_the_same_way() -> None:
    app = _app()
    placeholder = placeholder_context(app, "dev")
    assert (placeholder.app_id, placeholder.release_id, placeholder.commit, placeholder.device_name) == (
        1, 2, "c0ffee", "dev")
    device = device_context(device_uuid="u" * 32, device_type="raspberrypi4-64", device_arch="aarch64",
                            device_name="pi", os_version="balenaOS 6", hostname="pi",
                            docker_socket="/var/run/balena-engine.sock")
    ctx = app_context(device, app, scoped_api_key="k", image_info={"Id": "sha256:x"})
    assert ctx.docker_socket == "/var/run/balena-engine.sock" and ctx.scoped_api_key == "k"
    assert ctx.image_info == {"Id": "sha256:x"} and ctx.device_arch == "aarch64"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DOCKER_SOCKET": "/var/run/balena-engine.sock"}, "/var/run/balena-engine.sock"),
        ({"DOCKER_HOST": "unix:///run/engine.sock"}, "/run/engine.sock"),
        ({"DOCKER_SOCKET": "/a.sock", "DOCKER_HOST": "unix:///b.sock"}, "/a.sock"),
        ({"DOCKER_HOST": "tcp://10.0.0.1:2375"}, "/var/run/docker.sock"),
        ({}, "/var/run/docker.sock"),
    ],
)
def test_the_engine_socket_comes_from_docker_socket(monkeypatch, env: dict[str, str], expected: str) -> None:
    for name in ("DOCKER_SOCKET", "DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_docker_socket() == expected


def test_a_service_asking_for_the_engine_socket_gets_the_one_docker_socket_names(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("DOCKER_SOCKET", "/var/run/balena-engine.sock")
    (tmp_path / "mnt/boot").mkdir(parents=True)
    sup = Supervisor(Settings(root=str(tmp_path), port=0, host="127.0.0.1", led="none", host_setup=False))
    try:
        app = _app()
        svc = {"serviceName": "main", "id": 3, "image_id": 4, "image": "busybox",
               "labels": {"io.balena.features.balena-socket": "1"}, "environment": {}, "composition": {}}
        service = Service.from_target(svc, app_context(sup.target_builder.device(), app))
        sources = {v["source"] for v in service.config["volumes"] if isinstance(v, dict)}
        assert sources == {"/var/run/balena-engine.sock"}
    finally:
        sup.stop()

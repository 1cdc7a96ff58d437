"""The test harness itself, on the real engine and a loopback registry: if these fail, every
Docker-backed test is suspect."""

from __future__ import annotations

import docker
import docker.errors
import pytest

from tests.fixtures.docker import TEST_LABEL, ImageFactory
from tests.fixtures.registry import Registry, RegistryPushError

pytestmark = pytest.mark.docker

LABELS = {TEST_LABEL: "1"}


def run_output(client: docker.DockerClient, cleanup: list, image: str, cmd: list[str]) -> bytes:
    """Run to completion and return stdout; the container is labelled and cleaned up."""
    container = client.containers.create(image, cmd, labels=LABELS)
    cleanup.append(container.id)
    container.start()
    assert container.wait(timeout=30)["StatusCode"] == 0, container.logs()
    return container.logs(stdout=True, stderr=False)


def test_make_image_files_and_config(
    docker_client: docker.DockerClient, make_image: ImageFactory, docker_cleanup: list
) -> None:
    image_id = make_image(
        "pysupervisor-test/harness-files",
        files={"/etc/hello": "hello world\n", "opt/run.sh": '#!/bin/sh\necho ran "$GREETING"\n'},
        labels={"io.balena.test": "x"},
        env={"GREETING": "hi"},
        workdir="/opt",
    )
    docker_cleanup.append(image_id)
    tag = "pysupervisor-test/harness-files:latest"
    image = docker_client.images.get(tag)
    assert image.id == image_id
    assert image.labels == {TEST_LABEL: "1", "io.balena.test": "x"}
    assert image.attrs["Config"]["Cmd"] == ["sleep", "100000"]

    assert run_output(docker_client, docker_cleanup, tag, ["cat", "/etc/hello"]) == b"hello world\n"
    assert run_output(docker_client, docker_cleanup, tag, ["./run.sh"]) == b"ran hi\n"
    out = run_output(docker_client, docker_cleanup, tag, ["sh", "-c", "stat -c %a /tmp; id -u"])
    assert out.split() == [b"1777", b"0"]


def test_make_image_is_deterministic(
    docker_client: docker.DockerClient, make_image: ImageFactory, docker_cleanup: list
) -> None:
    spec = {"files": {"data/x": b"\x00\x01"}, "cmd": ["sh", "-c", "true"]}
    first = make_image("pysupervisor-test/harness-det", **spec)
    docker_cleanup.append(first)
    # Removed from the engine and built again: the id comes from content, not from a cache.
    docker_client.images.remove(first, force=True)
    assert make_image("pysupervisor-test/harness-det:v2", **spec) == first
    other = make_image("pysupervisor-test/harness-det:v2", **{**spec, "cmd": ["true"]})
    docker_cleanup.append(other)
    assert other != first


def test_busybox_image_runs_labelled_container(
    docker_client: docker.DockerClient, busybox_image: str, docker_cleanup: list
) -> None:
    container = docker_client.containers.run(busybox_image, detach=True, labels=LABELS)
    docker_cleanup.append(container.id)
    container.reload()
    assert container.status == "running"
    assert container.attrs["Config"]["Cmd"] == ["sleep", "100000"]
    result = container.exec_run(["sh", "-c", "echo $((6*7))"])
    assert (result.exit_code, result.output) == (0, b"42\n")


def test_registry_push_pull_round_trip(
    docker_client: docker.DockerClient,
    make_image: ImageFactory,
    registry: Registry,
    docker_cleanup: list,
) -> None:
    image_id = make_image("pysupervisor-test/harness-e2e", files={"etc/marker": "e2e\n"})
    ref = registry.push("pysupervisor-test/harness-e2e", "harness/e2e", "v1")
    assert ref == f"{registry.host}/harness/e2e:v1"
    docker_client.images.remove(image_id, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_id)

    pulled = docker_client.images.pull(f"{registry.host}/harness/e2e", tag="v1")
    docker_cleanup.append(pulled.id)
    assert pulled.id == image_id  # the config digest survives the trip
    assert run_output(docker_client, docker_cleanup, ref, ["cat", "/etc/marker"]) == b"e2e\n"


def test_registry_with_auth(
    docker_client: docker.DockerClient,
    registry_factory,
    busybox_image: str,
    docker_cleanup: list,
) -> None:
    reg = registry_factory(auth=("d_harness", "secret-key"))
    name = f"{reg.host}/harness/auth"
    assert docker_client.api.tag(busybox_image, name, "v1")
    docker_cleanup.append(f"{name}:v1")

    with pytest.raises(RegistryPushError):
        reg.push(busybox_image, "harness/auth", "v1", auth_config={"username": "x", "password": "y"})
    anonymous = list(docker_client.api.push(name, tag="v1", stream=True, decode=True))
    assert "no basic auth credentials" in anonymous[-1].get("error", ""), anonymous

    assert reg.push(busybox_image, "harness/auth", "v1") == f"{name}:v1"
    docker_client.api.remove_image(f"{name}:v1")
    for creds in (None, {"username": "d_harness", "password": "wrong"}):
        with pytest.raises(docker.errors.APIError, match="auth|unauthorized"):
            docker_client.images.pull(name, tag="v1", auth_config=creds)
    pulled = docker_client.images.pull(name, tag="v1", auth_config=reg.auth_config)
    assert pulled.id == docker_client.images.get(busybox_image).id

"""The engine restarts under a running supervisor (issue #17), on a private ``dockerd`` this test starts
on its own socket, data root, exec root and pidfile (``--bridge=none``, no iptables, the vfs storage
driver), in a network namespace of its own: nothing of the shared engine or the host's network is
touched.

While the engine is down ``/v1/healthy`` says so (500, one log line naming the engine), the API answers
503 where it needs the engine, and an apply asked for meanwhile backs off with growing delays. Once the
engine is back the apps run again (the engine restarts them: restart policy ``always``), the
supervisor reconnects by itself, ``/v1/healthy`` is 200 again, and the next apply finds the same
containers: none recreated, none duplicated.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.fixtures.device import wait_for
from tests.fixtures.docker import TEST_LABEL, build_image_archive, build_layer
from tests.test_reconcile import SETTLED, start_local

pytestmark = pytest.mark.docker


class PrivateEngine:
    """``dockerd`` of this test only; ``stop()``/``start()`` keep its data (containers, images)."""

    def __init__(self) -> None:
        if shutil.which("dockerd") is None:
            pytest.fail("dockerd is needed to restart an engine under the supervisor (package docker.io)")
        # A short path: a unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="pde-", dir="/tmp"))
        (self.dir / "daemon.json").write_text("{}")  # not the host's /etc/docker/daemon.json
        self.sock = self.dir / "docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def docker_host(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> PrivateEngine:
        log = open(self.dir / "dockerd.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            # In a network namespace of its own: a dockerd started with --bridge=none deletes the
            # docker0 link of the namespace it runs in (moby removes the default bridge interface),
            # which in the root namespace is the shared engine's bridge.
            ["unshare", "--net", "dockerd", "--config-file", str(self.dir / "daemon.json"),
             "--data-root", str(self.dir / "data"),
             "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "docker.pid"),
             "-H", self.docker_host, "--bridge=none", "--iptables=false", "--ip6tables=false",
             "--storage-driver=vfs", "--shutdown-timeout=2"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        client = docker.DockerClient(base_url=self.docker_host, timeout=10, version="1.41")
        try:
            wait_for(lambda: self._pings(client), "the private dockerd to answer", timeout=90,
                     context=self.log_tail)
        finally:
            client.close()
        return self

    def _pings(self, client: docker.DockerClient) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        try:
            return bool(client.ping())
        except Exception:
            return False

    def log_tail(self) -> str:
        return (self.dir / "dockerd.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        client = docker.DockerClient(base_url=self.docker_host, timeout=30, version="1.41")
        try:
            if self.proc is not None:
                for container in client.api.containers(all=True):
                    client.api.remove_container(container["Id"], force=True, v=True)
        except Exception:  # a dockerd that never answered has nothing to remove
            pass
        finally:
            client.close()
        self.stop()
        subprocess.run(["umount", "-R", str(self.dir / "exec")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def engine() -> Iterator[PrivateEngine]:
    private = PrivateEngine()
    try:  # a start that fails still stops its dockerd and removes its directory
        yield private.start()
    finally:
        private.destroy()


def test_the_engine_restarts_under_the_supervisor(start_supervisor, device_root: Path,
                                                  engine: PrivateEngine) -> None:
    client = docker.DockerClient(base_url=engine.docker_host, timeout=30, version="1.41")
    image = "pysupervisor-test/engine-restart:latest"
    _, archive = build_image_archive(image, build_layer({}), arch=client.version().get("Arch", "amd64"),
                                     cmd=["sleep", "100000"], labels={TEST_LABEL: "1"}, env={}, workdir=None)
    list(client.api.load_image(archive, quiet=True))
    app_id = 7070
    services = {str(71 + i): {"serviceName": name, "imageId": 710 + i, "image": image, "running": True,
                              "environment": {}, "labels": {TEST_LABEL: "1"}, "stop_grace_period": "0s"}
                for i, name in enumerate(("main", "worker"))}
    target = {"local": {"name": "engine-device", "config": {}, "apps": {str(app_id): {
        "name": "engine-app", "commit": uuid.uuid4().hex, "releaseId": 1, "services": services,
        "volumes": {}, "networks": {}}}}}

    def containers() -> dict[str, tuple[str, str]]:
        found = client.api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"})
        return {c["Labels"]["io.balena.service-name"]: (c["Id"], c["State"]) for c in found}

    sup = start_local(start_supervisor, device_root, [app_id], env={"DOCKER_HOST": engine.docker_host})
    assert sup.post("/v2/local/target-state", json=target).status_code == 200
    wait_for(lambda: SETTLED in sup.output(), "the app on the private engine", sup, timeout=120)
    before = containers()
    assert sorted(before) == ["main", "worker"] and all(state == "running" for _, state in before.values())
    assert sup.get("/v1/healthy").status_code == 200

    engine.stop()
    wait_for(lambda: sup.get("/v1/healthy").status_code == 500, "/v1/healthy to report the outage", sup)
    assert "Healthcheck failed: Docker engine unreachable" in sup.output()
    status = sup.get("/v2/state/status")
    assert status.status_code == 503 and "Docker engine" in status.json()["message"]
    assert sup.post("/v1/update", json={}).status_code in (200, 204)
    wait_for(lambda: len(re.findall(r"update attempt in (\d+)ms", sup.output())) >= 2,
             "an apply that backs off while the engine is down", sup)
    delays = [int(ms) for ms in re.findall(r"update attempt in (\d+)ms", sup.output())]
    assert delays[1] > delays[0], delays  # backoff, not a busy loop

    engine.start()
    wait_for(lambda: sup.get("/v1/healthy").status_code == 200, "/v1/healthy after the engine is back", sup,
             timeout=120)
    wait_for(lambda: all(state == "running" for _, state in containers().values()),
             "the apps to run again", sup, timeout=120, context=containers)
    # The apply that backed off during the outage retries by itself (its backoff is short yet) and
    # finds everything in place: the same containers, none recreated, none added.
    wait_for(lambda: sup.output().count(SETTLED) >= 2, "the backed-off apply to settle", sup, timeout=180)
    after = containers()
    assert after == {name: (cid, "running") for name, (cid, _) in before.items()}, (before, after)
    assert sup.get("/v2/state/status").json()["appState"] == "applied"
    client.close()

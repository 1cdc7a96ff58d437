"""Managed mode end to end (issue #12): a real supervisor process, the real engine, a loopback
registry that only lets ``d_<uuid>`` in, and the fake balena API as a separate server process.

Binder intervals are scaled (``PYSUPERVISOR_CLOUD_TIME_SCALE``, supervisor/cloud/timing.py) so a
ten-minute outage takes seconds; every wait is a condition with a deadline.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.cloud_helpers import config_json, env, fleet, fresh_device, set_db_config
from tests.fakecloud.client import FakeCloud
from tests.fixtures.apps import remove_app
from tests.fixtures.device import (
    SupervisorProcess,
    free_port,
    global_api_key,
    log_position_settled,
    wait_for,
)
from tests.fixtures.docker import TEST_LABEL

pytestmark = pytest.mark.docker


class Fleet:
    """A fleet with a random app id (the supervisor is scoped to it), a device identity known
    beforehand (the registry's htpasswd user is ``d_<uuid>``), and images in that registry."""

    def __init__(
        self, api: FakeCloud, docker_client: docker.DockerClient, registry: Any, root: Path, make_image: Any
    ) -> None:
        self.api, self.client, self.registry, self.root = api, docker_client, registry, root
        self.app_id = random.randint(10**6, 10**9)
        self.app = fleet(api, f"fleet{self.app_id}", app_id=self.app_id)
        self.uuid, self.key = registry.auth[0][2:], registry.auth[1]
        self.images: dict[str, str] = {}
        for name in ("main", "db", "other"):
            local = f"pysupervisor-test/cloud-{name}-{uuid.uuid4().hex[:8]}:latest"
            make_image(local, files={f"/{name}.txt": name})
            ref = registry.push(local, f"cloud{self.app_id}/{name}")
            digest = next(
                d for d in docker_client.api.inspect_image(ref)["RepoDigests"] if d.startswith(registry.host)
            )
            self.images[name] = digest  # <registry>/<repo>@sha256:..., as the builder stores it
            docker_client.api.remove_image(ref)  # the device must pull it, with its credentials

    def release(
        self, names: tuple[str, ...] = ("main", "db"), env_value: str = "1", **kw: Any
    ) -> dict[str, Any]:
        services = {
            n: {
                "image": self.images[n],
                "environment": {"RELEASE": env_value},
                "labels": {TEST_LABEL: "1"},
                "composition": {"stop_grace_period": "0s"},
            }
            for n in names
        }
        return self.api.create_release(self.app["id"], services, **kw)

    def start(self, start_supervisor: Any, *, time_scale: str | None = None,
              **config: Any) -> SupervisorProcess:
        fresh_device(self.root, self.api, self.app, uuid=self.uuid, deviceApiKey=self.key, **config)
        extra = {} if time_scale is None else {"PYSUPERVISOR_CLOUD_TIME_SCALE": time_scale}
        return start_supervisor(
            self.root, "--apps", str(self.app_id), "--no-host-setup", engine=True, env=env(**extra)
        )

    def containers(self) -> dict[str, dict[str, Any]]:
        """service name -> {id, commit, state} of this app's containers."""
        found = self.client.api.containers(all=True, filters={"label": f"io.balena.app-id={self.app_id}"})
        return {
            c["Labels"]["io.balena.service-name"]: {
                "id": c["Id"],
                "state": c["State"],
                "commit": c["Names"][0].rsplit("_", 1)[-1],
            }
            for c in found
        }

    def wait_next_poll(self, sup: SupervisorProcess) -> None:
        """Until the device has fetched its target once more (answered, 200 or 304)."""
        def polls() -> int:
            requests = self.api.requests()
            return sum(1 for r in requests if r["kind"] == "state_get" and r["status"] in (200, 304))

        seen = polls()
        wait_for(lambda: polls() > seen, "the next target poll", sup, timeout=60)

    def reported(self) -> dict[str, Any]:
        """What the fake API holds as this device's state (the merge of its reports)."""
        device = self.api.device(self.uuid)
        return device["state"] if device else {}

    def runs(self, commit: str, names: tuple[str, ...]) -> bool:
        """The engine runs exactly ``names`` at ``commit`` and the cloud was told so."""
        running = self.containers()
        if set(running) != set(names) or any(
            c["commit"] != commit or c["state"] != "running" for c in running.values()
        ):
            return False
        app = self.reported().get("apps", {}).get(self.app["uuid"], {})
        services = app.get("releases", {}).get(commit, {}).get("services", {})
        return (
            app.get("release_uuid") == commit
            and set(services) == set(names)
            and all(s["status"] == "Running" for s in services.values())
            and all(services[n]["image"] == self.images[n] for n in names)
        )


@pytest.fixture
def cloud_fleet(fake_api, docker_client, registry_factory, device_root, make_image):
    device_uuid, key = uuid.uuid4().hex, uuid.uuid4().hex
    registry = registry_factory(auth=(f"d_{device_uuid}", key))
    made = Fleet(fake_api, docker_client, registry, device_root, make_image)
    yield made
    remove_app(docker_client, made.app_id, volumes=True)


def test_fresh_device_provisions_applies_moves_on_and_removes(cloud_fleet: Fleet, start_supervisor) -> None:
    fl = cloud_fleet
    first = fl.release()
    sup = fl.start(start_supervisor)
    wait_for(
        lambda: fl.runs(first["commit"], ("main", "db")),
        "the first release running and reported",
        sup,
        timeout=120,
        context=lambda: (fl.containers(), fl.reported().get("apps")),
    )
    (device,) = fl.api.devices()
    config = config_json(fl.root)
    assert config["deviceId"] == device["id"] and "apiKey" not in config and config["registered_at"] > 0
    assert config["uuid"] == device["uuid"] == fl.uuid
    assert device["api_heartbeat_state"] == "online"
    kinds = [r["kind"] for r in fl.api.requests()]
    assert kinds.count("register") == 1 and "key_exchange" not in kinds  # 201 with our own key: no exchange
    assert fl.key not in sup.output() and fl.app["provisioning_key"] not in sup.output()

    second = fl.release(("main", "other"), env_value="2")
    wait_for(
        lambda: fl.runs(second["commit"], ("main", "other")),
        "the second release running and reported",
        sup,
        timeout=120,
        context=lambda: (fl.containers(), fl.reported().get("apps")),
    )

    fl.api.set_target(fl.app["id"], None)  # the fleet has no release for the device any more
    wait_for(
        lambda: not fl.containers() and fl.reported().get("apps") == {},
        "the app removed and reported",
        sup,
        timeout=120,
        context=lambda: (fl.containers(), fl.reported().get("apps")),
    )
    assert len(fl.api.devices()) == 1


def _applies(sup: SupervisorProcess) -> int:
    return sup.output().count("Applying target state")


def test_unchanged_target_costs_small_polls_and_no_applies(cloud_fleet: Fleet, start_supervisor) -> None:
    """100 polls of an unchanged target: 100 requests answered 304 with no body, no apply, no report."""
    fl = cloud_fleet
    fl.api.set_var("app_config", fl.app["id"], "RESIN_SUPERVISOR_HARDWARE_METRICS", "false")
    release = fl.release(("main",))
    # The cloud's config always carries RESIN_SUPERVISOR_POLL_INTERVAL >= 600000, which the device
    # applies (§5.3): x 0.0005 = a 0.3 s poll (+ jitter < 0.03 s).
    sup = fl.start(start_supervisor, time_scale="0.0005")
    wait_for(
        lambda: fl.runs(release["commit"], ("main",)), "the release running and reported", sup, timeout=120
    )
    wait_for(lambda: _settled_reports(fl), "reports to settle (metrics now null)", sup, timeout=30)
    applies, start = _applies(sup), fl.api.requests()[-1]["id"]
    window = wait_for(lambda: _polls_after(fl, start, 100), "100 more polls", sup, timeout=180)
    assert all(r["kind"] == "state_get" and r["status"] == 304 and r["bytes_out"] == 0 for r in window), {
        (r["kind"], r["status"]) for r in window
    }
    assert _applies(sup) == applies


def _polls_after(fl: Fleet, after: int, count: int) -> list[dict[str, Any]] | None:
    # The log stream is a channel of its own (logged when a stream ends, e.g. after 60 s idle).
    requests = [r for r in fl.api.requests(after=after) if r["kind"] != "log_stream"]
    polls = [r for r in requests if r["kind"] == "state_get"]
    if len(polls) < count:
        return None
    last = polls[count - 1]["id"]
    return [r for r in requests if r["id"] <= last]


def _settled_reports(fl: Fleet) -> bool:
    reports = fl.api.reports(fl.uuid)
    return (
        bool(reports)
        and reports[-1]["body"].get("cpu_usage", 0) is None
        or bool(reports and time.time() - reports[-1]["at"] > 2)
    )


def test_cloud_outage(cloud_fleet: Fleet, start_supervisor) -> None:
    """Ten minutes without the API (x0.01 = 6 s, poll interval 2 min = 1.2 s): apps keep running,
    /v1/healthy fails after 2x the interval, then the device catches up within an interval and its
    reports resume as diffs."""
    fl = cloud_fleet
    # The connectivity check would fail the health at once (test_connectivity_check_fails_health_at_once);
    # off, the poll-age rule alone decides.
    fl.api.set_var("app_config", fl.app["id"], "RESIN_SUPERVISOR_CONNECTIVITY_CHECK", "false")
    release = fl.release(("main",))
    sup = fl.start(start_supervisor, appUpdatePollInterval=120_000)
    wait_for(
        lambda: fl.runs(release["commit"], ("main",)), "the release running and reported", sup, timeout=120
    )
    assert sup.get("/v1/healthy").status_code == 200
    before = fl.containers()
    fl.api.stop()
    down_at = time.monotonic()
    wait_for(
        lambda: sup.get("/v1/healthy").status_code == 500, "unhealthy during the outage", sup, timeout=30
    )
    # Unhealthy once the last good poll is 2 x 1.2 s old; that poll was at most 1.2 + 0.6 s before.
    assert time.monotonic() - down_at >= 2 * 1.2 - (1.2 + 0.6)
    assert "no successful target fetch" in sup.output()
    while time.monotonic() - down_at < 6.0:
        time.sleep(0.2)
    assert fl.containers() == before  # the apps ran through it untouched
    fl.api.start()
    last_report = fl.api.reports(fl.uuid)[-1]["id"]
    second = fl.release(("main",), env_value="after-outage")
    back = time.monotonic()
    wait_for(
        lambda: (
            fl.api.requests()[-1:]
            and any(r["kind"] == "state_get" and r["status"] == 200 for r in fl.api.requests())
        ),
        "a poll after the outage",
        sup,
        timeout=30,
    )
    polled = time.monotonic() - back
    assert polled < 1.2 + 0.6 + 2.0, polled  # within one interval (+ jitter, + margin for a busy CI)
    wait_for(
        lambda: fl.runs(second["commit"], ("main",)),
        "the new release applied after the outage",
        sup,
        timeout=120,
    )
    wait_for(lambda: sup.get("/v1/healthy").status_code == 200, "healthy again", sup, timeout=30)
    resumed = fl.api.reports(fl.uuid, after=last_report)
    assert resumed and all(
        "api_secret" not in r["body"] and "supervisor_version" not in r["body"] for r in resumed
    ), [list(r["body"]) for r in resumed]


def test_refused_cloud_target_changes_nothing(cloud_fleet: Fleet, start_supervisor) -> None:
    fl = cloud_fleet
    good = fl.release(("main",))
    sup = fl.start(start_supervisor)
    wait_for(lambda: fl.runs(good["commit"], ("main",)), "the release running and reported", sup, timeout=120)
    before = fl.containers()
    bad = fl.api.create_release(
        fl.app["id"],
        {"main": {"image": fl.images["main"], "environment": {"N": 1}, "labels": {TEST_LABEL: "1"}}},
    )
    wait_for(lambda: "Could not move to new release: " in sup.output(), "the refusal logged", sup, timeout=30)
    assert "services.main.environment.N" in sup.output()
    fl.wait_next_poll(sup)  # the binder's next chance to act on the refused target
    assert fl.containers() == before and bad["commit"] not in str(fl.reported())
    fixed = fl.release(("main",), env_value="fixed")
    wait_for(lambda: fl.runs(fixed["commit"], ("main",)), "the next valid release applied", sup, timeout=120)


def test_a_cloud_release_the_engine_would_refuse_changes_nothing(
    cloud_fleet: Fleet, start_supervisor
) -> None:
    """The admission gate (state/admission.py) judges cloud targets too: refused at the path of the
    cloud's document; unknown keys of the next release are applied with one warning each."""
    fl = cloud_fleet
    good = fl.release(("main",))
    sup = fl.start(start_supervisor)
    wait_for(lambda: fl.runs(good["commit"], ("main",)), "the release running and reported", sup, timeout=120)
    before = fl.containers()
    service = {"image": fl.images["main"], "environment": {}, "labels": {TEST_LABEL: "1"},
               "composition": {"stop_grace_period": "0s", "ports": ["99999:80"]}}
    fl.api.create_release(fl.app["id"], {"main": service})
    refusal = ".services.main.composition.ports[0]: port 99999 is out of range 0-65535"
    wait_for(lambda: refusal in sup.output(), "the refusal logged", sup, timeout=30)
    assert "Could not move to new release: " in sup.output()
    assert fl.containers() == before
    service["composition"] = {"stop_grace_period": "0s", "restrt": "no"}
    fixed = fl.api.create_release(fl.app["id"], {"main": service})
    wait_for(lambda: fl.runs(fixed["commit"], ("main",)), "the next valid release applied", sup, timeout=120)
    assert sup.output().count("services.main.composition ignored (did you mean 'restart'?)") == 1


def test_a_cloud_release_whose_host_port_is_held_outside_it_is_applied_once_the_port_is_free(
    cloud_fleet: Fleet, start_supervisor, busybox_image: str, docker_cleanup: list[Any]
) -> None:
    """A refusal for the device's present state (state/hostview.py) is not the release's fault: the
    binder judges the same target again at each poll (304 included) and applies it once it fits."""
    fl = cloud_fleet
    good = fl.release(("main",))
    sup = fl.start(start_supervisor)
    wait_for(lambda: fl.runs(good["commit"], ("main",)), "the release running and reported", sup, timeout=120)
    before = fl.containers()
    api, port, name = fl.client.api, free_port(), f"pysupervisor-port-holder-{uuid.uuid4().hex[:8]}"
    holder = api.create_container(busybox_image, name=name, labels={TEST_LABEL: "1"}, ports=[80],
                                  host_config=api.create_host_config(port_bindings={80: port}))
    docker_cleanup.append(holder["Id"])
    api.start(holder["Id"])
    service = {"image": fl.images["main"], "environment": {}, "labels": {TEST_LABEL: "1"},
               "composition": {"stop_grace_period": "0s", "ports": [f"{port}:80"]}}
    wanted = fl.api.create_release(fl.app["id"], {"main": service})
    refusal = (f".services.main.composition.ports[0]: host port {port}/tcp is already published by "
               f"container '{name}'")
    wait_for(lambda: refusal in sup.output(), "the refusal logged", sup, timeout=30)
    assert fl.containers() == before
    api.remove_container(holder["Id"], force=True)
    wait_for(lambda: fl.runs(wanted["commit"], ("main",)), "the same release applied once the port is free",
             sup, timeout=120)
    assert sup.output().count(refusal) == 1  # judged again at every poll, logged once


def test_local_mode_stops_cloud_targets_and_back(cloud_fleet: Fleet, start_supervisor) -> None:
    fl = cloud_fleet
    first = fl.release(("main",))
    sup = fl.start(start_supervisor)
    wait_for(
        lambda: fl.runs(first["commit"], ("main",)), "the release running and reported", sup, timeout=120
    )
    set_db_config(fl.root, "localMode", "true")  # what SUPERVISOR_LOCAL_MODE=1 stores (#13 applies it)
    wait_for(lambda: "Local mode enabled" in sup.output(), "local mode noticed", sup, timeout=30)
    reports = len(fl.api.reports(fl.uuid))
    second = fl.release(("main",), env_value="while-local")
    wait_for(
        lambda: "cloud target is stored, not applied" in sup.output(),
        "the target stored only",
        sup,
        timeout=30,
    )
    fl.wait_next_poll(sup)  # the binder's next chance to apply what it stored
    assert {c["commit"] for c in fl.containers().values()} == {first["commit"]}
    assert all("apps" not in r["body"] for r in fl.api.reports(fl.uuid)[reports:])
    set_db_config(fl.root, "localMode", "false")
    wait_for(lambda: fl.runs(second["commit"], ("main",)), "the cloud target applied again", sup, timeout=120)


@pytest.mark.parametrize("slow_path", ["^/device/register", "^/v7/device$", None])
def test_kill_during_provisioning_registers_once(
    fake_api: FakeCloud, device_root: Path, start_supervisor, slow_path: str | None
) -> None:
    """kill -9 at points of provisioning (a slowed call widens the window): restarted, the device
    is provisioned exactly once, with a consistent config.json."""
    app = fleet(fake_api)
    fresh_device(device_root, fake_api, app)
    if slow_path == "^/v7/device$":  # a first run that registered but never wrote config.json
        config = config_json(device_root)
        sup = start_supervisor(device_root, env=env())
        wait_for(lambda: fake_api.devices(), "registered", sup, timeout=30)
        wait_for(lambda: "deviceId" in config_json(device_root), "provisioned", sup, timeout=30)
        sup.stop(signal.SIGKILL)
        from tests.fixtures.device import write_config_json

        write_config_json(
            device_root,
            {
                **config,
                "uuid": fake_api.devices()[0]["uuid"],
                "deviceApiKey": fake_api.devices()[0]["keys"][0],
            },
        )
    for delay in (0.0, 0.4, 1.0, 1.6):
        if slow_path:
            fake_api.fault("slow", path=slow_path, delay=1.0, count=1)
        sup = start_supervisor(device_root, env=env())
        wait_for(lambda s=sup: "Supervisor started" in s.output(), "the supervisor up", sup, timeout=30)
        time.sleep(delay)
        sup.stop(signal.SIGKILL)
        fake_api.clear_faults()
    sup = start_supervisor(device_root, env=env())
    wait_for(lambda: "deviceId" in config_json(device_root), "provisioned after the kills", sup, timeout=60)
    (device,) = fake_api.devices()
    config = config_json(device_root)
    assert (config["uuid"], config["deviceId"]) == (device["uuid"], device["id"])
    assert "apiKey" not in config and config["deviceApiKey"] in device["keys"]
    wait_for(lambda: fake_api.device(config["uuid"])["api_heartbeat_state"] == "online", "polling", sup)


def test_connectivity_check_fails_health_at_once(
    fake_api: FakeCloud, device_root: Path, start_supervisor
) -> None:
    """§10.7: a TCP check of the API host every 10 s (x0.01); the API gone fails /v1/healthy long
    before the poll-age rule would (poll interval 15 min x 0.01 = 9 s here)."""
    app = fleet(fake_api)
    fresh_device(device_root, fake_api, app, appUpdatePollInterval=900_000)
    sup = start_supervisor(device_root, env=env())
    wait_for(lambda: fake_api.devices() and "deviceId" in config_json(device_root), "provisioned", sup)
    wait_for(lambda: sup.get("/v1/healthy").status_code == 200, "healthy", sup, timeout=30)
    fake_api.stop()
    down_at = time.monotonic()
    wait_for(lambda: sup.get("/v1/healthy").status_code == 500, "unhealthy", sup, timeout=30)
    assert time.monotonic() - down_at < 9.0
    wait_for(lambda: "Waiting for connectivity..." in sup.output(), "the change logged", sup, timeout=10)
    fake_api.start()
    wait_for(lambda: sup.get("/v1/healthy").status_code == 200, "healthy again", sup, timeout=30)
    # logged by the connectivity thread just after it flips the state the health check reads
    wait_for(lambda: "Internet Connectivity: OK" in sup.output(), "the change back logged", sup, timeout=10)


def _system_lines(fl: Fleet, prefix: str) -> list[dict[str, Any]]:
    return [r for r in fl.api.logs(fl.uuid) if r["message"].startswith(prefix)]


def test_system_messages_reach_the_cloud_log_stream(cloud_fleet: Fleet, start_supervisor) -> None:
    """§8.3 end to end: the device's system messages (config changes from its cloud) arrive on its
    log stream as system lines; SUPERVISOR_LOG_CONTROL=false stops them and true brings them back."""
    fl = cloud_fleet
    fl.api.set_var("app_config", fl.app["id"], "RESIN_SUPERVISOR_HARDWARE_METRICS", "false")
    release = fl.release(("main",))
    sup = fl.start(start_supervisor)
    wait_for(lambda: fl.runs(release["commit"], ("main",)), "the release running", sup, timeout=120)
    applied = wait_for(lambda: _system_lines(fl, "Applied configuration change"),
                       "the config change on the log stream", sup, timeout=60,
                       context=lambda: fl.api.logs(fl.uuid))
    line = applied[0]
    assert line["isSystem"] and "serviceId" not in line and not line["isStdErr"]
    assert abs(line["timestamp"] / 1000 - time.time()) < 120
    assert "SUPERVISOR_HARDWARE_METRICS" in line["message"]
    assert all(r["status"] in (0, 201, 503) for r in fl.api.requests() if r["kind"] == "log_stream")
    assert fl.key not in sup.output()

    key = global_api_key(fl.root)

    def change(name: str, value: str) -> None:
        """Set a fleet config variable and wait until the device has applied it."""
        before = sup.output().count("Applied configuration change")
        fl.api.set_var("app_config", fl.app["id"], name, value)
        sup.post("/v1/update", json={"force": True}, headers={"Authorization": f"Bearer {key}"})
        wait_for(lambda: sup.output().count("Applied configuration change") > before,
                 f"{name}={value} applied", sup, timeout=60)

    change("RESIN_SUPERVISOR_LOG_CONTROL", "false")
    seen = len(fl.api.logs(fl.uuid))
    change("RESIN_SUPERVISOR_HARDWARE_METRICS", "true")
    time.sleep(1.0)  # > the 100 ms flush: a line sent now would have arrived
    assert not [r for r in fl.api.logs(fl.uuid)[seen:] if "HARDWARE_METRICS" in r["message"]]
    change("RESIN_SUPERVISOR_LOG_CONTROL", "true")
    change("RESIN_SUPERVISOR_HARDWARE_METRICS", "false")
    wait_for(lambda: [r for r in fl.api.logs(fl.uuid)[seen:] if "HARDWARE_METRICS" in r["message"]],
             "lines again once logging is back on", sup, timeout=30)


def test_unmanaged_device_has_no_binder(tmp_path: Path) -> None:
    from supervisor.runtime import Settings, Supervisor

    root = tmp_path / "root"
    (root / "mnt/boot").mkdir(parents=True)
    sup = Supervisor(Settings(root=str(root), port=0, host="127.0.0.1", led="none"))
    try:
        assert sup.binder is None and all(s.name != "cloud" for s in sup.subsystems)
    finally:
        sup.config.db.close()


#: Numbered lines on stdout and stderr while /tmp/go exists; the number carries on across restarts.
#: Paused (no /tmp/go), it touches /tmp/idle between rounds: no line comes until /tmp/go is back.
SEQ_SCRIPT = r"""#!/bin/sh
touch /tmp/go
n=$(cat /tmp/n 2>/dev/null || echo 0)
while true; do
  if [ ! -e /tmp/go ]; then touch /tmp/idle; sleep 0.05; continue; fi
  echo "seq out $n ünï€"
  echo "seq err $n" >&2
  n=$((n + 1))
  echo $n > /tmp/n
  sleep 0.02
done
"""


def test_service_lines_reach_the_cloud_once_in_order_across_a_kill(
    cloud_fleet: Fleet, start_supervisor, make_image
) -> None:
    """§8.3 end to end (#14): a managed device's service lines, stdout and stderr, arrive at the fake
    cloud's log stream exactly once and in order per stream, with the service's ``serviceId`` and
    ``isStdErr`` and no ``serviceName``; a supervisor kill -9 (settled) and restart neither loses nor
    repeats a line (positions advance only on the cloud's acknowledgements, hub.py LogBackend)."""
    fl = cloud_fleet
    local = f"pysupervisor-test/cloud-seq-{uuid.uuid4().hex[:8]}:latest"
    make_image(local, files={"run.sh": SEQ_SCRIPT}, cmd=["sh", "/run.sh"])
    ref = fl.registry.push(local, f"cloud{fl.app_id}/seq")
    fl.images["seq"] = next(d for d in fl.client.api.inspect_image(ref)["RepoDigests"]
                            if d.startswith(fl.registry.host))
    fl.client.api.remove_image(ref)
    release = fl.api.create_release(fl.app["id"], {"seq": {
        "image": fl.images["seq"], "labels": {TEST_LABEL: "1"},
        "composition": {"stop_grace_period": "0s", "tty": False}}})
    scale = {"PYSUPERVISOR_LOG_STREAM_TIME_SCALE": "0.2"}  # 1 s grace before lines count as delivered
    fresh_device(fl.root, fl.api, fl.app, uuid=fl.uuid, deviceApiKey=fl.key)

    def start() -> SupervisorProcess:
        return start_supervisor(fl.root, "--apps", str(fl.app_id), "--no-host-setup", engine=True,
                                env=env(**scale))

    sup = start()
    wait_for(lambda: fl.runs(release["commit"], ("seq",)), "the release running", sup, timeout=120)
    container = fl.client.api.inspect_container(fl.containers()["seq"]["id"])
    cid, service_id = container["Id"], int(container["Config"]["Labels"]["io.balena.service-id"])

    def cloud_lines() -> list[dict[str, Any]]:
        return [r for r in fl.api.logs(fl.uuid) if not r.get("isSystem")]

    def engine_lines() -> dict[bool, list[str]]:
        out: dict[bool, list[str]] = {}
        for flag in (False, True):
            raw = fl.client.api.logs(cid, stdout=not flag, stderr=flag).decode()
            out[flag] = [line for line in raw.split("\n") if line]
        return out

    def per_stream(lines: list[dict[str, Any]]) -> dict[bool, list[str]]:
        return {flag: [r["message"] for r in lines if r["isStdErr"] is flag] for flag in (False, True)}

    def exec_in(*cmd: str) -> None:
        fl.client.api.exec_start(fl.client.api.exec_create(cid, list(cmd)))

    def idle() -> bool:
        probe = fl.client.api.exec_create(cid, ["test", "-e", "/tmp/idle"])
        fl.client.api.exec_start(probe)
        return fl.client.api.exec_inspect(probe["Id"])["ExitCode"] == 0

    def settle(what: str, proc: SupervisorProcess) -> list[dict[str, Any]]:
        # Paused between two rounds: a round under way when the flag goes still writes its lines,
        # and the comparison below must not catch it halfway (stdout's line out, stderr's not yet).
        exec_in("rm", "-f", "/tmp/idle", "/tmp/go")
        wait_for(idle, f"the service's script to pause {what}", proc, interval=0.3)
        return wait_for(lambda: (ls := cloud_lines()) and per_stream(ls) == engine_lines() and ls,
                        f"every line at the cloud {what}", proc, timeout=90,
                        context=lambda: ({k: len(v) for k, v in per_stream(cloud_lines()).items()},
                                         {k: len(v) for k, v in engine_lines().items()}))

    wait_for(lambda: len(cloud_lines()) > 100, "service lines at the cloud", sup, timeout=60)
    first = settle("before the kill", sup)
    assert all(r["serviceId"] == service_id and "serviceName" not in r for r in first)
    numbers = [int(r["message"].split()[2]) for r in first if not r["isStdErr"]]
    assert numbers == list(range(len(numbers))) and "ünï€" in per_stream(first)[False][0]
    assert [r["message"] for r in first if r["isStdErr"]] == [f"seq err {n}" for n in numbers]

    positions = fl.root / "tmp/balena-supervisor/log-positions.json"
    wait_for(log_position_settled(positions, cid), "the stream's position stored", sup, timeout=30)
    sup.stop(signal.SIGKILL)
    exec_in("touch", "/tmp/go")  # lines the engine keeps while no supervisor reads them
    before = len(engine_lines()[False])
    wait_for(lambda: len(engine_lines()[False]) > before + 40, "lines while no supervisor runs")
    sup = start()
    wait_for(lambda: len(cloud_lines()) > len(first) + 200, "lines of the second run", sup, timeout=60)
    after = settle("after the restart", sup)
    got = per_stream(after)
    assert got == engine_lines()  # once each, in order: nothing lost, nothing repeated
    assert [int(m.split()[2]) for m in got[False]] == list(range(len(got[False])))
    assert all(r["serviceId"] == service_id and "serviceName" not in r for r in after)

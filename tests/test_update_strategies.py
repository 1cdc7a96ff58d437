"""Update locks and update strategies end to end (spec §3.6, §4): a real ``python -m supervisor`` in
local mode, the real engine and a loopback registry. What is checked is what a user sees: which
containers run, the lock files in the service's lock directory, the supervisor's log, and the order
of the engine's own events (pull, kill, start) as ``docker events`` reports them.

Each test owns a random app id and starts its supervisor with ``--apps <id> --no-host-setup``
(see tests/test_reconcile.py), so nothing else on the shared engine is touched.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from supervisor.state.locks import LOCK_MARKER, SUPERVISOR_LOCK_UID
from tests.fixtures.device import SupervisorProcess
from tests.fixtures.docker import TEST_LABEL
from tests.fixtures.locks import take_user_lock_in
from tests.test_reconcile import (  # noqa: F401 - app_owner is a fixture used here
    SETTLED,
    app_owner,
    fake_host,
    new_commit,
    publish,
    start_local,
    wait_for,
)

pytestmark = pytest.mark.docker

STRATEGY = "io.balena.update.strategy"
HANDOVER_TIMEOUT = "io.balena.update.handover-timeout"
LOCKED_LINE = "Updates are locked, retrying in"


@dataclass
class Lab:
    """A supervisor in local mode managing one test app; the test changes fields and applies."""

    sup: SupervisorProcess
    client: docker.DockerClient
    app_id: int
    images: dict[str, str]  # service -> image reference of the current target
    services: tuple[str, ...] = ("main",)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    grace: str = "0s"  # busybox's sleep ignores SIGTERM as PID 1: each kill waits this long
    config: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, list[str]] = field(default_factory=dict)  # service -> ["vol:/path"]
    commit: str = field(default_factory=new_commit)
    release_id: int = 1

    def target(self, force: bool = False) -> dict[str, Any]:
        services = {}
        for index, name in enumerate(self.services):
            svc: dict[str, Any] = {
                "serviceName": name,
                "imageId": self.release_id * 100 + index,  # a new release has new image ids
                "image": self.images[name],
                "environment": dict(self.env.get(name, {})),
                "labels": {TEST_LABEL: "1", **self.labels.get(name, {})},
                "running": True,
                "stop_grace_period": self.grace,
            }
            if name in self.volumes:
                svc["volumes"] = list(self.volumes[name])
            services[str(index + 1)] = svc
        volume_names = {v.split(":")[0] for vols in self.volumes.values() for v in vols}
        app = {"name": "locks-test", "commit": self.commit, "releaseId": self.release_id,
               "services": services, "volumes": {v: {} for v in sorted(volume_names)}, "networks": {}}
        body: dict[str, Any] = {"local": {"name": "locks-device", "config": dict(self.config),
                                          "apps": {str(self.app_id): app}}}
        if force:
            body["force"] = True
        return body

    def apply(self, *, settle: bool = True, force: bool = False) -> int:
        offset = len(self.sup.output())
        response = self.sup.post("/v2/local/target-state", json=self.target(force))
        assert response.status_code == 200, response.text
        if settle:
            self.wait_settled(offset)
        return offset

    def wait_settled(self, offset: int, timeout: float = 60.0) -> None:
        wait_for(lambda: SETTLED in self.sup.output()[offset:], "the target to be applied", self.sup,
                 timeout=timeout)

    def new_release(self, **images: str) -> None:
        self.commit, self.release_id = new_commit(), self.release_id + 1
        self.images.update(images)

    # ------------------------------------------------------------------ engine and files
    def containers(self) -> list[dict[str, Any]]:
        return self.client.api.containers(all=True, filters={"label": f"io.balena.app-id={self.app_id}"})

    def running(self, service: str) -> list[dict[str, Any]]:
        return [c for c in self.containers()
                if c["Labels"]["io.balena.service-name"] == service and c["State"] == "running"]

    def one(self, service: str) -> dict[str, Any]:
        found = [c for c in self.containers() if c["Labels"]["io.balena.service-name"] == service]
        assert len(found) == 1, found
        return found[0]

    def exec(self, service: str, *cmd: str) -> str:
        container = self.one(service)["Id"]
        result = self.client.containers.get(container).exec_run(list(cmd))
        assert result.exit_code == 0, result.output
        return result.output.decode()

    def take_lock(self, service: str, path: str = "/tmp/balena/updates.lock") -> None:
        """The service takes its update lock as an app does: exclusively, waiting out the supervisor's."""
        take_user_lock_in(self.client.containers.get(self.one(service)["Id"]), path)

    def lock_dir(self, service: str) -> Path:
        return self.sup.root / f"tmp/balena-supervisor/services/{self.app_id}/{service}"

    def lock_files(self) -> list[Path]:
        base = self.sup.root / f"tmp/balena-supervisor/services/{self.app_id}"
        return sorted(p for p in base.rglob("*updates.lock")) if base.exists() else []

    def image_present(self, ref: str) -> bool:
        try:
            self.client.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return False
        return True


@pytest.fixture
def lab(docker_client, make_image, registry, device_root, app_owner, start_supervisor) -> Iterator[Lab]:  # noqa: F811
    app_id, owner = app_owner
    fake_host(device_root)
    sup = start_local(start_supervisor, device_root, [app_id])
    images = {"main": publish(docker_client, make_image, registry, owner, "main")}
    yield Lab(sup=sup, client=docker_client, app_id=app_id, images=images)
    sup.stop(signal.SIGKILL)


@pytest.fixture
def publish_new(docker_client, make_image, registry, app_owner):  # noqa: F811
    """Push a fresh image for a service (the next release's)."""
    _app_id, owner = app_owner
    return lambda repo="main": publish(docker_client, make_image, registry, owner, repo)


def count(text: str, needle: str) -> int:
    return len(re.findall(re.escape(needle), text))


# ------------------------------------------------------------------------------ user locks
def test_a_user_lock_lets_the_download_happen_but_not_the_kill(lab: Lab, publish_new) -> None:
    lab.apply()
    old = lab.one("main")["Id"]
    lab.take_lock("main")  # the app takes its lock
    user_lock = lab.lock_dir("main") / "updates.lock"
    assert user_lock.exists()

    lab.new_release(main=publish_new())
    offset = lab.apply(settle=False)
    wait_for(lambda: lab.image_present(lab.images["main"]), "the new image to download", lab.sup)
    wait_for(lambda: LOCKED_LINE in lab.sup.output()[offset:], "the locked retry", lab.sup)
    started = time.monotonic()
    time.sleep(6)
    log = lab.sup.output()[offset:]
    assert lab.one("main")["Id"] == old and lab.one("main")["State"] == "running"
    assert f"Lockfile exists for {{ appId: {lab.app_id}, service: main }}" in log
    # Backoff, not a busy loop: 1 s, 2 s, 4 s, ... between attempts.
    assert 1 <= count(log, LOCKED_LINE) <= 4, log
    assert lab.lock_files() == [user_lock]  # the failed take left no supervisor lock behind
    assert not lab.sup.output()[offset:].count("Killing service")

    lab.exec("main", "rm", "/tmp/balena/updates.lock")  # the critical task is done
    released = len(lab.sup.output())
    lab.wait_settled(released, timeout=60)
    assert time.monotonic() - started < 40
    new = lab.one("main")
    assert new["Id"] != old and new["State"] == "running"
    new_image = lab.client.api.inspect_image(lab.images["main"])["Id"]
    assert lab.client.api.inspect_container(new["Id"])["Image"] == new_image
    assert lab.lock_files() == []  # the supervisor's own locks were released after the update


@pytest.mark.parametrize("how", ["force", "SUPERVISOR_OVERRIDE_LOCK"])
def test_an_override_proceeds_at_once_and_removes_the_users_lock(lab: Lab, how: str) -> None:
    lab.apply()
    old = lab.one("main")["Id"]
    lab.take_lock("main")
    lab.env = {"main": {"VERSION": "2"}}
    lab.commit = new_commit()
    if how == "SUPERVISOR_OVERRIDE_LOCK":
        lab.config = {"SUPERVISOR_OVERRIDE_LOCK": "1"}
    started = time.monotonic()
    offset = lab.apply(settle=False, force=how == "force")
    lab.wait_settled(offset, timeout=30)
    assert time.monotonic() - started < 10  # no locked backoff round
    assert LOCKED_LINE not in lab.sup.output()[offset:]
    assert lab.one("main")["Id"] != old
    assert lab.lock_files() == []  # the user's lock was deleted, as the reference does (§4.3)


def test_kill9_while_holding_locks_leaves_no_orphaned_lock(lab: Lab, start_supervisor) -> None:
    lab.grace = "8s"  # the kill takes a while: the supervisor holds its locks meanwhile
    lab.apply()
    lab.env = {"main": {"VERSION": "2"}}
    lab.commit = new_commit()
    offset = lab.apply(settle=False)
    wait_for(lambda: "Killing service" in lab.sup.output()[offset:], "the kill", lab.sup, interval=0.02)
    files = lab.lock_files()
    assert [p.name for p in files] == ["resin-updates.lock", "updates.lock"]
    for path in files:
        assert path.read_bytes() == LOCK_MARKER
        if os.geteuid() == 0:
            assert path.stat().st_uid == SUPERVISOR_LOCK_UID
    lab.sup.stop(signal.SIGKILL)
    assert [p.name for p in lab.lock_files()] == ["resin-updates.lock", "updates.lock"]  # orphaned

    lab.sup = start_local(start_supervisor, lab.sup.root, [lab.app_id])
    wait_for(lambda: "left by a previous run" in lab.sup.output(), "the startup cleanup", lab.sup)
    assert "Removed 2 supervisor update lock file(s) left by a previous run" in lab.sup.output()
    lab.wait_settled(0, timeout=60)
    assert LOCKED_LINE not in lab.sup.output()  # its own orphans never blocked it
    main = lab.one("main")
    assert main["State"] == "running"
    env = lab.client.api.inspect_container(main["Id"])["Config"]["Env"]
    assert "VERSION=2" in env
    assert lab.lock_files() == []


# ------------------------------------------------------------------------------ strategies
def engine_events(lab: Lab, since: float) -> list[dict[str, Any]]:
    """The engine's events from ``since`` (epoch seconds) to now, in order (the engine filters by
    whole seconds: earlier ones, such as the test's own image publishing, are dropped here)."""
    until = int(time.time()) + 2
    events = lab.client.events(since=int(since) - 1, until=until, decode=True)
    return [e for e in events if int(e["timeNano"]) >= since * 1e9]


def first(events: list[dict[str, Any]], kind: str, action: str, **match: str) -> int:
    """timeNano of the first matching event; fails when there is none."""
    for event in events:
        if event.get("Type") != kind or event.get("Action") != action:
            continue
        actor = event.get("Actor") or {}
        attrs = {**actor.get("Attributes", {}), "id": actor.get("ID", "")}
        if all(value in attrs.get(key, "") for key, value in match.items()):
            return int(event["timeNano"])
    seen = [(e.get("Type"), e.get("Action")) for e in events]
    raise AssertionError(f"no {kind} {action} {match} in {seen}")


def container_event(events: list[dict[str, Any]], action: str, container_id: str) -> int:
    return first(events, "container", action, id=container_id)


@pytest.mark.parametrize(
    "strategy", ["download-then-kill", "kill-then-download", "delete-then-download", "hand-over"]
)
def test_each_strategy_orders_pull_kill_and_start(lab: Lab, publish_new, strategy: str) -> None:
    lab.labels = {"main": {STRATEGY: strategy, HANDOVER_TIMEOUT: "1000"}}
    lab.apply()
    old = lab.one("main")["Id"]
    old_image = lab.client.api.inspect_container(old)["Image"]
    lab.new_release(main=publish_new())
    since = time.time()
    lab.apply()
    new = lab.one("main")
    assert new["Id"] != old and new["State"] == "running"
    events = engine_events(lab, since)

    repo = lab.images["main"].rsplit(":", 1)[0]
    pulled = first(events, "image", "pull", id=repo)
    old_died = container_event(events, "die", old)
    old_gone = container_event(events, "destroy", old)
    new_started = container_event(events, "start", new["Id"])
    if strategy == "download-then-kill":
        assert pulled < old_died < old_gone < new_started
    elif strategy == "kill-then-download":
        assert old_died < old_gone < pulled < new_started
        assert lab.image_present(old_image)  # kept (local mode keeps images)
    elif strategy == "delete-then-download":
        removed = first(events, "image", "delete", id=old_image)
        assert old_gone < removed < pulled < new_started
        assert not lab.image_present(old_image)
    else:  # hand-over: the new one starts while the old one still runs
        assert pulled < new_started < old_died


def start_handover(lab: Lab, new_image: str, timeout_ms: int) -> tuple[str, int, float]:
    """Install a hand-over service, then post a release with a new image and wait until both
    containers run: (the old container's id, the log offset of the post, when both ran)."""
    lab.labels = {"main": {STRATEGY: "hand-over", HANDOVER_TIMEOUT: str(timeout_ms)}}
    lab.apply()
    old = lab.one("main")["Id"]
    lab.new_release(main=new_image)
    offset = lab.apply(settle=False)

    def both_since() -> float | None:
        # When the look that found both running began: a later clock reading would count the
        # engine's answer and a descheduled test thread into "together".
        asked = time.monotonic()
        return asked if len(lab.running("main")) == 2 else None

    since = wait_for(both_since, "both containers to run", lab.sup, interval=0.05)
    return old, offset, since


def test_handover_kills_the_old_container_when_the_new_one_says_so(lab: Lab, publish_new) -> None:
    old, offset, _ = start_handover(lab, publish_new(), 120000)
    time.sleep(3)
    both = lab.running("main")
    assert len(both) == 2 and old in {c["Id"] for c in both}
    assert SETTLED not in lab.sup.output()[offset:]
    (new,) = [c for c in both if c["Id"] != old]
    assert lab.client.api.inspect_container(old)["Name"].startswith("/old_main_")

    result = lab.client.containers.get(new["Id"]).exec_run(["touch", "/tmp/balena/handover-complete"])
    assert result.exit_code == 0
    told = time.monotonic()
    lab.wait_settled(offset, timeout=30)
    assert time.monotonic() - told < 10
    assert [c["Id"] for c in lab.containers()] == [new["Id"]]
    assert not (lab.lock_dir("main") / "handover-complete").exists()  # consumed


def test_handover_kills_the_old_container_after_the_timeout(lab: Lab, publish_new) -> None:
    old, offset, both_since = start_handover(lab, publish_new(), 6000)
    time.sleep(3)
    assert len(lab.running("main")) == 2  # nobody wrote the file: the old one keeps running
    wait_for(lambda: not any(c["Id"] == old for c in lab.running("main")), "the old container to go",
             lab.sup, timeout=30, interval=0.05)
    together = time.monotonic() - both_since
    assert 4.0 < together < 15, together  # the 6 s timeout, not at once (the reference's quirk)
    lab.wait_settled(offset)
    assert len(lab.containers()) == 1 and lab.one("main")["Id"] != old
    assert "Handover timeout has passed for main" in lab.sup.output()


def test_an_unknown_strategy_updates_as_download_then_kill_with_one_warning(lab: Lab, publish_new) -> None:
    lab.labels = {"main": {STRATEGY: "handover"}}  # no dash: not hand-over (§3.6)
    lab.apply()
    old = lab.one("main")["Id"]
    lab.new_release(main=publish_new())
    since = time.time()
    lab.apply()
    events = engine_events(lab, since)
    new = lab.one("main")["Id"]
    pulled = first(events, "image", "pull", id=lab.images["main"].rsplit(":", 1)[0])
    assert pulled < container_event(events, "die", old) < container_event(events, "start", new)
    assert count(lab.sup.output(), "Unknown update strategy 'handover'") == 1

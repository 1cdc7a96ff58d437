"""Repeated planning converges (reference §3.1-§3.7): an in-memory device runs each batch the way the
executor and the engine would, and the planner plans again until its batch is empty.

:class:`Device` refuses what the engine refuses (a container on a network or volume that does not
exist, two containers of one name, removing a running container, a volume in use or a network with
containers on it, recreating a network or volume under a different config) and checks what the
planner promises (kills and new containers under the app's update lock, never two containers of one
service outside a hand-over, no second fetch of an image). A step it refuses fails the test: a
planner that emits a step the executor cannot perform loops forever on a real device.

The property test draws release pairs (services added, removed and changed, images new or already
present, networks and volumes added, removed and reconfigured, every update strategy, two apps
installed and removed) and, for a number of rounds, disturbances: a user lock taken and released,
slow kills and downloads, and supervisor crashes that lose or half-do the steps in flight and
forget the locks held in memory. Once the disturbances stop, the device must reach the target
within :data:`BOUND` rounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from supervisor.compose import Network, Service, Volume
from supervisor.compose.mounts import named_source
from supervisor.state.current import App, CurrentState, Image, same_image
from supervisor.state.planner import PlanContext, plan, with_default_network
from supervisor.state.steps import (
    CreateNetwork,
    CreateVolume,
    EnsureSupervisorNetwork,
    Fetch,
    Handover,
    Kill,
    Noop,
    ReleaseLock,
    Remove,
    RemoveImage,
    RemoveNetwork,
    RemoveVolume,
    SaveImage,
    Start,
    Step,
    Stop,
    TakeLock,
    UpdateCommit,
    UpdateMetadata,
)
from tests.test_planner import (
    APP_ID,
    NEW,
    OLD,
    UUID,
    actions,
    app,
    container,
    current_app,
    image,
    net,
    old,
    svc,
    targets,
    vol,
)

#: Rounds the device may take to reach the target once nothing disturbs it any more.
BOUND = 30
STRATEGY_LABEL = "io.balena.update.strategy"


class Locked(Exception):
    """``takeLock`` while the app's user holds its lock (the executor's ``UpdatesLockedError``)."""


@dataclasses.dataclass
class Calm:
    """No disturbance: every step completes; a kill is seen ``Stopping`` for one round (the
    reference's kill returns before the container is gone), a download completes in its round."""

    rounds: int = 0

    def active(self, _round: int) -> bool:
        return False

    def crash(self) -> bool:
        return False

    def outcome(self, _step: Step) -> str:
        return "done"

    def slow_kill(self) -> bool:
        return True

    def slow_fetch(self) -> bool:
        return False

    def toggle_user_lock(self) -> bool:
        return False


@dataclasses.dataclass
class Drawn(Calm):
    """Disturbances drawn by hypothesis during the first ``rounds`` rounds."""

    data: Any = None

    def active(self, round_: int) -> bool:
        return round_ < self.rounds

    def crash(self) -> bool:
        return self.data.draw(st.integers(0, 5), label="crash") == 0

    def outcome(self, _step: Step) -> str:
        return self.data.draw(st.sampled_from(["done", "lost", "half"]), label="in flight")

    def slow_kill(self) -> bool:
        return self.data.draw(st.booleans(), label="slow kill")

    def slow_fetch(self) -> bool:
        return self.data.draw(st.booleans(), label="slow fetch")

    def toggle_user_lock(self) -> bool:
        return self.data.draw(st.integers(0, 3), label="user lock") == 0


class Device:
    """A tiny in-memory device: the engine's containers (by name), networks, volumes and images,
    the supervisor's image records, commits and locks. See the module docstring for what it refuses."""

    def __init__(
        self,
        apps: Iterable[App] = (),
        images: Iterable[Image] = (),
        *,
        supervisor_network_ready: bool = True,
    ) -> None:
        self.services: list[Service] = []
        self.names: dict[str, str] = {}  # container id -> engine name
        for a in apps:
            for s in a.services:
                self.services.append(s)
                self.names[s.container_id] = s.container_name()
        self.networks: list[Network] = [n for a in apps for n in a.networks]
        self.volumes: list[Volume] = [v for a in apps for v in a.volumes]
        self.commits: dict[str, str | None] = {a.app_uuid: a.commit for a in apps}
        self.app_ids: dict[str, int] = {a.app_uuid: a.app_id for a in apps}
        self.images: list[Image] = list(images)
        self.downloading: dict[str, Image] = {}
        self.locks: set[int] = set()
        self.user_locks: set[int] = set()
        self.supervisor_network_ready = supervisor_network_ready
        self.clock = itertools.count(1)
        self.ids = itertools.count(1)
        self.disturb: Calm = Calm()
        self.refused_locks = 0
        self.crashes = 0

    def snapshot(self) -> CurrentState:
        uuids = {s.app_uuid for s in self.services} | {n.app_uuid for n in self.networks}
        uuids |= {v.app_uuid for v in self.volumes}
        apps = {}
        for uuid in uuids:
            apps[uuid] = App(
                app_id=self.app_ids.get(uuid, APP_ID),
                app_uuid=uuid,
                commit=self.commits.get(uuid),
                services=tuple(s for s in self.services if s.app_uuid == uuid),
                networks=tuple(n for n in self.networks if n.app_uuid == uuid),
                volumes=tuple(v for v in self.volumes if v.app_uuid == uuid),
            )
        return CurrentState(
            apps=apps,
            available_images=tuple(self.images),
            downloading=frozenset(self.downloading),
            locks_held=frozenset(self.locks),
            supervisor_network_ready=self.supervisor_network_ready,
        )

    # -------------------------------------------------------------- time and crashes
    def tick(self) -> None:
        """Kills and downloads under way end (after the planner saw them under way once)."""
        self.services = [s for s in self.services if s.status != "Stopping"]
        self.images += self.downloading.values()
        self.downloading.clear()

    def crash(self) -> None:
        """The supervisor died and came back: a kill under way left its container stopped, a
        download under way is lost, and the locks it held in memory are gone (the lock files it
        left are cleaned at start, before the first apply)."""
        self.crashes += 1
        self.services = [self._stopped(s) if s.status == "Stopping" else s for s in self.services]
        self.downloading.clear()
        self.locks.clear()

    # -------------------------------------------------------------- engine objects
    def _by_name(self, name: str) -> Service | None:
        return next((s for s in self.services if self.names[s.container_id] == name), None)

    def _replace(self, old_svc: Service, new_svc: Service | None) -> None:
        index = next(i for i, s in enumerate(self.services) if s is old_svc)
        if new_svc is None:
            del self.services[index]
            del self.names[old_svc.container_id]
        else:
            self.services[index] = new_svc

    @staticmethod
    def _stopped(svc: Service) -> Service:
        return dataclasses.replace(svc, status="exited", config={**svc.config, "running": False})

    def _has_image(self, target: Service) -> bool:
        return any(
            same_image(i.name, target.image_name) or i.docker_image_id == target.config["image"]
            for i in self.images
        )

    def _uses_network(self, svc: Service, docker_name: str) -> bool:
        return docker_name in svc.config["networks"] or svc.config["networkMode"] == docker_name

    @staticmethod
    def _mounts(svc: Service) -> set[str]:
        return {source for v in svc.config["volumes"] if (source := named_source(v))}

    def _create(self, target: Service, *, run: bool, handing_over: Service | None = None) -> None:
        """``docker create`` (+ ``start``): the engine's checks, then the planner's promises."""
        name = target.container_name()
        assert self._by_name(name) is None, f"a container named {name} exists"
        assert self._has_image(target), f"created before the image of {target.service_name}"
        for docker_name in [*target.config["networks"], target.config["networkMode"]]:
            if docker_name in ("host", "none", "bridge") or docker_name.startswith(
                ("service:", "container:")
            ):
                continue
            if docker_name == "supervisor0":
                assert self.supervisor_network_ready, "supervisor0 used before it exists"
                continue
            assert any(n.docker_name == docker_name for n in self.networks), f"no network {docker_name}"
        for volume in self._mounts(target):
            assert any(v.docker_name == volume for v in self.volumes), f"no volume {volume}"
        siblings = [
            s
            for s in self.services
            if (s.app_uuid, s.service_name) == (target.app_uuid, target.service_name)
            and s is not handing_over
        ]
        assert not siblings, f"a second container for {target.service_name}: {siblings}"
        if handing_over is None:
            assert target.app_id in self.locks, f"{target.service_name} created without the update lock"
        status = "Running" if run and target.config["running"] else "Installed"
        created = f"2024-01-01T{next(self.clock) // 60:02d}:{next(self.clock) % 60:02d}:00Z"
        new = dataclasses.replace(
            container(target, status=status, created_at=created), container_id=f"d{next(self.ids):05d}"
        )
        self.services.append(new)
        self.names[new.container_id] = name

    # -------------------------------------------------------------- executors
    def apply(self, step: Step, outcome: str = "done") -> None:
        """Perform ``step``; ``outcome`` is ``lost`` (never happened), ``half`` (the supervisor died
        in the middle of it) or ``done``."""
        if outcome == "lost" or isinstance(step, Noop):
            return
        half = outcome == "half"
        if isinstance(step, Fetch):
            assert step.image.name not in self.downloading, "fetching an image being fetched"
            assert not any(same_image(i.name, step.image.name) for i in self.images), "fetching twice"
            if half:
                return  # the pull was cancelled: half an image is no image
            landed = dataclasses.replace(step.image, docker_image_id=step.image.name)
            if self.disturb.slow_fetch():
                self.downloading[step.image.name] = landed
            else:
                self.images.append(landed)
        elif isinstance(step, SaveImage):
            self.images.append(dataclasses.replace(step.image, docker_image_id=step.image.name))
        elif isinstance(step, RemoveImage):
            assert step.keep_in_engine or not any(
                s.config["image"] == step.image.docker_image_id for s in self.services
            ), "removing an image a container uses"
            self.images = [i for i in self.images if i.metadata() != step.image.metadata()]
        elif isinstance(step, Start):
            existing = self._by_name(step.target.container_name())
            if existing is None:
                self._create(step.target, run=not half)
            else:
                assert existing.is_equal_config(step.target), "a container of that name has another config"
                if step.target.config["running"] and not half:
                    self._replace(
                        existing,
                        dataclasses.replace(
                            existing, status="Running", config={**existing.config, "running": True}
                        ),
                    )
        elif isinstance(step, Stop):
            assert step.current.app_id in self.locks, "stop without the update lock"
            self._replace(step.current, self._stopped(step.current))
        elif isinstance(step, Kill):
            # Only the supervisor0 stage kills without the lock, as the reference does.
            assert step.current.app_id in self.locks or not self.supervisor_network_ready, "kill unlocked"
            if half:
                self._replace(step.current, self._stopped(step.current))
            elif self.disturb.slow_kill():
                self._replace(step.current, dataclasses.replace(step.current, status="Stopping"))
            else:
                self._replace(step.current, None)
        elif isinstance(step, Remove):
            assert step.current.status != "Running", "the engine removes a running container only by force"
            self._replace(step.current, None)
        elif isinstance(step, UpdateMetadata):
            t = step.target
            assert (
                step.current.app_id in self.locks
                or "io.balena.legacy-container" in step.current.config["labels"]
            ), "rename without the update lock"
            name = t.container_name()
            other = self._by_name(name)
            assert other is None or other is step.current, f"rename onto {name}, which exists"
            renamed = dataclasses.replace(
                step.current, commit=t.commit, release_id=t.release_id, image_id=t.image_id
            )
            self._replace(step.current, renamed)
            self.names[renamed.container_id] = name
        elif isinstance(step, Handover):
            current = step.current
            old_name = f"old_{current.container_name()}"
            assert self._by_name(old_name) in (None, current), f"{old_name} exists"
            self.names[current.container_id] = old_name
            self._create(step.target, run=True, handing_over=current)
            if not half:
                self._replace(current, None)
        elif isinstance(step, UpdateCommit):
            uuid = next(u for u, i in self.app_ids.items() if i == step.app_id)
            self.commits[uuid] = step.commit
        elif isinstance(step, CreateNetwork):
            same = [n for n in self.networks if n.docker_name == step.target.docker_name]
            assert all(n.is_equal_config(step.target) for n in same), "network exists with another config"
            if not same:
                self.networks.append(step.target)
        elif isinstance(step, RemoveNetwork):
            name = step.current.docker_name
            users = [s.service_name for s in self.services if self._uses_network(s, name)]
            assert not users, f"network {name} removed under {users}"
            self.networks = [n for n in self.networks if n.docker_name != name]
        elif isinstance(step, CreateVolume):
            same = [v for v in self.volumes if v.docker_name == step.target.docker_name]
            assert all(v.is_equal_config(step.target) for v in same), "volume exists with another config"
            if not same:
                self.volumes.append(step.target)
        elif isinstance(step, RemoveVolume):
            name = step.current.docker_name
            users = [s.service_name for s in self.services if name in self._mounts(s)]
            assert not users, f"volume {name} removed while {users} mount it"
            self.volumes = [v for v in self.volumes if v.docker_name != name]
        elif isinstance(step, TakeLock):
            if step.app_id in self.user_locks and not step.force:
                self.refused_locks += 1
                raise Locked(step.app_id)
            if not half:
                self.locks.add(step.app_id)
        elif isinstance(step, ReleaseLock):
            self.locks.discard(step.app_id)
        elif isinstance(step, EnsureSupervisorNetwork):
            self.supervisor_network_ready = True
        else:  # pragma: no cover - a step the planner must not emit here
            raise AssertionError(f"unexpected step {step}")

    # -------------------------------------------------------------- the loop
    def converge(
        self,
        target: Mapping[str, App],
        ctx: PlanContext | None = None,
        limit: int = 25,
        disturb: Calm | None = None,
    ) -> list[list[str]]:
        """Plan and apply until the batch is empty; ``limit`` rounds after the disturbances end."""
        self.disturb = disturb or Calm()
        for a in target.values():
            self.app_ids.setdefault(a.app_uuid, a.app_id)
        history: list[list[str]] = []
        for round_ in range(self.disturb.rounds + limit):
            active = self.disturb.active(round_)
            if not active:
                self.user_locks.clear()
            elif self.disturb.toggle_user_lock():
                # The app takes its lock only while the supervisor does not hold it (lockfile -r 0).
                self.user_locks ^= {a.app_id for a in target.values()} - self.locks
            steps = plan(self.snapshot(), target, ctx)
            if not steps:
                return history
            history.append(actions(steps))
            self.tick()  # what was under way when the planner looked ends now
            started = [
                (s.target.app_uuid, s.target.service_name) for s in steps if isinstance(s, Start | Handover)
            ]
            assert len(started) == len(set(started)), f"two starts for one service: {started}"
            crash = active and self.disturb.crash()
            for step in steps:
                # A refused lock fails its step only: the batch's other steps still run, the loop backs off.
                with contextlib.suppress(Locked):
                    self.apply(step, self.disturb.outcome(step) if crash else "done")
            if crash:
                self.crash()
        raise AssertionError(f"no convergence {limit} rounds after the last disturbance: {history}")

    def running(self) -> dict[str, str | None]:
        return {s.service_name: s.commit for s in self.services if s.status == "Running"}

    def assert_at(self, target: Mapping[str, App], ctx: PlanContext) -> None:
        """What a user sees once settled: each target service has one container of the target's
        config, name and running state; the app's networks, volumes, images and commit are the
        target's; removed apps are gone (their volumes kept only when asked); no lock held."""
        wanted = {(s.app_uuid, s.service_name): s for a in target.values() for s in a.services}
        have = {(s.app_uuid, s.service_name): s for s in self.services}
        assert len(have) == len(self.services), "two containers for one service"
        assert have.keys() == wanted.keys()
        for key, tgt in wanted.items():
            cur = have[key]
            assert cur.is_equal_config(tgt), key
            assert self.names[cur.container_id] == tgt.container_name()
            assert (cur.status == "Running") == tgt.config["running"], (key, cur.status)
        for a in target.values():
            full = {n.name: n for n in with_default_network(a).networks}
            mine = [n for n in self.networks if n.app_uuid == a.app_uuid]
            assert sorted(n.name for n in mine) == sorted(full), a.app_uuid
            assert all(n.is_equal_config(full[n.name]) for n in mine)
            for v in a.volumes:
                (found,) = [x for x in self.volumes if x.docker_name == v.docker_name]
                assert found.is_equal_config(v)
            assert all(self._has_image(s) for s in a.services)
            assert self.commits.get(a.app_uuid) == a.commit
        gone = {uuid for uuid in self.app_ids if uuid not in target}
        assert not [n for n in self.networks if n.app_uuid in gone]
        if not ctx.volumes_kept:
            assert not [v for v in self.volumes if v.app_uuid in gone]
        assert not self.locks and not self.downloading


# ------------------------------------------------------------------------------ scenarios
def test_converges_on_a_fresh_install() -> None:
    main = svc(composition={"volumes": ["data:/data"], "depends_on": ["db"]})
    db = svc("db", service_id=2, composition={"networks": ["backend"]})
    target = targets(app(main, db, volumes=[vol()], networks=[net("backend")]))
    device = Device()
    history = device.converge(target)
    assert history[0].count("fetch") == 2 and "start" not in history[0]
    assert history[-1] == ["updateCommit", "releaseLock"]
    assert device.running() == {"main": NEW, "db": NEW}
    device.assert_at(target, PlanContext())


@pytest.mark.parametrize(
    "strategy", ["download-then-kill", "kill-then-download", "delete-then-download", "hand-over", "handover"]
)
def test_converges_on_an_update_with_every_strategy(strategy: str) -> None:
    labels = {STRATEGY_LABEL: strategy}
    main_old = old(labels=labels)
    side_old = old("side", service_id=2)
    current = current_app(main_old, side_old, commit=OLD)
    main_new = svc(labels=labels, env={"V": "2"})
    side_new = svc("side", service_id=2, image=side_old.image_name)  # commit-only change
    device = Device([current], [image(main_old), image(side_old)])
    history = device.converge(targets(app(main_new, side_new)))
    flat = [a for batch in history for a in batch]
    assert "updateMetadata" in flat and "fetch" in flat
    assert device.running() == {"main": NEW, "side": NEW}
    assert {i.name for i in device.images} == {main_new.image_name, side_old.image_name}
    device.assert_at(targets(app(main_new, side_new)), PlanContext())


def test_converges_on_an_app_removal() -> None:
    current = current_app(
        old(), old("db", service_id=2), volumes=[vol()], networks=[net(), net("x")], commit=OLD
    )
    device = Device([current], [image(s) for s in current.services])
    history = device.converge({})
    assert history[0] == ["takeLock"] and history[-1] == ["releaseLock"]
    assert not device.services and not device.networks and not device.volumes and not device.images


def test_converges_on_volume_and_network_changes_and_the_supervisor_network() -> None:
    main = svc(image="registry/main:1", composition={"volumes": ["data:/data"], "networks": ["backend"]})
    api = svc("api", service_id=2, image="registry/api:1", labels={"io.balena.features.supervisor-api": "1"})
    current = current_app(container(main), container(api), volumes=[vol()], networks=[net(), net("backend")])
    device = Device([current], [image(main), image(api)], supervisor_network_ready=False)
    changed = targets(
        app(
            main,
            api,
            volumes=[vol("data", {"labels": {"x": "1"}})],
            networks=[net("backend", {"internal": True})],
        )
    )
    history = device.converge(changed)
    assert history[:3] == [["kill"], ["noop"], ["ensureSupervisorNetwork"]]
    assert device.running() == {"main": NEW, "api": NEW}
    assert next(v for v in device.volumes if v.name == "data").config["labels"]["x"] == "1"


def test_converges_from_duplicates_and_dead_containers() -> None:
    target = svc()
    dup_a = container(target, created_at="2024-01-01T00:00:01Z")
    dup_b = container(target, created_at="2024-01-01T00:00:02Z")
    dead = container(svc("other", service_id=2), status="Dead")
    device = Device([current_app(dup_b, dead)], [image(target), image(svc("other", service_id=2))])
    device.services.append(dup_a)  # the engine has one container per name
    device.names[dup_a.container_id] = "main_102_2_stale"
    device.converge(targets(app(target, svc("other", service_id=2))))
    assert sorted(s.service_name for s in device.services) == ["main", "other"]
    assert dup_b in device.services
    device.assert_at(targets(app(target, svc("other", service_id=2))), PlanContext())


def test_converges_with_a_stopped_dependency() -> None:
    db = svc("db", service_id=2, running=False)
    main = svc(composition={"depends_on": ["db"]})
    device = Device()
    device.converge(targets(app(main, db)))
    assert device.running() == {"main": NEW}
    assert [s.status for s in device.services if s.service_name == "db"] == ["Installed"]


def test_converges_when_a_service_is_stopped_and_the_target_asks_for_it_again() -> None:
    target = svc()
    device = Device([current_app(container(target))], [image(target)])
    assert device.converge(targets(app(svc(running=False)))) == [["takeLock"], ["stop"], ["releaseLock"]]
    assert device.running() == {}
    # An exited container is the restart policy's (or the API's) business, not the engine's (§16.5).
    assert device.converge(targets(app(target))) == []


# ------------------------------- issue #10 §3: a network or volume change with a new image
_CHANGES = {
    "network reconfigured": ({"networks": ["backend"]}, {"backend": {}}, {"backend": {"internal": True}}, {}),
    "network removed": ({"networks": ["backend"]}, {"backend": {}}, None, {}),
    "volume reconfigured": ({"volumes": ["data:/data"]}, {}, {}, {"data": {"labels": {"v": "2"}}}),
}


@pytest.mark.parametrize(
    "strategy", ["download-then-kill", "kill-then-download", "delete-then-download", "hand-over"]
)
@pytest.mark.parametrize("change", sorted(_CHANGES))
def test_a_service_on_a_changed_network_or_volume_gets_its_new_image(strategy: str, change: str) -> None:
    """The release changes the network (or volume) a service sits on *and* moves the service to an
    image the device does not have: the image is fetched, the container recreated on the new config.
    (The service used to lose its target, so the image was never fetched and the update waited with
    ``noop`` forever.)"""
    composition, nets_before, nets_after, vols_after = _CHANGES[change]
    labels = {STRATEGY_LABEL: strategy}
    before = svc(commit=OLD, image="registry/main:1", labels=labels, composition=composition)
    other_before = svc(
        "other", service_id=2, commit=OLD, image="registry/other:1", composition={"network_mode": "host"}
    )
    current = current_app(
        container(before),
        container(other_before),
        commit=OLD,
        networks=[net(), *(net(n, c) for n, c in nets_before.items())],
        volumes=[vol("data")] if "volumes" in composition else [],
    )
    after_composition = composition if nets_after is not None else {}
    after = svc(image="registry/main:2", labels=labels, composition=after_composition)
    other_after = svc("other", service_id=2, image="registry/other:2", composition={"network_mode": "host"})
    target = targets(
        app(
            after,
            other_after,
            networks=[net(n, c) for n, c in (nets_after or {}).items()],
            volumes=[vol(n, c) for n, c in vols_after.items()],
        )
    )
    device = Device([current], [image(before), image(other_before)])
    history = device.converge(target)
    fetched = [a for batch in history for a in batch].count("fetch")
    assert fetched == 2, history
    device.assert_at(target, PlanContext())


def test_the_references_fetch_first_case() -> None:
    """The reference's step-inference case: both new images are fetched in the first round."""
    before = svc("test", commit=OLD, image="test-image", composition={"networks": ["test-network"]})
    other = svc("other", service_id=2, commit=OLD, image="other-image", composition={"network_mode": "host"})
    current = current_app(
        container(before), container(other), networks=[net(), net("test-network")], commit=OLD
    )
    target = targets(
        app(
            svc("test", image="new-test-image"),
            svc("other", service_id=2, image="new-other-image", composition={"network_mode": "host"}),
        )
    )
    steps = plan(CurrentState(apps={UUID: current}, available_images=(image(before), image(other))), target)
    assert sorted(s.image.name for s in steps if isinstance(s, Fetch)) == [
        "new-other-image",
        "new-test-image",
    ]


# ------------------------------------------------------------------------ the property test
_STRATEGIES = ["download-then-kill", "kill-then-download", "delete-then-download", "hand-over", "bogus"]
_NETWORK_CONFIGS = [{}, {"internal": True}, {"labels": {"v": "2"}}]
_VOLUME_CONFIGS = [{}, {"labels": {"v": "2"}}, {"driver_opts": {"type": "tmpfs"}}]
_APPS = {1: "a" * 32, 2: "b" * 32}


@st.composite
def _release(draw: st.DrawFn, app_id: int, commit: str, min_services: int = 0) -> App:
    """A random release of app ``app_id``: up to three services (a, b, c) on any of its networks
    (or the host's) and volumes, ``depends_on`` only on earlier services (a cycle waits forever,
    in the reference too), any strategy, images from a small pool so some are already present."""
    uuid = _APPS[app_id]
    networks = {
        n: draw(st.sampled_from(_NETWORK_CONFIGS)) for n in draw(st.sets(st.sampled_from(["back", "front"])))
    }
    volumes = {
        v: draw(st.sampled_from(_VOLUME_CONFIGS)) for v in draw(st.sets(st.sampled_from(["data", "cache"])))
    }
    names = sorted(draw(st.sets(st.sampled_from("abc"), min_size=min_services, max_size=3)))
    versions = ["1", "2"] if commit == OLD else ["1", "2", "3"]
    services = []
    for index, name in enumerate(names):
        composition: dict[str, Any] = {}
        earlier = names[:index]
        if earlier and draw(st.booleans()):
            composition["depends_on"] = draw(st.lists(st.sampled_from(earlier), min_size=1, unique=True))
        if draw(st.integers(0, 5)) == 0:
            composition["network_mode"] = "host"
        elif networks and draw(st.booleans()):
            composition["networks"] = draw(
                st.lists(st.sampled_from(sorted(networks)), min_size=1, unique=True)
            )
        if volumes and draw(st.booleans()):
            composition["volumes"] = [
                f"{v}:/{v}" for v in draw(st.sets(st.sampled_from(sorted(volumes)), min_size=1))
            ]
        services.append(
            _with_ids(
                svc(
                    name,
                    service_id=index + 1,
                    commit=commit,
                    image=f"registry/{app_id}{name}:{draw(st.sampled_from(versions))}",
                    env={"V": draw(st.sampled_from(["1", "2"]))},
                    labels={STRATEGY_LABEL: draw(st.sampled_from(_STRATEGIES))},
                    running=draw(st.integers(0, 4)) > 0,
                    composition=composition,
                    app_id=app_id,
                    uuid=uuid,
                ),
                index,
            )
        )
    return app(
        *services,
        networks=[net(n, c, app_id=app_id, uuid=uuid) for n, c in networks.items()],
        volumes=[Volume.from_compose(app_id, uuid, v, c) for v, c in volumes.items()],
        commit=commit,
        app_id=app_id,
        uuid=uuid,
    )


@st.composite
def _releases(draw: st.DrawFn, commit: str) -> dict[str, App]:
    """App 1 always (with at least one service), app 2 sometimes: installed or removed."""
    apps = {_APPS[1]: draw(_release(1, commit, min_services=1))}
    if draw(st.booleans()):
        apps[_APPS[2]] = draw(_release(2, commit))
    return apps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=_releases(OLD),
    after=_releases(NEW),
    same_commit=st.booleans(),
    present=st.sets(st.sampled_from([f"registry/{i}{n}:{v}" for i in _APPS for n in "abc" for v in "123"])),
    ctx=st.builds(PlanContext, delta=st.booleans(), local_mode=st.booleans()),
    disturbed_rounds=st.integers(0, 12),
    data=st.data(),
)
def test_any_release_pair_converges_despite_locks_and_crashes(
    before: dict[str, App],
    after: dict[str, App],
    same_commit: bool,
    present: set[str],
    ctx: PlanContext,
    disturbed_rounds: int,
    data: st.DataObject,
) -> None:
    if same_commit:  # a local-mode push may keep the commit and change everything else
        after = {u: _recommit(a, OLD) for u, a in after.items()}
    device = Device()
    device.converge(before, ctx)  # a fresh install, undisturbed
    device.assert_at(before, ctx)
    for name in present:  # images pulled earlier, or by another app
        if not any(same_image(i.name, name) for i in device.images):
            device.images.append(_record(name))
    history = device.converge(after, ctx, limit=BOUND, disturb=Drawn(rounds=disturbed_rounds, data=data))
    device.assert_at(after, ctx)
    flat = {a for batch in history for a in batch}
    for what in ("fetch", "kill", "handover", "removeNetwork", "removeVolume", "updateMetadata"):
        event(f"{what}: {what in flat}")
    event(f"crashed: {device.crashes > 0}")
    event(f"lock refused: {device.refused_locks > 0}")
    event(f"rounds: {len(history) // 5 * 5}+")


def _with_ids(s: Service, index: int) -> Service:
    """Release and image ids unique to the app and release, as the cloud's are (they make the
    container's engine name)."""
    release_id = s.app_id * 10 + (2 if s.commit == NEW else 1)
    return dataclasses.replace(s, release_id=release_id, image_id=release_id * 10 + index)


def _recommit(a: App, commit: str) -> App:
    services = tuple(
        _with_ids(dataclasses.replace(s, commit=commit), int(s.config["labels"]["io.balena.service-id"]) - 1)
        for s in a.services
    )
    return dataclasses.replace(a, services=services, commit=commit)


def _record(name: str) -> Image:
    app_id = int(name.split("/")[1][0])
    return Image(
        name=name,
        app_id=app_id,
        app_uuid=_APPS[app_id],
        service_id=9,
        service_name="x",
        image_id=9,
        release_id=9,
        commit="somecommit",
        docker_image_id=name,
    )

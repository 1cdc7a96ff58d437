"""The state-engine planner (reference §3.2-§3.7, §4.2, §9.6): plain data in, steps out.

Services, networks and volumes are built with the compose layer's own constructors. By convention an
image's engine id is its name, so a container's ``config.image`` matches its image record directly.
Repeated planning on an in-memory device (convergence) is tested in tests/test_convergence.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from supervisor.compose import Network, Service, ServiceContext, Volume
from supervisor.state.current import App, CurrentState, Image, same_image
from supervisor.state.planner import (
    MAX_DELTA_DOWNLOADS,
    PlanContext,
    image_for,
    plan,
    strategy_of,
    target_apps,
    with_default_network,
)
from supervisor.state.steps import (
    Cleanup,
    CreateNetwork,
    CreateVolume,
    EnsureExtraFirmwareVolume,
    EnsureSupervisorNetwork,
    Fetch,
    Handover,
    Kill,
    Noop,
    Reboot,
    ReleaseLock,
    Remove,
    RemoveImage,
    RemoveNetwork,
    RemoveVolume,
    RequireReboot,
    Restart,
    SaveImage,
    Start,
    Step,
    Stop,
    TakeLock,
    UpdateCommit,
    UpdateMetadata,
    describe,
)
from supervisor.state.target import TargetApp, TargetDevice, TargetRelease, TargetService

APP_ID = 1
UUID = "aaaabbbbccccddddeeeeffff00001111"
OLD, NEW = "oldcommit", "newcommit"
OLD_RELEASE, NEW_RELEASE = 1, 2
SUPERVISOR_UUID = "52e35121417640b1b28a680504e4039b"

_container_ids = itertools.count(1)
_clock = itertools.count(1)


# ------------------------------------------------------------------------------- builders
def context(
    *, app_id: int = APP_ID, uuid: str = UUID, commit: str = NEW, release_id: int = NEW_RELEASE
) -> ServiceContext:
    return ServiceContext(
        app_id=app_id,
        app_uuid=uuid,
        app_name="app",
        release_id=release_id,
        commit=commit,
        device_uuid="d" * 32,
        device_type="generic-amd64",
        device_arch="amd64",
        device_name="quiet-lake",
        os_version="balenaOS 5.0.0",
    )


def svc(
    name: str = "main",
    *,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    composition: Mapping[str, Any] | None = None,
    running: bool = True,
    commit: str = NEW,
    release_id: int | None = None,
    app_id: int = APP_ID,
    uuid: str = UUID,
    service_id: int = 10,
) -> Service:
    """A target service (release NEW unless told otherwise)."""
    if release_id is None:
        release_id = NEW_RELEASE if commit == NEW else OLD_RELEASE
    wire = {
        "serviceName": name,
        "id": service_id,
        "image_id": 100 + release_id,
        "image": image or f"registry/{name}:{commit}",
        "environment": dict(env or {}),
        "labels": dict(labels or {}),
        "running": running,
        "composition": dict(composition or {}),
    }
    ctx = context(app_id=app_id, uuid=uuid, commit=commit, release_id=release_id)
    return Service.from_target(wire, ctx)


def container(
    target: Service,
    *,
    status: str = "Running",
    created_at: str | None = None,
    exit_error: str | None = None,
) -> Service:
    """The container the engine would report for ``target``."""
    config = {**target.config, "running": status == "Running"}
    return dataclasses.replace(
        target,
        config=config,
        status=status,
        container_id=f"c{next(_container_ids):04d}",
        created_at=created_at or f"2024-01-01T00:00:{next(_clock) % 60:02d}.5Z",
        exit_error_message=exit_error,
    )


def old(name: str = "main", **kwargs: Any) -> Service:
    """A running container of the OLD release."""
    status = kwargs.pop("status", "Running")
    return container(svc(name, commit=OLD, **kwargs), status=status)


def image(target: Service) -> Image:
    """The image record of ``target``, present in the engine (engine id == name)."""
    record = image_for(target)
    return dataclasses.replace(record, docker_image_id=record.name)


def net(name: str = "default", cfg: Mapping[str, Any] | None = None, **kw: Any) -> Network:
    return Network.from_compose(kw.get("app_id", APP_ID), kw.get("uuid", UUID), name, cfg or {})


def vol(name: str = "data", cfg: Mapping[str, Any] | None = None) -> Volume:
    return Volume.from_compose(APP_ID, UUID, name, cfg or {})


def app(
    *services: Service,
    networks: Iterable[Network] = (),
    volumes: Iterable[Volume] = (),
    commit: str | None = NEW,
    app_id: int = APP_ID,
    uuid: str = UUID,
    **kw: Any,
) -> App:
    return App(
        app_id=app_id,
        app_uuid=uuid,
        commit=commit,
        services=services,
        networks=tuple(networks),
        volumes=tuple(volumes),
        **kw,
    )


def current_app(*services: Service, networks: Iterable[Network] | None = None, **kw: Any) -> App:
    """A current app; by default it has the plain default network the target will also have."""
    return app(*services, networks=[net()] if networks is None else networks, **kw)


def state(*apps: App, images: Iterable[Image] = (), **kw: Any) -> CurrentState:
    return CurrentState(apps={a.app_uuid: a for a in apps}, available_images=tuple(images), **kw)


def targets(*apps: App) -> dict[str, App]:
    return {a.app_uuid: a for a in apps}


def actions(steps: Iterable[Step]) -> list[str]:
    return [step.action for step in steps]


def of(kind: type, steps: Iterable[Step]) -> list[Any]:
    return [step for step in steps if isinstance(step, kind)]


LOCKED = {"locks_held": {APP_ID}}


# ------------------------------------------------------------------------------- steps module
@pytest.mark.parametrize(
    ("step", "action"),
    [
        (Noop(), "noop"),
        (Cleanup(), "cleanup"),
        (EnsureSupervisorNetwork(), "ensureSupervisorNetwork"),
        (EnsureExtraFirmwareVolume(), "ensureExtraFirmwareVolume"),
        (TakeLock(1, ("main",)), "takeLock"),
        (ReleaseLock(1), "releaseLock"),
        (UpdateCommit(1, NEW), "updateCommit"),
        (RequireReboot("main"), "requireReboot"),
        (Start(None), "start"),
        (Stop(None), "stop"),
        (Kill(None), "kill"),
        (Remove(None), "remove"),
        (Restart(None, None), "restart"),
        (UpdateMetadata(None, None), "updateMetadata"),
        (Handover(None, None), "handover"),
        (CreateNetwork(None), "createNetwork"),
        (RemoveNetwork(None), "removeNetwork"),
        (CreateVolume(None), "createVolume"),
        (RemoveVolume(None), "removeVolume"),
    ],
)
def test_step_action_names_are_the_references(step: Step, action: str) -> None:
    assert step.action == action
    assert type(step).action == action


def test_steps_are_frozen_and_describable() -> None:
    target = svc()
    step = Kill(target)
    with pytest.raises(dataclasses.FrozenInstanceError):
        step.current = None  # type: ignore[misc]
    assert describe(step) == "kill(main)"
    assert describe(Fetch(image(target), "main")) == f"fetch({target.image_name})"
    assert describe(TakeLock(1, ("a", "b"))) == "takeLock(1: a, b)"
    assert describe(Noop()) == "noop"


# ------------------------------------------------------------------------------ fresh install
def test_fresh_install_fetches_and_creates_networks_and_volumes_but_does_not_start() -> None:
    target = svc(composition={"volumes": ["data:/data"]})
    steps = plan(state(), targets(app(target, volumes=[vol()])))
    assert of(Fetch, steps) == [Fetch(image_for(target), "main")]
    assert [s.target.name for s in of(CreateVolume, steps)] == ["data"]
    assert [s.target.name for s in of(CreateNetwork, steps)] == ["default"]
    assert not of(Start, steps) and not of(TakeLock, steps)


def test_fresh_install_waits_for_its_network_before_starting() -> None:
    target = svc()
    steps = plan(state(images=[image(target)]), targets(app(target)))
    assert actions(steps) == ["noop", "createNetwork"]


def test_fresh_install_waits_for_its_volume_before_starting() -> None:
    target = svc(composition={"volumes": ["data:/data"]})
    current = current_app(commit=None)
    steps = plan(state(current, images=[image(target)]), targets(app(target, volumes=[vol()])))
    assert actions(steps) == ["noop", "createVolume"]


def test_fresh_install_takes_the_lock_then_starts() -> None:
    target = svc()
    device = state(current_app(commit=None), images=[image(target)])
    assert plan(device, targets(app(target))) == [TakeLock(APP_ID, ("main",), False)]
    locked = dataclasses.replace(device, locks_held=frozenset({APP_ID}))
    assert plan(locked, targets(app(target))) == [Start(target)]


def test_start_waits_for_every_image_of_the_release() -> None:
    a, b = svc("a", service_id=1), svc("b", service_id=2)
    device = state(current_app(commit=None), images=[image(a)], **LOCKED)
    steps = plan(device, targets(app(a, b)))
    assert steps == [Noop(), Fetch(image_for(b), "b")]


def test_settled_app_records_its_commit_and_releases_its_lock() -> None:
    target = svc()
    device = state(current_app(container(target), commit=None), images=[image(target)], **LOCKED)
    assert plan(device, targets(app(target))) == [UpdateCommit(APP_ID, NEW), ReleaseLock(APP_ID)]


def test_no_steps_when_current_equals_target() -> None:
    target = svc()
    device = state(current_app(container(target)), images=[image(target)])
    assert plan(device, targets(app(target))) == []


def test_leftover_lock_files_are_released_once_settled() -> None:
    target = svc()
    device = state(current_app(container(target)), images=[image(target)], lock_leftovers={APP_ID})
    assert plan(device, targets(app(target))) == [ReleaseLock(APP_ID)]


# ----------------------------------------------------------------------------------- updates
def test_env_change_with_a_new_image_fetches_first_and_does_not_kill() -> None:
    current = old()
    target = svc(env={"A": "2"})
    device = state(current_app(current), images=[image(current)])
    assert plan(device, targets(app(target))) == [Fetch(image_for(target), "main")]


def test_download_then_kill_waits_for_all_images_of_the_app() -> None:
    a_old, b_old = old("a", service_id=1), old("b", service_id=2)
    a_new = svc("a", service_id=1, image=a_old.image_name, env={"X": "1"})
    b_new = svc("b", service_id=2)
    images = [image(a_old), image(b_old), image(a_new)]
    device = state(current_app(a_old, b_old), images=images, **LOCKED)
    steps = plan(device, targets(app(a_new, b_new)))
    assert not of(Kill, steps)
    assert of(Fetch, steps) == [Fetch(image_for(b_new), "b")]
    assert of(Noop, steps)  # a waits for b's image


def test_download_then_kill_takes_the_lock_then_kills_once_images_are_present() -> None:
    current = old()
    target = svc(env={"A": "2"})
    device = state(current_app(current), images=[image(current), image(target)])
    assert plan(device, targets(app(target))) == [TakeLock(APP_ID, ("main",), False)]
    locked = dataclasses.replace(device, locks_held=frozenset({APP_ID}))
    assert plan(locked, targets(app(target))) == [Kill(current)]


def test_after_the_kill_the_new_container_starts() -> None:
    target = svc(env={"A": "2"})
    device = state(current_app(commit=OLD), images=[image(target)], **LOCKED)
    assert plan(device, targets(app(target))) == [Start(target)]


def test_commit_only_change_renames_instead_of_recreating() -> None:
    current = old()
    target = svc(image=current.image_name)
    device = state(current_app(current, commit=OLD), images=[image(current)])
    images_saved = [image(target)]
    device = dataclasses.replace(device, available_images=(image(current), *images_saved))
    assert plan(device, targets(app(target))) == [TakeLock(APP_ID, ("main",), False)]
    locked = dataclasses.replace(device, locks_held=frozenset({APP_ID}))
    assert plan(locked, targets(app(target))) == [UpdateMetadata(current, target)]


def test_commit_only_change_waits_for_the_other_images_of_the_release() -> None:
    a_old, b_old = old("a", service_id=1), old("b", service_id=2)
    a_new = svc("a", service_id=1, image=a_old.image_name)
    b_new = svc("b", service_id=2)
    device = state(current_app(a_old, b_old), images=[image(a_old), image(b_old), image(a_new)], **LOCKED)
    steps = plan(device, targets(app(a_new, b_new)))
    assert not of(UpdateMetadata, steps)
    assert of(Fetch, steps) == [Fetch(image_for(b_new), "b")]


def test_legacy_container_is_renamed_without_a_lock_and_keeps_its_service_id() -> None:
    legacy_labels = {"io.balena.legacy-container": "1"}
    current = old(labels=legacy_labels, service_id=7)
    target = svc(image=current.image_name, service_id=99)
    device = state(current_app(current), images=[image(current), image(target)])
    steps = plan(device, targets(app(target)))
    assert actions(steps) == ["updateMetadata"]
    assert steps[0].target.service_id == 7
    assert steps[0].target.config["labels"]["io.balena.legacy-container"] == "1"
    # The planner is pure: the caller's target is left as it was.
    assert target.service_id == 99
    assert "io.balena.legacy-container" not in target.config["labels"]


def test_service_removed_from_the_target_is_killed_under_the_lock() -> None:
    keep, gone = old("keep", service_id=1), old("gone", service_id=2)
    keep_target = svc("keep", service_id=1, image=keep.image_name)
    device = state(current_app(keep, gone), images=[image(keep), image(keep_target)], **LOCKED)
    steps = plan(device, targets(app(keep_target)))
    assert Kill(gone) in steps
    assert not any(isinstance(s, Kill) and s.current is keep for s in steps)


def test_running_false_stops_the_container() -> None:
    target = svc(running=False)
    current = container(svc())
    device = state(current_app(current), images=[image(target)], **LOCKED)
    assert plan(device, targets(app(target))) == [Stop(current)]


def test_running_false_on_an_exited_container_is_settled() -> None:
    target = svc(running=False)
    device = state(current_app(container(target, status="exited")), images=[image(target)])
    assert plan(device, targets(app(target))) == []


def test_exited_container_is_not_restarted() -> None:
    target = svc()
    device = state(current_app(container(target, status="exited")), images=[image(target)])
    assert plan(device, targets(app(target))) == []


def test_host_race_exit_is_restarted() -> None:
    target = svc()
    error = (
        "driver failed programming external connectivity: Error starting userland proxy: "
        "listen tcp4 192.168.88.1:80: bind: cannot assign requested address"
    )
    current = container(target, status="exited", exit_error=error)
    device = state(current_app(current), images=[image(target)])
    assert plan(device, targets(app(target))) == [Start(target)]


def test_created_but_never_started_container_is_started() -> None:
    target = svc()
    device = state(current_app(container(target, status="Installed")), images=[image(target)])
    assert plan(device, targets(app(target))) == [Start(target)]


def test_requires_reboot_service_asks_for_a_reboot_instead_of_starting() -> None:
    target = svc(labels={"io.balena.update.requires-reboot": "1"})
    current = container(target, status="Installed", created_at="2024-01-01T10:00:00Z")
    device = state(current_app(current), images=[image(target)])
    ctx = PlanContext(boot_time=0.0)
    assert plan(device, targets(app(target)), ctx) == [RequireReboot("main")]
    scheduled = PlanContext(boot_time=0.0, reboot_breadcrumb=True)
    assert plan(device, targets(app(target)), scheduled) == [Reboot()]  # settled: reboot now
    after_reboot = PlanContext(boot_time=2e9)
    assert plan(device, targets(app(target)), after_reboot) == [Start(target)]


def test_dead_container_is_removed_then_recreated() -> None:
    target = svc()
    dead = container(target, status="Dead")
    device = state(current_app(dead), images=[image(target)], **LOCKED)
    assert plan(device, targets(app(target))) == [Remove(dead)]
    gone = state(current_app(), images=[image(target)], **LOCKED)
    assert plan(gone, targets(app(target))) == [Start(target)]


def test_duplicate_containers_keep_the_newest() -> None:
    target = svc()
    older = container(target, created_at="2024-01-01T00:00:09Z")
    newer = container(target, created_at="2024-01-01T00:00:10Z")
    newest = container(target, created_at="2024-01-01T00:00:10.1Z")  # sorts below `newer` as text
    device = state(current_app(older, newest, newer), images=[image(target)], **LOCKED)
    steps = plan(device, targets(app(target)))
    assert sorted(s.current.container_id for s in of(Kill, steps)) == sorted(
        [older.container_id, newer.container_id]
    )
    assert not any(s.current is newest for s in of(Kill, steps))


def test_stopping_container_keeps_the_loop_alive() -> None:
    target = svc(env={"A": "2"})
    stopping = dataclasses.replace(old(), status="Stopping")
    device = state(current_app(stopping), images=[image(target)], **LOCKED)
    assert plan(device, targets(app(target))) == [Noop()]


# ------------------------------------------------------------------------ networks and volumes
def test_volume_config_change_kills_its_users_first() -> None:
    target = svc(image="registry/main:1", composition={"volumes": ["data:/data"]})
    current = container(target)
    changed = vol("data", {"driver_opts": {"type": "tmpfs"}})
    device = state(current_app(current, volumes=[vol()]), images=[image(target)], **LOCKED)
    steps = plan(device, targets(app(target, volumes=[changed])))
    assert steps == [Kill(current)]  # the volume goes only once nothing uses it


def test_volume_is_recreated_once_unused_and_the_service_waits_for_it() -> None:
    target = svc(composition={"volumes": ["data:/data"]})
    changed = vol("data", {"driver_opts": {"type": "tmpfs"}})
    device = state(current_app(volumes=[vol()]), images=[image(target)], **LOCKED)
    first = plan(device, targets(app(target, volumes=[changed])))
    assert actions(first) == ["noop", "removeVolume"]
    emptied = state(current_app(), images=[image(target)], **LOCKED)
    second = plan(emptied, targets(app(target, volumes=[changed])))
    assert actions(second) == ["noop", "createVolume"]
    assert second[1].target is changed


def test_volumes_only_in_the_current_state_survive_updates() -> None:
    target = svc()
    device = state(current_app(container(target), volumes=[vol("olddata")]), images=[image(target)])
    assert plan(device, targets(app(target))) == []


def test_network_config_change_recreates_the_services_on_it() -> None:
    target = svc(composition={"networks": ["backend"]})
    current = container(target)
    changed = net("backend", {"internal": True})
    device = state(current_app(current, networks=[net(), net("backend")]), images=[image(target)], **LOCKED)
    assert plan(device, targets(app(target, networks=[changed]))) == [Kill(current)]

    emptied = state(current_app(networks=[net(), net("backend")]), images=[image(target)], **LOCKED)
    steps = plan(emptied, targets(app(target, networks=[changed])))
    assert actions(steps) == ["noop", "removeNetwork"]

    recreated = state(current_app(networks=[net()]), images=[image(target)], **LOCKED)
    steps = plan(recreated, targets(app(target, networks=[changed])))
    assert actions(steps) == ["noop", "createNetwork"]


def test_network_not_in_the_target_is_removed_once_unused() -> None:
    target = svc()
    device = state(current_app(container(target), networks=[net(), net("legacy")]), images=[image(target)])
    steps = plan(device, targets(app(target)))
    assert actions(steps) == ["removeNetwork"]
    assert steps[0].current.name == "legacy"


def test_duplicate_networks_are_removed_once() -> None:
    target = svc(composition={"network_mode": "host"})
    config_only = net("default", {"config_only": True})
    twin = net("default", {"config_only": True})
    device = state(current_app(container(target), networks=[config_only, twin]), images=[image(target)])
    steps = plan(device, targets(app(target)))
    assert actions(steps) == ["removeNetwork"]


def test_default_network_is_config_only_when_every_service_uses_the_host_network() -> None:
    host = svc(composition={"network_mode": "host"})
    bridged = svc("web", service_id=2)
    assert with_default_network(app(host)).networks[-1].config["configOnly"] is True
    assert with_default_network(app(host, bridged)).networks[-1].config["configOnly"] is False
    steps = plan(state(images=[image(host)]), targets(app(host)))
    (create,) = of(CreateNetwork, steps)
    assert create.target.config["configOnly"] is True


# ---------------------------------------------------------------------------- dependencies
def test_depends_on_waits_while_the_dependency_is_being_installed() -> None:
    a = svc("a", service_id=1)
    b = svc("b", service_id=2, composition={"depends_on": ["a"]})
    device = state(current_app(commit=None), images=[image(a), image(b)], **LOCKED)
    assert plan(device, targets(app(a, b))) == [Start(a), Noop()]


def test_depends_on_starts_once_the_dependency_runs() -> None:
    a = svc("a", service_id=1)
    b = svc("b", service_id=2, composition={"depends_on": ["a"]})
    device = state(current_app(container(a), commit=None), images=[image(a), image(b)], **LOCKED)
    assert plan(device, targets(app(a, b))) == [Start(b)]


def test_depends_on_waits_for_a_created_but_not_started_dependency() -> None:
    a = svc("a", service_id=1)
    b = svc("b", service_id=2, composition={"depends_on": ["a"]})
    installed = container(a, status="Installed")
    device = state(current_app(installed, commit=None), images=[image(a), image(b)], **LOCKED)
    assert plan(device, targets(app(a, b))) == [Start(a), Noop()]


def test_a_dependency_meant_to_stay_stopped_does_not_block() -> None:
    a = svc("a", service_id=1, running=False)
    b = svc("b", service_id=2, composition={"depends_on": ["a"]})
    device = state(
        current_app(container(a, status="Installed"), commit=None), images=[image(a), image(b)], **LOCKED
    )
    assert plan(device, targets(app(a, b))) == [Start(b)]


def test_network_mode_service_is_an_implicit_dependency() -> None:
    a = svc("a", service_id=1)
    b = svc("b", service_id=2, composition={"network_mode": "service:a"})
    device = state(current_app(commit=None), images=[image(a), image(b)], **LOCKED)
    assert plan(device, targets(app(a, b))) == [Start(a), Noop()]


# ------------------------------------------------------------------------------ strategies
def _strategy(name: str) -> dict[str, str]:
    return {"io.balena.update.strategy": name}


@pytest.mark.parametrize("strategy", ["kill-then-download", "delete-then-download"])
def test_kill_first_strategies_kill_before_downloading(strategy: str) -> None:
    current = old(labels=_strategy(strategy))
    target = svc(labels=_strategy(strategy))
    device = state(current_app(current), images=[image(current)])
    assert plan(device, targets(app(target))) == [TakeLock(APP_ID, ("main",), False)]
    locked = dataclasses.replace(device, locks_held=frozenset({APP_ID}))
    assert plan(locked, targets(app(target))) == [Kill(current)]


def test_kill_then_download_fetches_once_the_old_container_is_gone_keeping_the_delta_source() -> None:
    current = old(labels=_strategy("kill-then-download"))
    target = svc(labels=_strategy("kill-then-download"))
    device = state(current_app(commit=OLD), images=[image(current)], **LOCKED)
    steps = plan(device, targets(app(target)), PlanContext(delta=True))
    assert steps == [Fetch(image_for(target), "main", delta_source=current.image_name)]


def test_delete_then_download_removes_the_old_image_before_fetching() -> None:
    current = old(labels=_strategy("delete-then-download"))
    target = svc(labels=_strategy("delete-then-download"))
    device = state(current_app(commit=OLD), images=[image(current)], **LOCKED)
    assert plan(device, targets(app(target))) == [RemoveImage(image(current))]
    gone = state(current_app(commit=OLD), **LOCKED)
    assert plan(gone, targets(app(target))) == [Fetch(image_for(target), "main")]


def test_hand_over_fetches_then_hands_over_without_a_lock() -> None:
    labels = {**_strategy("hand-over"), "io.balena.update.handover-timeout": "5000"}
    current = old(labels=labels)
    target = svc(labels=labels)
    device = state(current_app(current), images=[image(current)])
    assert plan(device, targets(app(target))) == [Fetch(image_for(target), "main")]
    ready = dataclasses.replace(device, available_images=(image(current), image(target)))
    assert plan(ready, targets(app(target))) == [Handover(current, target, 5000)]


def test_hand_over_timeout_defaults_to_a_minute() -> None:
    current = old(labels=_strategy("hand-over"))
    target = svc(labels={**_strategy("hand-over"), "io.balena.update.handover-timeout": "-3"})
    device = state(current_app(current), images=[image(current), image(target)])
    assert plan(device, targets(app(target))) == [Handover(current, target, 60_000)]


@pytest.mark.parametrize("label", ["handover", "yolo", ""])
def test_unknown_strategy_falls_back_to_download_then_kill(label: str) -> None:
    current = old(labels=_strategy(label))
    target = svc(labels=_strategy(label))
    assert strategy_of(target) == "download-then-kill"
    device = state(current_app(current), images=[image(current)], **LOCKED)
    assert plan(device, targets(app(target))) == [Fetch(image_for(target), "main")]
    ready = dataclasses.replace(device, available_images=(image(current), image(target)))
    assert plan(ready, targets(app(target))) == [Kill(current)]


# ------------------------------------------------------------------------------------ locks
def test_take_lock_covers_every_current_and_target_service_and_carries_force() -> None:
    a_old, gone = old("a", service_id=1), old("gone", service_id=3)
    a_new, b_new = svc("a", service_id=1, env={"X": "1"}), svc("b", service_id=2)
    images = [image(a_old), image(gone), image(a_new), image(b_new)]
    device = state(current_app(a_old, gone), images=images)
    steps = plan(device, targets(app(a_new, b_new)), PlanContext(force=True))
    assert steps[0] == TakeLock(APP_ID, ("a", "gone", "b"), True)


def test_take_lock_comes_first_in_the_apps_batch() -> None:
    a_old = old("a", service_id=1)
    a_new = svc("a", service_id=1, env={"X": "1"}, image=a_old.image_name)
    b_new = svc("b", service_id=2, composition={"volumes": ["extra:/x"]})
    device = state(current_app(a_old), images=[image(a_old), image(a_new), image(b_new)])
    steps = plan(device, targets(app(a_new, b_new, volumes=[vol("extra")])))
    assert actions(steps) == ["takeLock", "noop", "createVolume"]


# ------------------------------------------------------------------------------ app removal
def test_removed_app_is_torn_down_in_order() -> None:
    main = old()
    volume = vol()
    full = current_app(main, volumes=[volume], commit=OLD)
    img = image(main)
    assert plan(state(full, images=[img]), {}) == [TakeLock(APP_ID, ("main",), False)]
    assert plan(state(full, images=[img], **LOCKED), {}) == [Kill(main)]

    no_services = current_app(volumes=[volume], commit=OLD)
    steps = plan(state(no_services, images=[img], **LOCKED), {})
    assert steps == [RemoveImage(img)]  # images go first once nothing uses them
    steps = plan(state(no_services, **LOCKED), {})
    assert actions(steps) == ["removeNetwork"]
    only_volume = current_app(networks=[], volumes=[volume], commit=OLD)
    assert plan(state(only_volume, **LOCKED), {}) == [RemoveVolume(volume)]
    empty = current_app(networks=[], commit=OLD)
    assert plan(state(empty, **LOCKED), {}) == [ReleaseLock(APP_ID)]


@pytest.mark.parametrize("ctx", [PlanContext(keep_volumes=True), PlanContext(local_mode=True)])
def test_removed_app_keeps_its_volumes_when_asked(ctx: PlanContext) -> None:
    only_volume = current_app(networks=[], volumes=[vol()], commit=OLD)
    assert plan(state(only_volume, **LOCKED), {}, ctx) == [ReleaseLock(APP_ID)]
    assert plan(state(only_volume), {}, ctx) == []


def test_removed_app_removes_dead_containers_instead_of_killing_them() -> None:
    dead = old(status="Dead")
    stopping = old("db", service_id=2, status="Stopping")
    device = state(current_app(dead, stopping, commit=OLD), **LOCKED)
    assert plan(device, {}) == [Remove(dead), Noop()]


def test_vanished_app_still_gets_its_lock_released() -> None:
    assert plan(state(locks_held={7}, lock_leftovers={8}), {}) == [ReleaseLock(7), ReleaseLock(8)]


def test_rejected_target_app_is_left_alone() -> None:
    current = old()
    rejected = app(svc(env={"NEW": "1"}), rejected=True)
    assert plan(state(current_app(current), images=[image(current)]), targets(rejected)) == []


def test_apps_are_matched_by_app_id_when_components_predate_uuids() -> None:
    target = svc()
    legacy = dataclasses.replace(container(target), app_uuid=None)
    current = App(app_id=APP_ID, app_uuid=str(APP_ID), commit=NEW, services=(legacy,), networks=(net(),))
    device = CurrentState(apps={str(APP_ID): current}, available_images=(image(target),))
    assert not of(Kill, plan(device, targets(app(target))))


# ----------------------------------------------------------------------------------- images
def test_unused_images_are_removed() -> None:
    target = svc()
    stale = image(svc(commit=OLD))
    device = state(current_app(container(target)), images=[image(target), stale])
    assert plan(device, targets(app(target))) == [RemoveImage(stale)]


def test_images_are_not_removed_while_something_downloads() -> None:
    target = svc()
    stale = image(svc(commit=OLD))
    device = state(current_app(container(target)), images=[image(target), stale], downloading={"other:1"})
    assert plan(device, targets(app(target))) == [Noop()]


@pytest.mark.parametrize(
    "ctx", [PlanContext(keep_images=True), PlanContext(local_mode=True)], ids=["keep", "local"]
)
def test_images_are_kept_when_asked(ctx: PlanContext) -> None:
    target = svc()
    stale = image(svc(commit=OLD))
    device = state(current_app(container(target)), images=[image(target), stale], cleanup_needed=True)
    assert plan(device, targets(app(target)), ctx) == []


def test_cleanup_runs_before_app_steps() -> None:
    target = svc(env={"A": "1"})
    device = state(current_app(container(svc())), images=[image(target)], cleanup_needed=True)
    assert plan(device, targets(app(target))) == [Cleanup()]


def test_available_image_with_other_metadata_is_saved_and_a_shared_engine_image_survives() -> None:
    current = old()
    target = svc(image=current.image_name)  # same image, new release
    device = state(current_app(current), images=[image(current)])
    assert plan(device, targets(app(target))) == [SaveImage(image(target))]
    # After the rename the old record is unused, but its engine image is the target's.
    renamed = dataclasses.replace(current, commit=NEW, release_id=NEW_RELEASE)
    device = state(current_app(renamed), images=[image(current), image(target)])
    assert plan(device, targets(app(target))) == [RemoveImage(image(current), keep_in_engine=True)]


def test_image_found_in_the_engine_by_name_is_saved() -> None:
    target = dataclasses.replace(svc(), docker_image_id="sha256:" + "ab" * 32)
    steps = plan(state(), targets(app(target)))
    assert steps == [SaveImage(image_for(target))]


def test_a_downloading_image_keeps_the_loop_alive_without_a_second_fetch() -> None:
    target = svc()
    device = state(downloading={target.image_name})
    steps = plan(device, targets(app(target)))
    assert not of(Fetch, steps)
    assert Noop() in steps


# ---------------------------------------------------------------------------- stages 1, 2, 4
def test_supervisor_network_stage_kills_every_api_user_then_creates_the_network() -> None:
    api = {"io.balena.features.supervisor-api": "1"}
    plain = old("plain", service_id=1)
    api_user = old("api", service_id=2, labels=api)
    stopping = dataclasses.replace(old("api2", service_id=3, labels=api), status="Stopping")
    device = state(current_app(plain, api_user, stopping), supervisor_network_ready=False)
    assert plan(device, {}) == [Kill(api_user), Noop()]  # the reference stops at `plain`
    device = state(current_app(plain), supervisor_network_ready=False)
    assert plan(device, targets(app(svc()))) == [EnsureSupervisorNetwork()]


def test_extra_firmware_volume_is_ensured_before_app_work() -> None:
    assert plan(state(extra_firmware_ready=False), targets(app(svc()))) == [EnsureExtraFirmwareVolume()]


def _many(n: int) -> list[Service]:
    return [svc(f"s{i}", service_id=i) for i in range(n)]


def test_delta_downloads_are_throttled_for_apps_that_already_have_images() -> None:
    services = _many(4)
    old_image = image(svc("s0", service_id=0, commit=OLD))
    device = state(current_app(commit=OLD), images=[old_image], downloading={"elsewhere:1"})
    steps = plan(device, targets(app(*services)), PlanContext(delta=True))
    # 1 downloading + 4 new - 3 allowed = 2 held back.
    assert len(of(Fetch, steps)) == 2
    without_delta = plan(device, targets(app(*services)), PlanContext(delta=False))
    assert len(of(Fetch, without_delta)) == 4


def test_delta_throttle_never_holds_back_a_first_install() -> None:
    services = _many(MAX_DELTA_DOWNLOADS + 2)
    steps = plan(state(), targets(app(*services)), PlanContext(delta=True))
    assert len(of(Fetch, steps)) == len(services)


def test_waiting_with_a_reboot_scheduled_emits_nothing() -> None:
    a = svc("a", service_id=1)
    b = svc("b", service_id=2, composition={"depends_on": ["a"]})
    device = state(current_app(commit=None), images=[image(a), image(b)], **LOCKED)
    steps = plan(device, targets(app(a, b)), PlanContext(reboot_breadcrumb=True))
    assert steps == [Start(a)]


# ------------------------------------------------------------------------- target building
def test_target_apps_builds_compose_objects_with_a_default_network() -> None:
    release = TargetRelease(
        commit=NEW,
        id=NEW_RELEASE,
        services={
            "main": TargetService(
                "main", 10, 102, "registry/main:1", {}, {}, composition={"volumes": ["data:/d"]}
            ),
        },
        volumes={"data": {}},
        networks={"backend": {"internal": True}},
    )
    supervisor_release = TargetRelease(
        commit="s",
        id=9,
        services={"balena-supervisor": TargetService("balena-supervisor", 1, 1, "sup:1", {}, {})},
    )
    device = TargetDevice(
        name="quiet-lake",
        apps={
            UUID: TargetApp(UUID, APP_ID, "app", release=release),
            SUPERVISOR_UUID: TargetApp(SUPERVISOR_UUID, 2, "supervisor", release=supervisor_release),
        },
    )

    def ctx_for(target_app: TargetApp, service: TargetService) -> ServiceContext:
        commit = target_app.release.commit if target_app.release else ""
        return context(app_id=target_app.id, uuid=target_app.uuid, commit=commit)

    built = target_apps(device, ctx_for, rejected={SUPERVISOR_UUID})
    main_app = built[UUID]
    assert [s.service_name for s in main_app.services] == ["main"]
    assert main_app.services[0].has_volume("data")
    assert sorted(n.name for n in main_app.networks) == ["backend", "default"]
    assert [v.name for v in main_app.volumes] == ["data"]
    assert main_app.commit == NEW and not main_app.rejected
    assert built[SUPERVISOR_UUID].services == () and built[SUPERVISOR_UUID].rejected


def test_same_image_matches_names_or_digests() -> None:
    digest = "sha256:" + "0" * 64
    assert same_image("a:1", "a:1")
    assert same_image(f"reg/a@{digest}", f"other/b@{digest}")
    assert not same_image("a:1", "a:2")


# ---------------------------------------------------------------------------------- reboot
def test_reboot_comes_only_once_the_rest_has_settled() -> None:
    """§3.1 step 5: with the breadcrumb newer than boot, a batch of nothing gets the ``reboot``
    step; any real step first goes its way."""
    a = svc("a", service_id=1)
    waiting = state(downloading={"other"})  # not while a download runs (the reference would)
    assert plan(waiting, targets(), PlanContext(reboot_breadcrumb=True)) == [Noop()]
    busy = state(current_app(commit=None), images=[image(a)], **LOCKED)
    assert plan(busy, targets(app(a)), PlanContext(reboot_breadcrumb=True)) == [Start(a)]
    settled = state(current_app(container(a), commit=NEW), images=[image(a)])
    assert plan(settled, targets(app(a)), PlanContext(reboot_breadcrumb=True)) == [Reboot()]
    assert plan(settled, targets(app(a)), PlanContext()) == []

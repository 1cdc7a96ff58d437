"""The state-engine planner: ``plan(current, target, context) -> steps``, pure (reference §3.2-§3.7).

The apply loop calls :func:`plan`, runs the whole returned batch, observes the device again and plans
again until the batch is empty. Every rule therefore only has to say what may happen *next*: a
service starts once its images, networks, volumes and dependencies exist; an old container goes once
the strategy allows it; a network is removed once nothing uses it. A step is never emitted before
the executor can perform it, so each batch moves the device forward and repeated planning converges.

Nothing here touches the engine, the database or the disk: :class:`~supervisor.state.current.CurrentState`
carries what was observed, the target apps are compose objects, and :class:`PlanContext` the knobs.

Departures from the reference, each a plain bug there (§15) or a loop that could never settle:

* supervisor0 stage: every service with the ``supervisor-api`` feature label is killed, not only those
  before the first service without it (§15 "killServicesUsingApi stops scanning").
* ``shouldBeStopped`` ignores a created-but-never-started (``Installed``) container: it is not running,
  and the reference keeps it as a changing pair forever, which blocks its dependents.
* A ``depends_on`` dependency whose target is ``running: false`` never blocks: it will never run, and
  the reference would wait for it (emitting ``noop``) forever.
* A service waits for *every* app network it joins, not only its network mode, before it starts: the
  engine cannot create a container attached to a network that does not exist yet.
* A container on a network or volume that is recreated or removed is always an update pair (current,
  target), never a remove-only pair, even when its own config is unchanged: its strategy fetches the
  new image first, kills it, and the install path recreates it on the new network or volume. (A
  remove-only pair never fetches, so ``download-then-kill`` and ``hand-over`` waited for that image
  with ``noop`` forever; issue #10 §3.)
* A removed app's ``Dead`` containers get ``remove`` (``kill`` cannot stop a dead container), every
  container of a removed service name is removed at once, and duplicate networks of one name get a
  single ``removeNetwork`` (the executor removes all engine duplicates of that name).
* An app whose last component is gone while the supervisor still holds (or left behind) its lock gets
  a ``releaseLock``; the reference only releases locks of apps it still sees.
* ``removeImage`` of a record whose engine image another in-use record still names carries
  ``keep_in_engine=True``, so only the record goes, not the image a running service needs.
* ``delete-then-download`` removes the old image before the fetch even where images are otherwise
  kept (local mode); an unknown strategy name is warned about once per service, not every round.
* The ``reboot`` step waits for downloads in flight (the reference reboots as soon as every step
  is a ``noop``, throwing away a half-done download).

Kept as the reference does them, on purpose: an ``exited`` container is never restarted (the restart
policy's business) except after the host-address race; the supervisor0 stage kills without taking
update locks; a start or rename for an existing container needs the app lock but a start of a stopped
one does not; images are saved/removed before any other step, even if that delays a start by a round.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Final

from supervisor.compose import Network, Service, ServiceContext, Volume
from supervisor.compose.validation import check_int, check_truthy
from supervisor.state.current import App, CurrentState, Image, same_image
from supervisor.state.steps import (
    DEFAULT_HANDOVER_TIMEOUT_MS,
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
    SaveImage,
    Start,
    Step,
    Stop,
    TakeLock,
    UpdateCommit,
    UpdateMetadata,
)
from supervisor.state.target import TargetApp, TargetDevice, TargetService, is_supervisor_service, thaw

__all__ = [
    "DEFAULT_STRATEGY",
    "MAX_DELTA_DOWNLOADS",
    "STRATEGIES",
    "PlanContext",
    "TargetApps",
    "image_for",
    "plan",
    "strategy_of",
    "target_apps",
    "with_default_network",
]

#: Target apps by uuid, already turned into compose Services, Networks and Volumes.
TargetApps = Mapping[str, App]

#: More concurrent delta downloads than this are throttled (§3.2 stage 4).
MAX_DELTA_DOWNLOADS: Final = 3

DEFAULT_STRATEGY: Final = "download-then-kill"
STRATEGIES: Final = frozenset(
    {"download-then-kill", "kill-then-download", "delete-then-download", "hand-over"}
)
_KILL_FIRST: Final = frozenset({"kill-then-download", "delete-then-download"})

STRATEGY_LABEL: Final = "io.balena.update.strategy"
HANDOVER_TIMEOUT_LABEL: Final = "io.balena.update.handover-timeout"
REQUIRES_REBOOT_LABEL: Final = "io.balena.update.requires-reboot"
SUPERVISOR_API_LABEL: Final = "io.balena.features.supervisor-api"
LEGACY_LABEL: Final = "io.balena.legacy-container"
SERVICE_ID_LABEL: Final = "io.balena.service-id"

log = logging.getLogger(__name__)

# A container the engine created but could not start because a host address was not up yet (§3.4).
_HOST_RACE_ERROR: Final = re.compile(r"userland proxy.*cannot assign requested address$", re.I)
_NEVER_STARTED: Final = frozenset({"Installing", "Installed"})


@dataclass(frozen=True)
class PlanContext:
    """The knobs of one planning round.

    ``keep_images``/``keep_volumes`` default to ``local_mode`` when None (§3.2); intermediate applies
    (restart, purge) pass ``keep_images=True``. ``force`` overrides update locks (``takeLock``).
    ``reboot_breadcrumb`` is "a reboot is already scheduled"; ``boot_time`` (epoch seconds or an aware
    datetime) decides whether a container was created since the last boot (requires-reboot).
    """

    keep_images: bool | None = None
    keep_volumes: bool | None = None
    force: bool = False
    delta: bool = False
    reboot_breadcrumb: bool = False
    local_mode: bool = False
    boot_time: datetime | float | None = None
    max_delta_downloads: int = MAX_DELTA_DOWNLOADS

    @property
    def images_kept(self) -> bool:
        return self.local_mode if self.keep_images is None else self.keep_images

    @property
    def volumes_kept(self) -> bool:
        return self.local_mode if self.keep_volumes is None else self.keep_volumes


# ------------------------------------------------------------------------------- entry point
def plan(current: CurrentState, target: TargetApps, ctx: PlanContext | None = None) -> list[Step]:
    """The next batch of steps that moves ``current`` towards ``target``; empty when settled."""
    ctx = ctx or PlanContext()
    if not current.supervisor_network_ready:
        return _supervisor_network_steps(current)
    if not current.extra_firmware_ready:
        return [EnsureExtraFirmwareVolume()]

    targets = {uuid: with_default_network(app) for uuid, app in target.items()}
    # Images go first, and only while nothing downloads: a removal can free the space a fetch needs.
    steps = [] if current.downloading else _image_steps(current, targets, ctx)
    if not steps:
        steps = _app_steps(current, targets, ctx)
    if ctx.delta:
        steps = _throttle_delta_fetches(steps, current, ctx.max_delta_downloads)
    if not steps and current.downloading:
        steps = [Noop()]  # keep the loop alive until the downloads report back
    if ctx.reboot_breadcrumb and not current.downloading and all(isinstance(s, Noop) for s in steps):
        steps = [*steps, Reboot()]  # settled, and a service waits for a reboot (§3.1 step 5)
    return steps


# ------------------------------------------------------------------------- stage 1: supervisor0
def _supervisor_network_steps(current: CurrentState) -> list[Step]:
    """Services that talk to the supervisor API go before supervisor0 is (re)created under them."""
    api_users = [
        svc
        for app in current.apps.values()
        for svc in app.services
        if check_truthy(_labels(svc).get(SUPERVISOR_API_LABEL))
    ]
    if api_users:
        return [Noop() if svc.status == "Stopping" else Kill(svc) for svc in api_users]
    return [EnsureSupervisorNetwork()]


# -------------------------------------------------------------------------- stage 3a: images
def _image_steps(current: CurrentState, targets: TargetApps, ctx: PlanContext) -> list[Step]:
    """``cleanup``, then ``saveImage``/``removeImage`` (§9.6, ``saveAndRemoveImages``)."""
    steps: list[Step] = []
    if current.cleanup_needed and not ctx.images_kept:
        steps.append(Cleanup())

    available = current.available_images
    target_services = [svc for app in targets.values() if not app.rejected for svc in app.services]
    target_images = [image_for(svc) for svc in target_services]
    current_images = [
        img
        for app in current.apps.values()
        for svc in app.services
        if (img := _image_of_current(svc, available)) is not None
    ]

    for svc, wanted in zip(target_services, target_images, strict=True):
        engine_id = svc.docker_image_id
        known = any(
            same_image(img.name, wanted.name) or (engine_id and img.docker_image_id == engine_id)
            for img in available
        )
        saved = any(img.metadata() == wanted.metadata() for img in available)
        # Known but recorded under other metadata, or found in the engine by name only.
        if (known and not saved) or (not known and engine_id):
            steps.append(SaveImage(_with_engine_id(wanted, available)))

    # delete-then-download removes the old image before the fetch even where images are kept (local
    # mode): the label asks for the disk space, and the reference would keep it there.
    delete_first = {
        (svc.app_id, svc.service_name)
        for svc in target_services
        if strategy_of(svc) == "delete-then-download"
    }
    if ctx.images_kept and not delete_first:
        return steps
    in_use = current_images + target_images
    in_use_metadata = {img.metadata() for img in in_use}
    engine_ids_in_use = {img.docker_image_id for img in in_use} | {
        svc.config.get("image") for app in current.apps.values() for svc in app.services
    }
    engine_ids_in_use.discard(None)
    delta_sources = _delta_sources(target_services, target_images, available)
    for img in available:
        if img.metadata() in in_use_metadata or img.name in delta_sources:
            continue
        if ctx.images_kept and (img.app_id, img.service_name) not in delete_first:
            continue
        still_needed = img.docker_image_id in engine_ids_in_use or any(
            same_image(img.name, used.name) for used in in_use
        )
        steps.append(RemoveImage(img, keep_in_engine=still_needed))
    return steps


def _delta_sources(
    services: Sequence[Service], images: Sequence[Image], available: Sequence[Image]
) -> set[str]:
    """Images kept as delta sources of pending downloads; delete-then-download keeps none."""
    sources: set[str] = set()
    for svc, wanted in zip(services, images, strict=True):
        if strategy_of(svc) == "delete-then-download" or _is_available(svc, available):
            continue
        source = _best_delta_source(wanted, available)
        if source is not None:
            sources.add(source)
    return sources


def _best_delta_source(image: Image, available: Iterable[Image]) -> str | None:
    """The first available image of the same app and service (§9.2 ``bestDeltaSource``)."""
    for img in available:
        if img.service_name == image.service_name and img.app_id == image.app_id:
            return img.name
    return None


def _image_of_current(svc: Service, available: Sequence[Image]) -> Image | None:
    """The record of a running container's image: same engine id, commit and service if possible."""
    engine_id = svc.config.get("image")
    same_id = [img for img in available if img.docker_image_id and img.docker_image_id == engine_id]
    for img in same_id:
        if img.commit == svc.commit and img.service_name == svc.service_name:
            return img
    return same_id[0] if same_id else None


def _with_engine_id(image: Image, available: Sequence[Image]) -> Image:
    if image.docker_image_id:
        return image
    for img in available:
        if same_image(img.name, image.name) and img.docker_image_id:
            return replace(image, docker_image_id=img.docker_image_id)
    return image


def _is_available(svc: Service, available: Iterable[Image]) -> bool:
    """The target's image is present: same engine id, or same name or digest (§3.5 needsDownload)."""
    engine_id = svc.config.get("image")
    name = _image_name(svc)
    return any(
        (img.docker_image_id is not None and img.docker_image_id == engine_id) or same_image(img.name, name)
        for img in available
    )


# ---------------------------------------------------------------------------- stage 3b: apps
def _app_steps(current: CurrentState, targets: TargetApps, ctx: PlanContext) -> list[Step]:
    steps: list[Step] = []
    pairs, removed, installed = _match_apps(current.apps, targets)
    for cur, tgt in pairs:
        if not tgt.rejected:  # a release that failed its contracts leaves the app as it is
            steps += _AppPlan(cur, tgt, current, ctx).steps()
    for cur in removed:
        steps += _steps_to_remove_app(cur, current, ctx)
    for tgt in installed:
        if not tgt.rejected:
            empty = App(app_id=tgt.app_id, app_uuid=tgt.app_uuid)
            steps += _AppPlan(empty, tgt, current, ctx).steps()

    # Locks of apps that have vanished entirely (nothing left to see them through).
    known = {app.app_id for app in current.apps.values()} | {app.app_id for app in targets.values()}
    for app_id in sorted((current.locks_held | current.lock_leftovers) - known):
        steps.append(ReleaseLock(app_id))
    return steps


def _match_apps(
    current: Mapping[str, App], targets: TargetApps
) -> tuple[list[tuple[App, App]], list[App], list[App]]:
    """Pair apps by uuid, then by app id (components from before uuids existed carry only that)."""
    pairs: list[tuple[App, App]] = []
    unmatched_current: list[App] = []
    matched_targets: set[str] = set()
    target_uuids = {app.app_uuid: key for key, app in targets.items()}
    for cur in current.values():
        key = target_uuids.get(cur.app_uuid)
        if key is not None:
            pairs.append((cur, targets[key]))
            matched_targets.add(key)
        else:
            unmatched_current.append(cur)
    removed: list[App] = []
    for cur in unmatched_current:
        key = next(
            (k for k, t in targets.items() if k not in matched_targets and t.app_id == cur.app_id),
            None,
        )
        if key is None:
            removed.append(cur)
        else:
            pairs.append((cur, targets[key]))
            matched_targets.add(key)
    installed = [app for key, app in targets.items() if key not in matched_targets]
    return pairs, removed, installed


def _steps_to_remove_app(app: App, current: CurrentState, ctx: PlanContext) -> list[Step]:
    """Lock, then kill every container, then remove networks, then volumes, then unlock (§3.4)."""
    locked = app.app_id in current.locks_held
    if app.services:
        if not locked:
            return [TakeLock(app.app_id, _unique(s.service_name for s in app.services), ctx.force)]
        return [_kill_or_wait(svc) for svc in app.services]
    if app.networks:
        return [RemoveNetwork(net) for net in _first_of_each_name(app.networks)]
    if app.volumes and not ctx.volumes_kept:
        return [RemoveVolume(vol) for vol in app.volumes]
    if locked or app.app_id in current.lock_leftovers:
        return [ReleaseLock(app.app_id)]
    return []


def _kill_or_wait(svc: Service) -> Step:
    if svc.status == "Stopping":
        return Noop()
    if svc.status == "Dead":
        return Remove(svc)
    return Kill(svc)


# ------------------------------------------------------------------------------ per-app plan
@dataclass(frozen=True)
class _Pair:
    """A changing component: current only (remove), target only (install), or both (update)."""

    current: Any = None
    target: Any = None


class _AppPlan:
    """Steps for one app present in the target (§3.4-§3.7, ``nextStepsForAppUpdate``).

    Built fresh for every planning round; it only reads its inputs. ``_lock_names`` collects the
    services whose next step needs the app's update lock: when any does, the batch asks for the lock
    and those steps follow in a later round, once the lock is held.
    """

    def __init__(self, current: App, target: App, state: CurrentState, ctx: PlanContext) -> None:
        self.current = current
        self.target = _migrate_legacy(current, target)
        self.state = state
        self.ctx = ctx
        self.available = state.available_images
        self.container_ids = state.container_ids_for(current)
        self.locked = target.app_id in state.locks_held or current.app_id in state.locks_held
        self._lock_names: list[str] = []

        self.volume_pairs = _compare_components(current.volumes, self.target.volumes, removes=False)
        self.network_pairs = _compare_components(current.networks, self.target.networks, removes=True)
        self.images_ready = all(_is_available(svc, self.available) for svc in self.target.services)
        self.target_by_name = {svc.service_name: svc for svc in self.target.services}
        self.remove_pairs, self.update_pairs, self.install_pairs = self._compare_services()
        self.service_pairs = self.remove_pairs + self.update_pairs + self.install_pairs

    # ------------------------------------------------------------------ the app's batch
    def steps(self) -> list[Step]:
        dead = [Remove(svc) for svc in self.current.services if svc.status == "Dead"]
        service_steps = [
            step for pair in self.service_pairs if (step := self._service_step(pair)) is not None
        ]
        steps: list[Step] = []
        if self._lock_names:
            steps.append(TakeLock(self.target.app_id, tuple(self._lock_names), self.ctx.force))
        steps += dead + service_steps
        steps += self._component_steps(self.volume_pairs, CreateVolume, RemoveVolume, _uses_volume)
        steps += self._component_steps(self.network_pairs, CreateNetwork, RemoveNetwork, _uses_network)
        if steps:
            return steps

        # Settled: record the release, then let go of the locks taken for this update.
        if self.target.commit is not None and self.current.commit != self.target.commit:
            steps.append(UpdateCommit(self.target.app_id, self.target.commit))
        app_id = self.target.app_id
        if self.locked or app_id in self.state.lock_leftovers:
            steps.append(ReleaseLock(app_id))
        return steps

    # ------------------------------------------------------------------ service pairing
    def _compare_services(self) -> tuple[list[_Pair], list[_Pair], list[_Pair]]:
        """(removePairs, updatePairs, installPairs) keyed by service name (§3.4 step 5)."""
        by_name: dict[str, list[Service]] = {}
        for svc in self.current.services:
            by_name.setdefault(svc.service_name, []).append(svc)

        removed_names = [n for n in by_name if n not in self.target_by_name]
        remove = [_Pair(current=svc) for name in removed_names for svc in by_name[name]]

        update: list[_Pair] = []
        for name, tgt in self.target_by_name.items():
            if name not in by_name:
                continue
            newest, *older = sorted(by_name[name], key=_created_key, reverse=True)
            remove += [_Pair(current=svc) for svc in older]  # spurious duplicates
            # A container on a network or volume that is recreated or removed must go first, but it
            # keeps its target: its new image is fetched before the strategy kills it.
            if self._uses_changing_component(newest) or self._needs_update(newest, tgt):
                update.append(_Pair(newest, tgt))

        install = [_Pair(target=tgt) for name, tgt in self.target_by_name.items() if name not in by_name]
        return remove, update, install

    def _needs_update(self, cur: Service, tgt: Service) -> bool:
        return (
            not cur.is_equal_except_running(tgt, self.container_ids)
            or self._should_be_started(cur, tgt)
            or self._should_be_stopped(cur, tgt)
            or (_running(cur) and cur.status == "Stopping")  # keep the loop alive while it stops
        )

    def _should_be_started(self, cur: Service, tgt: Service) -> bool:
        """Only a container that never ran (or lost the host race) is started: an exited one is the
        engine's restart policy's business."""
        if not _running(tgt) or _running(cur):
            return False
        startable = cur.status in _NEVER_STARTED or _lost_host_race(cur, tgt)
        return startable and cur.is_equal_except_running(tgt, self.container_ids)

    @staticmethod
    def _should_be_stopped(cur: Service, tgt: Service) -> bool:
        return not _running(tgt) and cur.status not in ("exited", "Installed")

    # ------------------------------------------------------------------ one service
    def _service_step(self, pair: _Pair) -> Step | None:
        """§3.5 ``generateStepsForService``: at most one step for one changing service."""
        cur: Service | None = pair.current
        tgt: Service | None = pair.target
        if cur is not None and cur.status == "Stopping":
            return Noop()  # a kill is under way
        if cur is not None and cur.status == "Dead":
            return None  # its `remove` is already in the batch

        needs_download = tgt is not None and not _is_available(tgt, self.available)
        if needs_download and _image_name(tgt) in self.state.downloading:
            return Noop()
        if cur is None:
            return self._fetch_or_start(tgt, needs_download)

        needs_special_kill = self._uses_changing_component(cur)
        if tgt is not None and not needs_special_kill and cur.is_equal_config(tgt, self.container_ids):
            return self._container_step(cur, tgt)
        return self._strategy_step(cur, tgt, needs_download, needs_special_kill)

    def _fetch_or_start(self, tgt: Service, needs_download: bool) -> Step | None:
        """A service without a container: download its image, or start it once it may."""
        if needs_download and self._fetch_dependencies_met(tgt):
            return self._fetch(tgt)
        if self._start_dependencies_met(tgt):
            return self._locked(Start(tgt))
        # Waiting on something; with a reboot pending, stay quiet so the state can settle.
        return None if self.ctx.reboot_breadcrumb else Noop()

    def _container_step(self, cur: Service, tgt: Service) -> Step | None:
        """Same container config: a rename for a new release, or a start/stop (§3.5 rule 5)."""
        if cur.commit != tgt.commit:
            if strategy_of(tgt) == DEFAULT_STRATEGY and not self.images_ready:
                return Noop()
            if check_truthy(_labels(cur).get(LEGACY_LABEL)):
                return UpdateMetadata(cur, tgt)  # preloaded legacy containers hold no locks
            return self._locked(UpdateMetadata(cur, tgt))
        if _running(cur) == _running(tgt):
            return None
        if not _running(tgt):
            return self._locked(Stop(cur))
        if check_truthy(_labels(tgt).get(REQUIRES_REBOOT_LABEL)) and self._created_since_boot(cur):
            return None if self.ctx.reboot_breadcrumb else RequireReboot(tgt.service_name)
        return Start(tgt)

    def _strategy_step(
        self, cur: Service, tgt: Service | None, needs_download: bool, needs_special_kill: bool
    ) -> Step | None:
        """Replace (or remove) a container as its update strategy says (§3.6)."""
        strategy = strategy_of(tgt if tgt is not None else cur)
        if strategy in _KILL_FIRST:
            # The new image is fetched once the old container is gone (the install path).
            return self._locked(Kill(cur))
        if strategy == "hand-over":
            if needs_download:
                return self._fetch(tgt)
            if (needs_special_kill or tgt is None) and self.images_ready:
                return self._locked(Kill(cur))
            if tgt is not None and self._start_dependencies_met(tgt):
                return Handover(cur, tgt, _handover_timeout(tgt))
            return Noop()
        # download-then-kill: every image of the release first, then the old container goes.
        if needs_download:
            return self._fetch(tgt)
        if self.images_ready:
            return self._locked(Kill(cur))
        return Noop()

    def _locked(self, step: Step) -> Step | None:
        """``step`` once the app's update lock is held; until then, ask for it and emit nothing."""
        if self.locked:
            return step
        names = [svc.service_name for svc in (*self.current.services, *self.target.services)]
        for name in names:
            if name not in self._lock_names:
                self._lock_names.append(name)
        return None

    def _fetch(self, tgt: Service) -> Fetch:
        image = image_for(tgt)
        source = _best_delta_source(image, self.available) if self.ctx.delta else None
        return Fetch(image, tgt.service_name, delta_source=source)

    # ------------------------------------------------------------------ dependencies
    def _fetch_dependencies_met(self, tgt: Service) -> bool:
        """§3.5: a new install may always fetch; otherwise no kill-first service may still run.

        Only services without a container get here, and those are all installs, so in practice the
        kill-first rule bites through the strategies, which never fetch while the old container is
        still there. Kept in full so the rule reads as the reference states it.
        """
        if any(p.current is None and p.target.service_name == tgt.service_name for p in self.service_pairs):
            return True
        return not any(
            p.current is not None
            and _running(p.current)
            and strategy_of(p.target if p.target is not None else p.current) in _KILL_FIRST
            for p in self.service_pairs
        )

    def _start_dependencies_met(self, tgt: Service) -> bool:
        """§3.7: dependencies up, networks and volumes created, every image of the release present."""
        for dep in _depends_on(tgt):
            if any(p.target is not None and p.target.service_name == dep for p in self.service_pairs):
                return False  # the dependency itself is still changing
            dep_target = self.target_by_name.get(dep)
            if dep_target is not None and not _running(dep_target):
                continue  # it is meant to stay stopped: nothing to wait for
            if any(s.service_name == dep and s.status in _NEVER_STARTED for s in self.current.services):
                return False  # created, not started yet
        for pair in self.network_pairs:
            if pair.target is not None and (
                tgt.has_network_mode(pair.target.name) or tgt.has_network(pair.target.name)
            ):
                return False
        for pair in self.volume_pairs:
            if pair.target is not None and tgt.has_volume(pair.target.name):
                return False
        return self.images_ready

    def _uses_changing_component(self, svc: Service) -> bool:
        """The container sits on a network or volume that is about to be recreated or removed."""
        volumes = (p.current.name for p in self.volume_pairs if p.current is not None)
        networks = (p.current.name for p in self.network_pairs if p.current is not None)
        return any(svc.has_volume(name) for name in volumes) or any(
            svc.has_network(name) for name in networks
        )

    def _created_since_boot(self, svc: Service) -> bool:
        boot = _epoch(self.ctx.boot_time)
        created = _epoch(svc.created_at)
        return boot is not None and created is not None and created > boot

    # ------------------------------------------------------------------ networks / volumes
    def _component_steps(
        self,
        pairs: Sequence[_Pair],
        create: type[CreateVolume] | type[CreateNetwork],
        remove: type[RemoveVolume] | type[RemoveNetwork],
        used_by: Callable[[Service, str], bool],
    ) -> list[Step]:
        """Remove (once no container uses it) before create; a recreate takes two rounds."""
        steps: list[Step] = []
        for pair in pairs:
            if pair.current is not None:
                if not any(used_by(svc, pair.current.name) for svc in self.current.services):
                    steps.append(remove(pair.current))
            else:
                steps.append(create(pair.target))
        return steps


def _compare_components(current: Sequence[Any], target: Sequence[Any], *, removes: bool) -> list[_Pair]:
    """Updates (same name, other config), removals and duplicates (networks only), creations."""
    pairs: list[_Pair] = []
    updated: set[str] = set()
    for tgt in target:
        changed = next((c for c in current if c.name == tgt.name and not c.is_equal_config(tgt)), None)
        if changed is not None:
            pairs.append(_Pair(changed, tgt))
            updated.add(tgt.name)
    if removes:
        target_names = {t.name for t in target}
        removed: set[str] = set()
        seen: set[str] = set()
        for cur in current:
            gone = cur.name not in target_names
            duplicate = cur.name in seen and cur.name not in updated
            if (gone or duplicate) and cur.name not in removed:
                pairs.append(_Pair(current=cur))
                removed.add(cur.name)
            seen.add(cur.name)
    current_names = {c.name for c in current}
    pairs += [_Pair(target=tgt) for tgt in target if tgt.name not in current_names]
    return pairs


def _first_of_each_name(components: Iterable[Any]) -> list[Any]:
    seen: set[str] = set()
    out = []
    for comp in components:
        if comp.name not in seen:
            seen.add(comp.name)
            out.append(comp)
    return out


def _migrate_legacy(current: App, target: App) -> App:
    """A preloaded legacy container keeps its service id and labels, so it is not recreated for
    lacking them (§3.4 step 1)."""
    if len(current.services) != 1 or len(target.services) != 1:
        return target
    (cur,), (tgt,) = current.services, target.services
    legacy = _labels(cur).get(LEGACY_LABEL)
    if cur.service_name != tgt.service_name or not check_truthy(legacy):
        return target
    labels = {**_labels(tgt), LEGACY_LABEL: legacy}
    if SERVICE_ID_LABEL in _labels(cur):
        labels[SERVICE_ID_LABEL] = _labels(cur)[SERVICE_ID_LABEL]
    patched = replace(tgt, service_id=cur.service_id, config={**tgt.config, "labels": labels})
    return replace(target, services=(patched,))


# ------------------------------------------------------------------------- stage 4: deltas
def _throttle_delta_fetches(steps: list[Step], current: CurrentState, limit: int) -> list[Step]:
    """At most ``limit`` deltas at once; first installs (no image of the app yet) are never held."""
    fetches = sum(isinstance(step, Fetch) for step in steps)
    to_block = len(current.downloading) + fetches - limit
    if fetches == 0 or to_block <= 0:
        return steps
    apps_with_images = {img.app_id for img in current.available_images}
    kept: list[Step] = []
    for step in steps:
        if isinstance(step, Fetch) and to_block > 0 and step.image.app_id in apps_with_images:
            to_block -= 1
            continue
        kept.append(step)
    return kept


# ------------------------------------------------------------------------------- helpers
def strategy_of(svc: Service) -> str:
    """The service's update strategy; unknown values (``handover`` included) mean the default, with
    one warning per service and value (not one per planning round)."""
    value = _labels(svc).get(STRATEGY_LABEL)
    if value is None or value in STRATEGIES:
        return value or DEFAULT_STRATEGY
    key = (svc.app_id, svc.service_name, value)
    if key not in _WARNED_STRATEGIES:
        if len(_WARNED_STRATEGIES) > 1000:  # bounded: a device does not have that many services
            _WARNED_STRATEGIES.clear()
        _WARNED_STRATEGIES.add(key)
        log.warning(
            "Unknown update strategy %r for service %s of app %s: using %s",
            value, svc.service_name, svc.app_id, DEFAULT_STRATEGY,
        )
    return DEFAULT_STRATEGY


#: (app id, service, strategy) already warned about: the only state here, and only for logging.
_WARNED_STRATEGIES: set[tuple[int, str, str]] = set()


def image_for(svc: Service) -> Image:
    """The image record a target service needs (``imageFromService``)."""
    return Image(
        name=_image_name(svc),
        app_id=svc.app_id,
        app_uuid=svc.app_uuid or "",
        service_id=svc.service_id,
        service_name=svc.service_name,
        image_id=svc.image_id,
        release_id=svc.release_id,
        commit=svc.commit,
        docker_image_id=svc.docker_image_id,
    )


def _image_name(svc: Service) -> str:
    return svc.image_name or str(svc.config.get("image") or "")


def _labels(svc: Service) -> Mapping[str, str]:
    return svc.config.get("labels") or {}


def _running(svc: Service) -> bool:
    return bool(svc.config.get("running"))


def _lost_host_race(cur: Service, tgt: Service) -> bool:
    return (
        cur.status == "exited"
        and not _running(cur)
        and _running(tgt)
        and bool(_HOST_RACE_ERROR.search(cur.exit_error_message or ""))
    )


def _handover_timeout(svc: Service) -> int:
    return check_int(_labels(svc).get(HANDOVER_TIMEOUT_LABEL), positive=True) or DEFAULT_HANDOVER_TIMEOUT_MS


def _depends_on(svc: Service) -> list[str]:
    return list(svc.depends_on or [])


def _uses_volume(svc: Service, name: str) -> bool:
    return svc.has_volume(name)


def _uses_network(svc: Service, name: str) -> bool:
    return svc.has_network(name)


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


# The engine reports `Created` as RFC 3339 with up to nanosecond digits (trailing zeros trimmed), so
# the strings do not sort as text; they are compared as (seconds, nanoseconds).
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def _timestamp(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        seconds = aware.replace(microsecond=0).timestamp()
        return int(seconds), aware.microsecond * 1000
    if isinstance(value, int | float):
        return int(value), int(round((value - int(value)) * 1e9))
    match = _TIMESTAMP.match(str(value))
    if match is None:
        return None
    offset = match[3] if match[3] and match[3] != "Z" else "+00:00"
    offset = f"{offset[:3]}:{offset[-2:]}"  # +0100 too: Python 3.10's fromisoformat wants +01:00
    seconds = datetime.fromisoformat(match[1] + offset).timestamp()
    nanos = int((match[2] or "0")[:9].ljust(9, "0"))
    return int(seconds), nanos


def _created_key(svc: Service) -> tuple[int, int]:
    return _timestamp(svc.created_at) or (-(2**62), 0)


def _epoch(value: Any) -> float | None:
    stamp = _timestamp(value)
    return None if stamp is None else stamp[0] + stamp[1] / 1e9


# ------------------------------------------------------------------------- target building
def with_default_network(app: App) -> App:
    """Every target app has a ``default`` network; config-only when all services use the host's
    network, so it takes no address range (§3.4 step 4)."""
    if any(net.name == "default" for net in app.networks):
        return app
    all_host = all(svc.config.get("networkMode") == "host" for svc in app.services)
    default = Network.from_compose(app.app_id, app.app_uuid, "default", {"config_only": all_host})
    return replace(app, networks=(*app.networks, default))


def _installable_on_host(labels: Mapping[str, str]) -> bool:
    """Host-app services with special image classes or stores are not ours to install."""
    image_class = labels.get("io.balena.image.class")
    image_store = labels.get("io.balena.image.store")
    return image_class in (None, "service") and image_store in (None, "data")


def target_apps(
    device: TargetDevice,
    context_for: Callable[[TargetApp, TargetService], ServiceContext],
    rejected: Collection[str] = (),
) -> dict[str, App]:
    """Turn the parsed target into compose objects the planner compares with the engine.

    ``context_for`` supplies each service's :class:`ServiceContext` (device facts, and the image's
    inspect data when the image is present, which makes ``config.image`` the engine id). Supervisor
    services are skipped (§3.11); ``rejected`` names apps whose release failed its contracts.
    """
    apps: dict[str, App] = {}
    for uuid, app in device.apps.items():
        release = app.release
        services: list[Service] = []
        networks: list[Network] = []
        volumes: list[Volume] = []
        if release is not None:
            for name, svc in release.services.items():
                if is_supervisor_service(uuid, name):
                    continue
                if app.is_host and not _installable_on_host(svc.labels):
                    continue
                wire = {**svc.to_v3(), "serviceName": name}
                services.append(Service.from_target(wire, context_for(app, svc)))
            networks = [
                Network.from_compose(app.id, uuid, name, thaw(cfg)) for name, cfg in release.networks.items()
            ]
            volumes = [
                Volume.from_compose(app.id, uuid, name, thaw(cfg)) for name, cfg in release.volumes.items()
            ]
        built = App(
            app_id=app.id,
            app_uuid=uuid,
            commit=release.commit if release is not None else None,
            services=tuple(services),
            networks=tuple(networks),
            volumes=tuple(volumes),
            name=app.name,
            rejected=uuid in rejected,
            is_host=app.is_host,
        )
        apps[uuid] = with_default_network(built)
    return apps

"""Service actions the API asks for (spec §1.4, §1.5): restart or purge an app, stop/start/restart
one service, reboot or shut the device down, each honouring update locks (§4).

They run in the API's request thread, through the state engine's :class:`Executor` and under
:meth:`LockRegistry.with_lock`. That lock is the app's in-process lock plus its lock files, so
while an action works on an app the state engine cannot take that app's lock (its ``takeLock``
fails and it retries with backoff), and while the engine holds an app for an update an action
waits 10 s and then answers 423 ``Locks for app X are being held by another supervisor operation``.
``force`` (the request's) or ``SUPERVISOR_OVERRIDE_LOCK`` deletes the users' locks first.

Differences from the reference, all deliberate:

* Restart and purge do not go through an intermediate target: they kill the app's containers and
  start them again from the *target* services (the reference recreates the *current* ones; for a
  settled app those are the same), then ask for a normal apply, which converges anything left.
* Purge leaves the ``extra-firmware`` volume alone (the reference removes and recreates it): it
  belongs to the host OS, not to the app whose data is purged.
* Reboot/shutdown first asks logind whether it can (an error answer instead of a 202 for nothing),
  and when logind fails later the API and the state engine come back (supervisor/host/power.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from supervisor.state.locks import UpdatesLockedError
from supervisor.state.steps import CreateVolume, Kill, RemoveVolume, Restart, Start, Step, Stop

if TYPE_CHECKING:
    from supervisor.compose import Service
    from supervisor.runtime import Supervisor
    from supervisor.state.current import App
    from supervisor.state.reconcile import Engine

log = logging.getLogger(__name__)

__all__ = [
    "APP_NOT_FOUND",
    "SERVICE_NOT_FOUND",
    "TARGET_SERVICE_NOT_FOUND",
    "V2_SERVICE_ENDPOINT_ERROR",
    "ActionError",
    "AppNotCurrentError",
    "purge",
    "restart_app",
    "service_action",
    "shutdown",
]

APP_NOT_FOUND: Final = (
    "App not found: an app needs to be installed for this endpoint to work.\n"
    "\tIf you've recently moved this device from another app,\n"
    "\tplease push an app and wait for it to be installed first."
)
SERVICE_NOT_FOUND: Final = "Service not found, a container must exist for this endpoint to work"
TARGET_SERVICE_NOT_FOUND: Final = "Service does not exist in target release"
V2_SERVICE_ENDPOINT_ERROR: Final = (
    "serviceName or imageId parameters were not provided or the app is multi-container. "
    "Use the v2 service action endpoints."
)
HUP_BREADCRUMBS: Final = ("rollback-health-breadcrumb", "rollback-altboot-breadcrumb")


class ActionError(Exception):
    """The reference's ``BadRequestError``/``NotFoundError``: answered as plain text with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AppNotCurrentError(Exception):
    """Restart or purge of an app that is not installed: the reference's ``InternalInconsistencyError``
    (503 there); the API answers 404 with the same message (docs/API.md)."""


# ------------------------------------------------------------------------------ app actions
def restart_app(sup: Supervisor, app_id: int, *, force: bool = False) -> None:
    """``doRestart``: kill every container of the app, then start them again."""
    engine = sup.reconciler.require_engine()
    app = _current_app(sup, engine, app_id)
    if app is None:
        raise AppNotCurrentError(f"Application with ID {app_id} is not in the current state")
    names = _names(app.services)
    with sup.locks.with_lock([app_id], force=force or sup.lock_override(), services={app_id: names}):
        _run(engine, [Kill(svc) for svc in app.services])
        _start_all(engine, _target_services(sup, engine, app_id, names))
    sup.reconciler.trigger()


def purge(sup: Supervisor, app_id: int, *, force: bool = False) -> None:
    """``doPurge``: the app's containers and volumes go, then come back empty."""
    sup.system_message(f"Purging data for app {app_id}")
    try:
        engine = sup.reconciler.require_engine()
        app = _current_app(sup, engine, app_id)
        if app is None:
            raise AppNotCurrentError(f"Application with ID {app_id} is not in the current state")
        names = _names(app.services)
        target = _target_app(sup, engine, app_id)
        with sup.locks.with_lock([app_id], force=force or sup.lock_override(), services={app_id: names}):
            _run(engine, [Kill(svc) for svc in app.services])
            _run(engine, [RemoveVolume(vol) for vol in app.volumes])
            if target is not None:
                _run(engine, [CreateVolume(vol) for vol in target.volumes])
            _start_all(engine, _target_services(sup, engine, app_id, names))
    except Exception as err:
        sup.system_message(f"Error purging data: {err}")
        raise
    sup.reconciler.trigger()
    sup.system_message("Purged data")


def service_action(
    sup: Supervisor,
    action: str,
    app_id: int,
    *,
    service_name: str | None = None,
    image_id: int | None = None,
    force: bool = False,
    legacy: bool = False,
) -> str | None:
    """``executeServiceAction``: ``start``, ``stop`` or ``restart`` one service. ``legacy`` (the v1
    endpoints) answers 400 where v2 answers 404 and returns the app's first container id."""
    engine = sup.reconciler.require_engine()
    not_found = 400 if legacy else 404
    services = _app_services(sup, engine, app_id)
    if not services:
        raise ActionError(not_found, APP_NOT_FOUND)
    if len(services) == 1:
        current = services[0]
    elif service_name is None and image_id is None:
        raise ActionError(400, V2_SERVICE_ENDPOINT_ERROR)
    else:
        current = next(
            (s for s in services if (image_id is not None and s.image_id == image_id)
             or (service_name is not None and s.service_name == service_name)),
            None,
        )
        if current is None:
            raise ActionError(not_found, SERVICE_NOT_FOUND)
    target = next(
        (s for s in _target_services(sup, engine, app_id, None)
         if s.image_id == current.image_id or s.service_name == current.service_name),
        None,
    )
    if target is None:
        raise ActionError(404, TARGET_SERVICE_NOT_FOUND)

    if action == "start":
        _run(engine, [Start(target)])  # start never locks (§1.4)
    else:
        step: Step = Stop(current) if action == "stop" else Restart(current, target)
        with sup.locks.with_lock([app_id], force=force or sup.lock_override()):
            _run(engine, [step])
    if not legacy:
        return None
    after = _app_services(sup, engine, app_id)
    return after[0].container_id if after else None


# ------------------------------------------------------------------------------ the device
def shutdown(sup: Supervisor, *, reboot: bool, force: bool = False) -> None:
    """``deviceState.shutdown``: the HUP guard (only the request's ``force`` passes it), then the
    locks of every current app (``force`` or ``SUPERVISOR_OVERRIDE_LOCK``), then the power request
    (``PowerUnavailableError`` when the host cannot do it; the host call itself comes 1 s later)."""
    if not force and any((sup.paths.state_partition / name).exists() for name in HUP_BREADCRUMBS):
        raise UpdatesLockedError("Waiting for Host OS update to finish")
    with sup.locks.with_lock(_current_app_ids(sup), force=force or sup.lock_override()):
        sup.power.request(reboot)
        sup.system_message("Rebooting" if reboot else "Shutting down")


# ------------------------------------------------------------------------------ helpers
def _current_app(sup: Supervisor, engine: Engine, app_id: int) -> App | None:
    current = engine.reader.read(apps=sup.managed_apps)
    return next((app for app in current.apps.values() if app.app_id == app_id), None)


def _app_services(sup: Supervisor, engine: Engine, app_id: int) -> list[Service]:
    return [s for s in engine.reader.services(apps=sup.managed_apps) if s.app_id == app_id]


def _current_app_ids(sup: Supervisor) -> list[int]:
    """Apps with containers now; without an engine, every app with a lock directory."""
    engine = sup.reconciler.engine
    if engine is not None:
        try:
            return sorted({s.app_id for s in engine.reader.services(apps=sup.managed_apps)})
        except Exception:  # the engine went away: fall back to what the lock directory knows
            log.warning("Could not list the current apps; locking every app with a lock directory")
    return sorted(app_id for app_id in sup.locks.app_ids() if sup.reconciler.manages(app_id))


def _target_app(sup: Supervisor, engine: Engine, app_id: int) -> App | None:
    targets = sup.target_builder.build(engine.images)
    return next((app for app in targets.values() if app.app_id == app_id), None)


def _target_services(
    sup: Supervisor, engine: Engine, app_id: int, names: Sequence[str] | None
) -> list[Service]:
    """The target services of the app (only ``names``, when given), in target order."""
    app = _target_app(sup, engine, app_id)
    services = list(app.services) if app is not None else []
    return services if names is None else [s for s in services if s.service_name in names]


def _names(services: Iterable[Service]) -> list[str]:
    return list(dict.fromkeys(s.service_name for s in services))


def _start_all(engine: Engine, services: Sequence[Service]) -> None:
    """Start services so that each one's ``depends_on`` among them is started first."""
    pending = list(services)
    started: set[str] = set()
    while pending:
        names = {s.service_name for s in pending}
        ready = [s for s in pending if not (set(s.depends_on or ()) & names)] or pending[:1]
        _run(engine, [Start(s) for s in ready])
        started.update(s.service_name for s in ready)
        pending = [s for s in pending if s.service_name not in started]


def _run(engine: Engine, steps: Sequence[Step]) -> None:
    """Run the steps as one batch; the first failure is raised (after every step has run)."""
    if not steps:
        return
    for result in engine.executor.execute_batch(steps):
        if result.error is not None:
            raise result.error

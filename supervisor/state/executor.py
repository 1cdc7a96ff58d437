"""Perform the planner's steps on the engine (reference §3.3): the I/O edge of the state engine.

``Executor.execute(step)`` does one step synchronously and raises :class:`StepError` (naming the
step and its service, image, network, volume or app) when it fails; ``execute_batch`` runs a
planner batch concurrently on a small thread pool and reports every step's outcome, so one
failing service never stops the others. The apply loop re-reads the engine after each batch, so a
step only has to leave the engine in a state the next plan can read.

Deliberate differences from the reference:

* ``kill``, ``stop`` and ``removeVolume`` raise on an engine error instead of only logging it, so
  the apply loop backs off instead of re-planning the same failing step every 200 ms.
* ``kill`` waits for the container to be gone (the reference returns early); the batch is awaited
  as a whole anyway, and the next plan then sees the engine as it is.
* ``handover`` really waits for the handover file or the timeout (§3.6 quirk not kept).
* A ``start`` whose extra network cannot be connected removes the half-made container, so the
  next attempt starts clean rather than finding a container that never matches its target.
* ``fetch`` raises when the download fails (the reference completes the step with success=false).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from supervisor.compose import ComposeError, Network, Service, Volume
from supervisor.compose.endpoints import SERVICE_MODE_RE, connect_kwargs
from supervisor.compose.naming import BASE_LOCK_DIR, lock_dir_for
from supervisor.compose.validation import check_truthy
from supervisor.state.engine import (
    DEFAULT_SUPERVISOR_NETWORK,
    EXTRA_FIRMWARE_VOLUME,
    SupervisorNetwork,
    is_supervised,
    named_as_service,
)

# Update locks live in supervisor.state.locks; re-exported here for the executor's callers.
from supervisor.state.locks import LOCK_FILES, SUPERVISOR_LOCK_UID, LockRegistry, UpdatesLockedError
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
)

if TYPE_CHECKING:
    import docker
    import requests

    from supervisor.db import Database
    from supervisor.state.images import ImageManager

log = logging.getLogger(__name__)

__all__ = [
    "LOCK_FILES",
    "SUPERVISOR_LOCK_UID",
    "Executor",
    "LockRegistry",
    "ResourceRecreationAttemptError",
    "StepError",
    "StepResult",
    "UpdatesLockedError",
]

HANDOVER_FILES: Final = ("handover-complete", "resin-kill-me")
REBOOT_BREADCRUMB: Final = "reboot-after-apply"
REQUIRES_REBOOT_LABEL: Final = "io.balena.update.requires-reboot"
DEFAULT_STOP_TIMEOUT_S: Final = 10

#: (system log message, details) for the device's system log (§8.5); details never hold secrets.
SystemLog = Callable[[str, Mapping[str, Any]], None]


# ------------------------------------------------------------------------------- errors
class ResourceRecreationAttemptError(Exception):
    """A network or volume of that name exists with another configuration (§3.7)."""

    def __init__(self, resource: str, name: str) -> None:
        super().__init__(
            f"Trying to create {resource} with name: {name}, but a {resource} with that name "
            "and a different configuration already exists"
        )
        self.resource = resource
        self.name = name


class StepError(Exception):
    """A step failed. ``subject`` names what it acted on; the cause is chained (``__cause__``)."""

    def __init__(self, step: Step, reason: str) -> None:
        self.step = step
        self.action = step.action
        self.subject = _subject(step)
        self.reason = reason
        where = f" of {self.subject}" if self.subject else ""
        super().__init__(f"Step {step.action}{where} failed: {reason}")

    @property
    def locked(self) -> bool:
        """The step failed because of an update lock (the apply loop treats these apart)."""
        return isinstance(self.__cause__, UpdatesLockedError)


@dataclass(frozen=True)
class StepResult:
    """The outcome of one step of a batch."""

    step: Step
    error: StepError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _subject(step: Step) -> str:
    if isinstance(step, Fetch):
        return f"image '{step.image.name}' (service '{step.service_name}')"
    if isinstance(step, SaveImage | RemoveImage):
        return f"image '{step.image.name}' (service '{step.image.service_name}')"
    if isinstance(step, TakeLock | ReleaseLock | UpdateCommit):
        return f"app {step.app_id}"
    if isinstance(step, RequireReboot):
        return f"service '{step.service_name}'"
    subject = getattr(step, "current", None) or getattr(step, "target", None)
    if isinstance(subject, Service):
        return f"service '{subject.service_name}'"
    if isinstance(subject, Network):
        return f"network '{subject.docker_name}'"
    if isinstance(subject, Volume):
        return f"volume '{subject.docker_name}'"
    return ""


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except IsADirectoryError:
        path.rmdir()
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------------------ helpers
_CREATED = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def _epoch(stamp: str | None) -> float | None:
    """An engine timestamp (RFC 3339, nanoseconds) as epoch seconds."""
    match = _CREATED.match(stamp or "")
    if match is None:
        return None
    zone = match[3] if match[3] and match[3] != "Z" else "+00:00"
    zone = f"{zone[:3]}:{zone[-2:]}"  # +0100 too: Python 3.10's fromisoformat wants +01:00
    return datetime.fromisoformat(match[1] + zone).timestamp() + float(f"0.{match[2] or 0}")


def _explain(err: BaseException) -> str:
    return str(getattr(err, "explanation", None) or err)


# ---------------------------------------------------------------------------- executor
class Executor:
    """Turns steps into engine calls.

    ``lock_root`` prefixes the host's ``/tmp/balena-supervisor`` (lock and handover files, the
    reboot breadcrumb), exactly as :class:`~supervisor.compose.ServiceContext` ``lock_root`` does
    for the binds. ``clock``/``sleep``/``handover_poll_s`` drive the handover wait (tests pass
    fast ones). ``boot_time`` (epoch seconds) decides whether a requires-reboot service may start.
    ``on_extra_firmware`` records the extra-firmware volume in config.json.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        db: Database,
        images: ImageManager,
        *,
        locks: LockRegistry | None = None,
        lock_root: str = "",
        device_name: str | Callable[[], str] = "",
        device_type: str = "",
        supervisor_network: SupervisorNetwork | None = None,
        on_extra_firmware: Callable[[str], None] | None = None,
        boot_time: float | None = None,
        system_log: SystemLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        handover_poll_s: float = 0.1,
        max_workers: int = 4,
    ) -> None:
        self.client = client
        self.api = client.api
        self.db = db
        self.images = images
        self.lock_root = lock_root
        self.locks = locks if locks is not None else LockRegistry(lock_root)
        self.device_name = device_name
        self.device_type = device_type
        self.supervisor_network = supervisor_network or DEFAULT_SUPERVISOR_NETWORK
        self.on_extra_firmware = on_extra_firmware
        self.boot_time = boot_time
        self.system_log = system_log
        self.clock = clock
        self.sleep = sleep
        self.handover_poll_s = handover_poll_s
        self.max_workers = max(1, max_workers)
        self._volatile: dict[str, str] = {}
        self._volatile_lock = threading.Lock()
        #: Set by a stop: downloads end early (failed), so the batch they are in ends soon.
        self.abort = threading.Event()
        #: Called after every step, done or failed: readers that cache engine state drop it.
        self.on_change: Callable[[], None] | None = None
        #: Performs the ``reboot`` step: the device's reboot, under update locks (set by the runtime).
        self.reboot: Callable[[], None] | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            Noop: lambda _step: None,
            Fetch: lambda s: self.images.fetch(s.image, delta_source=s.delta_source, abort=self.abort),
            Start: lambda s: self._start(s.target),
            Stop: lambda s: self._kill(s.current, remove=False),
            Kill: lambda s: self._kill(s.current),
            Remove: lambda s: self._remove_dead(s.current),
            Restart: self._restart,
            UpdateMetadata: self._update_metadata,
            Handover: self._handover,
            UpdateCommit: lambda s: self.update_commit(s.app_id, s.commit),
            SaveImage: lambda s: self.images.save_existing(s.image),
            RemoveImage: lambda s: self.images.remove(s.image, keep_in_engine=s.keep_in_engine),
            Cleanup: lambda _step: self.images.cleanup(),
            CreateNetwork: lambda s: self._create_network(s.target),
            RemoveNetwork: lambda s: self._remove_network(s.current),
            CreateVolume: lambda s: self._create_volume(s.target),
            RemoveVolume: lambda s: self._remove_volume(s.current),
            EnsureSupervisorNetwork: lambda _step: self._ensure_supervisor_network(),
            EnsureExtraFirmwareVolume: lambda _step: self._ensure_extra_firmware(),
            TakeLock: lambda s: self.locks.take(s.app_id, s.services, force=s.force),
            ReleaseLock: lambda s: self.locks.release(s.app_id),
            RequireReboot: self._require_reboot,
            Reboot: lambda _step: self._reboot(),
        }

    # ------------------------------------------------------------------ entry points
    def add_handler(self, kind: type, handler: Callable[[Any], None]) -> None:
        """Perform steps of ``kind`` with ``handler`` (the device config's steps, §5.4)."""
        self._handlers[kind] = handler

    def execute(self, step: Step) -> None:
        """Perform one step; raises :class:`StepError` when it fails."""
        handler = self._handlers.get(type(step))
        if handler is None:
            raise StepError(step, f"unknown step kind {type(step).__name__}")
        try:
            handler(step)
        except StepError:
            raise
        except Exception as err:
            error = StepError(step, _explain(err))
            log.warning("%s", error)
            raise error from err
        finally:
            if self.on_change is not None:
                self.on_change()

    def execute_batch(self, steps: Sequence[Step]) -> list[StepResult]:
        """Run a batch concurrently; one result per step, in order."""
        if len(steps) <= 1:
            return [self._run(step) for step in steps]
        workers = min(self.max_workers, len(steps))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step") as pool:
            return list(pool.map(self._run, steps))

    def _run(self, step: Step) -> StepResult:
        started = time.monotonic()
        try:
            self.execute(step)
        except StepError as err:
            return StepResult(step, err, time.monotonic() - started)
        return StepResult(step, None, time.monotonic() - started)

    def volatile_status(self) -> dict[str, str]:
        """container id -> ``Starting``/``Stopping`` while a step works on it (§3.10)."""
        with self._volatile_lock:
            return dict(self._volatile)

    # ------------------------------------------------------------------ containers
    def _start(self, target: Service) -> str:
        """Create the target's container unless it exists, then start it (§3.10 ``start``)."""
        ids = self._container_ids(target) if SERVICE_MODE_RE.search(target.config["networkMode"]) else {}
        name = target.container_name()
        container_id, created_at = self._matching_container(target, name, ids)
        if container_id is None:
            container_id = self._create(target, name, ids)
            created_at = None  # just now, so after boot
        if not target.config.get("running", True):
            return container_id
        if check_truthy(target.config["labels"].get(REQUIRES_REBOOT_LABEL)):
            created = _epoch(created_at) if created_at else time.time()
            if self.boot_time is not None and created is not None and created > self.boot_time:
                log.info("Service %s waits for a reboot before it starts", target.service_name)
                return container_id
        self._event("Starting service", target)
        with self._status(container_id, "Starting"):
            response = self._post(f"/containers/{container_id}/start")
            if response.status_code == 304:
                return container_id  # already running
            if response.status_code >= 400:
                message = _response_message(response)
                if response.status_code == 500 and message.endswith("exec format error"):
                    message = (
                        f"Application architecture incompatible with {self.device_type}: exec format error"
                    )
                self._event("Failed to start service", target, error=message)
                raise RuntimeError(message)
        self._event("Started service", target)
        return container_id

    def _matching_container(
        self, target: Service, name: str, ids: Mapping[str, str]
    ) -> tuple[str | None, str | None]:
        """The existing container for this exact target (by name), if its config matches."""
        import docker.errors

        try:
            inspect = self.api.inspect_container(name)
        except docker.errors.NotFound:
            return None, None
        current = Service.from_container(inspect)
        if not current.is_equal_config(target, ids):
            raise RuntimeError(f"a container named {name} exists with a different configuration")
        return inspect["Id"], inspect.get("Created")

    def _create(self, target: Service, name: str, ids: Mapping[str, str]) -> str:
        import docker.errors

        device_name = self.device_name() if callable(self.device_name) else self.device_name
        body, extra_networks = target.create_body(device_name=device_name, container_ids=ids)
        self._event("Installing service", target)
        container_id = self.api.create_container_from_config(body, name=name)["Id"]
        try:
            for network, endpoint in extra_networks:
                self.api.connect_container_to_network(container_id, network, **connect_kwargs(endpoint))
        except docker.errors.APIError:
            self.api.remove_container(container_id, force=True, v=True)
            raise
        self._event("Installed service", target)
        return container_id

    def _container_ids(self, target: Service) -> dict[str, str]:
        """service name -> container id within the target's app (for ``service:<x>`` modes)."""
        entries = self.api.containers(all=True, filters={"label": f"io.balena.app-id={target.app_id}"})
        return {
            entry["Labels"]["io.balena.service-name"]: entry["Id"]
            for entry in sorted(entries, key=lambda e: e.get("Created", 0))
            if "io.balena.service-name" in (entry.get("Labels") or {})
            and is_supervised(entry.get("Labels"))
            and named_as_service(entry)  # a look-alike under another name is not the service
        }

    def _kill(self, current: Service, *, remove: bool = True) -> None:
        """Stop the container, then remove it with its anonymous volumes (§3.10 ``kill``)."""
        import docker.errors

        container_id = _container_id(current)
        grace = current.config.get("stopGracePeriod")
        timeout = grace if isinstance(grace, int) and grace >= 0 else DEFAULT_STOP_TIMEOUT_S
        self._event("Killing service", current)
        with self._status(container_id, "Stopping"):
            http_timeout = (self.api.timeout or 60) + timeout
            response = self._post(f"/containers/{container_id}/stop", {"t": timeout}, http_timeout)
            if response.status_code == 404:
                self._event("Service is already stopped and the container removed", current)
                return
            if response.status_code == 304:
                self._event("Service is already stopped, removing container", current)
            elif response.status_code >= 400:
                message = _response_message(response)
                self._event("Failed to kill service", current, error=message)
                raise RuntimeError(message)
            if remove:
                with contextlib.suppress(docker.errors.NotFound):
                    self.api.remove_container(container_id, v=True)
        self._event("Killed service", current)

    def _remove_dead(self, current: Service) -> None:
        import docker.errors

        self._event("Removing dead container", current)
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(_container_id(current), v=True)

    def _restart(self, step: Restart) -> None:
        self._kill(step.current)
        self._start(step.target)

    def _update_metadata(self, step: UpdateMetadata) -> None:
        """Rename for a release change with an equal config; a vanished container is removed."""
        import docker.errors

        container_id = _container_id(step.current)
        try:
            self.api.rename(container_id, step.target.container_name())
        except docker.errors.NotFound:
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_container(container_id, force=True, v=True)

    def _handover(self, step: Handover) -> None:
        """Start the new container beside the old, wait for its signal (or the timeout), then kill
        the old (§3.6)."""
        import docker.errors

        current, target = step.current, step.target
        container_id = _container_id(current)
        try:
            inspect = self.api.inspect_container(container_id)
        except docker.errors.NotFound:
            inspect = None
        if inspect is not None:
            # The old container must not come back by itself once killed, and frees its name.
            self.api.update_container(container_id, restart_policy={"Name": "no", "MaximumRetryCount": 0})
            old_name = f"old_{current.container_name()}"
            if str(inspect.get("Name") or "").lstrip("/") != old_name:
                self.api.rename(container_id, old_name)
        self._start(target)
        if inspect is not None:
            self._wait_for_handover(target, step.timeout_ms)
            self._kill(current)

    def _wait_for_handover(self, target: Service, timeout_ms: int) -> bool:
        """Poll for the handover file in the service's lock directory; True when it appeared."""
        directory = Path(lock_dir_for(target.app_id, target.service_name, self.lock_root))
        deadline = self.clock() + timeout_ms / 1000
        while True:
            for name in HANDOVER_FILES:
                path = directory / name
                if path.exists():
                    _unlink(path)
                    return True
            if self.clock() >= deadline:
                log.info("Handover timeout has passed for %s", target.service_name)
                return False
            self.sleep(self.handover_poll_s)

    # ------------------------------------------------------------------ records
    def update_commit(self, app_id: int, commit: str) -> None:
        """Upsert ``currentCommit`` for the app."""
        with self.db.transaction() as conn:
            conn.execute(
                'INSERT INTO currentCommit (appId, "commit") VALUES (?, ?) '
                'ON CONFLICT(appId) DO UPDATE SET "commit" = excluded."commit"',
                (app_id, commit),
            )

    def _require_reboot(self, step: RequireReboot) -> None:
        """Touch the reboot breadcrumb (§5.6): the service may only start after a reboot."""
        path = Path(f"{self.lock_root.rstrip('/')}{os.path.dirname(BASE_LOCK_DIR)}") / REBOOT_BREADCRUMB
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        details = json.dumps({"service": step.service_name})
        self._event(f"Reboot has been scheduled to apply changes: {details}", None)

    def _reboot(self) -> None:
        if self.reboot is None:
            raise RuntimeError("no way to reboot this device is configured")
        self.reboot()

    # ------------------------------------------------------------------ networks, volumes
    def _networks_named(self, name: str) -> list[dict[str, Any]]:
        """Engine networks with exactly this name (the name filter matches substrings)."""
        return [n for n in self.api.networks(names=[name]) if n.get("Name") == name]

    def _create_network(self, target: Network) -> None:
        for entry in self._networks_named(target.docker_name):
            try:
                same = Network.from_docker(entry).is_equal_config(target)
            except ComposeError:
                same = False
            if same:
                return
            raise ResourceRecreationAttemptError("network", target.docker_name)
        self._event("Creating network", None, network=target.name)
        self._post_json("/networks/create", target.create_body())

    def _remove_network(self, current: Network) -> None:
        """Remove every engine network of this name and app, duplicates included (§3.7)."""
        import docker.errors

        self._event("Removing network", None, network=current.name)
        for entry in self._networks_named(current.docker_name):
            app_label = (entry.get("Labels") or {}).get("io.balena.app-id")
            if app_label is not None and app_label != str(current.app_id):
                continue
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_network(entry["Id"])

    def _create_volume(self, target: Volume) -> None:
        import docker.errors

        try:
            entry = self.api.inspect_volume(target.docker_name)
        except docker.errors.NotFound:
            entry = None
        if entry is not None:
            if Volume.from_docker(entry).is_equal_config(target):
                return
            raise ResourceRecreationAttemptError("volume", target.docker_name)
        self._event("Creating volume", None, volume=target.name)
        body = target.create_body()
        self.api.create_volume(
            body["Name"], driver=body["Driver"], driver_opts=body["DriverOpts"], labels=body["Labels"]
        )

    def _remove_volume(self, current: Volume) -> None:
        import docker.errors

        self._event("Removing volume", None, volume=current.name)
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_volume(current.docker_name)

    def _ensure_supervisor_network(self) -> None:
        """Replace a misconfigured supervisor network, create a missing one (§3.2)."""
        spec = self.supervisor_network
        for entry in self._networks_named(spec.name):
            if spec.matches(entry):
                return
            log.info("Removing misconfigured network %s", spec.name)
            self.api.remove_network(entry["Id"])
        self._post_json("/networks/create", spec.create_body())

    def _ensure_extra_firmware(self) -> None:
        import docker.errors

        try:
            self.api.inspect_volume(EXTRA_FIRMWARE_VOLUME)
        except docker.errors.NotFound:
            self.api.create_volume(EXTRA_FIRMWARE_VOLUME, driver="local")
        if self.on_extra_firmware is not None:
            self.on_extra_firmware(EXTRA_FIRMWARE_VOLUME)

    # ------------------------------------------------------------------ plumbing
    def _post(
        self, path: str, params: Mapping[str, Any] | None = None, timeout: float | None = None
    ) -> requests.Response:
        """A raw POST whose status the caller reads (the SDK hides 304 "already done")."""
        kwargs: dict[str, Any] = {"params": dict(params or {})}
        if timeout is not None:
            kwargs["timeout"] = timeout
        return self.api._post(self.api._url(path), **kwargs)

    def _post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a raw Engine API body (network create: the SDK cannot send every field)."""
        response = self.api._post_json(self.api._url(path), data=dict(body))
        return self.api._result(response, json=True)

    @contextlib.contextmanager
    def _status(self, container_id: str, status: str) -> Iterator[None]:
        """Report ``status`` for the container while the block runs."""
        with self._volatile_lock:
            self._volatile[container_id] = status
        try:
            yield
        finally:
            with self._volatile_lock:
                self._volatile.pop(container_id, None)

    def _image_name(self, image: Any) -> Any:
        """The name an engine image id was fetched as (a current service's container names its image
        by id), for the system messages; the id when no record has it."""
        if not _engine_image_id(image):
            return image
        try:
            return next((img.name for img in self.images.records() if img.docker_image_id == image), image)
        except Exception:  # the database is busy: the id is still a name
            return image

    def _event(self, message: str, service: Service | None, **details: Any) -> None:
        fields = dict(details)
        if service is not None:
            fields["service"] = service.service_name
            fields.setdefault("image", service.image_name or self._image_name(service.config.get("image")))
        log.info("%s %s", message, fields)
        if self.system_log is not None:
            try:
                self.system_log(message, fields)
            except Exception:
                log.exception("System log listener failed")


def _engine_image_id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("sha256:")


def _container_id(service: Service) -> str:
    if not service.container_id:
        raise ValueError(f"service {service.service_name} has no container")
    return service.container_id


def _response_message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message") or response.text)
    except ValueError:
        return response.text or f"HTTP {response.status_code}"

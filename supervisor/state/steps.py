"""The steps the planner emits and the executors perform (reference §3.3).

One frozen dataclass per step kind. Each carries everything its executor needs, so an executor never
has to look anything up to know *what* to do, and ``action`` is the reference's name for the step
(``"fetch"``, ``"updateMetadata"``, ...) so logs and the API speak the reference's language.
Services, networks and volumes are the compose objects (``supervisor.compose``); images are the
plain :class:`~supervisor.state.current.Image` records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from supervisor.state.current import Image

__all__ = [
    "DEFAULT_HANDOVER_TIMEOUT_MS",
    "Cleanup",
    "CreateNetwork",
    "CreateVolume",
    "EnsureExtraFirmwareVolume",
    "EnsureSupervisorNetwork",
    "Fetch",
    "Handover",
    "Kill",
    "Noop",
    "Reboot",
    "ReleaseLock",
    "Remove",
    "RemoveImage",
    "RemoveNetwork",
    "RemoveVolume",
    "RequireReboot",
    "Restart",
    "SaveImage",
    "Start",
    "Step",
    "Stop",
    "TakeLock",
    "UpdateCommit",
    "UpdateMetadata",
    "describe",
]

#: `io.balena.update.handover-timeout` when the label is missing or not a positive integer (§3.6).
DEFAULT_HANDOVER_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Noop:
    """Nothing to do now, but keep the apply loop alive (a download or a stop is in flight)."""

    action: ClassVar[str] = "noop"


@dataclass(frozen=True)
class Fetch:
    """Download ``image``. ``delta_source`` is the image to diff against (None: a full pull);
    the planner picks it so the images it protects from removal are the ones actually used."""

    image: Image
    service_name: str
    delta_source: str | None = None
    action: ClassVar[str] = "fetch"


@dataclass(frozen=True)
class Start:
    """Create the target's container unless a matching one exists, then start it."""

    target: Any
    action: ClassVar[str] = "start"


@dataclass(frozen=True)
class Stop:
    """Stop the container and keep it (target ``running: false``)."""

    current: Any
    action: ClassVar[str] = "stop"


@dataclass(frozen=True)
class Kill:
    """Stop and remove the container, with its anonymous volumes."""

    current: Any
    action: ClassVar[str] = "kill"


@dataclass(frozen=True)
class Remove:
    """Remove a ``Dead`` container (it cannot be stopped)."""

    current: Any
    action: ClassVar[str] = "remove"


@dataclass(frozen=True)
class Restart:
    """Kill (and wait), then start the target. Only the API asks for it; the planner never does."""

    current: Any
    target: Any
    action: ClassVar[str] = "restart"


@dataclass(frozen=True)
class UpdateMetadata:
    """A release change with an identical config: rename the container instead of recreating it."""

    current: Any
    target: Any
    action: ClassVar[str] = "updateMetadata"


@dataclass(frozen=True)
class Handover:
    """Start the target next to the current container, wait for the handover signal, then kill the
    current one (§3.6). The wait is really performed (the reference's wait returns at once)."""

    current: Any
    target: Any
    timeout_ms: int = DEFAULT_HANDOVER_TIMEOUT_MS
    action: ClassVar[str] = "handover"


@dataclass(frozen=True)
class UpdateCommit:
    """Store ``commit`` as the app's current release once the app has settled."""

    app_id: int
    commit: str
    action: ClassVar[str] = "updateCommit"


@dataclass(frozen=True)
class SaveImage:
    """Record an engine image in the image table with the target's metadata."""

    image: Image
    action: ClassVar[str] = "saveImage"


@dataclass(frozen=True)
class RemoveImage:
    """Forget an unused image record. With ``keep_in_engine`` only the record goes: another
    record that is still in use names the same engine image, which must survive."""

    image: Image
    keep_in_engine: bool = False
    action: ClassVar[str] = "removeImage"


@dataclass(frozen=True)
class Cleanup:
    """Remove dangling images and old supervisor images (§9.6)."""

    action: ClassVar[str] = "cleanup"


@dataclass(frozen=True)
class CreateNetwork:
    target: Any
    action: ClassVar[str] = "createNetwork"


@dataclass(frozen=True)
class RemoveNetwork:
    """Remove the network, with every engine duplicate of the same name and app."""

    current: Any
    action: ClassVar[str] = "removeNetwork"


@dataclass(frozen=True)
class CreateVolume:
    target: Any
    action: ClassVar[str] = "createVolume"


@dataclass(frozen=True)
class RemoveVolume:
    current: Any
    action: ClassVar[str] = "removeVolume"


@dataclass(frozen=True)
class EnsureSupervisorNetwork:
    """(Re)create ``supervisor0`` with the fixed bridge name, subnet and gateway (§3.2)."""

    action: ClassVar[str] = "ensureSupervisorNetwork"


@dataclass(frozen=True)
class EnsureExtraFirmwareVolume:
    """Create the global ``extra-firmware`` volume and point config.json at it (§13.5)."""

    action: ClassVar[str] = "ensureExtraFirmwareVolume"


@dataclass(frozen=True)
class TakeLock:
    """Take the update locks of ``services`` and keep them across loop iterations (§4.2)."""

    app_id: int
    services: tuple[str, ...] = field(default=())
    force: bool = False
    action: ClassVar[str] = "takeLock"


@dataclass(frozen=True)
class ReleaseLock:
    """Release the app's update locks and delete leftover supervisor lock files (§4.2)."""

    app_id: int
    action: ClassVar[str] = "releaseLock"


@dataclass(frozen=True)
class RequireReboot:
    """Write the reboot breadcrumb: the service asks for a reboot before it may start (§5.6)."""

    service_name: str
    action: ClassVar[str] = "requireReboot"


@dataclass(frozen=True)
class Reboot:
    """Reboot the device: the apply has settled and a reboot is required (§3.1 step 5, §5.6)."""

    action: ClassVar[str] = "reboot"


Step = (
    Noop
    | Fetch
    | Start
    | Stop
    | Kill
    | Remove
    | Restart
    | UpdateMetadata
    | Handover
    | UpdateCommit
    | SaveImage
    | RemoveImage
    | Cleanup
    | CreateNetwork
    | RemoveNetwork
    | CreateVolume
    | RemoveVolume
    | EnsureSupervisorNetwork
    | EnsureExtraFirmwareVolume
    | TakeLock
    | ReleaseLock
    | RequireReboot
    | Reboot
)


def _name_of(obj: Any) -> str:
    for attr in ("service_name", "name"):
        value = getattr(obj, attr, None)
        if isinstance(value, str):
            return value
    return repr(obj)


def describe(step: Step) -> str:
    """A short human-readable form for logs: ``kill(main)``, ``fetch(registry/app:tag)``."""
    if isinstance(step, Fetch | SaveImage | RemoveImage):
        return f"{step.action}({step.image.name})"
    if isinstance(step, TakeLock):
        return f"{step.action}({step.app_id}: {', '.join(step.services)})"
    if isinstance(step, ReleaseLock):
        return f"{step.action}({step.app_id})"
    if isinstance(step, UpdateCommit):
        return f"{step.action}({step.app_id}: {step.commit})"
    if isinstance(step, RequireReboot):
        return f"{step.action}({step.service_name})"
    subject = getattr(step, "current", None) or getattr(step, "target", None)
    return step.action if subject is None else f"{step.action}({_name_of(subject)})"

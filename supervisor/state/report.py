"""What the device reports about its apps: the shapes of ``/v2/state/status``, ``/v2/applications/state``,
the legacy state behind ``/v1/device`` and ``/v2/applications/:appId/state`` (spec §1.4, §2.3, §2.4).

Pure functions over one :class:`Observation` (containers read back from the engine, the image
manager's images, the stored current commits), so every shape is tested without an engine.
``allows(app_id)`` is the request's scope check (spec §1.2); these endpoints filter, never refuse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from supervisor.compose import Service
from supervisor.state.errors import Key, ServiceError
from supervisor.state.target import TargetDevice, is_supervisor_service

__all__ = [
    "Observation",
    "app_states",
    "applications_state",
    "container_ids",
    "created_at_iso",
    "device_images",
    "service_error",
    "legacy_apps",
    "legacy_app_state",
    "state_status",
    "update_status",
    "v1_device",
]

Allows = Callable[[int], bool]


def _everyone(_app_id: int) -> bool:
    return True


@dataclass(frozen=True)
class Observation:
    """One consistent look at the device.

    ``services``: supervised containers in engine listing order (newest first), statuses the
    executor is changing included. ``images``: :meth:`ImageManager.status` entries of images that
    exist or are being fetched or deleted. ``commits``: appId -> stored current release.
    """

    services: Sequence[Service] = ()
    images: Sequence[Mapping[str, Any]] = ()
    commits: Mapping[int, str] = field(default_factory=dict)
    #: The state engine's per-service errors (state/errors.py): (appId, service name or None) -> error.
    errors: Mapping[Key, ServiceError] = field(default_factory=dict)


# ------------------------------------------------------------------------------- helpers
_CREATED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def created_at_iso(stamp: str | None) -> str | None:
    """An engine timestamp as JavaScript's ``Date.toJSON()`` writes it: UTC, milliseconds, ``Z``."""
    match = _CREATED.match(stamp or "")
    if match is None:
        return None
    zone = match[3] if match[3] and match[3] != "Z" else "+00:00"
    zone = f"{zone[:3]}:{zone[-2:]}"  # +0100 too: Python 3.10's fromisoformat wants +01:00
    when = datetime.fromisoformat(match[1] + zone).astimezone(timezone.utc)
    millis = int((match[2] or "0")[:3].ljust(3, "0"))
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}Z"


def _epoch_iso(epoch: float) -> str:
    stamp = datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{int(epoch % 1 * 1000):03d}Z"


def service_error(obs: Observation, app_id: int, service_name: str,
                  container: Service | None = None) -> dict[str, Any] | None:
    """The ``error`` field of a service (issue #11): ``{message, since, retries}``, or None.

    A container the engine keeps restarting says so first (``retries``: the engine's restart count,
    ``since``: its last exit); else the state engine's last failed step for the service, or for its
    whole app (a refused update lock). ``since`` is ISO 8601 UTC; ``retries`` counts failures in a row.
    """
    if container is not None and container.status == "Restarting":
        reason = f"exited with code {container.exit_code}" if container.exit_code is not None else "exited"
        if container.exit_error_message:
            reason += f": {container.exit_error_message}"
        return {"message": f"The container keeps restarting: {reason}",
                "since": created_at_iso(container.finished_at), "retries": container.restart_count}
    error = obs.errors.get((app_id, service_name)) or obs.errors.get((app_id, None))
    if error is None:
        return None
    return {"message": error.message, "since": _epoch_iso(error.since), "retries": error.retries}


def _with_error(entry: dict[str, Any], error: dict[str, Any] | None) -> dict[str, Any]:
    if error is not None:
        entry["error"] = error
    return entry


def _failed_fetches(obs: Observation) -> list[dict[str, Any]]:
    """Images whose fetch failed: no image row says them (the fetch is over), so they would vanish
    from ``images`` while the service waits for them."""
    listed = {(img["appId"], img["serviceName"], img["name"]) for img in obs.images}
    rows = []
    for error in obs.errors.values():
        image = error.image
        if image is None or (image.app_id, image.service_name, image.name) in listed:
            continue
        rows.append({"name": image.name, "appId": image.app_id, "appUuid": image.app_uuid,
                     "serviceName": image.service_name, "imageId": image.image_id,
                     "releaseId": image.release_id, "commit": image.commit, "dockerImageId": None,
                     "status": "Downloading", "downloadProgress": None})
    return rows


def _progress(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


# ------------------------------------------------------------------ what is on the device
def device_images(images: Iterable[Mapping[str, Any]], services: Iterable[Service],
                  target_commits: Mapping[int, str | None]) -> list[dict[str, Any]]:
    """The image entries to report (issue #11): each image of a service once, and only for apps the
    device has (in the target, or with containers).

    The ``image`` table keeps a row per service and release: an image kept across four updates has
    four rows, and local mode keeps the rows of a removed app's images. One entry per (app, service,
    engine image) remains: the one of the target release, else of the running container's release,
    else the newest row. ``target_commits``: app id -> the target release's commit (None: no release).
    """
    services = list(services)
    apps = set(target_commits) | {svc.app_id for svc in services}
    running = {(svc.app_id, svc.service_name): svc.commit for svc in services}
    chosen: dict[tuple[Any, ...], dict[str, Any]] = {}
    for img in images:
        app_id = img["appId"]
        if app_id not in apps:
            continue
        key = (app_id, img["serviceName"], img.get("dockerImageId") or img["name"])
        best = chosen.get(key)
        if best is None or _rank(img, target_commits, running) >= _rank(best, target_commits, running):
            chosen[key] = dict(img)
    return list(chosen.values())


def _rank(img: Mapping[str, Any], target_commits: Mapping[int, str | None],
          running: Mapping[tuple[int, str], str | None]) -> int:
    """2: the target release's row; 1: the running container's; 0: another release's."""
    commit = img.get("commit")
    if commit is not None and commit == target_commits.get(img["appId"]):
        return 2
    return 1 if commit is not None and commit == running.get((img["appId"], img["serviceName"])) else 0


# ---------------------------------------------------------------------- /v2/state/status
def state_status(obs: Observation, *, applying: bool, allows: Allows = _everyone,
                 awaiting_target: bool = False) -> dict[str, Any]:
    """``GET /v2/state/status``: containers and images of the first app seen, the mean progress of
    every image in scope, and that app's stored commit as ``release`` (absent when none).
    ``awaitingTarget`` (ours, docs/API.md): a managed device that has no target from its cloud yet
    and so keeps everything as it is."""
    app_ids: list[int] = []
    containers = []
    for svc in obs.services:
        if not allows(svc.app_id):
            continue
        app_ids.append(svc.app_id)
        containers.append(_with_error({
            "status": svc.status,
            "serviceName": svc.service_name,
            "appId": svc.app_id,
            "imageId": svc.image_id,
            "serviceId": svc.service_id,
            "containerId": svc.container_id,
            "createdAt": created_at_iso(svc.created_at),
        }, service_error(obs, svc.app_id, svc.service_name, svc)))
    images = []
    progress: list[float] = []
    for img in [*obs.images, *_failed_fetches(obs)]:
        if not allows(img["appId"]):
            continue
        app_ids.append(img["appId"])
        value = _progress(img.get("downloadProgress"))
        if value is not None:
            progress.append(value)
        fetch_error = obs.errors.get((img["appId"], img["serviceName"]))
        images.append(_with_error({
            "name": img["name"],
            "appId": img["appId"],
            "serviceName": img["serviceName"],
            "imageId": img["imageId"],
            "dockerImageId": img.get("dockerImageId"),
            "status": img["status"],
            "downloadProgress": value,
        }, service_error(obs, img["appId"], img["serviceName"])
            if fetch_error is not None and fetch_error.image is not None else None))
    # The endpoint predates multi-app devices: it reports the first app only.
    first = app_ids[0] if app_ids else None
    # A container the engine keeps restarting is not an applied target (issue #11).
    restarting = any(c["status"] == "Restarting" for c in containers if c["appId"] == first)
    body: dict[str, Any] = {
        "status": "success",
        "appState": "applying" if applying or restarting else "applied",
        "overallDownloadProgress": sum(progress) / len(progress) if progress else None,
        "containers": [c for c in containers if c["appId"] == first],
        "images": [i for i in images if i["appId"] == first],
        "awaitingTarget": awaiting_target,
    }
    commit = obs.commits.get(first) if first is not None else None
    if commit is not None:
        body["release"] = commit
    return body


# --------------------------------------------------------------------- /v2/containerId
def container_ids(obs: Observation, *, allows: Allows = _everyone) -> dict[str, str | None]:
    """service name -> container id (the last one listed wins, as lodash's ``keyBy``)."""
    return {svc.service_name: svc.container_id for svc in obs.services if allows(svc.app_id)}


# ------------------------------------------------------------------- apps report (§2.3)
def update_status(services: Iterable[Mapping[str, Any]]) -> str:
    """A release's ``update_status`` from its services, by the reference's precedence."""
    entries = list(services)
    statuses = [str(s.get("status") or "").lower() for s in entries]
    if "aborted" in statuses:
        return "aborted"
    if any(s.get("download_progress") is not None and s.get("download_progress") != 100 for s in entries):
        return "downloading"
    if "downloaded" in statuses:
        return "downloaded"
    if any(s in ("installing", "installed", "awaiting handover") for s in statuses):
        return "applying changes"
    return "done"


def app_states(
    obs: Observation, target: TargetDevice | None = None, *, rejected: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """``applicationManager.getState()``: app uuid -> ``{release_uuid?, releases: {commit:
    {update_status, services: {name: {image, status, download_progress?}}}}}``."""
    from_images: list[dict[str, Any]] = []
    for img in obs.images:
        entry: dict[str, Any] = {
            "appId": img["appId"], "appUuid": img.get("appUuid") or str(img["appId"]),
            "commit": img.get("commit"), "serviceName": img["serviceName"],
            "image": img["name"], "status": img["status"],
        }
        if isinstance(img.get("downloadProgress"), int):
            entry["download_progress"] = img["downloadProgress"]
        from_images.append(entry)

    # Target services whose image the device has not even started on (§2.3 step 2).
    rejected = set(rejected)
    for uuid, app in (target.apps.items() if target is not None else ()):
        release = app.release
        if release is None or uuid in rejected:
            continue
        for name, svc in release.services.items():
            if any(e["appUuid"] == uuid and e["commit"] == release.commit and e["serviceName"] == name
                   for e in from_images):
                continue
            own = is_supervisor_service(uuid, name)
            from_images.append({
                "appId": app.id, "appUuid": uuid, "commit": release.commit, "serviceName": name,
                "image": svc.image, "status": "Running" if own else "Downloading",
                **({} if own else {"download_progress": 0}),
            })

    # Containers override their image's entry; a container without one cannot be reported.
    from_services: list[dict[str, Any]] = []
    for svc in obs.services:
        img = next((e for e in from_images
                    if e["serviceName"] == svc.service_name and e["commit"] == svc.commit), None)
        if img is None:
            continue
        merged = {**img, "appId": svc.app_id, "commit": svc.commit, "serviceName": svc.service_name,
                  "status": svc.status, "createdAt": svc.created_at or ""}
        if svc.app_uuid:
            merged["appUuid"] = svc.app_uuid
        from_services.append(merged)
    # Two running releases of one service: a handover (decided on the statuses before renaming).
    handover: dict[int, str] = {}
    for i, svc in enumerate(from_services):
        if svc["status"] != "Running":
            continue
        siblings = [s for s in from_services if s is not svc and s["appUuid"] == svc["appUuid"]
                    and s["serviceName"] == svc["serviceName"] and s["status"] == "Running"
                    and s["commit"] != svc["commit"]]
        if siblings:
            older = all(_created(svc) < _created(s) for s in siblings)
            handover[i] = "Handing over" if older else "Awaiting handover"
    for i, status in handover.items():
        from_services[i]["status"] = status

    reported = [e for e in from_images if not any(
        s["serviceName"] == e["serviceName"] and s["commit"] == e["commit"] for s in from_services
    )] + from_services

    state: dict[str, dict[str, Any]] = {}
    for entry in reported:
        app = state.setdefault(entry["appUuid"], {})
        commit = obs.commits.get(entry["appId"])
        if commit:
            app["release_uuid"] = commit
        releases = app.setdefault("releases", {})
        release = releases.setdefault(entry["commit"], {"update_status": "done", "services": {}})
        release["services"][entry["serviceName"]] = {
            k: v for k, v in entry.items()
            if k not in ("appId", "appUuid", "commit", "serviceName", "createdAt")
        }
    for app in state.values():
        for release in app["releases"].values():
            release["update_status"] = update_status(release["services"].values())
    for uuid in rejected:
        app_target = target.apps.get(uuid) if target is not None else None
        if app_target is not None and app_target.release is not None:
            app = state.setdefault(uuid, {"releases": {}})
            app["releases"][app_target.release.commit] = {"update_status": "rejected", "services": {}}
    return state


def _created(svc: Mapping[str, Any]) -> tuple[int, ...]:
    stamp = created_at_iso(svc.get("createdAt")) or ""
    return tuple(int(part) for part in re.findall(r"\d+", stamp))


def applications_state(
    obs: Observation, target: TargetDevice, *, allows: Allows = _everyone
) -> dict[str, dict[str, Any]]:
    """``GET /v2/applications/state``: target apps in scope, keyed by app name."""
    states = app_states(obs, target)
    out: dict[str, dict[str, Any]] = {}
    for uuid, app in target.apps.items():
        if not allows(app.id):
            continue
        commit = app.release.commit if app.release is not None else None
        release = states.get(uuid, {}).get("releases", {}).get(commit, {})
        containers = {s.service_name: s for s in obs.services if s.app_id == app.id and s.commit == commit}
        services = {
            name: _with_error({
                "status": svc.get("status"),
                "image": svc.get("image"),
                "downloadProgress": svc.get("download_progress"),
                "releaseId": app.release.id if app.release is not None else None,
            }, service_error(obs, app.id, name, containers.get(name)))
            for name, svc in release.get("services", {}).items()
        }
        out[app.name] = {
            "appId": app.id,
            "appUuid": uuid,
            "commit": commit,
            "updateStatus": release.get("update_status", "done"),
            "services": services,
        }
    return out


# --------------------------------------------------------------------- legacy state (§2.4)
def legacy_apps(obs: Observation) -> dict[str, dict[str, Any]]:
    """``{<appId>: {services: {<imageId>: {status, releaseId, download_progress}}}}``, keys in
    ascending numeric order as JavaScript orders integer keys."""
    apps: dict[int, dict[int, dict[str, Any]]] = {}
    created: dict[tuple[int, int], tuple[str, int]] = {}
    for svc in obs.services:
        services = apps.setdefault(svc.app_id, {})
        key = (svc.app_id, svc.image_id)
        if svc.image_id not in services:
            services[svc.image_id] = {"status": svc.status, "releaseId": svc.release_id,
                                      "download_progress": None}
            created[key] = (created_at_iso(svc.created_at) or "", svc.release_id)
        else:  # two containers of one image: a handover; report the older one's release
            stamp = created_at_iso(svc.created_at) or ""
            if stamp < created[key][0]:
                created[key] = (stamp, svc.release_id)
            services[svc.image_id]["releaseId"] = created[key][1]
            services[svc.image_id]["status"] = "Handing over"
    for img in obs.images:
        services = apps.setdefault(img["appId"], {})
        if img["imageId"] not in services:
            services[img["imageId"]] = {"status": img["status"], "releaseId": img.get("releaseId"),
                                        "download_progress": _progress(img.get("downloadProgress"))}
    return {
        str(app_id): {"services": {str(image): apps[app_id][image] for image in sorted(apps[app_id])}}
        for app_id in sorted(apps)
    }


def legacy_app_state(obs: Observation, app_id: int) -> dict[str, Any] | None:
    """``GET /v2/applications/:appId/state``: ``{commit, local: {<appId>: ...}}``; None when the
    device has nothing of that app."""
    apps = legacy_apps(obs)
    if str(app_id) not in apps:
        return None
    body: dict[str, Any] = {}
    commit = obs.commits.get(app_id)
    if commit is not None:
        body["commit"] = commit
    body["local"] = {str(app_id): apps[str(app_id)]}
    return body


#: ``/v1/device`` ``status`` while the update fails, by the failing step's action (issue #11).
FAILED_STEP_STATUS: dict[str, str] = {
    "fetch": "Failed to download image",
    "start": "Failed to start service",
    "takeLock": "Updates locked",
    "kill": "Failed to stop service",
    "stop": "Failed to stop service",
    "remove": "Failed to remove container",
    "handover": "Failed to hand over",
    "updateMetadata": "Failed to update service",
    "createNetwork": "Failed to create network",
    "createVolume": "Failed to create volume",
    "removeNetwork": "Failed to remove network",
    "removeVolume": "Failed to remove volume",
    "removeImage": "Failed to remove image",
    "saveImage": "Failed to save image",
}


def v1_device(
    obs: Observation, volatile: Mapping[str, Any], *, applying: bool, last_error: str | None = None
) -> dict[str, Any]:
    """``GET /v1/device``: the volatile device fields, then the commit (when not applying) and the
    status and progress of the first service of the first app (``Running`` reads ``Idle``).

    While the update fails (``update_failed``), ``status`` names the failing step (the reference says
    ``Idle`` there) and ``error`` carries the last message; a crash-looping first service reads
    ``Restarting`` with its exit in ``error``."""
    keys = ("api_port", "ip_address", "os_version", "mac_address", "supervisor_version",
            "update_pending", "update_failed", "update_downloaded")
    body = {k: volatile[k] for k in keys if volatile.get(k) is not None}
    apps = legacy_apps(obs)
    first_app = next(iter(apps), None)
    if first_app is not None and not applying:
        commit = obs.commits.get(int(first_app))
        if commit is not None:
            body["commit"] = commit
    if first_app is not None:
        service = next(iter(apps[first_app]["services"].values()), None)
        if service is not None:
            body["status"] = "Idle" if service["status"] == "Running" else service["status"]
            body["download_progress"] = service["download_progress"]
    if volatile.get("update_failed"):
        latest = max(obs.errors.values(), key=lambda e: e.since, default=None)
        if latest is not None:
            body["status"] = FAILED_STEP_STATUS.get(latest.action, f"Failed step {latest.action}")
            body["error"] = latest.message
        else:
            body["status"] = "Update failed"
            if last_error:
                body["error"] = last_error
    elif body.get("status") == "Restarting":
        crashed = next((s for s in obs.services if s.app_id == int(first_app or 0)
                        and s.status == "Restarting"), None)
        error = service_error(obs, crashed.app_id, crashed.service_name, crashed) if crashed else None
        if error is not None:
            body["error"] = error["message"]
    return body

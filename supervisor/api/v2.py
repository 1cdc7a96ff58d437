"""The v2 API (spec §1.3-1.4). More endpoints arrive with the state engine."""

from __future__ import annotations

from functools import partial
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import BadRequest

from .. import __version__
from ..compose.validation import check_int
from ..state import report
from ..state.target import TargetStateError
from .app_actions import IdErrors, app_action
from .auth import current_key
from .body import json_body, request_body
from .context import supervisor
from .errors import failed, text

bp = Blueprint("v2", __name__)


@bp.get("/v2/version")
def version() -> Response:
    return jsonify(status="success", version=__version__)


@bp.get("/v2/local/target-state")
def get_local_target_state() -> Response:
    return jsonify(status="success", state=supervisor().local_target_view())


@bp.post("/v2/local/target-state")
def set_local_target_state() -> Response:
    sup = supervisor()
    if not sup.config.local_mode:
        return failed("Target state can only set when device is in local mode", 400)
    body = _json_object_body()
    try:
        warnings = sup.set_local_target(body)
    except TargetStateError as exc:
        return failed(str(exc), 400)
    if warnings:  # keys accepted but not applied (docs/API.md); the reference's body otherwise
        return jsonify(status="success", message="OK", warnings=warnings)
    return jsonify(status="success", message="OK")


def _json_object_body() -> Any:
    """A target is JSON only: no body, a form or text/plain was read as "no apps" by the reference,
    which then removed every service. Returns the decoded JSON (its shape is the admission's job)."""
    if not request.get_data(cache=True).strip():
        raise BadRequest('The target state body is empty: send {"local": {"apps": {...}}} as JSON')
    if not request.is_json:
        raise BadRequest(
            "The target state must be sent as JSON (Content-Type: application/json), got "
            f"{request.mimetype or 'no content type'}"
        )
    return json_body()


@bp.get("/v2/state/status")
def state_status() -> Response:
    sup = supervisor()
    status = sup.reconciler.status()
    body = report.state_status(
        sup.observe(), applying=status.applying, allows=current_key().allows_app,
        awaiting_target=status.held_back is not None,
    )
    return jsonify(body)


@bp.get("/v2/applications/state")
def applications_state() -> Response:
    sup = supervisor()
    key, manages = current_key(), sup.reconciler.manages
    target = sup.targets.get_target(sup.target_source)
    body = report.applications_state(
        sup.observe(), target, allows=lambda app_id: key.allows_app(app_id) and manages(app_id)
    )
    return jsonify(body)


@bp.get("/v2/applications/<raw_app_id>/state")
def application_state(raw_app_id: str) -> Response:
    """The legacy state of one app. Out of scope is 409 like a missing app, as the reference does."""
    app_id = check_int(raw_app_id)
    if not app_id:
        return failed(f"Invalid application ID: {raw_app_id}", 400)
    sup = supervisor()
    body = report.legacy_app_state(sup.observe(), app_id)
    if body is None or not current_key().allows_app(app_id):
        return failed(f"Application ID does not exist: {app_id}", 409)
    return jsonify(body)


@bp.get("/v2/containerId")
def container_id() -> Response:
    """One service's container id (``?serviceName=`` or ``?service=``), or all of them. A name
    nothing runs under is 404 (the reference answers 503: docs/API.md)."""
    ids = report.container_ids(supervisor().observe(), allows=current_key().allows_app)
    name = request.args.get("serviceName") or request.args.get("service")
    if name is None and ("serviceName" in request.args or "service" in request.args):
        name = ""
    if name is None:
        return jsonify(status="success", services=ids)
    if name not in ids:
        return failed("Could not find service with that name", 404)
    return jsonify(status="success", containerId=ids[name])


# --- service actions (issue #4)
def _app_action(raw_app_id: str, action: str) -> Response:
    """``restart``/``purge`` of one app: 200 ``OK`` (text); 423 JSON while its services are locked."""
    from ..state import actions

    def run(app_id: int, _body: dict, force: bool) -> Response:
        (actions.restart_app if action == "restart" else actions.purge)(supervisor(), app_id, force=force)
        return text("OK")

    return app_action(raw_app_id, IdErrors("Missing app id", invalid_json=True), run)


def _service_action(raw_app_id: str, action: str) -> Response:
    """One service by ``serviceName`` or ``imageId``: 200 ``OK``; 400/404 as text (§1.4)."""
    from ..state import actions

    def run(app_id: int, body: dict, force: bool) -> Response:
        service_name = body.get("serviceName") or None
        image_id = check_int(body.get("imageId"))
        if service_name is None and image_id is None:
            return text(actions.V2_SERVICE_ENDPOINT_ERROR, 400)
        actions.service_action(supervisor(), action, app_id, service_name=str(service_name) if service_name
                               else None, image_id=image_id, force=force)
        return text("OK")

    return app_action(raw_app_id, IdErrors("Invalid app id", invalid_json=True), run)


for _action in ("restart", "purge"):
    bp.add_url_rule(f"/v2/applications/<raw_app_id>/{_action}", f"{_action}_app",
                    partial(_app_action, action=_action), methods=["POST"])
for _action in ("restart", "stop", "start"):
    bp.add_url_rule(f"/v2/applications/<raw_app_id>/{_action}-service", f"{_action}_service",
                    partial(_service_action, action=_action), methods=["POST"])


# --- device endpoints (issue #5) -----------------------------------------------------------------
@bp.get("/v2/local/device-info")
def device_info() -> Response:
    """Arch and slug of ``device-type.json``; 500 when the boot partition does not say them."""
    from ..host import UNKNOWN

    sup = supervisor()
    if UNKNOWN in (sup.host.device_arch, sup.host.device_type):
        return failed(f"Could not read the device type from {sup.paths.device_type_json}", 500)
    return jsonify(status="success", info={"arch": sup.host.device_arch, "deviceType": sup.host.device_type})


@bp.get("/v2/device/name")
def device_name() -> Response:
    """The name of the last target state (config ``name``, default ``local``), as the reference."""
    return jsonify(status="success", deviceName=supervisor().config.get_db("name"))


@bp.get("/v2/device/tags")
def get_device_tags() -> Response:
    """The device's tags, which only the balena API knows. A device with no cloud to ask (unmanaged,
    or not provisioned yet) is 409: nothing failed, the device is not in a state to answer (the
    reference answers 500, docs/API.md); 500 stays for a cloud that fails. The cloud binder fetches
    the list; this request thread only waits a bounded time for it (supervisor/cloud/tags.py)."""
    from ..cloud import CloudRequestError

    sup = supervisor()
    if sup.binder is None:
        return failed("Device tags are kept by the balena cloud: this device is unmanaged", 409)
    if sup.config.json.get("deviceId") is None or not sup.binder.ready_for_updates:
        return failed("The device is not provisioned yet (no deviceId)", 409)
    try:
        tags = sup.binder.tags.tags()
    except CloudRequestError as exc:
        return failed(str(exc), 500)
    return jsonify(status="success", tags=tags)


TAGS_BODY_ERROR = "Invalid tags body, must be an object like `{[tagKey: string]: string}`"


@bp.patch("/v2/device/tags")
def patch_device_tags() -> Response:
    """Add or change tags (never delete): stored as wanted and reported in the background. 202."""
    body = json_body() if request.is_json else request_body()
    if not isinstance(body, dict) or not all(isinstance(v, str) for v in body.values()):
        return failed(TAGS_BODY_ERROR, 400)
    if any(any(ch.isspace() for ch in key) for key in body):
        return failed("Tag keys cannot contain whitespace", 400)
    supervisor().want_tags(body)
    return jsonify(status="success"), 202


@bp.get("/v2/device/vpn")
def device_vpn() -> Response:
    """``enabled``: openvpn.service is active (ActiveState over D-Bus; a device without the unit
    reports false, where the reference fails, §15; without a system bus, the target's
    ``SUPERVISOR_VPN_CONTROL``); ``connected``: openvpn's status file ``active`` exists (§13.4)."""
    sup = supervisor()
    enabled = sup.host_services.vpn_enabled()
    if enabled is None:
        enabled = sup.host_config_values().get("SUPERVISOR_VPN_CONTROL") == "true"
    return jsonify(status="success", vpn={"enabled": enabled, "connected": sup.vpn_connected()})


@bp.get("/v2/cleanup-volumes")
def cleanup_volumes() -> Response:
    """Remove unused app volumes of apps in the key's scope that the target does not name.

    The reference hangs when this fails; here a failure is 500 ``{status:'failed', message}``."""
    from ..cleanup import remove_orphaned_volumes
    from ..compose.naming import volume_name
    sup = supervisor()
    key, manages = current_key(), sup.reconciler.manages
    engine = sup.reconciler.require_engine()
    target = sup.targets.get_target(sup.target_source)
    referenced = {
        volume_name(app.id, name)
        for app in target.apps.values() if key.allows_app(app.id)
        for name in (app.release.volumes if app.release else ())
    }
    try:
        remove_orphaned_volumes(engine.client.api, referenced,
                                lambda app_id: key.allows_app(app_id) and manages(app_id))
    except Exception as exc:  # noqa: BLE001 - answered, not hung (docs/API.md)
        return failed(str(exc) or "Unknown error", 500)
    return jsonify(status="success")


def _stream_slot() -> Response | None:
    """Take a stream slot; a 503 response when every slot is in use."""
    sup = supervisor()
    if sup.streams.try_acquire():
        return None
    return failed(f"Too many open streams (at most {sup.streams.limit}): close one and try again", 503)


def _disconnected():  # type: ignore[no-untyped-def]
    return request.environ.get("waitress.client_disconnected") or (lambda: False)


@bp.get("/v2/local/logs")
def local_logs() -> Response:
    """NDJSON log stream: ``Streaming logs`` first, then every message while in local mode."""
    from .streams import STREAMING_LOGS_LINE, LogLines, StreamBody

    full = _stream_slot()
    if full is not None:
        return full
    sup = supervisor()
    sub = sup.logs.subscribe()
    config = sup.config
    # The Flask app context is gone once the body is iterated: bind what the lines need now.
    names = _service_names_of(sup)
    lines = LogLines(sub, service_names=names, active=lambda: config.local_mode)
    body = StreamBody(lines, first=STREAMING_LOGS_LINE, disconnected=_disconnected(),
                      release=sup.streams.release)
    return Response(body, mimetype="application/x-ndjson", direct_passthrough=True)


def _service_names_of(sup):  # type: ignore[no-untyped-def]
    """serviceId -> name in ``sup``'s target, callable outside the request."""

    def names() -> dict[int, str]:
        target = sup.targets.get_target(sup.target_source)
        return {svc.id: name for app in target.apps.values() for name, svc in app.services.items()}

    return names


@bp.post("/v2/journal-logs")
def journal_logs() -> Response:
    """``journalctl`` with the body's options (spec §8.4), its stdout streamed as it comes; the
    process is killed when the client goes away. 503 when the device has no ``journalctl``."""
    import shutil

    from ..compose.validation import check_truthy
    from .streams import ProcessOutput, StreamBody, journalctl_args

    body = request_body()
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return failed("journalctl is not available on this device: no journal to read", 503)
    full = _stream_slot()
    if full is not None:
        return full
    sup = supervisor()
    try:
        output = ProcessOutput([journalctl, *journalctl_args(body, truthy=check_truthy)])
    except OSError as exc:
        sup.streams.release()
        return failed(f"Could not start journalctl: {exc.strerror or exc}", 503)
    stream = StreamBody(output, disconnected=_disconnected(), release=sup.streams.release)
    return Response(stream, mimetype="text/plain", direct_passthrough=True)

"""The v2 API (spec §1.3-1.4). More endpoints arrive with the state engine."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from .. import __version__
from ..compose.validation import check_int
from ..state import report
from ..state.target import TargetStateError
from .auth import current_key
from .body import request_body
from .context import supervisor
from .errors import failed

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
    body = request_body()
    try:
        sup.set_local_target(body)
    except TargetStateError as exc:
        return failed(str(exc), 400)
    return jsonify(status="success", message="OK")


@bp.get("/v2/state/status")
def state_status() -> Response:
    sup = supervisor()
    body = report.state_status(
        sup.observe(), applying=sup.reconciler.status().applying, allows=current_key().allows_app
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
    nothing runs under is 503, as the reference answers."""
    ids = report.container_ids(supervisor().observe(), allows=current_key().allows_app)
    name = request.args.get("serviceName") or request.args.get("service")
    if name is None and ("serviceName" in request.args or "service" in request.args):
        name = ""
    if name is None:
        return jsonify(status="success", services=ids)
    if name not in ids:
        return failed("Could not find service with that name", 503)
    return jsonify(status="success", containerId=ids[name])

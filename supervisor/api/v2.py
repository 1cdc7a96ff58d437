"""The v2 API (spec §1.3-1.4). More endpoints arrive with the state engine."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .. import __version__
from ..state.target import TargetStateError
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

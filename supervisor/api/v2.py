"""The v2 API (spec §1.3-1.4). More endpoints arrive with the state engine."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .. import __version__

bp = Blueprint("v2", __name__)


@bp.get("/v2/version")
def version() -> Response:
    return jsonify(status="success", version=__version__)

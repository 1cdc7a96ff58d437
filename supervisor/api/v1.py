"""The v1 API (spec §1.3-1.4). More endpoints arrive with the state engine."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from ..apikeys import KeyNotFoundError
from ..compose.validation import check_truthy
from ..state import report
from .auth import presented_key
from .body import request_body
from .context import supervisor
from .errors import failed

log = logging.getLogger("supervisor.api")

bp = Blueprint("v1", __name__)


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/plain")


@bp.get("/ping")
def ping() -> Response:
    return _text("OK")


@bp.get("/v1/healthy")
def healthy() -> Response:
    problems = [reason for ok, reason in supervisor().health() if not ok]
    if problems:
        log.warning("Healthcheck failed: %s", "; ".join(problems))
        return _text("Unhealthy", 500)
    return _text("OK")


@bp.post("/v1/blink")
def blink() -> Response:
    supervisor().blink()
    return _text("OK")


@bp.post("/v1/regenerate-api-key")
def regenerate_api_key() -> Response:
    """Replace the key used for this request; the body is the new key.

    With no key at all (possible in local mode) there is nothing to regenerate: the reference
    answers 503 there; we answer 400 and say why (docs/API.md).
    """
    key = presented_key()
    if not key:
        return failed("No API key in the request: nothing to regenerate", 400)
    try:
        new_key = supervisor().regenerate_api_key(key)
    except KeyNotFoundError:
        return failed("The API key of this request is not a known key", 400)
    return _text(new_key)


@bp.post("/v1/update")
def update() -> Response:
    """Apply the target now: 204 when triggered (``force`` or instant updates), else 202.

    Without a cloud binder there is nothing to fetch, so "update" re-applies the stored target.
    """
    sup = supervisor()
    body = request_body()
    force = check_truthy(body.get("force"))
    if not (force or sup.config.get_db("instantUpdates")):
        log.debug("Ignoring update notification because instant updates are disabled")
        return Response(status=202)
    sup.update(force=force, cancel=check_truthy(body.get("cancel")))
    return Response(status=204)


@bp.get("/v1/device")
def device() -> Response:
    sup = supervisor()
    status = sup.reconciler.status()
    return jsonify(report.v1_device(sup.observe(), sup.volatile_state(), applying=status.applying))

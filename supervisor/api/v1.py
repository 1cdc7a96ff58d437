"""The v1 API (spec §1.3-1.4). More endpoints arrive with the state engine."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from ..apikeys import KeyNotFoundError
from .auth import presented_key
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

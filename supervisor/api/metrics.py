"""``GET /metrics``: the supervisor's own metrics in the Prometheus text format (supervisor/metrics.py).

Not public: the same API-key rules as every other endpoint (supervisor/api/auth.py), so a scraper on a
managed device presents a key (``Authorization: Bearer <key>``, which Prometheus sends with
``authorization: {credentials: ...}``).
"""

from __future__ import annotations

from flask import Blueprint, Response

from ..metrics import CONTENT_TYPE
from .context import supervisor

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    return Response(supervisor().metrics.render(), content_type=CONTENT_TYPE)

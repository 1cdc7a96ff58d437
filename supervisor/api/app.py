"""The device API's Flask app (spec §1): a factory with one blueprint per API version. Built at the
first request that needs it (supervisor/api/server.py :class:`LazyApp`), not at start."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Final

from flask import Flask, Response, g, request

from . import auth, errors, metrics, openapi, v1, v2
from .server import log_line

if TYPE_CHECKING:
    from ..runtime import Supervisor

MAX_BODY_BYTES = 10 * 1024 * 1024  # the reference's body-parser limit
REASON_MAX: Final = 300  # characters of an error message in the request log


def _reason(response: Response) -> str:
    """The message of an error response (JSON ``message``/``Error`` or a short text body), one line."""
    if response.direct_passthrough or response.is_streamed:
        return ""
    data = response.get_data(as_text=True)[:2000]
    if response.is_json:
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        if isinstance(body, dict):
            data = str(body.get("message") or body.get("Error") or "")
    line = " ".join(data.split())
    return line if len(line) <= REASON_MAX else line[: REASON_MAX - 3] + "..."


def log_request(response: Response) -> None:
    """One line per request (:func:`supervisor.api.server.log_line`)."""
    started = g.get("started", time.monotonic())
    log_line(request.method, request.path, response.status_code, (time.monotonic() - started) * 1000,
             lambda: _reason(response))


def create_app(supervisor: Supervisor) -> Flask:
    """Build the API for one supervisor; tests build as many as they like."""
    app = Flask("supervisor.api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # keep the reference's field order in JSON bodies
    app.json.compact = True
    app.extensions["supervisor"] = supervisor

    @app.before_request
    def _start_timer():  # type: ignore[no-untyped-def]
        g.started = time.monotonic()
        power = getattr(supervisor, "power", None)  # test doubles of the supervisor may have none
        going_down = power.going_down if power is not None else None
        if going_down is not None:  # a connection opened before the listener closed (host/power.py)
            what = "reboot" if going_down == "reboot" else "shut down"
            return errors.failed(f"The device is about to {what}", 503)
        return None

    @app.after_request
    def _log_request(response):  # type: ignore[no-untyped-def]
        log_request(response)
        # By route (bounded), not path: /v2/applications/<id>/... must not make a series per id.
        rule = request.url_rule
        metrics = getattr(supervisor, "metrics", None)  # test doubles of the supervisor may have none
        if metrics is not None:
            metrics.inc("api_requests", 1, rule.rule if rule is not None else "(unmatched)",
                        request.method, str(response.status_code))
        return response

    auth.install(app)
    errors.install(app)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(metrics.bp)
    return app

"""The device API (spec §1): a Flask app factory with one blueprint per API version."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from flask import Flask, g, request

from . import auth, errors, openapi, v1, v2

if TYPE_CHECKING:
    from ..runtime import Supervisor

log = logging.getLogger("supervisor.api")

MAX_BODY_BYTES = 10 * 1024 * 1024  # the reference's body-parser limit


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
        # The path only: the query string may carry an API key, which must never be logged.
        elapsed = (time.monotonic() - g.get("started", time.monotonic())) * 1000
        log.info("%s %s %s - %.1f ms", request.method, request.path, response.status_code, elapsed)
        return response

    auth.install(app)
    errors.install(app)
    app.register_blueprint(v1.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(openapi.bp)
    return app

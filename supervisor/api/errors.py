"""Error responses.

The reference answers every non-lock error with 503 and unknown routes with an HTML page. We keep
its JSON error shape ``{"status":"failed","message":...}`` but use the status a client expects:
400 for a body that is not valid JSON, 404/405 as JSON for unknown routes and methods, 413 for a
body over the limit (docs/API.md lists these differences).
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException, NotFound, RequestEntityTooLarge

from ..state.locks import UpdatesLockedError
from ..state.reconcile import EngineUnavailableError

log = logging.getLogger("supervisor.api")


def failed(message: str, status: int):  # type: ignore[no-untyped-def]
    response = jsonify(status="failed", message=message)
    response.status_code = status
    return response


def text(body: str, status: int = 200) -> Response:
    """A plain-text answer: the reference answers several endpoints (and errors) as text."""
    return Response(body, status=status, mimetype="text/plain")


def install(app: Flask) -> None:
    @app.errorhandler(NotFound)
    def _not_found(exc: NotFound):  # type: ignore[no-untyped-def]
        return failed(f"Cannot {request.method} {request.path}", 404)

    @app.errorhandler(BadRequest)
    def _bad_request(exc: BadRequest):  # type: ignore[no-untyped-def]
        # Flask raises BadRequest for malformed JSON bodies; the description says what failed.
        return failed(exc.description or "Bad request", 400)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):  # type: ignore[no-untyped-def]
        limit = app.config.get("MAX_CONTENT_LENGTH") or 0
        return failed(f"Request body too large: the limit is {limit // (1024 * 1024)} MB", 413)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        return failed(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(EngineUnavailableError)
    def _no_engine(exc: EngineUnavailableError):  # type: ignore[no-untyped-def]
        return failed(str(exc), 503)  # no traceback: a known state (the request log says it)

    @app.errorhandler(UpdatesLockedError)
    def _locked(exc: UpdatesLockedError):  # type: ignore[no-untyped-def]
        # As the reference: 423 with the lock's message, and not logged as an error.
        return failed(str(exc), 423)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.error("%s %s failed: %s", request.method, request.path, exc, exc_info=exc)
        return failed(str(exc) or "Unknown error", 503)

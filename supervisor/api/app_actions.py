"""Request handling shared by the app and service action endpoints (v1 and v2, spec §1.3-1.4).

Every one of them parses an app id, checks it against the key's scope, reads ``force`` from the body,
runs an action from :mod:`supervisor.state.actions` and answers its errors; only the messages and
media types differ per endpoint (the reference's, listed in :class:`IdErrors`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response

from ..compose.validation import check_int, check_truthy
from .auth import current_key
from .body import request_body
from .errors import failed, text


@dataclass(frozen=True)
class IdErrors:
    """How an endpoint refuses an app id: ``invalid`` (400) when it is not a positive integer, and
    ``Unauthorized`` (401) when the app is out of the key's scope; each as JSON or plain text."""

    invalid: str
    invalid_json: bool = False
    unauthorized_json: bool = True

    def bad_id(self) -> Response:
        return failed(self.invalid, 400) if self.invalid_json else text(self.invalid, 400)

    def out_of_scope(self) -> Response:
        return failed("Unauthorized", 401) if self.unauthorized_json else text("Unauthorized", 401)


def app_action(raw_app_id: Any, errors: IdErrors,
               run: Callable[[int, dict[str, Any], bool], Response]) -> Response:
    """``run(app_id, body, force)`` for a valid app id in the key's scope.

    An app that is not installed is 404 JSON (the reference answers 503: docs/API.md); the
    reference's Bad Request/Not Found errors of service actions are plain text with their status.
    Lock errors go to the error handler (423 JSON).
    """
    from ..state import actions  # imported where used: keeps the API import light

    app_id = check_int(raw_app_id)
    if app_id is None or app_id <= 0:
        return errors.bad_id()
    if not current_key().allows_app(app_id):
        return errors.out_of_scope()
    body = request_body()
    try:
        return run(app_id, body, check_truthy(body.get("force")))
    except actions.AppNotCurrentError as err:
        return failed(str(err), 404)
    except actions.ActionError as err:
        return text(err.message, err.status)

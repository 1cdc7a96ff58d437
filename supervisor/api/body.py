"""Request bodies: JSON or form-encoded, as the reference's body parsers accept (spec §1.1)."""

from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest


def request_body() -> dict[str, Any]:
    """The body as a dict; ``{}`` without a JSON/form content type; 400 for malformed JSON."""
    if request.is_json:
        if not request.get_data(cache=True):
            return {}
        body = request.get_json(silent=False)
        if not isinstance(body, dict):
            raise BadRequest("Request body must be a JSON object")
        return body
    if request.mimetype == "application/x-www-form-urlencoded":
        return request.form.to_dict()
    return {}

"""The device API (spec §1). The Flask app (app.py) is built at the first request that needs it:
waitress serves :class:`supervisor.api.server.LazyApp`, which answers ``/ping`` and ``/v1/healthy`` by
itself, so a device nobody talks to does not hold Flask, werkzeug, Jinja2 and the OpenSSL they load
(issue #17). Importing this package imports no Flask."""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_BODY_BYTES", "create_app", "log_request"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

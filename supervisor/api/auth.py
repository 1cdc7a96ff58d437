"""API key middleware (spec §1.2).

Every route needs a key except ``/ping`` and ``/v1/healthy``, unless the device is unmanaged or in
local mode, where every request is trusted and in scope for every app. Unknown routes are
authenticated too (as in the reference, auth runs before routing), so probing needs a key.
"""

from __future__ import annotations

from flask import Flask, Response, g, request

from ..apikeys import GLOBAL_SCOPE, KeyInfo, key_from_request
from .context import supervisor

PUBLIC_ENDPOINTS = {"v1.ping", "v1.healthy"}

_TRUSTED = KeyInfo(key="", app_id=0, service_name=None, scopes=tuple(GLOBAL_SCOPE))


def presented_key() -> str | None:
    return key_from_request(request.args, request.headers)


def current_key() -> KeyInfo:
    """The authenticated key of this request (a global pseudo-key when auth is off)."""
    return g.get("api_key", _TRUSTED)


def install(app: Flask) -> None:
    @app.before_request
    def _authenticate() -> Response | None:
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        sup = supervisor()
        if sup.config.local_mode:
            g.api_key = _TRUSTED
            return None
        key = presented_key()
        info = sup.api_keys.lookup(key) if key else None
        if info is None:
            return Response("Unauthorized", status=401, mimetype="text/plain")
        g.api_key = info
        return None

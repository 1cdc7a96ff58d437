"""The v1 API (spec §1.3-1.4). More endpoints arrive with the state engine."""

from __future__ import annotations

import logging
from functools import partial

from flask import Blueprint, Response, jsonify, request

from ..apikeys import KeyNotFoundError
from ..compose.validation import check_int, check_truthy
from ..state import report
from .app_actions import IdErrors, app_action
from .auth import current_key, presented_key
from .body import request_body
from .context import supervisor
from .errors import failed
from .errors import text as _text

log = logging.getLogger("supervisor.api")

bp = Blueprint("v1", __name__)


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
    return jsonify(report.v1_device(sup.observe(), sup.volatile_state(), applying=status.applying,
                                    last_error=status.last_error))


# --- device endpoints (issue #5) -----------------------------------------------------------------
#: Container variables that carry credentials: never shown by GET /v1/apps/:appId (spec §0.1).
PRIVATE_ENV_VARS = frozenset(
    ("RESIN_SUPERVISOR_API_KEY", "RESIN_API_KEY", "BALENA_SUPERVISOR_API_KEY", "BALENA_API_KEY")
)


@bp.get("/v1/apps/<raw_app_id>")
def get_app(raw_app_id: str) -> Response:
    """A single-container app's container. The scope is checked before the app is looked up, so a
    scoped key learns nothing about other apps (the reference answers 400 for a missing app first)."""
    app_id = check_int(raw_app_id)
    if not app_id:
        return _text("Missing app id", 400)
    if not current_key().allows_app(app_id):
        return failed("Application is not available", 401)
    sup = supervisor()
    obs = sup.observe()
    services = [svc for svc in obs.services if svc.app_id == app_id]
    if not services:
        return _text("App not found", 400)
    if len({svc.service_name for svc in services}) > 1:
        return _text("Some v1 endpoints are only allowed on single-container apps", 400)
    service = services[0]
    env = {k: v for k, v in (service.config.get("environment") or {}).items() if k not in PRIVATE_ENV_VARS}
    return jsonify(
        appId=app_id, commit=obs.commits.get(app_id), containerId=service.container_id, env=env,
        imageId=service.config.get("image"), releaseId=service.release_id,
    )


@bp.get("/v1/device/host-config")
def get_host_config() -> Response:
    return jsonify(supervisor().host_config.get())


@bp.patch("/v1/device/host-config")
def patch_host_config() -> Response:
    """Hostname and proxy (spec §6.1), under the update locks of every app: the OS restarts the
    engine when the proxy changes. Errors are plain text, as the reference answers them."""
    from ..host.hostconfig import HostConfigError, parse_patch
    from ..state.locks import UpdatesLockedError

    sup = supervisor()
    body = request_body()
    try:
        change = parse_patch(body)
    except HostConfigError as exc:
        return _text(str(exc), 400)
    force = check_truthy(body.get("force")) or sup.lock_override()
    try:
        with sup.locks.with_lock(sup.current_app_ids(), force=force):
            sup.host_config.patch(change)
    except UpdatesLockedError as exc:
        return _text(str(exc), 423)
    except HostConfigError as exc:
        return _text(str(exc), 400)
    except Exception as exc:  # the reference's 503 text for anything else
        log.error("Could not update the host config: %s", exc, exc_info=exc)
        return _text(str(exc) or "Unknown error", 503)
    return _text("OK")


# --- service actions (issue #4)
def _service_actions():  # type: ignore[no-untyped-def]
    from ..state import actions  # imported where used: keeps the API import light

    return actions


@bp.post("/v1/restart")
def restart_app() -> Response:
    """Kill and recreate every container of ``body.appId``, under its update locks (423 when locked)."""

    def run(app_id: int, _body: dict, force: bool) -> Response:
        _service_actions().restart_app(supervisor(), app_id, force=force)
        return _text("OK")

    return app_action(request_body().get("appId"), IdErrors("Missing app id"), run)


def _stop_or_start(raw_app_id: str, action: str) -> Response:
    """Legacy single-container stop/start; answers the app's first container id."""

    def run(app_id: int, _body: dict, force: bool) -> Response:
        actions = _service_actions()
        container_id = actions.service_action(supervisor(), action, app_id, force=force, legacy=True)
        return jsonify(containerId=container_id)

    return app_action(raw_app_id, IdErrors("Invalid app id", unauthorized_json=False), run)


for _action in ("stop", "start"):
    bp.add_url_rule(f"/v1/apps/<raw_app_id>/{_action}", f"{_action}_app",
                    partial(_stop_or_start, action=_action), methods=["POST"])


@bp.post("/v1/purge")
def purge_app() -> Response:
    def run(app_id: int, _body: dict, force: bool) -> Response:
        _service_actions().purge(supervisor(), app_id, force=force)
        return jsonify(Data="OK", Error="")

    return app_action(request_body().get("appId"), IdErrors("Invalid or missing appId"), run)


def _power(reboot: bool) -> Response:
    """202 ``{"Data":"OK","Error":null}``; 423 (locked, or a host OS update running) or 500 with
    ``{"Data":"","Error":msg}``. Any valid key may ask, as in the reference."""
    from ..state.locks import UpdatesLockedError

    force = check_truthy(request_body().get("force"))
    try:
        _service_actions().shutdown(supervisor(), reboot=reboot, force=force)
    except UpdatesLockedError as err:
        response = jsonify(Data="", Error=str(err))
        response.status_code = 423
        return response
    except Exception as err:
        log.error("%s failed: %s", "Reboot" if reboot else "Shutdown", err)
        response = jsonify(Data="", Error=str(err) or "Unknown error")
        response.status_code = 500
        return response
    response = jsonify(Data="OK", Error=None)
    response.status_code = 202
    return response


@bp.post("/v1/reboot")
def reboot() -> Response:
    return _power(True)


@bp.post("/v1/shutdown")
def shutdown() -> Response:
    return _power(False)


# --- endpoints of the older API docs (issue #11) ---------------------------------------------------
@bp.route("/v1/tcp-ping", methods=["POST", "DELETE"])
def tcp_ping() -> Response:
    """Turn the TCP heartbeat used while the VPN is down on (POST) or off (DELETE): 204, no body.

    That heartbeat became the connectivity check; the setting is its config value
    ``connectivityCheckEnabled`` (``SUPERVISOR_CONNECTIVITY_CHECK``, spec §10.7), which the check
    reads. A later device-config apply of the variable overrides it, as for any config value."""
    enabled = request.method == "POST"
    supervisor().config.set_db(connectivityCheckEnabled=enabled)
    log.info("Connectivity check %s (tcp-ping)", "enabled" if enabled else "disabled")
    return Response(status=204)


#: What replaced the web terminal of ``spawn-tty`` (a tty.js tunnel, gone since the 2017 API).
TTY_GONE = (
    "The web terminal (spawn-tty/despawn-tty) was removed from the supervisor. Use the host's SSH "
    "server on port 22222 instead: `balena ssh <device uuid>` (or `ssh -p 22222 root@<device address>` "
    "on a development image)."
)


@bp.post("/v1/spawn-tty")
@bp.post("/v1/despawn-tty")
def spawn_tty() -> Response:
    """410 Gone naming the replacement: a 404 would read like a typo in the path."""
    return failed(TTY_GONE, 410)

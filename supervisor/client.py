"""A small client for apps that talk to the supervisor API (docs/API.md, ``GET /openapi.json``).

Standard library only, so an app container can copy this one file and use it with nothing installed::

    from supervisor.client import SupervisorClient, Locked

    client = SupervisorClient()            # $BALENA_SUPERVISOR_ADDRESS + $BALENA_SUPERVISOR_API_KEY
    try:
        client.restart_service(client.app_id, "main")
    except Locked:
        ...                                # an update lock is held: retry later, or force=True

Every method is one endpoint and returns its parsed body. An error status raises a typed error:
:class:`Unauthorized` (401), :class:`NotFound` (404), :class:`Locked` (423), otherwise
:class:`SupervisorError`, each carrying ``status`` and the server's ``message``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "SupervisorClient", "SupervisorError", "Unauthorized", "NotFound", "Locked", "ConnectionFailed",
]

DEFAULT_ADDRESS = "http://127.0.0.1:48484"
DEFAULT_TIMEOUT = 30.0


class SupervisorError(Exception):
    """The supervisor answered with an error status (``status``) and said why (``message``)."""

    def __init__(self, status: int | None, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.body = body


class Unauthorized(SupervisorError):
    """401: no key, a key the device does not know, or an app out of the key's scope."""


class NotFound(SupervisorError):
    """404: the app or service is not installed (or the route does not exist)."""


class Locked(SupervisorError):
    """423: an update lock is held; retry later or pass ``force=True``."""


class ConnectionFailed(SupervisorError):
    """The supervisor could not be reached at all (``status`` is None)."""


_ERRORS: dict[int, type[SupervisorError]] = {401: Unauthorized, 404: NotFound, 423: Locked}


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class _Reply:
    def __init__(self, status: int, content_type: str, data: bytes) -> None:
        self.status, self.content_type, self.data = status, content_type, data

    def body(self) -> Any:
        """JSON bodies parsed, text bodies as str, empty bodies as None."""
        if not self.data:
            return None
        text = self.data.decode("utf-8", errors="replace")
        if self.content_type.split(";")[0].strip() == "application/json":
            return json.loads(text)
        return text


class SupervisorClient:
    """The device API over HTTP. ``address`` and ``api_key`` default to the variables the
    supervisor injects into services labelled ``io.balena.features.supervisor-api``
    (``BALENA_SUPERVISOR_ADDRESS``/``_API_KEY``, or their older ``RESIN_`` names)."""

    def __init__(self, address: str | None = None, api_key: str | None = None,
                 timeout: float | None = DEFAULT_TIMEOUT) -> None:
        address = address or _env("BALENA_SUPERVISOR_ADDRESS", "RESIN_SUPERVISOR_ADDRESS") or DEFAULT_ADDRESS
        self.address = address.rstrip("/")
        self.api_key = api_key if api_key is not None else _env(
            "BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY")
        self.timeout = timeout

    @property
    def app_id(self) -> int | None:
        """This app's id, from ``BALENA_APP_ID`` (set in every service the supervisor starts)."""
        value = _env("BALENA_APP_ID", "RESIN_APP_ID")
        return int(value) if value and value.isdigit() else None

    # --- transport -----------------------------------------------------------------------------
    def _open(self, method: str, path: str, body: Mapping[str, Any] | None, query: Mapping[str, Any] | None,
              timeout: float | None) -> Any:
        url = self.address + urllib.parse.quote(path)
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Accept": "application/json, text/plain, */*"}
        if self.api_key:
            # The header, not ?apikey=: URLs end up in logs.
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the URL is ours
        except urllib.error.HTTPError as err:
            with err:
                reply = _Reply(err.code, err.headers.get("Content-Type", ""), err.read())
            raise self._error(reply) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConnectionFailed(None, f"cannot reach the supervisor at {self.address}: {reason}") from err

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None,
              query: Mapping[str, Any] | None = None) -> _Reply:
        with self._open(method, path, body, query, self.timeout) as response:
            try:
                data = response.read()
            except TimeoutError as err:
                raise ConnectionFailed(None, f"timed out reading {path}") from err
            return _Reply(response.status, response.headers.get("Content-Type", ""), data)

    @staticmethod
    def _error(reply: _Reply) -> SupervisorError:
        try:
            body = reply.body()
        except ValueError:
            body = reply.data.decode("utf-8", errors="replace")
        if isinstance(body, dict):
            message = str(body.get("message") or body.get("Error") or body)
        else:
            message = body or ""
        return _ERRORS.get(reply.status, SupervisorError)(reply.status, message, body)

    def _json(self, method: str, path: str, body: Mapping[str, Any] | None = None,
              query: Mapping[str, Any] | None = None) -> Any:
        return self._call(method, path, body, query).body()

    def _lines(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Iterator[bytes]:
        """The response body line by line as it arrives; closing the iterator hangs up."""
        response = self._open(method, path, body, None, None)  # a stream may idle for ever
        with response:
            while True:
                line = response.readline()
                if not line:
                    return
                yield line

    @staticmethod
    def _force(force: bool) -> dict[str, Any]:
        return {"force": True} if force else {}

    # --- v1 ----------------------------------------------------------------------------------------
    def ping(self) -> str:
        """``GET /ping``: ``"OK"`` (needs no key)."""
        return self._json("GET", "/ping")

    def healthy(self) -> bool:
        """``GET /v1/healthy``: False when the supervisor reports itself unhealthy (500)."""
        try:
            self._call("GET", "/v1/healthy")
        except SupervisorError as err:
            if err.status == 500:
                return False
            raise
        return True

    def blink(self) -> None:
        """``POST /v1/blink``: blink the identification LED."""
        self._call("POST", "/v1/blink")

    def regenerate_api_key(self) -> str:
        """``POST /v1/regenerate-api-key``: the new key, which this client uses from now on."""
        key = self._json("POST", "/v1/regenerate-api-key")
        self.api_key = key
        return key

    def update(self, *, force: bool = False, cancel: bool = False) -> bool:
        """``POST /v1/update``: True if an update was triggered (204), False if ignored (202)."""
        body = {**self._force(force), **({"cancel": True} if cancel else {})}
        return self._call("POST", "/v1/update", body).status == 204

    def reboot(self, *, force: bool = False) -> dict[str, Any]:
        """``POST /v1/reboot``: ``{"Data": "OK", "Error": None}``; :class:`Locked` if a lock is held."""
        return self._json("POST", "/v1/reboot", self._force(force))

    def shutdown(self, *, force: bool = False) -> dict[str, Any]:
        """``POST /v1/shutdown``: as :meth:`reboot`."""
        return self._json("POST", "/v1/shutdown", self._force(force))

    def v1_restart(self, app_id: int, *, force: bool = False) -> None:
        """``POST /v1/restart``: restart every service of the app."""
        self._call("POST", "/v1/restart", {"appId": app_id, **self._force(force)})

    def v1_purge(self, app_id: int, *, force: bool = False) -> dict[str, Any]:
        """``POST /v1/purge``: ``{"Data": "OK", "Error": ""}``."""
        return self._json("POST", "/v1/purge", {"appId": app_id, **self._force(force)})

    def v1_app(self, app_id: int) -> dict[str, Any]:
        """``GET /v1/apps/:appId``: ``{appId, commit, containerId, env, imageId, releaseId}``."""
        return self._json("GET", f"/v1/apps/{app_id}")

    def v1_stop(self, app_id: int, *, force: bool = False) -> str:
        """``POST /v1/apps/:appId/stop``: the container id of the (single-container) app."""
        return self._json("POST", f"/v1/apps/{app_id}/stop", self._force(force))["containerId"]

    def v1_start(self, app_id: int) -> str:
        """``POST /v1/apps/:appId/start``: the container id of the (single-container) app."""
        return self._json("POST", f"/v1/apps/{app_id}/start", {})["containerId"]

    def device(self) -> dict[str, Any]:
        """``GET /v1/device``: the device in the legacy v1 format."""
        return self._json("GET", "/v1/device")

    def host_config(self) -> dict[str, Any]:
        """``GET /v1/device/host-config``: ``{"network": {"hostname": ..., "proxy"?: ...}}``."""
        return self._json("GET", "/v1/device/host-config")

    def patch_host_config(self, network: Mapping[str, Any], *, force: bool = False) -> None:
        """``PATCH /v1/device/host-config`` with ``{"network": network}``."""
        self._call("PATCH", "/v1/device/host-config", {"network": dict(network), **self._force(force)})

    # --- v2 ----------------------------------------------------------------------------------------
    def _service_action(self, action: str, app_id: int, service_name: str | None, image_id: int | None,
                        force: bool) -> None:
        body: dict[str, Any] = self._force(force)
        if service_name is not None:
            body["serviceName"] = service_name
        if image_id is not None:
            body["imageId"] = image_id
        self._call("POST", f"/v2/applications/{app_id}/{action}-service", body)

    def restart_service(self, app_id: int, service_name: str | None = None, *, image_id: int | None = None,
                        force: bool = False) -> None:
        """``POST /v2/applications/:appId/restart-service``."""
        self._service_action("restart", app_id, service_name, image_id, force)

    def stop_service(self, app_id: int, service_name: str | None = None, *, image_id: int | None = None,
                     force: bool = False) -> None:
        """``POST /v2/applications/:appId/stop-service``."""
        self._service_action("stop", app_id, service_name, image_id, force)

    def start_service(self, app_id: int, service_name: str | None = None, *,
                      image_id: int | None = None) -> None:
        """``POST /v2/applications/:appId/start-service`` (takes no locks)."""
        self._service_action("start", app_id, service_name, image_id, False)

    def restart_app(self, app_id: int, *, force: bool = False) -> None:
        """``POST /v2/applications/:appId/restart``: restart every service of the app."""
        self._call("POST", f"/v2/applications/{app_id}/restart", self._force(force))

    def purge_app(self, app_id: int, *, force: bool = False) -> None:
        """``POST /v2/applications/:appId/purge``: remove the app's volumes and recreate it."""
        self._call("POST", f"/v2/applications/{app_id}/purge", self._force(force))

    def applications_state(self) -> dict[str, Any]:
        """``GET /v2/applications/state``: the apps in scope, keyed by app name."""
        return self._json("GET", "/v2/applications/state")

    def application_state(self, app_id: int) -> dict[str, Any]:
        """``GET /v2/applications/:appId/state`` (an unknown or out-of-scope app is a 409)."""
        return self._json("GET", f"/v2/applications/{app_id}/state")

    def state_status(self) -> dict[str, Any]:
        """``GET /v2/state/status``: containers, images and progress of the first app in scope."""
        return self._json("GET", "/v2/state/status")

    def container_ids(self) -> dict[str, str]:
        """``GET /v2/containerId``: service name -> container id, for the services in scope."""
        return self._json("GET", "/v2/containerId")["services"]

    def container_id(self, service_name: str) -> str:
        """``GET /v2/containerId?serviceName=``; an unknown name is :class:`NotFound` (404)."""
        return self._json("GET", "/v2/containerId", query={"serviceName": service_name})["containerId"]

    def version(self) -> str:
        """``GET /v2/version``: the supervisor's version."""
        return self._json("GET", "/v2/version")["version"]

    def device_name(self) -> str:
        """``GET /v2/device/name``."""
        return self._json("GET", "/v2/device/name")["deviceName"]

    def device_tags(self) -> list[dict[str, Any]]:
        """``GET /v2/device/tags``: ``[{id, name, value}]``."""
        return self._json("GET", "/v2/device/tags")["tags"]

    def set_device_tags(self, tags: Mapping[str, str]) -> None:
        """``PATCH /v2/device/tags``: add or change tags (never deletes)."""
        self._call("PATCH", "/v2/device/tags", dict(tags))

    def vpn(self) -> dict[str, bool]:
        """``GET /v2/device/vpn``: ``{"enabled": ..., "connected": ...}``."""
        return self._json("GET", "/v2/device/vpn")["vpn"]

    def device_info(self) -> dict[str, Any]:
        """``GET /v2/local/device-info``: ``{"arch": ..., "deviceType": ...}``."""
        return self._json("GET", "/v2/local/device-info")["info"]

    def local_target_state(self) -> dict[str, Any]:
        """``GET /v2/local/target-state``: the target the engine follows (``{"local": ...}``)."""
        return self._json("GET", "/v2/local/target-state")["state"]

    def set_local_target_state(self, target: Mapping[str, Any], *, force: bool = False) -> list[str]:
        """``POST /v2/local/target-state`` (local mode only) with a v2 ``{"local": ...}`` target; the
        warnings about keys it accepted but does not apply (``unknown key 'restrt' in ...``)."""
        body = self._json("POST", "/v2/local/target-state", {**target, **self._force(force)})
        return list(body.get("warnings") or []) if isinstance(body, dict) else []

    def cleanup_volumes(self) -> None:
        """``GET /v2/cleanup-volumes``: remove volumes no app references."""
        self._call("GET", "/v2/cleanup-volumes")

    def stream_logs(self) -> Iterator[dict[str, Any]]:
        """``GET /v2/local/logs``: log messages as dicts, as they come (the stream never ends by
        itself: stop iterating, or ``close()`` the iterator, to hang up)."""
        for line in self._lines("GET", "/v2/local/logs"):
            if line.strip():
                yield json.loads(line)

    def journal_logs(self, *, all: bool = False, follow: bool = False, count: int | None = None,  # noqa: A002
                     unit: str | None = None, container_id: str | None = None, since: str | None = None,
                     until: str | None = None, format: str | None = None) -> Iterator[str]:  # noqa: A002
        """``POST /v2/journal-logs``: the host journal's lines (``journalctl`` options by name)."""
        body: dict[str, Any] = {"all": all, "follow": follow}
        for key, value in (("count", count), ("unit", unit), ("containerId", container_id),
                           ("since", since), ("until", until), ("format", format)):
            if value is not None:
                body[key] = value
        for line in self._lines("POST", "/v2/journal-logs", body):
            yield line.decode("utf-8", errors="replace").rstrip("\n")

    def openapi(self) -> dict[str, Any]:
        """``GET /openapi.json``: the document describing every endpoint."""
        return self._json("GET", "/openapi.json")

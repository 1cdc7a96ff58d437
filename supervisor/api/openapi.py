"""The OpenAPI 3 document of the device API (spec §1.3-1.4), served at ``GET /openapi.json``.

It is built from Python data rather than shipped as a file so it lives in the wheel with the code it
describes, and tests (tests/test_openapi.py, tests/test_schemathesis.py) keep the two in step: every
Flask route is documented, every documented path is routed, and fuzzed responses match it.

Status codes and bodies follow the reference, including its odd ones (``409`` for an app out of
scope); where we deliberately differ (docs/API.md: no 5xx for a client's mistake) the document
describes what this supervisor answers.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify

from .. import __version__
from .target_schema import ACCEPTED as LOCAL_TARGET_ACCEPTED
from .target_schema import LOCAL_TARGET

bp = Blueprint("openapi", __name__)

JSON = "application/json"
TEXT = "text/plain"
FORM = "application/x-www-form-urlencoded"
NDJSON = "application/x-ndjson"

Schema = dict[str, Any]


# --- building blocks --------------------------------------------------------------------------

def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str] | None = None, **props: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


def _text(description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"description": description, "content": {TEXT: {"schema": schema or {"type": "string"}}}}


def _json(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _both(description: str, text: Schema | None = None, json: Schema | None = None) -> dict[str, Any]:
    """A status the reference answers as text from some branches and JSON from others."""
    return {
        "description": description,
        "content": {TEXT: {"schema": text or {"type": "string"}}, JSON: {"schema": json or _ref("Failed")}},
    }


def _const(value: str) -> Schema:
    return {"type": "string", "enum": [value]}


def _failed(description: str) -> dict[str, Any]:
    return _json(description, _ref("Failed"))


OK_TEXT = _text("Done", _const("OK"))
UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}
ENGINE_DOWN = {"$ref": "#/components/responses/EngineUnavailable"}
BAD_BODY = {"$ref": "#/components/responses/BadBody"}
LOCKED = _failed("An update lock is held (pass `force` to override it)")

APP_ID_PATH = {
    "name": "appId", "in": "path", "required": True,
    "description": "The app's id (an integer; anything else is answered with 400)",
    "schema": {"type": "integer", "minimum": 1},
}


def _body(schema: Schema, *, form: bool = True, required: bool = False) -> dict[str, Any]:
    """A request body: JSON, and form-encoded too (the reference's urlencoded parser accepts both)."""
    content: dict[str, Any] = {JSON: {"schema": schema}}
    if form:
        form_schema = copy.deepcopy(schema)
        # Form fields arrive as strings: "true", "1234".
        for prop in form_schema.get("properties", {}).values():
            prop.pop("type", None)
            prop.pop("anyOf", None)
            prop["type"] = "string"
        content[FORM] = {"schema": form_schema}
    return {"required": required, "content": content}


def _op(summary: str, responses: dict[str | int, Any], *, public: bool = False, body: Any = None,
        parameters: list[Any] | None = None, tag: str = "v2",
        description: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "operationId": "", "responses": {}}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
        responses.setdefault(400, BAD_BODY)
    if public:
        op["security"] = []
    else:
        responses.setdefault(401, UNAUTHORIZED)
    op["responses"] = {str(code): resp for code, resp in sorted(responses.items(), key=lambda kv: str(kv[0]))}
    return op


# --- schemas ------------------------------------------------------------------------------------

FORCE = {"type": "boolean", "description": "Override update locks"}
APP_ID_BODY = {"anyOf": [{"type": "integer"}, {"type": "string"}], "description": "The app's id"}
SERVICE_BODY = _obj(
    serviceName={"type": "string"}, imageId={"type": "integer"}, force=FORCE,
)

SCHEMAS: dict[str, Schema] = {
    "ServiceError": {
        **_obj(
            ["message", "since", "retries"],
            message={"type": "string", "description": "The last failure, e.g. the registry's `manifest "
                     "unknown`, the engine's start error, `Lockfile exists for ...`, or `The container "
                     "keeps restarting: exited with code 3`"},
            since={"type": ["string", "null"], "description": "ISO 8601 UTC: the first failure in a row "
                   "(for a crash loop: the container's last exit)"},
            retries={"type": "integer", "minimum": 0, "description": "Failed attempts in a row (for a "
                     "crash loop: the engine's restart count)"},
        ),
        "description": "Why the service is not as the target wants it (present only while it is not; "
                       "not in the reference)",
    },
    "Failed": _obj(["status", "message"], status=_const("failed"), message={"type": "string"}),
    "Success": _obj(["status"], status=_const("success")),
    "PowerResult": _obj(
        ["Data", "Error"],
        Data={"type": "string", "description": '"OK", or "" on failure'},
        Error={"type": ["string", "null"], "description": "null on success (the reference sends null)"},
    ),
    "PurgeResult": _obj(["Data", "Error"], Data=_const("OK"), Error={"type": "string"}),
    "ContainerId": _obj(["containerId"], containerId={"type": ["string", "null"]}),
    "V1App": _obj(
        ["appId", "containerId"],
        appId={"type": "integer"}, commit={"type": ["string", "null"]}, containerId={"type": "string"},
        env={"type": "object", "additionalProperties": {"type": "string"}},
        imageId={"type": ["string", "null"], "description": "the Docker image id (sha256:...)"},
        releaseId={"type": ["integer", "null"]},
    ),
    "V1Device": _obj(
        ["api_port", "supervisor_version"],
        api_port={"type": "integer"}, ip_address={"type": "string"},
        os_version={"type": ["string", "null"]}, mac_address={"type": ["string", "null"]},
        supervisor_version={"type": "string"}, update_pending={"type": "boolean"},
        update_failed={"type": "boolean"}, update_downloaded={"type": "boolean"},
        commit={"type": ["string", "null"]},
        status={"type": ["string", "null"], "description": "The first service's status (`Running` reads "
                "`Idle`); while the update fails, the failing step (e.g. `Failed to download image`, "
                "`Updates locked`)"},
        download_progress={"type": ["integer", "number", "null"]},
        error={"type": "string", "description": "While the update fails or the first service keeps "
               "restarting: the last error message (not in the reference)"},
    ),
    "Proxy": _obj(
        type={"type": "string", "enum": ["socks4", "socks5", "http-connect", "http-relay"]},
        ip={"type": "string"}, port={"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]},
        login={"type": "string"}, password={"type": "string"},
        dns={"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": "^.+:[0-9]+$"}]},
        noProxy={"type": "array", "items": {"type": "string"}},
    ),
    "HostConfig": _obj(
        ["network"],
        network=_obj(hostname={"type": "string"}, proxy=_ref("Proxy")),
    ),
    "HostConfigPatch": _obj(
        network=_obj(hostname={"type": "string"}, proxy=_ref("Proxy")),
        force=FORCE,
    ),
    "ApplicationsState": {
        "type": "object",
        "description": "Keyed by app name",
        "additionalProperties": _obj(
            ["appId", "commit", "services"],
            appId={"type": "integer"}, appUuid={"type": ["string", "null"]},
            commit={"type": ["string", "null"]}, updateStatus={"type": "string"},
            services={"type": "object", "additionalProperties": _obj(
                status={"type": "string"}, image={"type": ["string", "null"]},
                downloadProgress={"type": ["integer", "number", "null"]},
                releaseId={"type": ["integer", "null"]}, error=_ref("ServiceError"),
            )},
        ),
    },
    "ApplicationState": _obj(
        ["local"],
        commit={"type": ["string", "null"]},
        local={"type": "object", "description": "Keyed by appId", "additionalProperties": _obj(
            ["services"],
            services={"type": "object", "description": "Keyed by imageId", "additionalProperties": _obj(
                status={"type": "string"}, releaseId={"type": ["integer", "null"]},
                download_progress={"type": ["integer", "number", "null"]},
            )},
        )},
    ),
    "StateStatus": _obj(
        ["status", "appState", "overallDownloadProgress", "containers", "images", "awaitingTarget"],
        status=_const("success"), appState={"type": "string", "enum": ["applying", "applied"]},
        awaitingTarget={"type": "boolean", "description": (
            "A managed device that has not received a target from its cloud yet: it applies nothing "
            "and keeps every container, image, network and volume until the first target arrives")},
        overallDownloadProgress={"type": ["integer", "number", "null"]},
        containers={"type": "array", "items": _obj(
            status={"type": "string"}, serviceName={"type": "string"}, appId={"type": "integer"},
            imageId={"type": ["integer", "null"]}, serviceId={"type": ["integer", "null"]},
            containerId={"type": "string"}, createdAt={"type": ["string", "null"]},
            error=_ref("ServiceError"),
        )},
        images={"type": "array", "items": _obj(
            name={"type": "string"}, appId={"type": "integer"}, serviceName={"type": "string"},
            imageId={"type": ["integer", "null"]}, dockerImageId={"type": ["string", "null"]},
            status={"type": "string"}, downloadProgress={"type": ["integer", "number", "null"]},
            error=_ref("ServiceError"),
        )},
        release={"type": ["string", "null"]},
    ),
    "LocalTarget": LOCAL_TARGET,
    "LocalTargetAccepted": LOCAL_TARGET_ACCEPTED,
    "Tag": _obj(["id", "name", "value"], id={"type": "integer"}, name={"type": "string"},
                value={"type": "string"}),
    "JournalQuery": _obj(
        all={"type": "boolean", "description": "journalctl -a"},
        follow={"type": "boolean", "description": "journalctl --follow (the response never ends)"},
        count={"type": "integer", "minimum": 1, "description": "journalctl -n"},
        unit={"type": "string", "description": "journalctl -u"},
        containerId={"type": "string", "description": "journalctl -t"},
        since={"type": "string", "description": "journalctl -S"},
        until={"type": "string", "description": "journalctl -U"},
        format={"type": "string", "description": "journalctl -o (default short)"},
    ),
}

RESPONSES: dict[str, Any] = {
    "Unauthorized": _text("No API key, or one the device does not know", _const("Unauthorized")),
    "EngineUnavailable": _failed("The Docker engine cannot be reached (the state engine keeps retrying)"),
    "BadBody": _failed("The body is not valid JSON, or not a JSON object"),
}


# --- paths ---------------------------------------------------------------------------------------

def _paths() -> dict[str, dict[str, Any]]:
    out_of_scope = _both("No valid key (text), or the app is out of the key's scope (JSON)",
                         text=_const("Unauthorized"))

    def scoped(invalid: str, not_installed: dict[str, Any]) -> dict[int, Any]:
        """Errors of an action on one app: its id, the key's scope, its update locks."""
        return {
            400: _both(invalid),
            401: out_of_scope,
            404: not_installed,
            423: LOCKED,
            503: _failed("The action failed"),
        }

    service_action_errors = scoped("Invalid app id (not a positive integer), or no serviceName/imageId "
                                   "for a multi-container app",
                                   _text("The app, or the service, is not installed"))
    app_action_errors = scoped("Invalid or missing app id (not a positive integer)", _failed(
        "The app is not installed: `Application with ID <id> is not in the current state` (the reference "
        "answers 503)"))
    v1_app_errors = {
        400: _both("Invalid app id, app not installed, or not a single-container app"),
        401: out_of_scope,
        503: _failed("The engine could not be read or the action failed"),
    }

    def service_action(verb: str) -> dict[str, Any]:
        return {"post": _op(
            f"{verb.capitalize()} one service of an app", {200: OK_TEXT, **service_action_errors},
            parameters=[APP_ID_PATH], body=_body(SERVICE_BODY),
            description="The service is chosen by `serviceName` or `imageId` (either may be omitted for a "
                        "single-container app).",
        )}

    def power(what: str) -> dict[str, Any]:
        return {"post": _op(
            what, {202: _json("Accepted: the device goes down in a moment", _ref("PowerResult")),
                   423: _json("An update lock is held, or a host OS update is in progress",
                              _ref("PowerResult")),
                   500: _json("The device cannot do it (no system bus, or logind refuses): `Error` says why",
                              _ref("PowerResult"))},
            body=_body(_obj(force=FORCE)), tag="v1",
        )}

    v1_app_start_stop = {
        200: _json("The container id of the app's service afterwards", _ref("ContainerId")),
        **v1_app_errors, 404: _text("The service does not exist in the target release"), 423: LOCKED,
    }

    return {
        "/ping": {"get": _op("Liveness", {200: OK_TEXT}, public=True, tag="v1")},
        "/v1/healthy": {"get": _op(
            "Health of the supervisor's own subsystems",
            {200: OK_TEXT, 500: _text("A subsystem is dead or stuck", _const("Unhealthy"))},
            public=True, tag="v1",
        )},
        "/openapi.json": {"get": _op(
            "This document", {200: _json("The OpenAPI 3 document", {"type": "object"})}, tag="meta",
        )},
        "/metrics": {"get": _op(
            "The supervisor's own metrics (Prometheus text format 0.0.4)",
            {200: {"description": "Counters, a histogram and gauges: reconcile rounds, steps by kind "
                                  "and outcome, bytes pulled, log lines, API requests, lock waits, memory, "
                                  "threads (docs/API.md \"Metrics\")",
                   "content": {"text/plain": {"schema": {"type": "string"}}}}},
            tag="meta",
        )},
        "/v1/blink": {"post": _op("Blink the identification LED for 15 s", {200: OK_TEXT}, tag="v1")},
        "/v1/regenerate-api-key": {"post": _op(
            "Replace the key used for this request",
            {200: _text("The new key", {"type": "string", "pattern": "^[0-9a-f]{32}$"}),
             400: _failed("The request carried no key (local mode), or an unknown one")},
            tag="v1",
        )},
        "/v1/restart": {"post": _op(
            "Restart every service of an app",
            {200: OK_TEXT, **app_action_errors},
            body=_body(_obj(["appId"], appId=APP_ID_BODY, force=FORCE), required=True), tag="v1",
        )},
        "/v1/apps/{appId}/stop": {"post": _op(
            "Stop the service of a single-container app", v1_app_start_stop,
            parameters=[APP_ID_PATH], body=_body(_obj(force=FORCE)), tag="v1",
        )},
        "/v1/apps/{appId}/start": {"post": _op(
            "Start the service of a single-container app", dict(v1_app_start_stop),
            parameters=[APP_ID_PATH], body=_body(_obj(force=FORCE)), tag="v1",
        )},
        "/v1/reboot": power("Reboot the device"),
        "/v1/shutdown": power("Shut the device down"),
        "/v1/apps/{appId}": {"get": _op(
            "A single-container app", {200: _json("The app", _ref("V1App")), **v1_app_errors},
            parameters=[APP_ID_PATH], tag="v1",
        )},
        "/v1/purge": {"post": _op(
            "Remove an app's volumes (its data) and recreate the app",
            {200: _json("Purged", _ref("PurgeResult")), **app_action_errors},
            body=_body(_obj(["appId"], appId=APP_ID_BODY, force=FORCE), required=True), tag="v1",
        )},
        "/v1/update": {"post": _op(
            "Apply the target state now",
            {204: {"description": "An update was triggered (`force`, or instant updates are on)"},
             202: {"description": "Ignored: instant updates are off and `force` was not set"},
             503: _failed("The update could not be triggered")},
            body=_body(_obj(force=FORCE, cancel={"type": "boolean", "description": "Abort the apply "
                                                 "in progress"})),
            tag="v1",
        )},
        "/v1/tcp-ping": {
            verb: _op(
                f"{what} the TCP connectivity heartbeat (older API docs): today's connectivity "
                "check, `SUPERVISOR_CONNECTIVITY_CHECK`",
                {204: {"description": f"{what}d; no body"}}, tag="v1",
            )
            for verb, what in (("post", "Enable"), ("delete", "Disable"))
        },
        **{
            f"/v1/{name}": {"post": _op(
                f"Removed (older API docs): {summary}",
                {410: _failed("Gone: the message names the replacement, the host's SSH on port 22222 "
                              "(`balena ssh`)")}, tag="v1",
            )}
            for name, summary in (("spawn-tty", "open a web terminal"), ("despawn-tty", "close it"))
        },
        "/v1/device/host-config": {
            "get": _op(
                "Hostname and proxy of the host OS",
                {200: _json("The host configuration", _ref("HostConfig")),
                 503: _failed("The host configuration could not be read")},
                tag="v1",
            ),
            "patch": _op(
                "Change the hostname or proxy (respects update locks)",
                {200: OK_TEXT,
                 400: _both("Could not parse host config input to a valid format"),
                 423: _both("An update lock is held"),
                 503: _both("The host configuration could not be changed")},
                body=_body(_ref("HostConfigPatch"), form=False, required=True), tag="v1",
            ),
        },
        "/v1/device": {"get": _op(
            "Device state in the legacy v1 format",
            {200: _json("The device", _ref("V1Device")), 503: ENGINE_DOWN}, tag="v1",
        )},
        "/v2/applications/{appId}/restart-service": service_action("restart"),
        "/v2/applications/{appId}/stop-service": service_action("stop"),
        "/v2/applications/{appId}/start-service": service_action("start"),
        "/v2/applications/{appId}/purge": {"post": _op(
            "Remove an app's volumes (its data) and recreate the app", {200: OK_TEXT, **app_action_errors},
            parameters=[APP_ID_PATH], body=_body(_obj(force=FORCE)),
        )},
        "/v2/applications/{appId}/restart": {"post": _op(
            "Restart every service of an app", {200: OK_TEXT, **app_action_errors},
            parameters=[APP_ID_PATH], body=_body(_obj(force=FORCE)),
        )},
        "/v2/applications/state": {"get": _op(
            "State of the apps in the key's scope",
            {200: _json("Keyed by app name", _ref("ApplicationsState")), 503: ENGINE_DOWN},
        )},
        "/v2/applications/{appId}/state": {"get": _op(
            "Legacy state of one app",
            {200: _json("The app's state", _ref("ApplicationState")),
             400: _failed("Invalid application ID"),
             409: _failed("The app does not exist, or is out of the key's scope"),
             503: ENGINE_DOWN},
            parameters=[{**APP_ID_PATH, "description": "The app's id; not an integer is 400"}],
        )},
        "/v2/local/target-state": {
            "get": _op(
                "The target state the engine follows",
                {200: _json("The instantiated target", _obj(
                    ["status", "state"], status=_const("success"), state=_obj(["local"], local=_obj(
                        ["name", "config", "apps"], name={"type": "string"},
                        config={"type": "object"}, apps={"type": "object"},
                    )),
                ))},
            ),
            "post": _op(
                "Set the target state (local mode only)",
                {200: _json("Stored; the engine applies it", _ref("LocalTargetAccepted")),
                 400: _failed("Not in local mode, or not a target the device can apply: not JSON, not the "
                              "documented shape, or a value the engine would refuse. Nothing changes; the "
                              "message names the field as written, e.g. `Invalid target state: "
                              "services.web.ports[0]: port 99999 is out of range 0-65535`")},
                body=_body(_ref("LocalTarget"), form=False, required=True),
            ),
        },
        "/v2/local/device-info": {"get": _op(
            "Architecture and device type",
            {200: _json("The device", _obj(
                ["status", "info"], status=_const("success"),
                info=_obj(["arch", "deviceType"], arch={"type": ["string", "null"]},
                          deviceType={"type": ["string", "null"]}))),
             500: _failed("The device type could not be read")},
        )},
        "/v2/local/logs": {"get": _op(
            "Stream the device's logs (never ends)",
            {200: {"description": "Newline-delimited JSON: first `{\"message\":\"Streaming logs\","
                                  "\"isSystem\":true}`, then one object per log message",
                   "content": {NDJSON: {"schema": {"type": "string"}}}},
             503: _failed("Too many streams are open")},
        )},
        "/v2/version": {"get": _op(
            "The supervisor's version",
            {200: _json("The version", _obj(["status", "version"], status=_const("success"),
                                            version={"type": "string"}))},
        )},
        "/v2/containerId": {"get": _op(
            "Container ids of the services in the key's scope",
            {200: _json("All services (no name given), or the named one", {"oneOf": [
                _obj(["status", "services"], status=_const("success"),
                     services={"type": "object", "additionalProperties": {"type": "string"}}),
                _obj(["status", "containerId"], status=_const("success"), containerId={"type": "string"}),
            ]}),
             404: _failed("No service in the key's scope has that name (the reference answers 503)")},
            parameters=[
                {"name": "serviceName", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "service", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "Alias of serviceName"},
            ],
        )},
        "/v2/state/status": {"get": _op(
            "Status of the first app in scope: containers, images, download progress",
            {200: _json("The status", _ref("StateStatus")), 503: ENGINE_DOWN},
        )},
        "/v2/device/name": {"get": _op(
            "The device name",
            {200: _json("The name", _obj(["status", "deviceName"], status=_const("success"),
                                         deviceName={"type": "string"}))},
        )},
        "/v2/device/tags": {
            "get": _op(
                "The device's tags (from the cloud)",
                {200: _json("The tags", _obj(["status", "tags"], status=_const("success"),
                                             tags={"type": "array", "items": _ref("Tag")})),
                 409: _failed("The device has no cloud to ask: it is unmanaged, or not provisioned yet "
                              "(the reference answers 500)"),
                 500: _failed("The cloud could not be reached, or answered with an error")},
            ),
            "patch": _op(
                "Add or change tags (never deletes)",
                {202: _json("Stored; reported to the cloud in the background", _ref("Success")),
                 400: _failed("The body is not an object of strings, or a key contains whitespace"),
                 500: _failed("The tags could not be stored")},
                body=_body({"type": "object", "additionalProperties": {"type": "string"}}, form=False,
                           required=True),
            ),
        },
        "/v2/device/vpn": {"get": _op(
            "VPN state",
            {200: _json("The VPN", _obj(["status", "vpn"], status=_const("success"),
                                        vpn=_obj(["enabled", "connected"], enabled={"type": "boolean"},
                                                 connected={"type": "boolean"})))},
        )},
        "/v2/cleanup-volumes": {"get": _op(
            "Remove the volumes no app references",
            {200: _json("Done", _ref("Success")),
             500: _failed("The volumes could not be removed (the reference hangs instead)"),
             503: ENGINE_DOWN},
        )},
        "/v2/journal-logs": {"post": _op(
            "The host journal (journalctl), streamed",
            {200: _text("journalctl's output, in the requested format"),
             503: _failed("No journalctl on this device, or too many streams are open")},
            body=_body(_ref("JournalQuery"), form=True),
        )},
    }


@cache
def _document() -> dict[str, Any]:
    paths = _paths()
    for path, methods in paths.items():
        for method, op in methods.items():
            op["operationId"] = method + "_" + re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Device supervisor API",
            "version": __version__,
            "description": "The local API of the device supervisor, compatible with the balena Supervisor "
                           "(v19). Apps reach it at `$BALENA_SUPERVISOR_ADDRESS` with "
                           "`$BALENA_SUPERVISOR_API_KEY`. Unmanaged and local-mode devices need no key.",
        },
        "servers": [{"url": "http://127.0.0.1:48484"}],
        "security": [{"apiKeyQuery": []}, {"bearer": []}, {"apiKeyHeader": []}],
        "tags": [{"name": "v1"}, {"name": "v2"}, {"name": "meta"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "apikey",
                                "description": "Checked first; the name is case-sensitive"},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "`Authorization: Bearer <key>` (scheme case-insensitive)"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "Authorization",
                                 "description": "`Authorization: ApiKey <key>`; the key is `[A-Za-z0-9_]+`"},
            },
            "schemas": SCHEMAS,
            "responses": RESPONSES,
        },
    }


def document() -> dict[str, Any]:
    """A fresh copy of the document (callers may change theirs)."""
    return copy.deepcopy(_document())


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(_document())

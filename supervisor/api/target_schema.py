"""JSON Schema of the ``POST /v2/local/target-state`` body, for ``/openapi.json`` (issue #11).

It describes the shape the admission gate (state/admission.py, compose/rules.py) accepts, so a client
can validate a body before sending it: the documented v2 shape (§2.5.1), the service fields with their
types and the value grammars that fit in a schema (port strings with numbers 0-65535, restart
policies, sizes, durations, capability names...). What a schema cannot say (a volume declared in
the release, the kernel's environment limits, two services on one host port) is refused by the
supervisor with a 400 naming the field. Unknown keys are allowed, as the supervisor allows them
(with a warning in the response).
"""

from __future__ import annotations

import re
from typing import Any, Final

from supervisor.compose.fields import RESTART_POLICIES
from supervisor.compose.rules import CAPABILITIES
from supervisor.state.validation import (
    CONFIG_VAR_NAME_PATTERN,
    DOCKER_NAME_PATTERN,
    ENV_VAR_NAME_PATTERN,
    LABEL_NAME_PATTERN,
)

Schema = dict[str, Any]

_PORT_NUMBER = r"0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_RANGE = rf"{_PORT_NUMBER}(?:-{_PORT_NUMBER})?"
_HOST_IP = r"(?:\[[0-9a-fA-F:.]+\]|[0-9a-fA-F.:]+)"  # IPv6 in brackets, as compose writes it
PORT_PATTERN: Final = rf"^(?:(?:{_HOST_IP}:)?(?:{_RANGE})?:)?{_RANGE}(?:/(?:tcp|udp))?$"
SIZE_PATTERN: Final = r"^[0-9]+[bBkKmMgG]?[bB]?$"
DURATION_PATTERN: Final = r"^(?:[0-9.]+(?:ns|us|µs|ms|s|m|h|d|w))+$|^0$"
NUMERIC_ID: Final = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^[0-9]+$"}]}
_STRING_OR_LIST: Final = {
    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": ["string", "number"]}}]
}
_STRING_MAP: Final = {
    "type": "object",
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
}
_BOOL: Final = {"anyOf": [{"type": "boolean"}, {"enum": [0, 1]}]}
_CAP_NAMES = sorted(CAPABILITIES) + ["ALL"]
_CAP_SPELLINGS = sorted({f"{prefix}{name}" for name in _CAP_NAMES for prefix in ("", "CAP_")})
_CAPS: Final = {"type": "array", "items": {"enum": _CAP_SPELLINGS + [c.lower() for c in _CAP_SPELLINGS]}}
_SIZE: Final = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": SIZE_PATTERN}]}
_DURATION: Final = {
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": DURATION_PATTERN}]
}


def _int(minimum: int | None = None, maximum: int | None = None) -> Schema:
    """An integer, or a string holding one (YAML may quote numbers; the supervisor reads both)."""
    number: Schema = {"type": "integer"}
    if minimum is not None:
        number["minimum"] = minimum
    if maximum is not None:
        number["maximum"] = maximum
    return {"anyOf": [number, {"type": "string", "pattern": r"^\s*-?[0-9]+\s*$"}]}


def _any_case(word: str) -> str:
    """A pattern matching ``word`` in any case (ECMA-262 patterns have no inline flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _names(pattern: str, values: Schema) -> Schema:
    return {
        "type": "object",
        "propertyNames": {"pattern": pattern, "maxLength": 255},
        "additionalProperties": values,
    }


SERVICE: Final[Schema] = {
    "type": "object",
    "description": "One service, keyed in `services` by its serviceId. Besides the fields below, any "
    "docker-compose service key (snake_case, as in the compose file); unknown keys are "
    "accepted and reported in the response's `warnings`.",
    "required": ["serviceName", "imageId", "image", "environment", "labels"],
    "properties": {
        "serviceName": {"type": "string", "pattern": DOCKER_NAME_PATTERN, "maxLength": 255},
        "serviceId": NUMERIC_ID,
        "imageId": NUMERIC_ID,
        "image": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "description": "[registry[:port]/]name[:tag][@digest], the name in lower case",
        },
        "environment": _names(ENV_VAR_NAME_PATTERN, {"type": "string"}),
        "labels": _names(LABEL_NAME_PATTERN, {"type": "string"}),
        "running": _BOOL,
        "contract": {"type": "object"},
        "ports": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"type": "string", "pattern": PORT_PATTERN},
                    {"type": "integer", "minimum": 1, "maximum": 65535},
                    {
                        "type": "object",
                        "required": ["target"],
                        "properties": {
                            "target": {"type": ["integer", "string"]},
                            "published": {"type": ["integer", "string"]},
                            "protocol": {"enum": ["tcp", "udp"]},
                            "host_ip": {"type": "string"},
                        },
                    },
                ]
            },
        },
        "restart": {
            "type": "string",
            "pattern": rf"^\s*(?:{'|'.join(_any_case(p) for p in RESTART_POLICIES)}"
            rf"|{_any_case('on-failure')}:[0-9]{{1,10}})?\s*$",
        },
        "volumes": {
            "type": "array",
            "items": {
                "anyOf": [
                    {
                        "type": "string",
                        "description": "name:/path[:ro] (name declared in the app's volumes) or /path",
                    },
                    {
                        "type": "object",
                        "required": ["type", "target"],
                        "properties": {
                            "type": {"enum": ["volume", "bind", "tmpfs"]},
                            "target": {"type": "string", "pattern": "^/"},
                            "source": {"type": "string"},
                            "read_only": _BOOL,
                        },
                    },
                ]
            },
        },
        "networks": {
            "anyOf": [
                {"type": "array", "items": {"type": "string"}},
                {
                    "type": "object",
                    "additionalProperties": {
                        "type": ["object", "null"],
                        "properties": {
                            "aliases": {"type": "array", "items": {"type": "string"}},
                            "ipv4_address": {"type": "string"},
                            "ipv6_address": {"type": "string"},
                        },
                    },
                },
            ],
            "description": "Names declared in the app's networks, or default",
        },
        "network_mode": {"type": "string", "description": "host, bridge, none, service:<name> or a network"},
        "depends_on": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}]},
        "command": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": ["string", "number"]}}]
        },
        "entrypoint": {
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": ["string", "number"]}}]
        },
        "cap_add": _CAPS,
        "cap_drop": _CAPS,
        "devices": {
            "type": "array",
            "items": {"type": "string", "pattern": "^/[^:]*(:/[^:]*(:[rwm]{1,3})?)?$"},
        },
        "dns": _STRING_OR_LIST,
        "dns_search": _STRING_OR_LIST,
        "dns_opt": _STRING_OR_LIST,
        "extra_hosts": {
            "anyOf": [
                *_STRING_OR_LIST["anyOf"],
                {"type": "object", "additionalProperties": {"type": "string"}},
            ]
        },
        "tmpfs": _STRING_OR_LIST,
        "security_opt": _STRING_OR_LIST,
        "group_add": _STRING_OR_LIST,
        "sysctls": {"anyOf": [_STRING_MAP, {"type": "array", "items": {"type": "string", "pattern": "="}}]},
        "ulimits": {
            "type": "object",
            "additionalProperties": {
                "anyOf": [
                    _int(-1),
                    {
                        "type": "object",
                        "required": ["soft", "hard"],
                        "additionalProperties": False,
                        "properties": {
                            "soft": _int(-1),
                            "hard": _int(-1),
                        },
                    },
                ]
            },
        },
        "healthcheck": {
            "type": "object",
            "properties": {
                "test": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "interval": _DURATION,
                "timeout": _DURATION,
                "start_period": _DURATION,
                "retries": _int(0),
                "disable": _BOOL,
            },
        },
        "mem_limit": _SIZE,
        "mem_reservation": _SIZE,
        "shm_size": _SIZE,
        "stop_grace_period": _DURATION,
        "cpus": {"type": ["number", "string"]},
        "cpu_shares": _int(0),
        "cpu_quota": _int(-1),
        "cpuset": {"type": ["string", "number"]},
        "oom_score_adj": _int(-1000, 1000),
        "pids_limit": _int(-1),
        "privileged": _BOOL,
        "read_only": _BOOL,
        "tty": _BOOL,
        "init": _BOOL,
        "oom_kill_disable": _BOOL,
        "working_dir": {"type": "string", "pattern": "^(/.*)?$"},
        "user": {"type": ["string", "number"]},
        "hostname": {"type": ["string", "number"], "maxLength": 64},
        "stop_signal": {"type": ["string", "number"]},
        "pid": {"enum": ["", "host"]},
        "ipc": {"enum": ["", "private", "shareable", "none", "host"]},
        "userns_mode": {"enum": ["", "host"]},
        "mac_address": {"type": "string", "pattern": "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"},
    },
}

# A compose key set to null is unset (the reference's default), as the supervisor reads it.
for _key, _prop in list(SERVICE["properties"].items()):
    if _key not in ("serviceName", "serviceId", "imageId", "image", "environment", "labels", "contract"):
        SERVICE["properties"][_key] = {"anyOf": [_prop, {"type": "null"}]}


def _nullable(schema: Schema) -> Schema:
    """Every property (at any depth) may also be null: unset, as the supervisor reads it."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {
            k: {"anyOf": [_nullable(v), {"type": "null"}]} for k, v in out["properties"].items()
        }
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _nullable(out[key])
    return out


APP: Final[Schema] = {
    "type": "object",
    "required": ["name"],
    "dependentRequired": {"commit": ["releaseId", "services"], "services": ["commit"]},
    "properties": {
        "name": {"type": "string", "maxLength": 255},
        "commit": {
            "type": "string",
            "maxLength": 255,
            "description": "The release; without one the app has no release (and must have no services)",
        },
        "releaseId": NUMERIC_ID,
        "services": {
            "type": "object",
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": SERVICE,
            "description": "Keyed by serviceId; {} for a release without services",
        },
        "volumes": _nullable(
            _names(
                DOCKER_NAME_PATTERN,
                {
                    "type": "object",
                    "properties": {
                        "driver": {"enum": ["local"]},
                        "driver_opts": _STRING_MAP,
                        "labels": _STRING_MAP,
                    },
                },
            )
        ),
        "networks": _nullable(
            _names(
                DOCKER_NAME_PATTERN,
                {
                    "type": "object",
                    "properties": {
                        "driver": {"enum": ["bridge", "macvlan", "ipvlan"]},
                        "driver_opts": _STRING_MAP,
                        "internal": _BOOL,
                        "enable_ipv6": _BOOL,
                        "labels": _STRING_MAP,
                        "ipam": {
                            "type": "object",
                            "properties": {
                                "driver": {"enum": ["default"]},
                                "options": _STRING_MAP,
                                "config": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "subnet": {"type": "string"},
                                            "gateway": {"type": "string"},
                                            "ip_range": {"type": "string"},
                                            "aux_addresses": _STRING_MAP,
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            )
        ),
    },
}

LOCAL_TARGET: Final[Schema] = {
    "type": "object",
    "description": 'The v2 local target (spec §2.5.1). `{"local": {"apps": {}}}` removes every app; a '
    "body without `local.apps` is refused. docs/LOCAL-MODE.md has a complete example.",
    "required": ["local"],
    "properties": {
        "local": {
            "type": "object",
            "required": ["apps"],
            "properties": {
                "name": {"type": ["string", "null"], "maxLength": 255, "pattern": "^[^\\n]*$"},
                "config": {"anyOf": [_names(CONFIG_VAR_NAME_PATTERN, {"type": "string"}), {"type": "null"}]},
                "apps": {
                    "type": "object",
                    "propertyNames": {"pattern": "^(0|[1-9][0-9]*)$"},
                    "additionalProperties": APP,
                    "description": "Keyed by appId",
                },
            },
        },
        "force": {"type": "boolean", "description": "Override update locks"},
    },
}

ACCEPTED: Final[Schema] = {
    "type": "object",
    "required": ["status", "message"],
    "properties": {
        "status": {"type": "string", "enum": ["success"]},
        "message": {"type": "string", "enum": ["OK"]},
        "warnings": {
            "type": "array",
            "items": {"type": "string"},
            "description": (
                "Present when some keys were accepted but are not applied: unknown keys (with the closest "
                "known one, e.g. `unknown key 'restrt' in services.web ignored (did you mean 'restart'?)`), "
                "compose keys the supervisor does not support, bind mounts. Each is also logged once."
            ),
        },
    },
}

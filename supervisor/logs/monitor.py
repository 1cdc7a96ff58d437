"""The log monitor (spec §8.1): which source reads each service container's output.

Each supervised service container is routed by the engine's log driver of that container
(``HostConfig.LogConfig.Type``): ``json-file`` and ``local`` are read through the engine's ``logs``
endpoint (:mod:`supervisor.logs.docker_source`), ``journald`` from the journal (the journald source,
which matches :class:`LogSource`). Any other driver keeps no log the supervisor can read: such a
container is skipped with one warning.

``BALENA_LOGS_LEVEL`` in the service's environment decides what is forwarded (§8.1): ``none`` is never
attached, ``err``/``error`` forwards stderr only, anything else everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

__all__ = [
    "ContainerInfo",
    "LogLevel",
    "LogSource",
    "Publish",
    "Route",
    "log_level",
    "route",
]

#: What a source forwards of an attached container: everything, or stderr only.
LogLevel = Literal["all", "err"]

#: How a source hands messages on: one call per batch (a list of §8.2 container messages, in order).
#: The list is the source's to give away: the receiver may keep it and add keys to its messages
#: (``_ack``, see :class:`supervisor.logs.hub.LogBackend`).
Publish = Callable[[list[dict[str, Any]]], None]

#: Log drivers whose output the engine's ``logs`` endpoint can read back.
ENGINE_DRIVERS = frozenset({"json-file", "local"})
JOURNALD_DRIVER = "journald"


class LogSource(Protocol):
    """A reader of service containers' output (the engine's ``logs`` endpoint, or journald).

    A source is constructed with a :data:`Publish` callable and publishes each attached
    container's lines as §8.2 container messages: ``{"message": str, "isStdErr": bool,
    "timestamp": ms epoch, "serviceId": int}`` (and nothing of a container that is not attached).
    With ``log_level == "err"`` only stderr lines are published.

    All four methods are called from the monitor's thread and must not block for long (no
    waiting on a child process or the engine): a source reads on a thread of its own.
    ``attach`` of a container already attached only updates its ``service_id``/``log_level``;
    ``detach`` of a container not attached does nothing. ``stop`` ends the source's thread(s)
    and child processes; ``attach`` before ``start`` is remembered until ``start``.
    """

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def attach(self, container_id: str, service_id: int, log_level: LogLevel) -> None: ...

    def detach(self, container_id: str) -> None: ...


@dataclass(frozen=True)
class ContainerInfo:
    """What routing needs of one container, read from ``GET /containers/<id>/json``."""

    container_id: str
    app_id: int | None
    service_id: int | None
    service_name: str | None
    log_driver: str
    env: Mapping[str, str]
    running: bool
    supervised: bool

    @classmethod
    def from_inspect(cls, inspect: Mapping[str, Any]) -> ContainerInfo:
        config = inspect.get("Config") or {}
        labels = config.get("Labels") or {}
        host_config = inspect.get("HostConfig") or {}
        env: dict[str, str] = {}
        for entry in config.get("Env") or ():
            name, sep, value = str(entry).partition("=")
            if sep:
                env[name] = value
        return cls(
            container_id=str(inspect.get("Id") or ""),
            app_id=_int(labels.get("io.balena.app-id")),
            service_id=_int(labels.get("io.balena.service-id")),
            service_name=labels.get("io.balena.service-name"),
            log_driver=str((host_config.get("LogConfig") or {}).get("Type") or ""),
            env=env,
            running=bool((inspect.get("State") or {}).get("Running")),
            supervised=labels.get("io.balena.supervised") is not None,
        )


@dataclass(frozen=True)
class Route:
    """Where a container's output goes: ``source`` is ``"engine"``, ``"journald"`` or None (not
    attached, ``reason`` says why)."""

    source: Literal["engine", "journald"] | None
    level: LogLevel = "all"
    reason: str = ""


def log_level(env: Mapping[str, str]) -> LogLevel | None:
    """``BALENA_LOGS_LEVEL`` (§8.1): None for ``none`` (never attached), ``err`` for ``err|error``."""
    value = (env.get("BALENA_LOGS_LEVEL") or "").strip().lower()
    if value == "none":
        return None
    if value in ("err", "error"):
        return "err"
    return "all"


def route(info: ContainerInfo, managed_apps: Sequence[str] | frozenset[str] | None = None) -> Route:
    """Which source reads ``info``'s output, if any. ``managed_apps`` (app ids as strings, None for
    all) scopes the supervisor as ``--apps`` does."""
    if not info.supervised or info.service_id is None or info.app_id is None:
        return Route(None, reason="not a supervised service container")
    if managed_apps is not None and str(info.app_id) not in managed_apps:
        return Route(None, reason="its app is not managed by this supervisor")
    level = log_level(info.env)
    if level is None:
        return Route(None, reason="BALENA_LOGS_LEVEL=none")
    if info.log_driver in ENGINE_DRIVERS:
        return Route("engine", level)
    if info.log_driver == JOURNALD_DRIVER:
        return Route("journald", level)
    return Route(None, reason=f"the engine's {info.log_driver or 'unknown'} log driver keeps no readable log")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None

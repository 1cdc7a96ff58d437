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

import contextlib
import json
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..subsystem import Subsystem
from .engine_http import EngineAddress, EngineHTTPError, query

log = logging.getLogger(__name__)

__all__ = [
    "ContainerInfo",
    "LazySource",
    "LogMonitor",
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


class LazySource:
    """A :class:`LogSource` made by ``make()`` only when first needed: at the first ``attach`` (a
    container that logs with this driver), or at ``start`` when ``eager`` (balenaOS: the journald
    source also carries the host units' rows). An idle device whose containers all log with
    ``json-file`` never spawns ``journalctl`` (footprint). ``made`` is the source, once made."""

    def __init__(self, make: Callable[[], Any], *, eager: bool = False) -> None:
        self._make = make
        self._eager = eager
        self._started = False
        self.made: Any = None

    def _source(self) -> Any:
        if self.made is None:
            self.made = self._make()
            if self._started:
                self.made.start()
        return self.made

    def start(self) -> None:
        self._started = True
        if self.made is not None:
            self.made.start()
        elif self._eager:
            self._source()

    def stop(self) -> None:
        self._started = False
        if self.made is not None:
            self.made.stop()

    def attach(self, container_id: str, service_id: int, log_level: LogLevel, **extra: Any) -> None:
        self._source().attach(container_id, service_id, log_level, **extra)

    def detach(self, container_id: str) -> None:
        if self.made is not None:
            self.made.detach(container_id)


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


# ---------------------------------------------------------------------------------------- monitor
EVENT_FILTERS = {"type": ["container"], "event": ["start", "die", "destroy"]}


class LogMonitor(Subsystem):
    """Attaches each service container to its source, from the engine's container events (§8.1):
    every running service at (re)connection, a container on ``start`` (``Restarting service`` when
    it died before), detached on ``destroy``; ``die`` logs ``Service exited``. The event stream is
    opened before the running containers are listed, so no start falls between; a broken stream
    is opened again after 1 s (doubling to 30 s while the engine is away).

    ``sources`` maps ``"engine"``/``"journald"`` to a :class:`LogSource`; a container routed to a
    source that is missing is skipped with one warning. ``system_log(text, fields)`` receives the
    lifecycle messages.
    """

    name = "logs"

    def __init__(self, engine: EngineAddress, sources: dict[str, Any], *,
                 managed_apps: frozenset[str] | None = None,
                 system_log: Callable[[str, Mapping[str, Any]], None] | None = None,
                 on_containers: Callable[[set[str]], None] | None = None,
                 image_name: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.sources = sources
        self.managed_apps = managed_apps
        self.system_log = system_log
        self.on_containers = on_containers
        #: The image name a service was installed from, by engine image id (the image table).
        self.image_name = image_name
        self._attached: dict[str, str] = {}  # container id -> source key
        self._died: set[str] = set()
        self._warned: set[str] = set()
        self._events: Any = None

    def on_stop(self) -> None:
        events = self._events
        if events is not None:
            with contextlib.suppress(OSError):
                events.sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> None:
        delay = 1.0
        while not self.stopping:
            try:
                self._events = self.engine.open("/events" + query(filters=EVENT_FILTERS), timeout=None)
            except (OSError, ValueError) as err:
                log.debug("No engine events (%s); retrying in %.0f s", err, delay)
                if self.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
                continue
            try:
                self._scan()
                delay = 1.0
                self._follow(self._events)
            except (OSError, ValueError) as err:
                if not self.stopping:
                    log.warning("Engine events stream failed (%s); subscribing again", err)
            finally:
                self._events.close()
                self._events = None
            if self.wait(1.0):
                return

    def _follow(self, events: Any) -> None:
        """Handle the events as they come. It beats on every pass, not only when the stream is
        quiet: the engine reports every container's events (the label filter is applied here), so
        on a busy engine a quiet ``stuck_after / 4`` may never come while the thread works fine."""
        events.sock.settimeout(self.stuck_after / 4)
        buffer = events.body_start
        while not self.stopping:
            self.beat()
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                if line.strip():
                    self._event(json.loads(line))
                    self.beat()  # a chunk may hold many events, each maybe an inspect
            try:
                chunk = events.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise OSError("the engine closed the events stream")
            buffer += chunk

    def _scan(self) -> None:
        """Attach every running service container; forget the positions of containers that are gone."""
        entries = self.engine.get_json("/containers/json" + query(all=True, filters={
            "label": ["io.balena.supervised"]}))
        ids = {str(e.get("Id")) for e in entries}
        if self.on_containers is not None:
            self.on_containers(ids)
        for entry in entries:
            running = entry.get("State") == "running"
            if running or str(entry.get("Id")) in self._attached:
                self._attach(str(entry["Id"]), at_start=False)
        for cid in [c for c in self._attached if c not in ids]:
            self._detach(cid)

    def _event(self, event: Mapping[str, Any]) -> None:
        action = event.get("status") or event.get("Action")
        cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        if not cid or "io.balena.supervised" not in attributes and "io.resin.supervised" not in attributes:
            return
        if self.managed_apps is not None and attributes.get("io.balena.app-id") not in self.managed_apps:
            return
        if action == "start":
            restarted = cid in self._died
            self._died.discard(cid)
            self._attach(cid, at_start=True, restarted=restarted)
        elif action == "die":
            self._died.add(cid)
            self._system("Service exited", attributes)
        elif action == "destroy":
            self._died.discard(cid)
            self._detach(cid)

    def _system(self, human: str, attributes: Mapping[str, Any]) -> None:
        if self.system_log is None:
            return
        image = attributes.get("image")
        if self.image_name is not None and image:
            try:
                image = self.image_name(image) or image
            except Exception:  # the database is busy or gone: the engine's name is still a name
                log.debug("Could not look up the name of image %s", image, exc_info=True)
        self.system_log(human, {"service": attributes.get("io.balena.service-name"), "image": image})

    def _attach(self, cid: str, *, at_start: bool, restarted: bool = False) -> None:
        try:
            inspect = self.engine.get_json(f"/containers/{cid}/json")
        except EngineHTTPError as err:
            if err.status == 404:
                return
            raise
        info = ContainerInfo.from_inspect(inspect)
        if restarted:
            self._system("Restarting service", {"io.balena.service-name": info.service_name,
                                                "image": (inspect.get("Config") or {}).get("Image")})
        target = route(info, self.managed_apps)
        if target.source is None:
            if info.supervised and target.reason not in self._warned and "not managed" not in target.reason:
                self._warned.add(target.reason)
                log.info("Not reading the logs of %s: %s", info.service_name or cid[:12], target.reason)
            self._detach(cid)
            return
        source = self.sources.get(target.source)
        if source is None:
            if target.source not in self._warned:
                self._warned.add(target.source)
                log.warning("Containers log with the %s driver, which this supervisor cannot read yet",
                            info.log_driver)
            return
        previous = self._attached.get(cid)
        if previous is not None and previous != target.source:
            self._detach(cid)
        assert info.service_id is not None
        if target.source == "engine":
            started = 0 if at_start else _epoch_ms((inspect.get("State") or {}).get("StartedAt"))
            source.attach(cid, info.service_id, target.level,
                          tty=bool((inspect.get("Config") or {}).get("Tty")), started_ms=started)
        else:
            source.attach(cid, info.service_id, target.level)
        self._attached[cid] = target.source

    def _detach(self, cid: str) -> None:
        key = self._attached.pop(cid, None)
        if key is not None and key in self.sources:
            self.sources[key].detach(cid)
        elif key is None and "engine" in self.sources:
            self.sources["engine"].detach(cid)  # forgets a stored position too


def _epoch_ms(stamp: str | None) -> int:
    """An engine timestamp (RFC 3339, ns) as epoch ms, rounded down; 0 when there is none."""
    from .codec import parse_timestamp

    if not stamp or stamp.startswith("0001-"):
        return 0
    value = parse_timestamp(stamp.encode())
    return value if value is not None else 0

"""The one gate every target passes before anything is stored or stopped (issue #10 §2).

A target is either admitted, as ``(parsed target, warnings)``, or refused with a
:class:`~supervisor.state.target.TargetStateError` whose ``path`` is the field as the user wrote it.
Three doors, one set of rules:

* :func:`validate_local` - a ``POST /v2/local/target-state`` body (paths as in the compose file:
  ``services.web.ports[0]``, or the body: ``local.apps.1011.releaseId``);
* :func:`validate` - a cloud v3 target ``{<deviceUuid>: {...}}`` (paths in that document:
  ``<deviceUuid>.apps.<uuid>.releases.<commit>.services.web.composition.ports[0]``);
* :func:`validate_preload` - an ``apps.json`` preload (paths in the file).

Each runs the structural parse of :mod:`supervisor.state.target`, then what the engine would refuse at
create time (:mod:`supervisor.compose.rules`: every compose value, references to services, volumes and
networks of the release, environment sizes the kernel cannot pass, host ports two services publish),
and last builds every container body the executor would send (:func:`buildable`), so a target that is
admitted can always be created. Unknown keys are accepted, as the reference accepts them, and become
warnings (one per key, with the closest known key when there is one).
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from supervisor.compose import rules
from supervisor.compose.errors import ComposeError
from supervisor.compose.rules import ReleaseScope

from .target import (
    V2_APP_KEYS,
    V2_BODY_KEYS,
    V2_LOCAL_KEYS,
    Preload,
    TargetApp,
    TargetDevice,
    TargetRelease,
    TargetService,
    TargetStateError,
    V2Paths,
    _device,
    _refused,
    is_supervisor_service,
    parse_apps_json,
    thaw,
    v2_to_v3,
)
from .validation import ValidationError, child

if TYPE_CHECKING:
    from supervisor.compose.service import ServiceContext

    from .hostview import HostView

__all__ = [
    "HostConflict",
    "WarningLog",
    "buildable",
    "placeholder_context",
    "validate",
    "validate_local",
    "validate_preload",
]

DEVICE_KEYS: Final = ("name", "config", "apps")
APP_KEYS: Final = ("id", "name", "class", "releases", "parent_app", "is_host")
RELEASE_KEYS: Final = ("id", "services", "volumes", "networks")
SERVICE_KEYS: Final = (
    "id",
    "image_id",
    "image",
    "environment",
    "labels",
    "running",
    "contract",
    "composition",
)

Paths = Callable[[str], str]
#: What a commit may hold: it ends every container name (compose/naming.py), which the engine
#: allows only of these characters.
_COMMIT_RE: Final = re.compile(r"[a-zA-Z0-9_.-]+")


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ------------------------------------------------------------------------------ the doors
def validate(
    doc: Any, device_uuid: str, *, cpus: int | None = None, host: HostView | None = None
) -> tuple[TargetDevice, list[str]]:
    """Admit a cloud v3 target ``{<deviceUuid>: TargetDevice}``: this device's entry and the warnings.

    For the cloud binder. Raises TargetStateError (``.path`` in ``doc``, ``.rule``) when the target
    cannot be applied, :class:`HostConflict` when only the device's present state stops it; nothing
    has been stored then. Every device entry must parse, as in the reference.
    """
    from .target import parse_target_state

    device = parse_target_state(doc, device_uuid)
    prefix = child("", device_uuid)
    warnings = _unknown_v3(doc[device_uuid], prefix)

    def where(path: str) -> str:
        return prefix + path if not path or path.startswith("[") else f"{prefix}.{path}"

    warnings += _check(device, where, cpus, host)
    return device, warnings


def validate_local(
    body: Any, *, current_name: str, cpus: int | None = None, host: HostView | None = None
) -> tuple[TargetDevice, list[str]]:
    """Admit a ``POST /v2/local/target-state`` body (§2.5.1); raises TargetStateError naming the field."""
    paths = V2Paths()
    try:
        v3, paths = v2_to_v3(body, current_name=current_name)
        device = _device(v3, "")
    except ValidationError as err:
        raise _refused(ValidationError(paths.user_path(err.path), err.rule)) from err
    warnings = _unknown_v2(body)
    warnings += _check(device, paths.user_path, cpus, host)
    return device, warnings


def validate_preload(doc: Any, *, current_name: str, cpus: int | None = None) -> tuple[Preload, list[str]]:
    """Admit an ``apps.json`` preload (§11.2); raises AppsJsonParseError naming the field."""
    from .target import AppsJsonParseError

    preload = parse_apps_json(doc, current_name=current_name)
    try:
        warnings = _check(preload.device, lambda p: p, cpus, None)
    except TargetStateError as err:
        raise AppsJsonParseError(
            f"Invalid apps.json: {err.path}: {err.rule}", path=err.path, rule=err.rule
        ) from err
    return preload, warnings


# ---------------------------------------------------------------------------- unknown keys
def _unknown(obj: Any, known: tuple[str, ...], path: str) -> list[str]:
    if not isinstance(obj, Mapping):
        return []
    where = path or "the top level"
    return [
        f"unknown key {key!r} in {where} ignored{rules.suggest(key, list(known))}"
        for key in obj
        if key not in known
    ]


def _unknown_v3(device: Mapping[str, Any], path: str) -> list[str]:
    warnings = _unknown(device, DEVICE_KEYS, path)
    for uuid, app in (device.get("apps") or {}).items():
        app_path = child(child(path, "apps"), uuid)
        warnings += _unknown(app, APP_KEYS, app_path)
        for commit, release in (app.get("releases") or {}).items():
            rel_path = child(child(app_path, "releases"), commit)
            warnings += _unknown(release, RELEASE_KEYS, rel_path)
            for name, svc in (release.get("services") or {}).items():
                warnings += _unknown(svc, SERVICE_KEYS, child(child(rel_path, "services"), name))
    return warnings


def _unknown_v2(body: Mapping[str, Any]) -> list[str]:
    local = body["local"]
    warnings = _unknown(body, V2_BODY_KEYS, "") + _unknown(local, V2_LOCAL_KEYS, "local")
    for key, app in local["apps"].items():
        warnings += _unknown(app, V2_APP_KEYS, child("local.apps", key))
    return warnings


# ------------------------------------------------------------------------------ the rules
def _installed_services(app: TargetApp) -> list[tuple[str, TargetService]]:
    """The services the engine will create (not the supervisor's own, not host-OS images)."""
    from .planner import _installable_on_host

    return [
        (name, svc)
        for name, svc in app.services.items()
        if not is_supervisor_service(app.uuid, name)
        and not (app.is_host and not _installable_on_host(svc.labels))
    ]


class _AtUserPath(ValidationError):
    """A refusal whose path is already the user's (the rules are given user paths)."""


def _check(device: TargetDevice, user_path: Paths, cpus: int | None, host: HostView | None) -> list[str]:
    """The engine's and the kernel's rules over a parsed target; the warnings, or TargetStateError.

    ``user_path`` maps a path of the v3 model (``apps.<uuid>.releases...``) to the user's. With
    ``host``, then what the device holds outside the target (:func:`_check_host`).
    """
    try:
        warnings = _check_rules(device, user_path, cpus or _cpus())
    except ValidationError as err:
        path = err.path if isinstance(err, _AtUserPath) else user_path(err.path)
        raise _refused(ValidationError(path, err.rule)) from err
    if host is not None:
        try:
            _check_host(device, user_path, host)
        except ValidationError as err:
            raise _refused(err, HostConflict) from err
    return warnings


def _check_rules(device: TargetDevice, user_path: Paths, cpus: int) -> list[str]:
    warnings: list[str] = []
    published: dict[tuple[str, int], tuple[str, str]] = {}
    subnets: list[tuple[Any, str]] = []  # every app's networks share the engine's address space
    for uuid, app in device.apps.items():
        release = app.release
        if release is None:
            continue
        rel = child(child(child("apps", uuid), "releases"), release.commit)
        if release.services and not _COMMIT_RE.fullmatch(release.commit):
            raise _AtUserPath(
                user_path(rel),
                f"commit {release.commit!r} must match ^[a-zA-Z0-9_.-]+$: it is part of the names of "
                "the release's containers (<service>_<imageId>_<releaseId>_<commit>)",
            )
        for name, config in release.volumes.items():
            warnings += _mapped(
                rules.check_volume_config, config, child(child(rel, "volumes"), name), user_path
            )
        for name, config in release.networks.items():
            warnings += _mapped(
                rules.check_network_config, config, child(child(rel, "networks"), name), user_path
            )
        for name, svc in _installed_services(app):
            svc_path = child(child(rel, "services"), name)
            scope = ReleaseScope(
                services=frozenset(release.services),
                volumes=frozenset(release.volumes),
                networks=thaw(release.networks),
                service=name,
                cpus=cpus,
            )
            rules.image_reference(svc.image, child(svc_path, "image"))
            composition = thaw(svc.composition)
            warnings += _mapped(
                lambda c, p, s=scope: rules.check_service(c, p, s),
                composition,
                child(svc_path, "composition"),
                user_path,
            )
            _check_sizes(svc, composition, svc_path, user_path)
            _check_ports(composition, svc_path, user_path, published)
        _check_cycles(release.services, rel, user_path)
        _check_networks(release, rel, user_path, subnets)
    buildable(device, user_path)
    return warnings


def _mapped(check: Callable[[Any, str], list[str]], value: Any, path: str, user_path: Paths) -> list[str]:
    """Run a rule at the user's path (rules see and report the user's path directly)."""
    try:
        return check(value, user_path(path))
    except ValidationError as err:
        raise _AtUserPath(err.path, err.rule) from err


def _check_sizes(svc: TargetService, composition: Mapping[str, Any], svc_path: str, user_path: Paths) -> None:
    """The service's whole environment (top level and composition), and its labels, within the
    kernel's limits (compose/rules.py)."""
    for field, what in (("environment", "variable"), ("labels", "label")):
        pairs = [(k, v, user_path(child(child(svc_path, field), k))) for k, v in getattr(svc, field).items()]
        inner = composition.get(field)
        inner_path = user_path(child(child(svc_path, "composition"), field))
        if inner is not None:
            pairs += rules.env_pairs(inner, inner_path, what=what)
        try:
            rules.check_environment_size(pairs, user_path(child(svc_path, field)), what=what)
        except ValidationError as err:
            raise _AtUserPath(err.path, err.rule) from err


def _check_cycles(services: Mapping[str, TargetService], rel: str, user_path: Paths) -> None:
    """Services that wait for each other (depends_on, network_mode service:) would never start."""
    waits = {name: rules.dependencies(thaw(svc.composition)) for name, svc in services.items()}
    done: set[str] = set()

    def visit(name: str, chain: list[str]) -> None:
        if name in chain:
            cycle = " -> ".join([*chain[chain.index(name) :], name])
            where = user_path(child(child(child(rel, "services"), chain[-1]), "composition"))
            raise _AtUserPath(where, f"services wait for each other and would never start: {cycle}")
        if name in done or name not in waits:
            return
        for other in waits[name]:
            visit(other, [*chain, name])
        done.add(name)

    for name in waits:
        visit(name, [])


def _check_networks(release: TargetRelease, rel: str, user_path: Paths, seen: list[tuple[Any, str]]) -> None:
    """Subnets of the release's networks that overlap, and one static address given to two services:
    the engine refuses the second network, or the second container's start."""
    import ipaddress

    for name, config in release.networks.items():
        pools = ((config.get("ipam") or {}).get("config") or []) if isinstance(config, Mapping) else []
        for index, pool in enumerate(pools):
            path = child(child(child(child(child(rel, "networks"), name), "ipam"), "config"), index)
            subnet = ipaddress.ip_network(pool["subnet"]) if pool.get("subnet") else None
            for other, other_path in seen if subnet is not None else ():
                if other.version == subnet.version and other.overlaps(subnet):
                    raise _AtUserPath(
                        user_path(child(path, "subnet")),
                        f"{subnet} overlaps {other} of {user_path(other_path)}",
                    )
            if subnet is not None:
                seen.append((subnet, path))
    addresses: dict[tuple[str, str], str] = {}
    for name, svc in release.services.items():
        networks = svc.composition.get("networks")
        for network, entry in networks.items() if isinstance(networks, Mapping) else ():
            for key in ("ipv4_address", "ipv6_address"):
                address = entry.get(key) if isinstance(entry, Mapping) else None
                if not address:
                    continue
                path = child(
                    child(child(child(child(rel, "services"), name), "composition"), "networks"), network
                )
                other = addresses.setdefault((network, str(ipaddress.ip_address(address))), path)
                if other != path:
                    raise _AtUserPath(
                        user_path(child(path, key)), f"{address} is already the address of {user_path(other)}"
                    )


def _check_ports(
    composition: Mapping[str, Any],
    svc_path: str,
    user_path: Paths,
    published: dict[tuple[str, int], tuple[str, str]],
) -> None:
    """Two services publishing the same host port: the second could never start."""
    ports = composition.get("ports")
    if not ports or composition.get("network_mode", composition.get("networkMode")) == "host":
        return
    where = user_path(child(child(svc_path, "composition"), "ports"))
    for host, protocol, port in rules.published_ports(ports):
        key = (protocol, port)
        other = published.get(key)
        if other is not None and other[1] != svc_path and (not host or not other[0] or host == other[0]):
            raise _AtUserPath(
                where,
                f"host port {port}/{protocol} is already published by {user_path(other[1])}",
            )
        published.setdefault(key, (host, svc_path))


# ---------------------------------------------------------------------- the device's state
class HostConflict(TargetStateError):
    """Refused for what the device holds outside the target now (a device path it lacks, a subnet
    or host port taken): the same target may pass later, so the cloud binder checks it again."""


def _check_host(device: TargetDevice, user_path: Paths, host: HostView) -> None:
    """What the engine would refuse because of the device, not the target (state/hostview.py): a
    device path the host lacks, a subnet overlapping a network outside the target, a host port a
    container outside the target publishes. Runs on a target the rules above admitted."""
    import ipaddress

    for uuid, app in device.apps.items():
        release = app.release
        if release is None:
            continue
        rel = child(child(child("apps", uuid), "releases"), release.commit)
        for name, config in release.networks.items():
            pools = (config.get("ipam") or {}).get("config") or [] if isinstance(config, Mapping) else []
            for index, pool in enumerate(pools):
                if not pool.get("subnet"):
                    continue
                subnet = ipaddress.ip_network(pool["subnet"])
                clash = host.overlapping(subnet)
                if clash is not None:
                    path = child(child(child(child(child(rel, "networks"), name), "ipam"), "config"), index)
                    raise ValidationError(
                        user_path(child(path, "subnet")),
                        f"{subnet} overlaps {clash[1]} of the engine's network {clash[0].name!r}, which "
                        "is not this target's (the engine refuses: Pool overlaps with other one on this "
                        "address space)",
                    )
        for name, svc in _installed_services(app):
            composition = svc.composition
            svc_path = child(child(child(rel, "services"), name), "composition")
            for index, item in enumerate(composition.get("devices") or ()):
                problem = host.device_problem(_device_path(item))
                if problem is not None:
                    raise ValidationError(user_path(child(child(svc_path, "devices"), index)), problem)
            if composition.get("network_mode", composition.get("networkMode")) == "host":
                continue  # nothing is published (admitted with a warning)
            for index, item in enumerate(composition.get("ports") or ()):
                for host_ip, protocol, port in rules.published_ports([item]):
                    held = host.port_holder(host_ip, protocol, port)
                    if held is not None:
                        raise ValidationError(
                            user_path(child(child(svc_path, "ports"), index)),
                            f"host port {port}/{protocol} is already published by container "
                            f"{held.container!r}, which is not this target's (the engine refuses: "
                            "port is already allocated)",
                        )


def _device_path(item: Any) -> str:
    """The host path of a (valid) ``devices`` entry: ``host[:container[:perms]]`` or a mapping."""
    if isinstance(item, Mapping):
        return str(item.get("PathOnHost"))
    return str(item).split(":")[0]


# -------------------------------------------------------------------------- the last check
def placeholder_context(app: TargetApp, device_name: str) -> ServiceContext:
    """Device facts that shape a container body but not whether the engine can create it."""
    from .contexts import app_context, placeholder_device

    return app_context(placeholder_device(device_name), app)


def buildable(device: TargetDevice, user_path: Paths = lambda p: p) -> None:
    """Build every container, network and volume body the executor would send for ``device``, with
    placeholder device facts; a ComposeError is refused at the service's path. Rules above should
    have refused first: this is the net that keeps an unbuildable target from being stored."""
    from .planner import target_apps

    def context(app: TargetApp, svc: TargetService) -> ServiceContext:
        return placeholder_context(app, device.name)

    try:
        apps = target_apps(device, context)
    except (ComposeError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise _AtUserPath(user_path("apps"), f"cannot be built: {err}") from err
    for uuid, app in apps.items():
        ids = {svc.service_name: "0" * 64 for svc in app.services}
        release = device.apps[uuid].release
        for svc in app.services:
            path = child(
                child(child(child("apps", uuid), "releases"), release.commit if release else ""), "services"
            )
            try:
                svc.create_body(device_name=device.name, container_ids=ids)
            except (ComposeError, ValueError, TypeError, KeyError, AttributeError) as err:
                raise _AtUserPath(
                    user_path(child(path, svc.service_name)), f"cannot be created: {err}"
                ) from err
        for net in app.networks:
            net.create_body()
        for vol in app.volumes:
            vol.create_body()


class WarningLog:
    """Logs each warning of an admitted target once: a client re-sending the same target (balena
    push, a cloud poll) does not repeat it. Bounded: the oldest remembered warnings are forgotten."""

    def __init__(self, logger: logging.Logger, limit: int = 512) -> None:
        self._log = logger
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def __call__(self, warnings: Iterable[str]) -> None:
        for warning in warnings:
            if warning in self._seen:
                self._seen.move_to_end(warning)
                continue
            self._seen[warning] = None
            if len(self._seen) > self._limit:
                self._seen.popitem(last=False)
            self._log.warning("Target state: %s", warning)

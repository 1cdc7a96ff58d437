"""The target state model (reference §2.2) and its parsers: pure, no I/O.

Every parser either returns a complete, immutable model or raises :class:`TargetStateError`
naming the first offending field path and the rule it broke; nothing partial escapes. Accepted
inputs are the cloud's v3 document (§2.2), the v2 local-mode body (§2.5.1) and the three
``apps.json`` preload formats (§11.2).

Normalisation done here, so every consumer (planner, DB layer, API) sees one canonical form:
image names are normalised (§9.1) and ``io.resin.*`` labels are renamed to ``io.balena.*``
(§2.5.4). Numeric ids decode to ``int``. Object-valued fields are deep-frozen (hashable, and still
equal to the plain JSON they came from): objects become :class:`FrozenDict`, arrays
:class:`FrozenList`; ``to_v3()`` / :func:`thaw` give plain, mutable JSON back.
For every model ``x`` the parsers return, ``parse(x.to_v3()) == x``.

Hardening beyond the reference (each keeps a bad target from being half-applied later):

* a top level (or any object field) of the wrong JSON type is refused with the expected type;
* an image must be a non-empty, parseable reference whose normalised form is still a
  ShortString and normalises to itself (the reference only fails later, when saving it);
* a label key that grows beyond 255 characters through the resin->balena renaming is refused;
* volume/network configs must be JSON objects (the reference also lets arrays through);
* unvalidated subtrees (composition, contract, volumes, networks) must be plain JSON, without
  NaN/Infinity, nested at most 64 levels deep;
* v2 input: app keys must be decimal app ids, a ``commit`` must be a string, each service needs a
  ``serviceName`` and two services may not share one (the reference silently keeps the last);
* legacy ``apps.json`` entries need a string ``commit`` (the reference would key the release
  ``"undefined"``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from supervisor.state.validation import (
    MISSING,
    SHORT_STRING_MAX,
    ValidationError,
    boolean,
    child,
    config_var_object,
    describe,
    device_name,
    docker_name_key,
    env_var_object,
    expect_object,
    expect_string,
    is_numeric_identifier,
    json_type,
    label_object,
    numeric_identifier,
    optional,
    record,
    short_string,
    short_string_key,
    utf16_length,
    uuid_string,
    with_default,
)

__all__ = [
    "APP_CLASSES",
    "EMPTY",
    "SUPERVISOR_APP_UUIDS",
    "SUPERVISOR_SERVICE_NAMES",
    "V2_APPS_JSON_MESSAGE",
    "AppsJsonParseError",
    "FrozenDict",
    "FrozenList",
    "ImageReference",
    "Preload",
    "TargetApp",
    "TargetDevice",
    "TargetRelease",
    "TargetService",
    "TargetStateError",
    "freeze",
    "from_v2_local",
    "is_supervisor_app",
    "is_supervisor_service",
    "normalise_image",
    "normalise_labels",
    "parse_apps_json",
    "parse_target_device",
    "parse_target_state",
    "split_image",
    "thaw",
]


# ---------------------------------------------------------------------------------- errors
class TargetStateError(ValueError):
    """A target state was refused. ``path``/``rule`` are set when a field broke a rule."""

    def __init__(self, message: str, *, path: str = "", rule: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.rule = rule


class AppsJsonParseError(TargetStateError):
    """An ``apps.json`` preload file was refused (the reference's ``AppsJsonParseError``)."""


V2_APPS_JSON_MESSAGE: Final = (
    "Cannot migrate from v2 apps.json without Internet connectivity. "
    "Please use balenaCLI v13.5.1+ for offline preload support."
)


def _refused(
    err: ValidationError,
    kind: type[TargetStateError] = TargetStateError,
    prefix: str = "Invalid target state",
) -> TargetStateError:
    return kind(f"{prefix}: {err}", path=err.path, rule=err.rule)


# ----------------------------------------------------------------------- immutable JSON
class FrozenList(tuple):
    """A frozen JSON array: a tuple that also compares equal to a list with the same items, so
    callers can compare frozen values against plain JSON."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping that compares equal to any mapping with the same content
    (a frozen array equals a list), so tests and callers can compare against plain dicts."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(data or {})
        self._hash: int | None = None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self._data == dict(other.items())

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash


EMPTY: Final = FrozenDict()
_MAX_DEPTH: Final = 64


def _freeze(value: Any, path: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValidationError(path, f"must not be nested deeper than {_MAX_DEPTH} levels")
    if isinstance(value, FrozenDict):
        return value  # built by _freeze, so already checked
    if isinstance(value, Mapping):
        obj = expect_object(value, path)
        return FrozenDict({k: _freeze(v, child(path, k), depth + 1) for k, v in obj.items()})
    if isinstance(value, list | tuple):
        return FrozenList(_freeze(v, child(path, i), depth + 1) for i, v in enumerate(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(path, f"{value!r} is not a JSON number")
    if value is None or isinstance(value, str | int | float):
        return value
    raise ValidationError(path, f"expected a JSON value, got {json_type(value)}")


def freeze(value: Any, path: str = "") -> Any:
    """Deep-freeze a JSON value (objects -> FrozenDict, arrays -> FrozenList); refuse non-JSON."""
    return _freeze(value, path, 0)


def thaw(value: Any) -> Any:
    """Plain, mutable JSON (dicts and lists) from a frozen value; other values pass through."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def _shallow(mapping: Mapping[str, Any]) -> FrozenDict:
    return mapping if isinstance(mapping, FrozenDict) else FrozenDict(mapping)


# ------------------------------------------------------------------ supervisor identity
#: App uuids of the supervisor's own fleets, one per architecture (§3.11).
SUPERVISOR_APP_UUIDS: Final = frozenset(
    {
        "52e35121417640b1b28a680504e4039b",  # amd64
        "900de4f3cbac4b9bbd232885a35e407b",  # aarch64
        "2e66a95795c149959c69472a8c2f92b8",  # armv7hf
        "531b357e155c480cbec0fdd33041a1f5",  # i386
        "6822565f766e413e96d9bebe2227cdcc",  # rpi
    }
)
SUPERVISOR_SERVICE_NAMES: Final = frozenset({"main", "balena-supervisor", "core"})


def is_supervisor_app(uuid: str) -> bool:
    """Whether ``uuid`` is one of the supervisor's own fleets (§3.11)."""
    return uuid in SUPERVISOR_APP_UUIDS


def is_supervisor_service(app_uuid: str, service_name: str) -> bool:
    """Whether a target service is the supervisor itself, which the engine must not touch."""
    return is_supervisor_app(app_uuid) and service_name in SUPERVISOR_SERVICE_NAMES


# ------------------------------------------------------------------------------ images
# §9.1's reference pattern; JavaScript's `.` does not match line terminators, so neither does ours.
_ANY = r"[^\n\r\u2028\u2029]"
_IMAGE_RE = re.compile(
    rf"(?:(localhost|{_ANY}*?[.:]{_ANY}*?)/)?({_ANY}+?)(?::({_ANY}*?))?(?:@({_ANY}*?))?"
)
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F-]{32,}")


class ImageReference(NamedTuple):
    """An image reference split as the reference splits it (§9.1)."""

    registry: str | None
    name: str
    tag: str | None  # 'latest' when there is neither a tag nor a digest
    digest: str | None


def split_image(image: str) -> ImageReference:
    """Split ``[registry/]repo[:tag][@digest]``; ValueError when it cannot be parsed."""
    match = _IMAGE_RE.fullmatch(image)
    if match is None or (match.group(4) and not _DIGEST_RE.fullmatch(match.group(4))):
        raise ValueError(
            "Invalid image name, expected [domain.tld/]repo/image[:tag][@digest] format, "
            f"got: {image}"
        )
    registry, name, tag, digest = match.groups()
    if not tag and not digest:
        tag = "latest"
    return ImageReference(registry, name, tag, digest or None)


def normalise_image(image: str) -> str:
    """``repo:tag`` with ``:latest`` added when untagged; ``repo@digest`` (tag dropped) when a
    digest is present. ValueError when the reference cannot be parsed."""
    ref = split_image(image)
    repository = f"{ref.registry}/{ref.name}" if ref.registry else ref.name
    if ref.digest:
        return f"{repository}@{ref.digest}"
    return f"{repository}:{ref.tag or 'latest'}"


def _image(value: Any, path: str) -> str:
    text = short_string(value, path)
    if not text:
        raise ValidationError(path, "must not be empty")
    try:
        normalised = normalise_image(text)
        stable = normalise_image(normalised) == normalised
    except ValueError:
        raise ValidationError(
            path,
            f"invalid image reference {describe(text)}: "
            "expected [domain.tld/]repo/image[:tag][@digest]",
        ) from None
    if utf16_length(normalised) > SHORT_STRING_MAX:
        raise ValidationError(
            path, f"must be at most {SHORT_STRING_MAX} characters long once normalised"
        )
    if not stable:
        raise ValidationError(path, f"ambiguous image reference {describe(text)}")
    return normalised


# ------------------------------------------------------------------------------ labels
def normalise_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Rename ``io.resin.*`` labels to ``io.balena.*`` (every ``resin`` in the key becomes
    ``balena``); a label given explicitly as ``io.balena.*`` wins over a renamed one."""
    other = {k: v for k, v in labels.items() if not k.startswith(("io.balena.", "io.resin."))}
    legacy = {k.replace("resin", "balena"): v for k, v in labels.items() if k.startswith("io.resin.")}
    balena = {k: v for k, v in labels.items() if k.startswith("io.balena.")}
    return {**other, **legacy, **balena}


def _labels(value: Any, path: str) -> dict[str, str]:
    raw = label_object(value, path)
    renamed = normalise_labels(raw)
    for key in renamed:
        if utf16_length(key) > SHORT_STRING_MAX:
            raise ValidationError(
                path,
                f"key {describe(key)} is longer than {SHORT_STRING_MAX} characters "
                "once io.resin is renamed to io.balena",
            )
    return renamed


# ------------------------------------------------------------------------------ models
APP_CLASSES: Final = ("fleet", "app", "block")


@dataclass(frozen=True)
class TargetService:
    """One service of a target release; ``name`` is its key in the release's ``services``."""

    name: str
    id: int
    image_id: int
    image: str
    environment: Mapping[str, str]
    labels: Mapping[str, str]
    running: bool = True
    contract: Mapping[str, Any] | None = None
    composition: Mapping[str, Any] = EMPTY

    def __post_init__(self) -> None:
        object.__setattr__(self, "environment", freeze(self.environment))
        object.__setattr__(self, "labels", freeze(self.labels))
        object.__setattr__(self, "composition", freeze(self.composition))
        if self.contract is not None:
            object.__setattr__(self, "contract", freeze(self.contract))

    def to_v3(self) -> dict[str, Any]:
        """The v3 wire shape (without the name, which is the key)."""
        out: dict[str, Any] = {
            "id": self.id,
            "image_id": self.image_id,
            "image": self.image,
            "environment": dict(self.environment),
            "labels": dict(self.labels),
            "running": self.running,
        }
        if self.contract is not None:
            out["contract"] = thaw(self.contract)
        if self.composition:
            out["composition"] = thaw(self.composition)
        return out


@dataclass(frozen=True)
class TargetRelease:
    """The one release of an app the device should run; ``commit`` is its key (release uuid)."""

    commit: str
    id: int
    services: Mapping[str, TargetService] = EMPTY
    volumes: Mapping[str, Mapping[str, Any]] = EMPTY
    networks: Mapping[str, Mapping[str, Any]] = EMPTY

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", _shallow(self.services))
        object.__setattr__(self, "volumes", freeze(self.volumes))
        object.__setattr__(self, "networks", freeze(self.networks))

    def to_v3(self) -> dict[str, Any]:
        """The v3 wire shape (without the commit, which is the key)."""
        return {
            "id": self.id,
            "services": {name: svc.to_v3() for name, svc in self.services.items()},
            "volumes": thaw(self.volumes),
            "networks": thaw(self.networks),
        }


@dataclass(frozen=True)
class TargetApp:
    """A target app. Only the first release of the document is kept, as in the reference."""

    uuid: str
    id: int
    name: str
    app_class: str = "fleet"
    release: TargetRelease | None = None
    parent_app: str | None = None
    is_host: bool = False

    @property
    def services(self) -> Mapping[str, TargetService]:
        """The services of the target release (empty without one)."""
        return self.release.services if self.release is not None else EMPTY

    def to_v3(self) -> dict[str, Any]:
        """The v3 wire shape (without the uuid, which is the key)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "class": self.app_class,
            "releases": {} if self.release is None else {self.release.commit: self.release.to_v3()},
        }
        if self.parent_app is not None:
            out["parent_app"] = self.parent_app
        if self.is_host:
            out["is_host"] = True
        return out


@dataclass(frozen=True)
class TargetDevice:
    """The target of one device: its name, config variables and apps keyed by uuid."""

    name: str
    config: Mapping[str, str] = EMPTY
    apps: Mapping[str, TargetApp] = EMPTY

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", freeze(self.config))
        object.__setattr__(self, "apps", _shallow(self.apps))

    def to_v3(self) -> dict[str, Any]:
        """The v3 ``TargetDevice`` object ``{name, config, apps}``."""
        return {
            "name": self.name,
            "config": dict(self.config),
            "apps": {uuid: app.to_v3() for uuid, app in self.apps.items()},
        }


@dataclass(frozen=True)
class Preload:
    """A parsed ``apps.json``. ``device.config`` holds the file's variable names as written:
    the caller formats them (§5.3) and merges them with the current config before applying."""

    device: TargetDevice
    pin_device: bool = False

    @property
    def is_empty(self) -> bool:
        """Empty config and no apps: the reference then loads nothing."""
        return not self.device.config and not self.device.apps

    def pin_target(self) -> dict[str, Any] | None:
        """``{app, commit}`` to store as config ``pinDevice``: the first fleet-class app and its
        release, or None when the file does not ask for pinning."""
        if not self.pin_device:
            return None
        for app in self.device.apps.values():
            if app.app_class == "fleet":
                if app.release is None:
                    return None
                return {"app": app.id, "commit": app.release.commit}
        return None


# ----------------------------------------------------------------------------- decoders
def _get(obj: Mapping[str, Any], key: str) -> Any:
    return obj.get(key, MISSING)


def _json_object(_key: str, value: Any, path: str) -> FrozenDict:
    """Volume/network configs: any JSON object, contents not validated (§2.2)."""
    return freeze(expect_object(value, path), path)


def _frozen_object(value: Any, path: str) -> FrozenDict:
    return freeze(expect_object(value, path), path)


def _service(name: str, value: Any, path: str) -> TargetService:
    obj = expect_object(value, path)
    return TargetService(
        name=name,
        id=numeric_identifier(_get(obj, "id"), child(path, "id")),
        image_id=numeric_identifier(_get(obj, "image_id"), child(path, "image_id")),
        image=_image(_get(obj, "image"), child(path, "image")),
        environment=env_var_object(_get(obj, "environment"), child(path, "environment")),
        labels=_labels(_get(obj, "labels"), child(path, "labels")),
        running=with_default(boolean, True)(_get(obj, "running"), child(path, "running")),
        contract=optional(_frozen_object)(_get(obj, "contract"), child(path, "contract")),
        composition=optional(_frozen_object)(_get(obj, "composition"), child(path, "composition"))
        or EMPTY,
    )


def _services(value: Any, path: str) -> dict[str, TargetService]:
    return record(value, path, docker_name_key, _service)


def _compose_objects(value: Any, path: str) -> dict[str, FrozenDict]:
    return record(value, path, docker_name_key, _json_object)


def _release(commit: str, value: Any, path: str) -> TargetRelease:
    obj = expect_object(value, path)
    return TargetRelease(
        commit=commit,
        id=numeric_identifier(_get(obj, "id"), child(path, "id")),
        services=with_default(_services, {})(_get(obj, "services"), child(path, "services")),
        volumes=with_default(_compose_objects, {})(_get(obj, "volumes"), child(path, "volumes")),
        networks=with_default(_compose_objects, {})(_get(obj, "networks"), child(path, "networks")),
    )


def _releases(value: Any, path: str) -> dict[str, TargetRelease]:
    return record(value, path, short_string_key, _release)


def _app_class(value: Any, path: str) -> str:
    if value not in APP_CLASSES:  # a non-string is never `in` the tuple of strings
        allowed = ", ".join(repr(c) for c in APP_CLASSES)
        raise ValidationError(path, f"must be one of {allowed}, got {describe(value)}")
    return str(value)


def _app(uuid: str, value: Any, path: str, *, need_release: bool = False) -> TargetApp:
    obj = expect_object(value, path)
    app_id = numeric_identifier(_get(obj, "id"), child(path, "id"))
    name = short_string(_get(obj, "name"), child(path, "name"))
    app_class = with_default(_app_class, "fleet")(_get(obj, "class"), child(path, "class"))
    # Every release is validated, as the reference does; only the first is kept (§2.2).
    releases = with_default(_releases, {})(_get(obj, "releases"), child(path, "releases"))
    if need_release and not releases:
        raise ValidationError(child(path, "releases"), "must have at least 1 release")
    parent_app = optional(uuid_string)(_get(obj, "parent_app"), child(path, "parent_app"))
    is_host = optional(boolean)(_get(obj, "is_host"), child(path, "is_host"))
    return TargetApp(
        uuid=uuid,
        id=app_id,
        name=name,
        app_class=app_class,
        release=next(iter(releases.values()), None),
        parent_app=parent_app,
        is_host=bool(is_host),
    )


def _preload_app(uuid: str, value: Any, path: str) -> TargetApp:
    return _app(uuid, value, path, need_release=True)


def _device(value: Any, path: str) -> TargetDevice:
    obj = expect_object(value, path)
    return TargetDevice(
        name=device_name(_get(obj, "name"), child(path, "name")),
        config=config_var_object(_get(obj, "config"), child(path, "config")),
        apps=record(_get(obj, "apps"), child(path, "apps"), short_string_key, _app),
    )


def _device_entry(_uuid: str, value: Any, path: str) -> TargetDevice:
    return _device(value, path)


# ------------------------------------------------------------------------------ v3 input
def parse_target_device(doc: Any) -> TargetDevice:
    """Decode one v3 ``TargetDevice`` object ``{name, config, apps}``."""
    try:
        return _device(doc, "")
    except ValidationError as err:
        raise _refused(err) from err


def parse_target_state(doc: Any, device_uuid: str) -> TargetDevice:
    """Decode the cloud's ``{<deviceUuid>: TargetDevice}`` and return this device's entry.

    Like the reference, every entry must be valid, not only ours. A v2-shaped ``{local: ...}``
    document is refused: either its apps fail the v3 rules or the device's uuid is missing.
    """
    try:
        devices = record(doc, "", short_string_key, _device_entry)
    except ValidationError as err:
        raise _refused(err) from err
    if device_uuid not in devices:
        raise TargetStateError(f"Expected target state for local device with uuid '{device_uuid}'.")
    return devices[device_uuid]


# ------------------------------------------------------------------------------ v2 input
_APP_ID_KEY = re.compile(r"0|[1-9][0-9]*")
_V2_SERVICE_FIELDS: Final = {
    "imageId": "image_id",
    "image": "image",
    "environment": "environment",
    "labels": "labels",
    "running": "running",
    "contract": "contract",
}
_V2_DROPPED: Final = frozenset({"serviceName", "serviceId"})
#: Keys of the v2 body's levels (§2.5.1); `dependent` is what older balena CLIs send (ignored).
V2_BODY_KEYS: Final = ("local", "force", "dependent")
V2_LOCAL_KEYS: Final = ("name", "config", "apps")
V2_APP_KEYS: Final = ("name", "commit", "releaseId", "services", "volumes", "networks")


_V2_SHAPE: Final = '{"local": {"apps": {"<appId>": {...}}}} ({"local": {"apps": {}}} removes every app)'


def _hint(obj: Mapping[str, Any], known: tuple[str, ...]) -> str:
    """`` (found 'servics')`` when the object has an unknown key, likely the missing one misspelt."""
    unknown = [key for key in obj if key not in known]
    return f" (found {', '.join(repr(k) for k in unknown[:3])})" if unknown else ""


class V2Paths:
    """Maps a path in the converted v3 document back to where the user wrote it in the v2 body.

    Service, volume and network fields are named as in the compose file the body was made from
    (``services.web.ports[0]``, ``volumes.data.driver``), prefixed with ``apps.<appId>.`` only when
    the body has several apps; everything else is named by its place in the body
    (``local.apps.1011.releaseId``). A v3-only level disappears: ``composition`` holds the service's
    own keys, ``image_id`` is ``imageId``, a service's ``id`` is its key in ``services``.
    """

    def __init__(self) -> None:
        self._pairs: list[tuple[str, str]] = [("apps", "local.apps"), ("name", "local.name"),
                                              ("config", "local.config")]

    def add_app(self, key: str, commit: str | None, service_ids: Mapping[str, str], single: bool) -> None:
        app3, app2 = child("apps", key), child("local.apps", key)
        self._pairs.append((app3, app2))
        if not commit:
            return
        rel3 = child(child(app3, "releases"), commit)
        compose = "" if single else child("apps", key)
        self._pairs += [
            (rel3, app2),
            (child(rel3, "id"), child(app2, "releaseId")),
            (child(rel3, "services"), child(app2, "services")),
            (child(rel3, "volumes"), child(compose, "volumes")),
            (child(rel3, "networks"), child(compose, "networks")),
        ]
        for name, service_id in service_ids.items():
            svc3, svc2 = child(child(rel3, "services"), name), child(child(compose, "services"), name)
            self._pairs += [
                (svc3, svc2),
                (child(svc3, "composition"), svc2),
                (child(svc3, "image_id"), child(svc2, "imageId")),
                (child(svc3, "id"), child(child(app2, "services"), service_id)),
            ]

    def user_path(self, path: str) -> str:
        """The user's path for ``path`` (a v3 path of the converted document)."""
        best = ("", "")
        for v3, v2 in self._pairs:
            boundary = path[len(v3): len(v3) + 1] in ("", ".", "[")
            if path.startswith(v3) and boundary and len(v3) > len(best[0]):
                best = (v3, v2)
        rest = path[len(best[0]):]
        if not best[1] and rest.startswith("."):
            rest = rest[1:]
        return best[1] + rest


def _v2_app_id(key: str, path: str) -> int:
    if not _APP_ID_KEY.fullmatch(key) or not is_numeric_identifier(key):
        raise ValidationError(path, f"key {describe(key)} must be a numeric app id")
    return int(key)


def _v2_services(value: Any, path: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(v3 services by name, serviceId key by name)."""
    services: dict[str, Any] = {}
    ids: dict[str, str] = {}
    for service_id, item in expect_object(value, path).items():
        svc_path = child(path, service_id)
        svc = expect_object(item, svc_path)
        name = expect_string(_get(svc, "serviceName"), child(svc_path, "serviceName"))
        if name in services:
            raise ValidationError(
                child(svc_path, "serviceName"), f"duplicate service name {describe(name)}"
            )
        v3: dict[str, Any] = {"id": service_id}
        for v2_key, v3_key in _V2_SERVICE_FIELDS.items():
            if v2_key in svc:
                v3[v3_key] = svc[v2_key]
        v3["composition"] = {
            k: v for k, v in svc.items() if k not in _V2_SERVICE_FIELDS and k not in _V2_DROPPED
        }
        services[name] = v3
        ids[name] = service_id
    return services, ids


def _v2_app(key: str, value: Any, path: str, paths: V2Paths, single: bool) -> dict[str, Any]:
    app_id = _v2_app_id(key, path)
    app_path = child(path, key)
    app = expect_object(value, app_path)
    v3: dict[str, Any] = {"id": app_id, "class": "fleet", "releases": {}}
    if "name" in app:
        v3["name"] = app["name"]
    commit = _get(app, "commit")
    if commit is not MISSING and commit is not None:
        commit = expect_string(commit, child(app_path, "commit"))
    services_v2 = _get(app, "services")
    if not commit:
        # No commit: no release, as in the reference. Services given without one would be dropped
        # silently (a misspelt `commit` removed the app), so they are refused.
        if services_v2 not in (MISSING, None) and services_v2 != {}:
            raise ValidationError(
                child(app_path, "commit"), "is required when the app has services"
            )
        paths.add_app(key, None, {}, single)
        return v3
    if services_v2 is MISSING or services_v2 is None:
        raise ValidationError(
            child(app_path, "services"),
            f"is required ({{}} for a release without services){_hint(app, V2_APP_KEYS)}",
        )
    services, ids = _v2_services(services_v2, child(app_path, "services"))
    release: dict[str, Any] = {
        "services": services,
        "volumes": _get(app, "volumes"),
        "networks": _get(app, "networks"),
    }
    if "releaseId" in app:
        release["id"] = app["releaseId"]
    v3["releases"] = {commit: {k: v for k, v in release.items() if v is not MISSING}}
    paths.add_app(key, commit, ids, single)
    return v3


def v2_to_v3(doc: Any, *, current_name: str) -> tuple[dict[str, Any], V2Paths]:
    """The v3 ``TargetDevice`` document a v2 body stands for, and the map back to the body's paths.

    The documented shape is required: ``{"local": {"apps": {...}}}``; ``{"local": {"apps": {}}}`` is
    how a user removes every app. A body without ``local`` or ``local.apps`` (``{}``, ``{"apps": {}}``)
    is refused: the reference read it as "no apps" and removed everything.
    """
    paths = V2Paths()
    body = expect_object(doc, "")
    local = _get(body, "local")
    if local is MISSING or local is None:
        raise ValidationError("local", f"is required: the body is {_V2_SHAPE}{_hint(body, V2_BODY_KEYS)}")
    local = expect_object(local, "local")
    apps_v2 = _get(local, "apps")
    if apps_v2 is MISSING or apps_v2 is None:
        hint = _hint(local, V2_LOCAL_KEYS)
        raise ValidationError("local.apps", f"is required ({{}} removes every app){hint}")
    apps_v2 = expect_object(apps_v2, "local.apps")
    single = len(apps_v2) == 1
    apps = {key: _v2_app(key, app, "local.apps", paths, single) for key, app in apps_v2.items()}
    name = _get(local, "name")
    config = _get(local, "config")
    v3 = {
        "name": current_name if name is MISSING or name is None else name,
        "config": {} if config is MISSING or config is None else config,
        "apps": apps,
    }
    return v3, paths


def from_v2_local(doc: Any, *, current_name: str) -> TargetDevice:
    """Convert and decode a ``POST /v2/local/target-state`` body (§2.5.1, local=True).

    ``{local: {name?, config?, apps}, force?}``: the app uuid is the appId key, services are
    keyed by ``serviceName`` with the serviceId key as ``id``, and every other service field goes
    into ``composition``. A missing name falls back to ``current_name``. ``force`` is the caller's.
    Every error names the field where the user wrote it (see :class:`V2Paths`).
    """
    paths = V2Paths()
    try:
        v3, paths = v2_to_v3(doc, current_name=current_name)
        return _device(v3, "")
    except ValidationError as err:
        raise _refused(ValidationError(paths.user_path(err.path), err.rule)) from err


# ---------------------------------------------------------------------------- apps.json
_LEGACY_APP_UUID: Final = "user-app"
_LEGACY_VOLUME: Final = "resin-data"
_LEGACY_FEATURES: Final = ("kernel-modules", "firmware", "dbus", "supervisor-api", "resin-api")


def _or_default(conf: Mapping[str, Any], key: str, default: str) -> Any:
    value = conf.get(key)
    return default if value is None else value


def _from_legacy_entry(value: Any, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One single-container app -> (its config, the v3 app), as §11.2 lists."""
    entry = expect_object(value, path)
    env = with_default(expect_object, {})(_get(entry, "env"), child(path, "env"))
    conf = with_default(expect_object, {})(_get(entry, "config"), child(path, "config"))
    commit = expect_string(_get(entry, "commit"), child(path, "commit"))
    if not commit:
        raise ValidationError(child(path, "commit"), "must not be empty")
    labels = {f"io.resin.features.{feature}": "1" for feature in _LEGACY_FEATURES}
    labels["io.resin.update.strategy"] = _or_default(
        conf, "RESIN_SUPERVISOR_UPDATE_STRATEGY", "download-then-kill"
    )
    labels["io.resin.update.handover-timeout"] = _or_default(
        conf, "RESIN_SUPERVISOR_HANDOVER_TIMEOUT", ""
    )
    labels["io.resin.legacy-container"] = "1"
    service: dict[str, Any] = {
        "id": 1,
        "image_id": 1,
        "environment": {k: v for k, v in env.items() if not k.startswith("RESIN_")},
        "labels": labels,
        "running": True,
        "composition": {
            "restart": _or_default(conf, "RESIN_APP_RESTART_POLICY", "always"),
            "privileged": True,
            "networkMode": "host",  # sic: camelCase, as the reference writes it
            "volumes": [f"{_LEGACY_VOLUME}:/data"],
        },
    }
    if "imageId" in entry:
        service["image"] = entry["imageId"]
    app: dict[str, Any] = {
        "class": "fleet",
        "releases": {
            commit: {
                "id": 1,
                "services": {"main": service},
                "volumes": {_LEGACY_VOLUME: {}},
                "networks": {},
            }
        },
    }
    for src, dst in (("appId", "id"), ("name", "name")):
        if src in entry:
            app[dst] = entry[src]
    return dict(conf), app


def _from_legacy_apps_json(doc: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    apps: dict[str, Any] = {}
    for index, entry in enumerate(doc):
        conf, app = _from_legacy_entry(entry, child("", index))
        config.update(conf)
        apps[_LEGACY_APP_UUID] = app  # every entry has this uuid: the last one wins
    return {"config": config, "apps": apps}


def _preload_apps(value: Any, path: str) -> dict[str, TargetApp]:
    return record(value, path, short_string_key, _preload_app)


def parse_apps_json(doc: Any, *, current_name: str) -> Preload:
    """Decode a preload ``apps.json`` (§11.2) into a :class:`Preload`.

    Accepts the v3 format (each app needs a release) and the legacy single-container array,
    converted into app ``user-app`` with one service ``main``. The v2 format (apps keyed by
    numeric ids) needs the cloud API to find app uuids, which a pure parser cannot call, so it is
    refused with the reference's offline message. The device name is ``current_name`` (the
    reference writes ``''``, which would blank the device name).
    """
    try:
        if isinstance(doc, list | tuple):
            doc = _from_legacy_apps_json(doc)
        body = expect_object(doc, "")
        apps = _get(body, "apps")
        if isinstance(apps, Mapping) and any(is_numeric_identifier(k) for k in apps):
            raise AppsJsonParseError(V2_APPS_JSON_MESSAGE)
        device = TargetDevice(
            name=current_name,
            config=with_default(config_var_object, {})(_get(body, "config"), "config"),
            apps=with_default(_preload_apps, {})(apps, "apps"),
        )
        pin = optional(boolean)(_get(body, "pinDevice"), "pinDevice")
    except ValidationError as err:
        raise _refused(err, AppsJsonParseError, "Invalid apps.json") from err
    return Preload(device=device, pin_device=bool(pin))

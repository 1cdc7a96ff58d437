"""Read the engine (and the supervisor's own records) into the planner's :class:`CurrentState`.

One list call per resource kind (containers, networks, volumes, images). The network, volume and
image listings carry everything needed; a container listing does not (no env, binds, host config),
so each *supervised* container is inspected, and only those, and only when its listing changed
(see :class:`_InspectCache`). Objects the compose layer cannot read
back (a hand-made container wearing the supervised label, a network with a foreign name) are
skipped with a warning rather than failing the whole read: one stray object must not stop updates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from supervisor.compose import ComposeError, Network, Service, Volume, parse_container_name
from supervisor.state.current import App, CurrentState

if TYPE_CHECKING:
    import docker

    from supervisor.db import Database
    from supervisor.state.executor import LockRegistry
    from supervisor.state.images import ImageManager

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SUPERVISOR_NETWORK",
    "EXTRA_FIRMWARE_VOLUME",
    "SUPERVISED_LABELS",
    "EngineReader",
    "SupervisorNetwork",
    "current_commits",
    "engine_client",
    "is_supervised",
    "named_as_service",
]

SUPERVISED_LABELS: Final = ("io.balena.supervised", "io.resin.supervised")
EXTRA_FIRMWARE_VOLUME: Final = "extra-firmware"
_APP_LABELS: Final = ("io.balena.app-uuid", "io.balena.app-id", "io.resin.app-id")
BRIDGE_NAME_OPTION: Final = "com.docker.network.bridge.name"
#: A cached container read is trusted this long even if its listing looks the same: the listing
#: cannot show a ``docker update`` of limits or restart policy made by hand.
INSPECT_MAX_AGE_S: Final = 60.0


def engine_client() -> docker.DockerClient:
    """A Docker client from the environment (``DOCKER_HOST``, ...), checked with a ping.

    ``trust_env`` is turned off: requests would otherwise look up proxy variables in the process
    environment on every call (about a third of a no-op round's CPU), and the engine's socket
    is never reached through an HTTP proxy. Registry proxies are the engine's own business.
    """
    import docker

    client = docker.from_env()
    client.api.trust_env = False
    try:
        client.ping()
    except Exception:
        client.close()
        raise
    return client


@dataclass(frozen=True)
class SupervisorNetwork:
    """The ``supervisor0`` bridge services reach the supervisor API on (§3.2).

    Configurable so tests on a shared engine can use a name and subnet nothing else uses;
    ``labels`` are added at creation (the reference sets none).
    """

    name: str = "supervisor0"
    bridge_name: str = "supervisor0"
    subnet: str = "10.114.104.0/25"
    gateway: str = "10.114.104.1"
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, entry: Mapping[str, Any]) -> bool:
        """Whether an engine network (list or inspect JSON) is this network, correctly set up."""
        if entry.get("Name") != self.name:
            return False
        options = entry.get("Options") or {}
        pools = (entry.get("IPAM") or {}).get("Config") or []
        return (
            options.get(BRIDGE_NAME_OPTION) == self.bridge_name
            and bool(pools)
            and pools[0].get("Subnet") == self.subnet
            and pools[0].get("Gateway") == self.gateway
        )

    def create_body(self) -> dict[str, Any]:
        """The POST /networks/create body."""
        return {
            "Name": self.name,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "Options": {BRIDGE_NAME_OPTION: self.bridge_name},
            "IPAM": {"Driver": "default", "Config": [{"Subnet": self.subnet, "Gateway": self.gateway}]},
            "Labels": dict(self.labels),
        }


#: The device's real supervisor0 (what the reader checks unless told otherwise).
DEFAULT_SUPERVISOR_NETWORK: Final = SupervisorNetwork()


def is_supervised(labels: Mapping[str, str] | None) -> bool:
    """Carries ``io.balena.supervised`` (or the legacy ``io.resin.supervised``)."""
    return any(key in (labels or {}) for key in SUPERVISED_LABELS)


def current_commits(db: Database) -> dict[int, str]:
    """appId -> the release the app last settled on (the ``currentCommit`` table)."""
    return {row["appId"]: row["commit"] for row in db.query('SELECT appId, "commit" FROM currentCommit')}


@dataclass
class _Group:
    app_id: int
    uuid: str | None = None
    services: list[Service] = field(default_factory=list)
    networks: list[Network] = field(default_factory=list)
    volumes: list[Volume] = field(default_factory=list)

    def note_uuid(self, uuid: str | None) -> None:
        if uuid and self.uuid is None:
            self.uuid = uuid


def _listing_key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a container listing shows of the things that change on an existing container: its
    state, its name (``updateMetadata`` renames) and its network endpoints (connect/disconnect)."""
    networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
    endpoints = tuple(sorted((name, (net or {}).get("EndpointID")) for name, net in networks.items()))
    return entry.get("State"), tuple(entry.get("Names") or ()), endpoints


class _InspectCache:
    """Read-back services by container id, reused while the container's listing is unchanged.

    A container's configuration is fixed at creation; what can change (state, name, networks)
    shows in the listing, so a container whose listing matches is not inspected again, which makes
    a no-op round cost one list call per kind. Entries expire after ``max_age`` (hand-made
    ``docker update``), and :meth:`clear` drops all after the executor acted.
    """

    def __init__(
        self, max_age: float = INSPECT_MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_age = max_age
        self.clock = clock
        self._entries: dict[str, tuple[tuple[Any, ...], float, Service]] = {}
        self._lock = threading.Lock()

    def get(self, entry: Mapping[str, Any]) -> Service | None:
        with self._lock:
            hit = self._entries.get(entry["Id"])
        if hit is None or hit[0] != _listing_key(entry) or self.clock() - hit[1] > self.max_age:
            return None
        return hit[2]

    def put(self, entry: Mapping[str, Any], service: Service) -> None:
        with self._lock:
            self._entries[entry["Id"]] = (_listing_key(entry), self.clock(), service)

    def keep_only(self, ids: Collection[str]) -> None:
        """Forget containers that are gone (the listing is the whole truth)."""
        with self._lock:
            for gone in self._entries.keys() - set(ids):
                del self._entries[gone]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class EngineReader:
    """Builds a :class:`CurrentState` from the engine, the ``image``/``currentCommit`` tables, the
    image manager's downloads and the lock registry.

    ``supervisor_network=None`` skips the supervisor0 check (reported ready), as does
    ``extra_firmware=None`` for the extra-firmware one; otherwise ``extra_firmware`` returns
    config.json's ``os.kernel.extraFirmwareVol``. ``locks`` must be the executor's registry.
    ``volatile`` gives statuses the executor is in the middle of (container id -> ``Stopping``),
    which override the engine's (§3.10). Container reads are cached (:class:`_InspectCache`);
    whoever changes containers calls :meth:`invalidate` afterwards.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        db: Database,
        images: ImageManager,
        *,
        locks: LockRegistry | None = None,
        supervisor_network: SupervisorNetwork | None = DEFAULT_SUPERVISOR_NETWORK,
        extra_firmware: Callable[[], str | None] | None = None,
        volatile: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.api = client.api
        self.db = db
        self.images = images
        self.locks = locks
        self.supervisor_network = supervisor_network
        self.extra_firmware = extra_firmware
        self.volatile = volatile
        self._cache = _InspectCache()
        self._warned: set[str] = set()

    def _warn_once(self, message: str) -> None:
        """A foreign object is there every round: say so once (bounded, like the planner's warnings)."""
        if message in self._warned:
            return
        if len(self._warned) > 1000:
            self._warned.clear()
        self._warned.add(message)
        log.warning("%s", message)

    def _read_all(
        self, build: Callable[[Any], Any], entries: Iterable[Mapping[str, Any]], kind: str
    ) -> list[Any]:
        """Each entry read back; one the compose layer cannot read is not ours (warned about once)."""
        out = []
        for entry in entries:
            try:
                out.append(build(entry))
            except ComposeError as err:
                self._warn_once(f"Ignoring {kind} {entry.get('Name')}: {err}")
        return out

    def invalidate(self) -> None:
        """Inspect every container again at the next read (after the executor acted)."""
        self._cache.clear()

    def read(
        self, *, apps: Collection[str] | None = None, uuids: Mapping[int, str] | None = None
    ) -> CurrentState:
        """The device as the planner sees it. ``apps`` (uuids or str app ids) limits the apps
        reported, for callers that own only some of the engine's apps (tests on a shared engine).

        ``uuids`` (app id -> uuid, from the target) tells which name prefix an app's networks carry;
        without it the uuid on the app's containers and volumes does. A network labelled with the
        app's id but named for another uuid is not the app's (:func:`_named_for`)."""
        containers = self.api.containers(all=True)
        networks = self.api.networks()
        volumes = (self.api.volumes() or {}).get("Volumes") or []
        listing = self.images.listing()
        records = self.images.records()

        groups: dict[int, _Group] = {}
        volatile = dict(self.volatile()) if self.volatile is not None else {}
        for svc in self._services(containers, apps):
            if svc.container_id in volatile:
                svc = replace(svc, status=volatile[svc.container_id])
            group = groups.setdefault(svc.app_id, _Group(svc.app_id))
            group.note_uuid(svc.app_uuid)
            group.services.append(svc)
        supervised_volumes = [v for v in volumes if is_supervised(v.get("Labels"))]
        supervised_networks = [n for n in networks if is_supervised(n.get("Labels"))]
        for vol in self._read_all(Volume.from_docker, supervised_volumes, "volume"):
            group = groups.setdefault(vol.app_id, _Group(vol.app_id))
            group.note_uuid(vol.app_uuid)
            group.volumes.append(vol)
        for net in self._read_all(Network.from_docker, supervised_networks, "network"):
            group = groups.get(net.app_id)
            expected = (uuids or {}).get(net.app_id) or (group.uuid if group is not None else None)
            if not _named_for(net, expected):
                self._warn_once(f"Ignoring network {net.docker_name}: app {net.app_id}'s networks are "
                                f"named {expected}_<name>")
                continue
            group = groups.setdefault(net.app_id, _Group(net.app_id))
            group.note_uuid(net.app_uuid)
            group.networks.append(net)

        commits = current_commits(self.db)
        current_apps: dict[str, App] = {}
        for group in groups.values():
            key = group.uuid or str(group.app_id)
            if apps is not None and key not in apps and str(group.app_id) not in apps:
                continue
            current_apps[key] = App(
                app_id=group.app_id,
                app_uuid=group.uuid or str(group.app_id),
                commit=commits.get(group.app_id),
                # Containers of one app share its uuid, even those that predate uuids.
                services=tuple(
                    s if s.app_uuid or not group.uuid else replace(s, app_uuid=group.uuid)
                    for s in group.services
                ),
                networks=tuple(group.networks),
                volumes=tuple(group.volumes),
            )

        volume_names = {v.get("Name") for v in volumes}
        return CurrentState(
            apps=current_apps,
            available_images=tuple(self.images.available(records, listing)),
            downloading=self.images.downloading(),
            locks_held=self.locks.held() if self.locks is not None else frozenset(),
            lock_leftovers=self.locks.leftovers() if self.locks is not None else frozenset(),
            supervisor_network_ready=self.supervisor_network is None
            or any(self.supervisor_network.matches(n) for n in networks),
            extra_firmware_ready=self.extra_firmware is None
            or (self.extra_firmware() == EXTRA_FIRMWARE_VOLUME and EXTRA_FIRMWARE_VOLUME in volume_names),
            cleanup_needed=bool(self.images.cleanup_candidates(listing, containers, records)),
        )

    def services(self, *, apps: Collection[str] | None = None) -> list[Service]:
        """Only the supervised containers (of ``apps``, when given), with the executor's statuses:
        what the API reports, without reading networks, volumes and images."""
        volatile = dict(self.volatile()) if self.volatile is not None else {}
        return [
            replace(svc, status=volatile[svc.container_id]) if svc.container_id in volatile else svc
            for svc in self._services(self.api.containers(all=True), apps)
        ]

    def _services(
        self, containers: Iterable[Mapping[str, Any]], apps: Collection[str] | None
    ) -> list[Service]:
        """Inspect and read back each supervised container (of ``apps`` only, when given); one
        that vanished since the listing is skipped."""
        import docker.errors

        services: list[Service] = []
        containers = list(containers)
        for entry in containers:
            labels = entry.get("Labels") or {}
            if not is_supervised(labels):
                continue
            if apps is not None and not any(labels.get(key) in apps for key in _APP_LABELS):
                continue
            if not named_as_service(entry):
                # Wears the labels but not a name the supervisor gives: someone else's. Known from
                # the listing, so it costs no inspect, round after round.
                self._warn_once(f"Ignoring container {(entry.get('Names') or ['?'])[0]}: not named "
                                "<service>_<imageId>_<releaseId>_<commit> for its service label")
                continue
            cached = self._cache.get(entry)
            if cached is not None:
                services.append(cached)
                continue
            try:
                inspect = self.api.inspect_container(entry["Id"])
            except docker.errors.NotFound:
                continue  # removed since the listing
            try:
                service = Service.from_container(inspect)
            except ComposeError as err:
                self._warn_once(f"Ignoring container {entry['Id'][:12]}: {err}")
                continue
            self._cache.put(entry, service)
            services.append(service)
        self._cache.keep_only([entry["Id"] for entry in containers])
        return services


def _named_for(net: Network, uuid: str | None) -> bool:
    """Whether the network's name is ``<uuid>_<name>`` (or the legacy ``<appId>_<name>``) of its app;
    anything goes while the app's uuid is unknown."""
    return uuid is None or net.app_uuid in (None, uuid, str(net.app_id))


def named_as_service(entry: Mapping[str, Any]) -> bool:
    """A listed container's name is exactly one the supervisor gives its service label (§3.10)."""
    labels = entry.get("Labels") or {}
    service = labels.get("io.balena.service-name") or labels.get("io.resin.service-name") or ""
    names = entry.get("Names") or []
    return bool(names) and parse_container_name(str(names[0]), service) is not None

"""Plain-data snapshots the planner reads: apps (current or target), image records, engine facts.

The I/O edge (engine, database, lock directory) fills these in; the planner only reads them, so a
test can describe any device situation with a few constructors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["App", "CurrentState", "Image", "same_image"]


def _digest(name: str) -> str | None:
    _, sep, digest = name.partition("@")
    return digest if sep and digest else None


def same_image(a: str, b: str) -> bool:
    """Two image names are the same image when equal or when they carry the same digest (§9.1)."""
    if a == b:
        return True
    digest = _digest(a)
    return digest is not None and digest == _digest(b)


@dataclass(frozen=True)
class Image:
    """A supervised image record (a row of the ``image`` table; §9.1).

    ``docker_image_id`` is the engine's id once known. Equality of two records without that id is
    "the same metadata", which is what decides whether a record still needs saving.
    """

    name: str
    app_id: int
    app_uuid: str
    service_id: int
    service_name: str
    image_id: int
    release_id: int
    commit: str | None
    docker_image_id: str | None = None

    @property
    def digest(self) -> str | None:
        """The ``sha256:...`` part of a digest reference, if the name carries one."""
        return _digest(self.name)

    def metadata(self) -> tuple[Any, ...]:
        """Every field but the engine id: what "stored with exactly this metadata" compares."""
        return (
            self.name,
            self.app_id,
            self.app_uuid,
            self.service_id,
            self.service_name,
            self.image_id,
            self.release_id,
            self.commit,
        )


@dataclass(frozen=True)
class App:
    """One app's components, current or target.

    ``services`` is a sequence because the engine may hold several containers for one service
    (handover, duplicates); ``networks`` likewise may hold engine duplicates of one name.
    ``commit`` is the stored current release (current side) or the target release (target side).
    ``rejected`` marks a target app whose release failed its contracts: it is neither updated nor
    removed.
    """

    app_id: int
    app_uuid: str
    commit: str | None = None
    services: tuple[Any, ...] = ()
    networks: tuple[Any, ...] = ()
    volumes: tuple[Any, ...] = ()
    name: str = ""
    rejected: bool = False
    is_host: bool = False

    def __post_init__(self) -> None:
        for attr in ("services", "networks", "volumes"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))

    @property
    def is_empty(self) -> bool:
        return not (self.services or self.networks or self.volumes)


@dataclass(frozen=True)
class CurrentState:
    """What the device has now, as the planner needs it (§3.2 inputs).

    * ``apps``: by app uuid (by str(appId) for components that predate uuids).
    * ``available_images``: image records whose image exists in the engine.
    * ``downloading``: names of images with a fetch in flight.
    * ``locks_held``: app ids whose update locks the supervisor holds in memory.
    * ``lock_leftovers``: app ids with supervisor-owned lock files on disk (e.g. after a restart).
    * ``container_ids``: per app uuid, service name -> container id; derived from ``apps`` when absent.
    * ``cleanup_needed``: dangling or old supervisor images exist (§9.6, needs the engine to know).
    """

    apps: Mapping[str, App] = field(default_factory=dict)
    available_images: tuple[Image, ...] = ()
    downloading: frozenset[str] = frozenset()
    locks_held: frozenset[int] = frozenset()
    lock_leftovers: frozenset[int] = frozenset()
    supervisor_network_ready: bool = True
    extra_firmware_ready: bool = True
    cleanup_needed: bool = False
    container_ids: Mapping[str, Mapping[str, str]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "available_images", tuple(self.available_images))
        object.__setattr__(self, "downloading", frozenset(self.downloading))
        object.__setattr__(self, "locks_held", frozenset(self.locks_held))
        object.__setattr__(self, "lock_leftovers", frozenset(self.lock_leftovers))

    def container_ids_for(self, app: App) -> dict[str, str]:
        """service name -> container id for one app (the ``service:<x>`` network-mode check)."""
        if self.container_ids is not None and app.app_uuid in self.container_ids:
            return dict(self.container_ids[app.app_uuid])
        ids: dict[str, str] = {}
        for svc in app.services:
            container_id = getattr(svc, "container_id", None)
            if container_id:
                ids[svc.service_name] = container_id
        return ids

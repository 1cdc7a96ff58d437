"""Update locks (spec §4): the lock files apps and the supervisor share, and the in-process lock.

A service's lock directory on the host, ``<root>/tmp/balena-supervisor/services/<appId>/<service>/``,
is bind-mounted into its container at ``/tmp/balena`` and ``/tmp/resin``. While ``updates.lock`` or
``resin-updates.lock`` exists there, the service is locked: the supervisor may not stop, kill or
restart it, nor reboot the device. The supervisor takes the same files itself before it kills
anything, so an app cannot grab a lock half-way through an update.

Two holders share one :class:`LockRegistry` per supervisor:

* the **state engine** (``take``/``release``, the ``takeLock``/``releaseLock`` steps) keeps an app's
  locks across loop iterations until its ``releaseLock``;
* **API actions** (restart, stop, purge, reboot, host-config) use :meth:`LockRegistry.with_lock`
  around what they do, as the reference's ``withLock``.

Each app also has an in-process exclusive lock (the reference's RW lock keyed by app id), so the
two never work on one app at once: whoever comes second waits ``max_wait_ms`` and then fails with
``Locks for app <id> are being held by another supervisor operation``.

**Supervisor-owned lock files.** As root (a device) they are owned by uid 65534 (``nobody``) like the
reference's ``lockfile`` runs, so either supervisor recognises the other's. Not as root, a process
cannot chown; there a file is the supervisor's when it is a regular file of our own uid whose content
starts with :data:`LOCK_MARKER` (every supervisor lock file carries the marker, root or not). A user
lock (any other file, or a directory, named like a lock) is never taken for ours.

Deliberate differences from the reference:

* Leftover supervisor lock files (a crash, ``kill -9``) are removed when the supervisor starts
  (:meth:`LockRegistry.clean_leftovers`), before the first apply; the reference only removes them
  at the app's next ``releaseLock``, so an app stays locked against its own user until then.
* A failed ``take`` leaves nothing behind: the files created in that attempt are removed, and the
  app's process lock is let go unless an earlier ``take`` of the same apply holds it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Final

from supervisor.compose.naming import BASE_LOCK_DIR, lock_dir_for

log = logging.getLogger(__name__)

__all__ = [
    "ENGINE_MAX_WAIT_MS",
    "LOCK_FILES",
    "LOCK_MARKER",
    "SUPERVISOR_LOCK_UID",
    "LockRegistry",
    "UpdatesLockedError",
    "is_supervisor_lock",
]

LOCK_FILES: Final = ("updates.lock", "resin-updates.lock")
SUPERVISOR_LOCK_UID: Final = 65534  # `nobody`: marks lock files as the supervisor's (§4.2)
#: Content of every lock file the supervisor creates: how a non-root supervisor knows its own.
LOCK_MARKER: Final = b"pysupervisor update lock\n"
#: How long a ``takeLock`` step waits for an API action that holds the app (then: locked, retry).
ENGINE_MAX_WAIT_MS: Final = 2000
#: How long ``releaseLock`` waits for the process lock before it cleans leftovers (the reference's 10 ms).
CLEAN_MAX_WAIT_MS: Final = 10


class UpdatesLockedError(Exception):
    """An update lock is held by a service (or another supervisor operation): the API answers 423."""


def is_supervisor_lock(path: Path) -> bool:
    """Whether ``path`` is a lock file the supervisor created (uid 65534, or our marker)."""
    try:
        st = path.lstat()
    except OSError:
        return False
    if st.st_uid == SUPERVISOR_LOCK_UID:
        return True
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(len(LOCK_MARKER)) == LOCK_MARKER
    except OSError:
        return False


class _ProcessLocks:
    """One exclusive lock per app id, with an owner token so another thread may release it (the
    state engine takes in one step thread and releases in another)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owners: dict[int, object] = {}
        #: Called with the seconds waited after a take that had to wait (metrics, issue #17).
        self.on_wait: Callable[[float], None] | None = None

    def acquire(self, app_id: int, owner: object, max_wait_ms: int) -> None:
        """Re-entrant for the same owner; ``max_wait_ms`` 0 waits forever (as the reference)."""
        deadline = time.monotonic() + max_wait_ms / 1000 if max_wait_ms > 0 else None
        started: float | None = None
        try:
            with self._cond:
                while self._owners.get(app_id, owner) is not owner:
                    started = started or time.monotonic()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise UpdatesLockedError(
                            f"Locks for app {app_id} are being held by another supervisor operation"
                        )
                    self._cond.wait(remaining)
                self._owners[app_id] = owner
        finally:
            if started is not None and self.on_wait is not None:
                self.on_wait(time.monotonic() - started)

    def release(self, app_id: int, owner: object) -> None:
        with self._cond:
            if self._owners.get(app_id) is owner:
                del self._owners[app_id]
                self._cond.notify_all()

    def owner(self, app_id: int) -> object | None:
        with self._cond:
            return self._owners.get(app_id)

    def wait_released(self, but: object, timeout: float) -> bool:
        """Wait until no owner other than ``but`` holds an app; False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: all(o is but for o in self._owners.values()), timeout)


class LockRegistry:
    """The supervisor's update locks: lock files under ``lock_root`` and the per-app process lock.

    ``lock_root`` prefixes the host's ``/tmp/balena-supervisor`` ("" on a device), as
    :class:`~supervisor.compose.ServiceContext` ``lock_root`` does for the binds.
    """

    _ENGINE: Final = object()  # the owner token of the state engine's holds

    def __init__(self, lock_root: str = "", *, engine_max_wait_ms: int = ENGINE_MAX_WAIT_MS,
                 on_wait: Callable[[float], None] | None = None) -> None:
        self.lock_root = lock_root
        self.engine_max_wait_ms = engine_max_wait_ms
        self._process = _ProcessLocks()
        self._process.on_wait = on_wait
        self._held: dict[int, set[Path]] = {}  # the engine's files, by app
        self._lock = threading.Lock()
        #: Receives ``Taking update locks`` / ``Releasing update locks`` (system log, §4, §8.5).
        self.system_log: Callable[[str], None] | None = None

    def _system(self, text: str) -> None:
        if self.system_log is not None:
            try:
                self.system_log(text)
            except Exception:
                log.exception("System log listener failed")

    @property
    def base(self) -> Path:
        return Path(f"{self.lock_root.rstrip('/')}{BASE_LOCK_DIR}")

    def directory(self, app_id: int, service: str) -> Path:
        return Path(lock_dir_for(app_id, service, self.lock_root))

    # ------------------------------------------------------------------ the state engine
    def take(self, app_id: int, services: Iterable[str], *, force: bool = False) -> None:
        """The ``takeLock`` step: lock every service's files, all or nothing, and keep them (and
        the app's process lock) until :meth:`release`. Raises :class:`UpdatesLockedError`."""
        services = list(services)
        log.info("Taking update locks for app %s (services %s)", app_id, ", ".join(services))
        self._system("Taking update locks")
        self._process.acquire(app_id, self._ENGINE, self.engine_max_wait_ms)
        with self._lock:
            had = app_id in self._held
            ours = self._held.get(app_id, set())
        try:
            created, kept = self._take_files(app_id, services, force=force, ours=ours)
        except BaseException:
            if not had:
                self._process.release(app_id, self._ENGINE)
            raise
        with self._lock:
            self._held.setdefault(app_id, set()).update(created, kept)

    def release(self, app_id: int) -> None:
        """The ``releaseLock`` step: delete the engine's files of the app and any supervisor
        leftovers (unless an API action holds the app right now), then free the app."""
        with self._lock:
            paths = self._held.pop(app_id, set())
        self._system("Releasing update locks")
        for path in paths:
            _unlink(path)
        try:
            self._process.acquire(app_id, self._ENGINE, CLEAN_MAX_WAIT_MS)
        except UpdatesLockedError:
            log.info("Releasing update locks for app %s (leftovers kept: an action holds it)", app_id)
            return
        try:
            self._remove_leftovers(app_id)
        finally:
            self._process.release(app_id, self._ENGINE)
        log.info("Releasing update locks for app %s", app_id)

    def held(self) -> frozenset[int]:
        """Apps whose locks the state engine holds (what the planner calls ``locks_held``)."""
        with self._lock:
            return frozenset(self._held)

    def leftovers(self) -> frozenset[int]:
        """Apps with supervisor lock files on disk that nobody in this process holds (a previous
        run's, or an engine hold lost track of): the planner then emits ``releaseLock``."""
        found: set[int] = set()
        held = self.held()
        for app_id, app_dir in self._app_dirs():
            if app_id in held or self._process.owner(app_id) is not None:
                continue
            if any(is_supervisor_lock(p) for p in _lock_files_under(app_dir)):
                found.add(app_id)
        return frozenset(found)

    def clean_leftovers(self, apps: Collection[str] | None = None) -> int:
        """Remove every supervisor lock file left by a previous run (of ``apps``, app ids as
        strings, when given); how many were removed. Called at start, before the first apply."""
        removed = 0
        for app_id, app_dir in self._app_dirs():
            if apps is not None and str(app_id) not in apps:
                continue
            if self._process.owner(app_id) is not None:
                continue
            removed += self._remove_leftovers(app_id, app_dir)
        if removed:
            log.info("Removed %d supervisor update lock file(s) left by a previous run", removed)
        return removed

    # ------------------------------------------------------------------ API actions
    @contextlib.contextmanager
    def with_lock(
        self,
        app_ids: Iterable[int],
        *,
        force: bool = False,
        max_wait_ms: int = 10000,
        services: Mapping[int, Iterable[str]] | None = None,
    ) -> Iterator[None]:
        """Hold the locks of ``app_ids`` while the block runs (the reference's ``withLock``).

        An app's services are the non-symlink sub-directories of ``<base>/<appId>/`` (plus
        ``services[app_id]``, whose directories are created); an app with none is skipped.
        ``force`` deletes user locks. Raises :class:`UpdatesLockedError` before the block runs
        when a service is locked or another operation holds the app past ``max_wait_ms``.
        """
        owner = object()
        acquired: list[int] = []
        created: list[Path] = []
        extra = services or {}
        try:
            for app_id in sorted(set(app_ids)):
                names = list(dict.fromkeys([*self._service_dirs(app_id), *extra.get(app_id, ())]))
                if not names:
                    continue
                log.info("Taking update locks for app %s (services %s)", app_id, ", ".join(names))
                self._system("Taking update locks")
                self._process.acquire(app_id, owner, max_wait_ms)
                acquired.append(app_id)
                files, _kept = self._take_files(app_id, names, force=force, ours=set())
                created += files
            yield
        finally:
            for path in created:
                _unlink(path)
            for app_id in acquired:
                self._process.release(app_id, owner)
            if acquired:
                log.info("Releasing update locks for apps %s", ", ".join(map(str, acquired)))
                self._system("Releasing update locks")

    def wait_for_actions(self, timeout: float) -> bool:
        """Wait until no API action holds an app (a stop lets a running restart start its
        services again); False when one still does after ``timeout`` seconds."""
        return self._process.wait_released(self._ENGINE, timeout)

    def app_ids(self) -> list[int]:
        """Apps with a lock directory (what ``with_lock`` can lock without an engine to ask)."""
        return [app_id for app_id, _ in self._app_dirs()]

    # ------------------------------------------------------------------ files
    def _take_files(
        self, app_id: int, services: Iterable[str], *, force: bool, ours: set[Path]
    ) -> tuple[list[Path], list[Path]]:
        """Create each service's missing lock files; on any failure remove what was created."""
        created: list[Path] = []
        kept: list[Path] = []
        try:
            for service in services:
                directory = self.directory(app_id, service)
                directory.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(PermissionError):
                    directory.chmod(0o1777)  # so uid 65534 may create files in it (§4.2)
                for name in LOCK_FILES:
                    path = directory / name
                    if path in ours or is_supervisor_lock(path):
                        kept.append(path)
                        continue
                    if force and _exists(path):
                        log.warning("Overriding the update lock of service %s of app %s", service, app_id)
                        _unlink(path)
                    _create_lock_file(path, app_id, service)
                    created.append(path)
        except BaseException:
            for path in created:
                _unlink(path)
            raise
        return created, kept

    def _remove_leftovers(self, app_id: int, app_dir: Path | None = None) -> int:
        app_dir = app_dir or self.base / str(app_id)
        removed = 0
        for path in _lock_files_under(app_dir):
            if is_supervisor_lock(path):
                _unlink(path)
                removed += 1
        for tmp in app_dir.glob("*/.*updates.lock.*.tmp"):  # a create cut short (_create_lock_file)
            _unlink(tmp)
        return removed

    def _app_dirs(self) -> list[tuple[int, Path]]:
        try:
            entries = list(self.base.iterdir())
        except OSError:
            return []
        return [
            (int(entry.name), entry)
            for entry in entries
            if entry.name.isdigit() and not entry.is_symlink() and entry.is_dir()
        ]

    def _service_dirs(self, app_id: int) -> list[str]:
        """Every non-symlink sub-directory of the app's lock directory (§4.2 ``withLock``)."""
        app_dir = self.base / str(app_id)
        try:
            entries = sorted(app_dir.iterdir())
        except OSError:
            return []
        return [e.name for e in entries if not e.is_symlink() and e.is_dir()]


def _lock_files_under(app_dir: Path) -> Iterator[Path]:
    """Entries named ``*updates.lock`` below ``app_dir``, not following symlinks; a directory so
    named counts too (as the reference's search does)."""
    for parent, dirs, files in os.walk(app_dir, followlinks=False):
        for name in (*dirs, *files):
            if name.endswith("updates.lock"):
                yield Path(parent) / name


def _create_lock_file(path: Path, app_id: int, service: str) -> None:
    """``lockfile -r 0`` as uid 65534: exclusive create; an existing file is a held lock.

    The file appears whole: marker and owner are set on a temp file that is then hard-linked to the
    lock's name (``link`` fails if the name exists, like ``O_EXCL``). A kill in between leaves at most
    the temp file, never an empty lock file that would read as a user's lock forever."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    try:
        os.write(fd, LOCK_MARKER)
    finally:
        os.close(fd)
    try:
        if os.geteuid() == 0:
            os.chown(tmp, SUPERVISOR_LOCK_UID, SUPERVISOR_LOCK_UID)
        os.link(tmp, path)
    except FileExistsError:
        raise UpdatesLockedError(f"Lockfile exists for {{ appId: {app_id}, service: {service} }}") from None
    finally:
        _unlink(tmp)


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except IsADirectoryError:
        with contextlib.suppress(OSError):
            path.rmdir()
    except FileNotFoundError:
        pass

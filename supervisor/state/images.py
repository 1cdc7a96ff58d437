"""Supervised images: the ``image`` table, pulls with progress, removal and cleanup (reference §9).

The ``image`` table is the supervisor's list of images it owns; the engine is the truth about which
of them exist. This module keeps both in step and is the only place that talks to the engine about
images. Pulls stream the engine's progress (never buffered whole), at most ``max_parallel_pulls`` at
a time, and send registry credentials only for names with a registry part (§9.2). Credentials come
from a callable so they are read when needed and never stored or logged here.

A ``Fetch`` with a ``delta_source`` tries an image delta first (supervisor/delta/fetch.py) and falls
back to a pull. Not done (yet): the random 0-100 ms pause before a removal (it only spread the
reference's concurrent removals).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from supervisor.state.current import Image
from supervisor.state.target import split_image

if TYPE_CHECKING:
    import docker

    from supervisor.config import Config
    from supervisor.db import Database
    from supervisor.delta.fetch import DeltaFetcher

log = logging.getLogger(__name__)

__all__ = [
    "DELETING",
    "DOWNLOADED",
    "DOWNLOADING",
    "AuthProvider",
    "ImageDownloadBackoffError",
    "ImageError",
    "ImageManager",
    "ImageNotFoundError",
    "PullProgress",
    "config_registry_auth",
    "device_registry_auth",
    "is_dangling",
]

DOWNLOADING: Final = "Downloading"
DOWNLOADED: Final = "Downloaded"
DELETING: Final = "Deleting"

#: A failed cleanup candidate is left alone this long (§9.6).
CLEANUP_IGNORE_S: Final = 3600.0
#: Upper bound of the failed-download backoff; the reference uses appUpdatePollInterval.
DEFAULT_MAX_BACKOFF_S: Final = 900.0
#: Image inspects kept for :meth:`ImageManager.image_info` (a few KiB each).
_INSPECT_CACHE_SIZE: Final = 64

#: registry host -> ``auth_config`` for the Docker SDK, or None to send no credentials.
AuthProvider = Callable[[str], Mapping[str, str] | None]
#: (image name, percentage 0-100)
ProgressCallback = Callable[[str, int], None]

_COLUMNS: Final = (
    "name",
    "appId",
    "appUuid",
    "serviceId",
    "serviceName",
    "imageId",
    "releaseId",
    '"commit"',
)


class ImageError(Exception):
    """An image operation failed; the message names the image, never credentials."""


class ImageNotFoundError(ImageError):
    pass


class ImageDownloadBackoffError(ImageError):
    """The image failed to download recently; retrying this soon would only hammer the registry."""


# ------------------------------------------------------------------------------- auth
def device_registry_auth(
    uuid: Callable[[], str | None],
    api_key: Callable[[], str | None],
    managed: Callable[[], bool],
) -> AuthProvider:
    """``d_<uuid>`` with the device API key, for a managed device (§9.2); nothing when unmanaged.

    The values are read at every call, so a key exchange or provisioning takes effect at once.
    """

    def auth(registry: str) -> Mapping[str, str] | None:
        if not managed():
            return None
        device_uuid, key = uuid(), api_key()
        if not device_uuid or not key:
            return None
        return {"username": f"d_{device_uuid}", "password": key, "serveraddress": registry}

    return auth


def config_registry_auth(config: Config) -> AuthProvider:
    """:func:`device_registry_auth` over the supervisor's config (the provisioning key until the
    device key exists)."""
    return device_registry_auth(
        lambda: config.uuid,
        lambda: config.json.get("deviceApiKey") or config.json.get("apiKey"),
        lambda: not config.unmanaged,
    )


# --------------------------------------------------------------------------- progress
class PullProgress:
    """Folds the pull stream's per-layer events into one percentage.

    Each layer counts half for its download and half for its extraction; layers the engine
    already has count as done. The value never goes back and stays below 100 until the pull
    has finished, so 100 always means "the image is there".
    """

    _DOWNLOADED = frozenset({"Verifying Checksum", "Download complete"})
    _DONE = frozenset({"Pull complete", "Already exists"})

    def __init__(self) -> None:
        self._layers: dict[str, tuple[float, float]] = {}
        self._bytes: dict[str, int] = {}
        self._sizes: dict[str, int] = {}
        self.percentage = 0

    @property
    def downloaded(self) -> int:
        """Bytes downloaded so far: each layer's last ``Downloading`` ``current``, its ``total``
        once downloaded (a layer the engine reports only as complete counts nothing: no size given)."""
        return sum(self._bytes.values())

    def update(self, event: Mapping[str, Any]) -> bool:
        """Take one stream event; True when the percentage moved."""
        layer = event.get("id")
        status = str(event.get("status") or "")
        if not layer or status.startswith("Pulling from"):
            return False
        fraction = _fraction(event.get("progressDetail"))
        download, extract = self._layers.get(layer, (0.0, 0.0))
        if status == "Downloading" and fraction is not None:
            download = fraction
            detail = event["progressDetail"]
            self._bytes[layer] = int(detail["current"])
            self._sizes[layer] = int(detail["total"])
        elif status in self._DOWNLOADED:
            download = 1.0
            if layer in self._sizes:  # progress events are throttled: the last one is not the end
                self._bytes[layer] = self._sizes[layer]
        elif status == "Extracting":
            download, extract = 1.0, extract if fraction is None else fraction
        elif status in self._DONE:
            download, extract = 1.0, 1.0
        self._layers[layer] = (download, extract)
        done = sum(d + e for d, e in self._layers.values()) / (2 * len(self._layers))
        value = min(99, math.floor(done * 100))
        if value > self.percentage:
            self.percentage = value
            return True
        return False


def _fraction(detail: Any) -> float | None:
    if not isinstance(detail, Mapping):
        return None
    current, total = detail.get("current"), detail.get("total")
    if not isinstance(current, int | float) or not isinstance(total, int | float) or total <= 0:
        return None
    return max(0.0, min(1.0, current / total))


# ---------------------------------------------------------------------------- helpers
def is_dangling(entry: Mapping[str, Any]) -> bool:
    """No tags and no digests (the engine reports them as absent, empty or ``<none>``)."""
    tags = [t for t in entry.get("RepoTags") or [] if t != "<none>:<none>"]
    digests = [d for d in entry.get("RepoDigests") or [] if d != "<none>@<none>"]
    return not tags and not digests


def _repository(name: str) -> tuple[str, str | None, str | None]:
    """(``registry/repo``, tag, digest) of a normalised name; the name itself if unparseable."""
    try:
        ref = split_image(name)
    except ValueError:
        return name, None, None
    repo = f"{ref.registry}/{ref.name}" if ref.registry else ref.name
    return repo, None if ref.digest else ref.tag, ref.digest


def is_old_supervisor_tag(tag_ref: str, supervisor_image: str) -> bool:
    """A ``RepoTags`` entry of the running supervisor's repository, by its whole name, under another
    tag (§9.6 ``isSupervisorRepoTag``); ``balena/<arch>-supervisor`` also matches its old
    ``resin/<arch>-supervisor`` name. Only the leading ``balena/`` is renamed: replacing every
    ``balena`` made ``registry.balena-cloud.com/...`` match ``registry.resin-cloud.com/...``."""
    repo, current_tag, _ = _repository(supervisor_image)
    repos = {repo}
    if repo.startswith("balena/"):
        repos.add("resin/" + repo[len("balena/"):])
    other_repo, sep, other_tag = tag_ref.rpartition(":")
    return bool(sep) and "/" not in other_tag and other_repo in repos and other_tag != current_tag


def _registry_of(name: str) -> str | None:
    try:
        return split_image(name).registry
    except ValueError:
        return None


def _row_to_image(row: Mapping[str, Any]) -> Image:
    return Image(
        name=row["name"],
        app_id=row["appId"],
        app_uuid=row["appUuid"] or "",
        service_id=row["serviceId"],
        service_name=row["serviceName"],
        image_id=row["imageId"],
        release_id=row["releaseId"],
        commit=row["commit"],
        docker_image_id=row["dockerImageId"],
    )


def _engine_error(err: Exception) -> str:
    explanation = getattr(err, "explanation", None)
    return str(explanation or err)


@dataclass
class _Task:
    """A fetch or a removal under way; what the API reports while it lasts."""

    image: Image
    status: str
    progress: int | None = None


# ------------------------------------------------------------------------ the manager
class ImageManager:
    """Images the supervisor owns: DB rows, pulls, removal, cleanup and per-image status.

    ``auth`` gives the credentials for a registry host. ``cleanup_filter`` narrows which engine
    images ``cleanup`` may ever touch (tests sharing an engine pass a label predicate).
    ``supervisor_image`` is the running supervisor's image; other tags of its repository are
    cleanup candidates (§9.6).
    """

    def __init__(
        self,
        client: docker.DockerClient,
        db: Database,
        *,
        auth: AuthProvider | None = None,
        max_parallel_pulls: int = 3,
        on_progress: ProgressCallback | None = None,
        cleanup_filter: Callable[[Mapping[str, Any]], bool] | None = None,
        supervisor_image: str | None = None,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
        delta: Callable[[], DeltaFetcher | None] | None = None,
        on_bytes: Callable[[str, int], None] | None = None,
    ) -> None:
        self.api = client.api
        self.db = db
        self.auth = auth
        #: The delta fetcher for the current config, or None when deltas are off (docs/DELTAS.md).
        self.delta = delta
        #: Told ("pulled_bytes" or "delta_bytes", bytes) after each download (supervisor/metrics.py).
        self.on_bytes = on_bytes
        #: Receives the §8.5 system log events (``Downloading image``, ...): ``(humanName, fields)``.
        self.system_log: Callable[[str, Mapping[str, Any]], None] | None = None
        self.on_progress = on_progress
        self.cleanup_filter = cleanup_filter
        self.supervisor_image = supervisor_image
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self._pulls = threading.BoundedSemaphore(max(1, max_parallel_pulls))
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._failures: dict[str, tuple[int, float]] = {}
        self._cleanup_ignored: dict[str, float] = {}
        self._fetching: dict[str, threading.Lock] = {}
        # Image references -> engine id, from the last listing; engine id -> inspect. An image's
        # inspect never changes (its id is the digest of its config), so only the small
        # name -> id index must be fresh: the reconcile loop lists images every round anyway.
        self._listed: dict[str, str] = {}
        self._inspects: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # ------------------------------------------------------------------ the image table
    def records(self) -> list[Image]:
        """Every row of the ``image`` table."""
        return [_row_to_image(row) for row in self.db.query("SELECT * FROM image ORDER BY id")]

    def save(self, image: Image) -> None:
        """Upsert the row with this metadata, setting its engine id (§9.1 ``markAsSupervised``)."""
        where = " AND ".join(f"{col} IS ?" for col in _COLUMNS)
        ordered = image.metadata()  # the same order as _COLUMNS
        with self.db.transaction() as conn:
            row = conn.execute(f"SELECT id FROM image WHERE {where}", ordered).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO image ({', '.join(_COLUMNS)}, dockerImageId) VALUES (?,?,?,?,?,?,?,?,?)",
                    (*ordered, image.docker_image_id),
                )
            elif image.docker_image_id is not None:
                conn.execute(
                    "UPDATE image SET dockerImageId = ? WHERE id = ?", (image.docker_image_id, row[0])
                )

    def forget(self, image: Image) -> None:
        """Delete the rows with this metadata."""
        where = " AND ".join(f"{col} IS ?" for col in _COLUMNS)
        with self.db.transaction() as conn:
            conn.execute(f"DELETE FROM image WHERE {where}", image.metadata())

    # ------------------------------------------------------------------ engine views
    @staticmethod
    def available(records: Iterable[Image], listing: Iterable[Mapping[str, Any]]) -> list[Image]:
        """Rows whose image is in ``listing`` (``GET /images/json``), by tag, digest or engine id;
        a row found by name gets the engine id filled in."""
        by_tag: dict[str, str] = {}
        digests: dict[str, str] = {}
        ids: set[str] = set()
        for entry in listing:
            ids.add(entry["Id"])
            for tag in entry.get("RepoTags") or []:
                by_tag[tag] = entry["Id"]
            for ref in entry.get("RepoDigests") or []:
                _, _, digest = ref.partition("@")
                if digest:
                    digests[digest] = entry["Id"]
        found: list[Image] = []
        for img in records:
            engine_id = by_tag.get(img.name) or (digests.get(img.digest) if img.digest else None)
            if engine_id is None and img.docker_image_id in ids:
                engine_id = img.docker_image_id
            if engine_id is not None:
                found.append(img if img.docker_image_id else replace(img, docker_image_id=engine_id))
        return found

    def listing(self) -> list[dict[str, Any]]:
        """``GET /images/json``, remembered to resolve :meth:`image_info` names this round."""
        entries = self.api.images()
        index: dict[str, str] = {}
        for entry in entries:
            for ref in (*(entry.get("RepoTags") or ()), *(entry.get("RepoDigests") or ())):
                index[ref] = entry["Id"]
        with self._lock:
            self._listed = index
        return entries

    def image_info(self, name: str) -> dict[str, Any] | None:
        """The inspect of ``name`` for building target services, without an API call when the
        last :meth:`listing` names it and its inspect was seen before.

        The listing may be a round old, so this is for planning only; a fetch uses the exact
        :meth:`inspect_by_name`. The returned dict is shared: callers must not modify it.
        """
        import docker.errors

        with self._lock:
            engine_id = self._listed.get(name)
            cached = self._inspects.get(engine_id) if engine_id else None
            if cached is not None:
                self._inspects.move_to_end(engine_id)
                return cached
        try:
            info = self.api.inspect_image(engine_id) if engine_id else self.inspect_by_name(name)
        except docker.errors.NotFound:
            info = self.inspect_by_name(name)  # removed since the listing
        if info is not None:
            with self._lock:
                self._inspects[info["Id"]] = info
                while len(self._inspects) > _INSPECT_CACHE_SIZE:
                    self._inspects.popitem(last=False)
        return info

    def inspect_by_name(self, name: str) -> dict[str, Any] | None:
        """The engine's inspect of ``name``: by name, by reference filter, or by a DB row's
        engine id (§9.1); None when the engine does not have it."""
        import docker.errors

        try:
            return self.api.inspect_image(name)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            if err.status_code != 400:  # an unparseable name is simply not there
                raise
        repo, tag, digest = _repository(name)
        if tag is not None:
            try:
                entries = self.api.images(filters={"reference": f"{repo}:{tag}"})
            except docker.errors.APIError:
                entries = []  # a reference the engine cannot parse
            for entry in entries:
                return self.api.inspect_image(entry["Id"])
        for img in self.records():
            matches = img.name == name or (digest is not None and img.name.endswith(digest))
            if matches and img.docker_image_id:
                try:
                    return self.api.inspect_image(img.docker_image_id)
                except docker.errors.NotFound:
                    continue
        return None

    def _event(self, human: str, **fields: Any) -> None:
        if self.system_log is not None:
            try:
                self.system_log(human, fields)
            except Exception:
                log.exception("System log listener failed")

    # ------------------------------------------------------------------ status for the API
    def downloading(self) -> frozenset[str]:
        """Names of images with a fetch under way."""
        with self._lock:
            return frozenset(n for n, t in self._tasks.items() if t.status == DOWNLOADING)

    def status(self) -> list[dict[str, Any]]:
        """Each known image with ``status`` (Downloading/Downloaded/Deleting) and
        ``downloadProgress`` (0-100 while downloading, else None)."""
        with self._lock:
            tasks = dict(self._tasks)
        out: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        for task in tasks.values():
            out.append(_status_entry(task.image, task.status, task.progress))
            seen.add(task.image.metadata())
        for img in self.records():
            if img.metadata() not in seen:
                out.append(_status_entry(img, DOWNLOADED, None))
        return out

    # ------------------------------------------------------------------ fetch
    def fetch(
        self,
        image: Image,
        *,
        on_progress: ProgressCallback | None = None,
        abort: threading.Event | None = None,
        delta_source: str | None = None,
    ) -> Image:
        """Make ``image`` present in the engine and record it; returns it with its engine id.

        An image already present (§9.1 ``inspectByName``) is tagged and recorded without a pull.
        With ``delta_source`` and deltas on, the image is built from a delta first; any delta
        failure a pull can recover from falls back to the pull (docs/DELTAS.md).
        Raises :class:`ImageError` (naming the image) on failure; a failed image is not retried
        before its backoff (``min(2^n * 0.5 s, max_backoff_s)``) has passed.
        """
        name = image.name
        with self._lock:
            name_lock = self._fetching.setdefault(name, threading.Lock())
        # Two services of a batch may share an image: the second waits and then finds it present.
        with name_lock:
            self._check_backoff(name)
            with self._lock:
                self._tasks[name] = _Task(image, DOWNLOADING, 0)
            try:
                fetched = self._fetch(image, on_progress, abort, delta_source)
            except Exception as err:
                self._record_failure(name)
                reason = str(err) if isinstance(err, ImageError) else _engine_error(err)
                message = f"Failed to download image '{name}' due to '{reason}'"
                log.warning("%s", message)
                self._event("Failed to download image", image=name, error=reason)
                raise ImageError(message) from err
            finally:
                with self._lock:
                    self._tasks.pop(name, None)
            with self._lock:
                self._failures.pop(name, None)
        self._report(name, 100, on_progress)
        return fetched

    def _fetch(
        self, image: Image, on_progress: ProgressCallback | None, abort: threading.Event | None,
        delta_source: str | None = None,
    ) -> Image:
        name = image.name
        existing = self.inspect_by_name(name)
        if existing is None:
            log.info("Downloading image '%s'", name)
            if not delta_source:
                self._event("Downloading image", image=name)
            delta_id = self._fetch_delta(image, delta_source, on_progress, abort) if delta_source else None
            if delta_id is not None:
                existing = self.api.inspect_image(delta_id)
            else:
                self._pull(image, on_progress, abort)
                existing = self.inspect_by_name(name)
            if existing is None:
                raise ImageNotFoundError("the image is missing after its download")
            log.info("Downloaded image '%s'", name)
            self._event("Downloaded image", image=name)
        self._tag(existing["Id"], name)
        fetched = replace(image, docker_image_id=existing["Id"])
        self.save(fetched)
        return fetched

    def _fetch_delta(
        self, image: Image, source: str, on_progress: ProgressCallback | None,
        abort: threading.Event | None,
    ) -> str | None:
        """The engine id of ``image`` built from a delta against ``source``; None: pull instead."""
        fetcher = self.delta() if self.delta is not None else None
        if fetcher is None:
            return None
        from supervisor.delta.fetch import DeltaAuthError, DeltaFallbackError

        name = image.name
        base = self.inspect_by_name(source)
        if base is None:
            log.info("Delta source '%s' is gone; pulling '%s'", source, name)
            self._event("Downloading image", image=name)
            return None
        with self._pulls:
            if abort is not None and abort.is_set():
                raise ImageError("the download was aborted")
            log.info("Downloading delta for image '%s'", name)
            self._event("Downloading delta for image", image=name)
            self._report(name, 0, on_progress)
            try:
                engine_id = fetcher.fetch(
                    source, base["Id"], name, abort=abort,
                    progress=lambda pct: self._report(name, pct, on_progress),
                )
            except DeltaFallbackError as err:
                log.warning("Delta for image '%s' failed, falling back to a regular pull: %s", name, err)
                self._event("Downloading image", image=name)
                return None
            except DeltaAuthError as err:
                raise ImageError(str(err)) from err
        log.info("Applied delta for image '%s' (%d bytes downloaded)", name, fetcher.downloaded)
        if self.on_bytes is not None:
            self.on_bytes("delta_bytes", fetcher.downloaded)
        return engine_id

    def _pull(
        self, image: Image, on_progress: ProgressCallback | None, abort: threading.Event | None
    ) -> None:
        name = image.name
        registry = _registry_of(name)
        auth = self.auth(registry) if (self.auth is not None and registry) else None
        progress = PullProgress()
        with self._pulls:
            if abort is not None and abort.is_set():
                raise ImageError("the download was aborted")
            self._report(name, 0, on_progress)
            # auth_config=None would make the SDK send credentials from ~/.docker/config.json;
            # an empty dict is sent as "anonymous", which is what "no auth" must mean.
            stream = self.api.pull(name, stream=True, decode=True, auth_config=dict(auth or {}))
            try:
                for event in stream:
                    if "error" in event or "errorDetail" in event:
                        detail = event.get("errorDetail") or {}
                        raise ImageError(str(detail.get("message") or event.get("error")))
                    if abort is not None and abort.is_set():
                        raise ImageError("the download was aborted")
                    if progress.update(event):
                        self._report(name, progress.percentage, on_progress)
            finally:
                stream.close()
                if self.on_bytes is not None and progress.downloaded:
                    self.on_bytes("pulled_bytes", progress.downloaded)

    def _report(self, name: str, percentage: int, on_progress: ProgressCallback | None) -> None:
        with self._lock:
            task = self._tasks.get(name)
            if task is not None:
                task.progress = percentage
        for callback in (self.on_progress, on_progress):
            if callback is not None:
                try:
                    callback(name, percentage)
                except Exception:  # a listener must not break a download
                    log.exception("Image progress listener failed")

    def _check_backoff(self, name: str) -> None:
        with self._lock:
            failure = self._failures.get(name)
        if failure is None:
            return
        count, when = failure
        wait = min(2**count * 0.5, self.max_backoff_s)
        if self.clock() - when < wait:
            raise ImageDownloadBackoffError(
                f"Image '{name}' failed to download {count} time(s); retrying in at most {wait:.1f}s"
            )

    def _record_failure(self, name: str) -> None:
        with self._lock:
            count, _ = self._failures.get(name, (0, 0.0))
            self._failures[name] = (count + 1, self.clock())

    def _tag(self, engine_id: str, name: str) -> None:
        """Give the image its proper ``repo:tag`` (a digest reference cannot be a tag)."""
        repo, tag, _ = _repository(name)
        if tag is not None:
            self.api.tag(engine_id, repo, tag)

    # ------------------------------------------------------------------ save / remove
    def save_existing(self, image: Image) -> Image:
        """``saveImage``: record an image the engine already has, tagged with its name."""
        info = self.inspect_by_name(image.name)
        if info is None and image.docker_image_id:
            import docker.errors

            try:
                info = self.api.inspect_image(image.docker_image_id)
            except docker.errors.NotFound:
                info = None
        if info is None:
            raise ImageNotFoundError(f"Image '{image.name}' is not in the engine")
        self._tag(info["Id"], image.name)
        saved = replace(image, docker_image_id=info["Id"])
        self.save(saved)
        return saved

    def remove(self, image: Image, *, keep_in_engine: bool = False) -> bool:
        """``removeImage``: delete the image's tags and digests, then its row (§9.6).

        ``keep_in_engine`` forgets the row only (another record still names that engine image).
        Returns whether something was removed from the engine; an image already gone is fine.
        """
        import docker.errors

        if keep_in_engine:
            self.forget(image)
            return False
        with self._lock:
            self._tasks[image.name] = _Task(image, DELETING)
        removed = False
        try:
            entries = self._engine_entries(image)
            if entries:
                log.info("Deleting image '%s'", image.name)
                self._event("Deleting image", image=image.name)
            for entry in entries:
                refs = [t for t in entry.get("RepoTags") or [] if t != "<none>:<none>"]
                refs += [d for d in entry.get("RepoDigests") or [] if d != "<none>@<none>"]
                if not refs:
                    refs = [entry["Id"]]
                for ref in refs:
                    try:
                        self.api.remove_image(ref)
                        removed = True
                    except docker.errors.NotFound:
                        continue
            self.forget(image)
            if removed:
                log.info("Deleted image '%s'", image.name)
                self._event("Deleted image", image=image.name)
            else:
                log.info("Image already deleted '%s'", image.name)
                self._event("Image already deleted", image=image.name)
            return removed
        except docker.errors.APIError as err:
            self._event("Failed to delete image", image=image.name, error=_engine_error(err))
            raise ImageError(f"Failed to delete image '{image.name}' due to '{_engine_error(err)}'") from err
        finally:
            with self._lock:
                self._tasks.pop(image.name, None)

    def _engine_entries(self, image: Image) -> list[dict[str, Any]]:
        """The listing entries of this image: by reference, else by its engine id."""
        repo, tag, digest = _repository(image.name)
        reference = f"{repo}:{tag}" if tag is not None else f"{repo}@{digest}" if digest else repo
        try:
            entries = list(self.api.images(filters={"reference": reference}))
        except Exception:  # an odd name the filter refuses: fall back to the id
            entries = []
        if not entries and image.docker_image_id:
            entries = [e for e in self.api.images() if e["Id"] == image.docker_image_id]
        return entries

    # ------------------------------------------------------------------ cleanup
    def cleanup_candidates(
        self,
        listing: Iterable[Mapping[str, Any]],
        containers: Iterable[Mapping[str, Any]],
        records: Iterable[Image] | None = None,
    ) -> list[str]:
        """Engine ids ``cleanup`` would remove: dangling images no row names and old supervisor
        images, never an image a container uses nor one that failed within the last hour."""
        recorded = {img.docker_image_id for img in (self.records() if records is None else records)}
        used = {c.get("ImageID") for c in containers}
        now = self.clock()
        with self._lock:
            self._cleanup_ignored = {
                i: t for i, t in self._cleanup_ignored.items() if now - t < CLEANUP_IGNORE_S
            }
            ignored = set(self._cleanup_ignored)
        old_supervisor = self._old_supervisor_tags()
        out: list[str] = []
        for entry in listing:
            image_id = entry["Id"]
            if image_id in used or image_id in ignored:
                continue
            if self.cleanup_filter is not None and not self.cleanup_filter(entry):
                continue
            dangling = is_dangling(entry) and image_id not in recorded
            if dangling or any(old_supervisor(tag) for tag in entry.get("RepoTags") or []):
                out.append(image_id)
        return out

    def _old_supervisor_tags(self) -> Callable[[str], bool]:
        image = self.supervisor_image
        return (lambda _tag: False) if not image else (lambda tag: is_old_supervisor_tag(tag, image))

    def cleanup(self) -> list[str]:
        """The ``cleanup`` step: force-remove every candidate; one that fails is skipped for an
        hour. Returns the removed ids."""
        import docker.errors

        candidates = self.cleanup_candidates(self.api.images(), self.api.containers(all=True))
        removed: list[str] = []
        for image_id in candidates:
            try:
                self.api.remove_image(image_id, force=True)
                removed.append(image_id)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as err:
                text = f"Error cleaning up {image_id}: {_engine_error(err)} - will ignore for 1 hour"
                log.warning("%s", text)
                self._event(text)
                with self._lock:
                    self._cleanup_ignored[image_id] = self.clock()
        return removed


def _status_entry(image: Image, status: str, progress: int | None) -> dict[str, Any]:
    return {
        "name": image.name,
        "appId": image.app_id,
        "appUuid": image.app_uuid,
        "serviceId": image.service_id,
        "serviceName": image.service_name,
        "imageId": image.image_id,
        "releaseId": image.release_id,
        "commit": image.commit,
        "dockerImageId": image.docker_image_id,
        "status": status,
        "downloadProgress": progress,
    }

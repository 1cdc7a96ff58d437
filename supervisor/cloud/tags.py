"""Device tags (spec §10.5, cloud-api.md §4): reported from the device, read for the device API.

Wanted tags are stored (config ``targetTags``) and the ones that differ from the last reported
(``reportedTags``) go out by ``PATCH /device/v3/tags``, at most one report every 10 s, retried
with the binder's backoff. Reading (``GET /v2/device/tags``) never calls the cloud on the request
thread: this thread fetches ``/v7/device_tag`` and keeps the list; a request asks for a refresh
and waits a bounded time for it, else answers from what is kept.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..config import Config
from ..subsystem import Subsystem
from .backoff import Retry, spacing
from .client import ApiClient, CloudRequestError, CloudUnavailableError
from .timing import Timing

log = logging.getLogger(__name__)


class TagStore:
    """``targetTags``/``reportedTags`` in the config table (JSON objects)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()

    def _load(self, key: str) -> dict[str, str]:
        raw = self.config.db.get_config(key)
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def want(self, tags: Mapping[str, str]) -> None:
        """Add or change wanted tags (tags are never deleted: the endpoint cannot delete)."""
        with self._lock:
            wanted = {**self._load("targetTags"), **tags}
            self.config.db.set_config({"targetTags": json.dumps(wanted)})

    def pending(self) -> dict[str, str]:
        reported = self._load("reportedTags")
        return {k: v for k, v in self._load("targetTags").items() if reported.get(k) != v}

    def reported(self, tags: Mapping[str, str]) -> None:
        with self._lock:
            self.config.db.set_config({"reportedTags": json.dumps({**self._load("reportedTags"), **tags})})


class TagService(Subsystem):
    """Thread ``cloud-tags``: reports pending tags and keeps the device's tag list."""

    name = "cloud-tags"

    def __init__(
        self,
        client: ApiClient,
        store: TagStore,
        *,
        uuid: Callable[[], str],
        key: Callable[[], str | None],
        device_id: Callable[[], int | None],
        poll_interval_s: Callable[[], float],
        timing: Timing,
    ) -> None:
        super().__init__()
        self.client = client
        self.store = store
        self.uuid = uuid
        self.key = key
        self.device_id = device_id
        self.timing = timing
        self._cond = threading.Condition()
        self._report = True  # report anything pending at start (§10.5)
        self._refresh = True
        self._tags: list[dict[str, Any]] | None = None
        self._fetched_at = float("-inf")
        self._fetch_error: str | None = None
        self._generation = 0
        self._last_report = float("-inf")
        self.retry = Retry("report device tags", lambda: self.timing.backoff_min, poll_interval_s)
        self.reports = 0

    # ------------------------------------------------------------------ request threads
    def want(self, tags: Mapping[str, str]) -> None:
        self.store.want(tags)
        with self._cond:
            self._report = True
            self._cond.notify_all()

    def tags(self, wait_s: float = 5.0) -> list[dict[str, Any]]:
        """``[{id, name, value}]``: the kept list when fresh, else a refresh waited for up to
        ``wait_s``; CloudRequestError when there is nothing to answer with."""
        with self._cond:
            if self._tags is not None and time.monotonic() - self._fetched_at < self.timing.tags_fresh:
                return list(self._tags)
            generation = self._generation
            self._refresh = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._generation != generation, timeout=wait_s)
            if self._generation != generation:  # a fetch ended meanwhile: its answer
                if self._fetch_error is not None:
                    raise CloudRequestError(self._fetch_error)
                return list(self._tags or [])
            if self._tags is not None:  # the cloud is slow: what was fetched before
                return list(self._tags)
            raise CloudRequestError("The balena API did not answer in time")

    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ the thread
    def run(self) -> None:
        delay: float | None = None
        while not self.stopping:
            if self.wait_on(self._cond, lambda: self._report or self._refresh, delay):
                return
            delay = None
            if self._report:
                if self.wait(spacing(self._last_report, self.timing.tags_min_interval)):
                    return
                delay = self.retry.attempt(self._report_once)
            if self._refresh:
                self._fetch()

    def _report_once(self) -> None:
        with self._cond:
            self._report = False
        diff = self.store.pending()
        if not diff:
            return
        self._last_report = time.monotonic()
        try:
            self.client.request(
                "PATCH",
                "/device/v3/tags",
                key=self.key(),
                json={self.uuid(): diff},
                headers={"Content-Type": "application/json"},
            )
        except CloudRequestError:
            with self._cond:
                self._report = True
            raise
        self.store.reported(diff)
        self.reports += 1
        with self._cond:
            self._refresh = True  # the kept list is out of date now

    def _fetch(self) -> None:
        with self._cond:
            self._refresh = False
        device_id = self.device_id()
        tags: list[dict[str, Any]] | None = None
        error: str | None = None
        try:
            if device_id is None:  # the service starts after provisioning; a guard, not a path
                raise CloudUnavailableError("The device is not provisioned yet (no deviceId)")
            response = self.client.request(
                "GET",
                "/v7/device_tag",
                key=self.key(),
                params={"$select": "id,tag_key,value", "$filter": f"device eq {int(device_id)}"},
            )
            try:
                tags = [
                    {"id": r["id"], "name": r["tag_key"], "value": r["value"]} for r in response.json()["d"]
                ]
            except (ValueError, KeyError, TypeError):
                error = "The balena API answered with an unexpected body"
        except (CloudRequestError, CloudUnavailableError) as exc:
            error = str(exc)
        with self._cond:
            if tags is not None:
                self._tags, self._fetched_at = tags, time.monotonic()
            self._fetch_error = error
            self._generation += 1
            self._cond.notify_all()

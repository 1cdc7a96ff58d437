"""The device's calls to the balena API that the device API needs (spec §1.4, §10.1, §10.5).

:class:`DeviceCloud` is the interface; the cloud binder will own the real client (shared session,
backoff, provisioning) and implement it. :class:`BalenaApi` is the minimal implementation used until
then: OData (pine) requests on ``<apiEndpoint>/v7/`` with ``Authorization: Bearer <deviceApiKey>``.
Device tags are wanted locally (``targetTags``) and reported by PATCH ``/device/v3/tags`` with only
the tags that differ from the last reported ones (``reportedTags``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Protocol

from .config import Config

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 59.0  # the reference's apiRequestTimeout


class CloudUnavailableError(RuntimeError):
    """The device has no cloud to ask (unmanaged, or not provisioned yet)."""


class CloudRequestError(RuntimeError):
    """The cloud did not answer, or answered with an error."""


class DeviceCloud(Protocol):
    def device_tags(self) -> list[dict]:
        """``[{id, name, value}]`` of this device's tags."""

    def report_tags(self, tags: Mapping[str, str]) -> None:
        """Send changed tags ``{key: value}`` of this device."""


def _endpoint(config: Config) -> str:
    return config.api_endpoint.rstrip("/")


class BalenaApi:
    """The balena API as this device (its ``deviceApiKey``)."""

    def __init__(self, config: Config, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.config = config
        self.timeout = timeout

    def _credentials(self) -> tuple[str, str, int | None]:
        cfg = self.config
        if cfg.unmanaged:
            raise CloudUnavailableError("Device tags are kept by the balena cloud: this device is unmanaged")
        key = cfg.json.get("deviceApiKey")
        device_id = cfg.json.get("deviceId")
        if not key or not cfg.uuid:
            raise CloudUnavailableError("The device is not provisioned yet")
        return _endpoint(cfg), key, device_id

    def _request(self, method: str, url: str, key: str, **kw):  # type: ignore[no-untyped-def]
        import requests

        try:
            response = requests.request(
                method, url, headers={"Authorization": f"Bearer {key}"}, timeout=self.timeout, **kw
            )
        except requests.RequestException as exc:
            raise CloudRequestError(f"Could not reach the balena API: {exc.__class__.__name__}") from None
        if response.status_code >= 400:
            raise CloudRequestError(f"The balena API answered {response.status_code}")
        return response

    def device_tags(self) -> list[dict]:
        endpoint, key, device_id = self._credentials()
        if device_id is None:
            raise CloudUnavailableError("The device is not provisioned yet (no deviceId)")
        params = {"$select": "id,tag_key,value", "$filter": f"device eq {int(device_id)}"}
        response = self._request("GET", f"{endpoint}/v7/device_tag", key, params=params)
        try:
            rows = response.json()["d"]
            return [{"id": row["id"], "name": row["tag_key"], "value": row["value"]} for row in rows]
        except (ValueError, KeyError, TypeError):
            raise CloudRequestError("The balena API answered with an unexpected body") from None

    def report_tags(self, tags: Mapping[str, str]) -> None:
        endpoint, key, _ = self._credentials()
        self._request("PATCH", f"{endpoint}/device/v3/tags", key, json={self.config.uuid: dict(tags)})


class TagReporter:
    """Stores wanted tags and reports the changed ones in the background (spec §10.5).

    One report at a time; a failed report is retried (15 s doubling, capped at the poll interval)
    until it succeeds or newer tags are wanted. Unmanaged devices keep the wanted tags locally.
    """

    MIN_RETRY_S = 15.0

    def __init__(self, config: Config, cloud: DeviceCloud) -> None:
        self.config = config
        self.cloud = cloud
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _load(self, key: str) -> dict[str, str]:
        raw = self.config.db.get_config(key)
        try:
            value = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def want(self, tags: Mapping[str, str]) -> None:
        """Add or change wanted tags (tags are never deleted) and have them reported."""
        with self._lock:
            wanted = {**self._load("targetTags"), **tags}
            self.config.db.set_config({"targetTags": json.dumps(wanted)})
        self.trigger()

    def pending(self) -> dict[str, str]:
        reported = self._load("reportedTags")
        return {k: v for k, v in self._load("targetTags").items() if reported.get(k) != v}

    def trigger(self) -> None:
        if self.config.unmanaged:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="tag-reporter", daemon=True)
                self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        delay = self.MIN_RETRY_S
        while not self._stop.is_set():
            self._wake.clear()
            diff = self.pending()
            if not diff:
                return
            try:
                self.cloud.report_tags(diff)
            except (CloudUnavailableError, CloudRequestError) as exc:
                log.warning("Could not report device tags: %s", exc)
                self._wake.wait(delay)
                delay = min(delay * 2, self.config.poll_interval_ms / 1000)
                continue
            with self._lock:
                reported = {**self._load("reportedTags"), **diff}
                self.config.db.set_config({"reportedTags": json.dumps(reported)})
            delay = self.MIN_RETRY_S

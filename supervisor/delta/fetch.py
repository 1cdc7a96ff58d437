"""The device side of image deltas (spec §9.3-9.4, docs/DELTAS.md): ask, download, apply, verify.

:class:`DeltaFetcher` turns a delta source image on the device into the target image, or raises:

* :class:`DeltaFallbackError`: use a regular pull instead (a 4xx other than 401, a missing or
  different base image, a server that stays "still processing" or fails, a download that keeps
  failing, an artifact that keeps failing to apply or to verify). Nothing is left in the engine.
* :class:`DeltaAuthError`: the server refused the token (401). The step fails and is retried later,
  as the reference does; a pull with the same credentials would not fare better.
* ``ImageError`` subclasses from the caller's abort/timeout checks.

I/O is at the edges: HTTP through ``requests`` (a session without proxy lookups), the engine through
the SDK's low-level API; files under ``workdir`` (removed when the fetch ends, pass or fail).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from supervisor.config import check_int, check_truthy

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DELTA_ENDPOINT",
    "DeltaAuthError",
    "DeltaError",
    "DeltaFallbackError",
    "DeltaFetcher",
    "DeltaSettings",
    "device_delta_token",
]

DEFAULT_DELTA_ENDPOINT: Final = "https://delta.balena-cloud.com"
#: Download + apply attempts before falling back to a pull (a corrupt artifact may be a bad copy).
APPLY_ATTEMPTS: Final = 2
TOKEN_TTL_S: Final = 600.0
CHUNK: Final = 256 * 1024
#: Share of the progress bar given to the download; the rest is the apply.
DOWNLOAD_SHARE: Final = 0.8


class DeltaError(Exception):
    """A delta could not be used."""


class DeltaFallbackError(DeltaError):
    """The delta path failed in a way a regular pull can recover from."""


class DeltaAuthError(DeltaError):
    """The delta server refused the device's token."""


@dataclass(frozen=True)
class DeltaSettings:
    """The delta knobs of the target config (§5.3), in seconds."""

    enabled: bool = False
    endpoint: str = DEFAULT_DELTA_ENDPOINT
    version: int = 2
    request_timeout_s: float = 59.0
    apply_timeout_s: float | None = None
    retry_count: int = 30
    retry_interval_s: float = 10.0

    @classmethod
    def from_config(cls, values: Mapping[str, str], endpoint: str | None = None) -> DeltaSettings:
        """From the target config (``SUPERVISOR_DELTA*``, defaults filled in) and config.json's
        ``deltaEndpoint``. Unparseable numbers take the defaults."""

        def number(key: str, default: int) -> int:
            value = check_int(values.get(key))
            return default if value is None or value < 0 else value

        apply_ms = number("SUPERVISOR_DELTA_APPLY_TIMEOUT", 0)
        return cls(
            enabled=check_truthy(values.get("SUPERVISOR_DELTA", "false")),
            endpoint=(endpoint or DEFAULT_DELTA_ENDPOINT).rstrip("/"),
            version=number("SUPERVISOR_DELTA_VERSION", 2),
            request_timeout_s=number("SUPERVISOR_DELTA_REQUEST_TIMEOUT", 59000) / 1000 or 59.0,
            apply_timeout_s=apply_ms / 1000 if apply_ms else None,
            retry_count=number("SUPERVISOR_DELTA_RETRY_COUNT", 30),
            retry_interval_s=number("SUPERVISOR_DELTA_RETRY_INTERVAL", 10000) / 1000,
        )


# ------------------------------------------------------------------------------ the token
def device_delta_token(
    api_endpoint: Callable[[], str],
    uuid: Callable[[], str | None],
    api_key: Callable[[], str | None],
    *,
    request_timeout_s: float = 59.0,
) -> Callable[[str, str], str | None]:
    """(src, dest) -> bearer token. Managed: ``<apiEndpoint>/auth/v1/token`` with basic auth
    ``d_<uuid>``:key, memoised 10 minutes per URL (§9.3). Without an API endpoint (local or
    self-hosted without a cloud) the device key itself is the token; the delta server is told to
    accept it (``serve --token``)."""
    cache: dict[str, tuple[float, str]] = {}
    lock = threading.Lock()

    def token(src: str, dest: str) -> str | None:
        key = api_key()
        endpoint = api_endpoint().rstrip("/")
        if not endpoint:
            return key or None
        import requests

        from supervisor.state.target import split_image

        def scope(name: str) -> str:
            ref = split_image(name)
            return f"repository:{ref.name}:pull"

        registry = split_image(dest).registry or ""
        url = (f"{endpoint}/auth/v1/token?service={registry}"
               f"&scope={scope(dest)}&scope={scope(src)}")
        with lock:
            hit = cache.get(url)
            if hit is not None and time.monotonic() - hit[0] < TOKEN_TTL_S:
                return hit[1]
        response = requests.get(url, auth=(f"d_{uuid()}", key or ""), timeout=request_timeout_s)
        try:
            value = response.json().get("token") if response.ok else None
        except ValueError:
            value = None
        if not value:
            raise DeltaAuthError("Authentication error")
        with lock:
            cache[url] = (time.monotonic(), value)
        return value

    return token


# ------------------------------------------------------------------------------ the fetcher
class _Deadline:
    def __init__(self, seconds: float | None, abort: threading.Event | None,
                 abort_error: Callable[[], Exception]) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.abort = abort
        self.abort_error = abort_error

    def check(self) -> None:
        if self.abort is not None and self.abort.is_set():
            raise self.abort_error()
        if self.end is not None and time.monotonic() > self.end:
            from supervisor.delta.artifact import DeltaApplyError

            raise DeltaApplyError("the delta apply timeout passed")


class DeltaFetcher:
    """Fetches one image by delta; ``fetch`` returns the engine id of the target image.

    ``token(src, dest)`` gives the bearer token (None: no Authorization header). ``sleep`` is
    the pause between "still processing" answers and between download retries.
    """

    def __init__(
        self,
        api: Any,
        settings: DeltaSettings,
        workdir: Path,
        *,
        token: Callable[[str, str], str | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        abort_error: Callable[[], Exception] = lambda: DeltaError("the download was aborted"),
    ) -> None:
        import requests

        self.api = api
        self.settings = settings
        self.workdir = Path(workdir)
        self.token = token
        self.sleep = sleep
        self.abort_error = abort_error
        self.session = requests.Session()
        self.session.trust_env = False
        #: Bytes received from the delta server by the last ``fetch`` (for tests and benchmarks).
        self.downloaded = 0

    def fetch(
        self,
        src: str,
        src_id: str,
        dest: str,
        *,
        progress: Callable[[int], None] | None = None,
        abort: threading.Event | None = None,
    ) -> str:
        """Make ``dest`` from ``src`` (engine id ``src_id``); see the module docstring for errors."""
        from supervisor.delta.artifact import BaseMismatchError, DeltaApplyError

        s = self.settings
        self.downloaded = 0
        if s.version not in (2, 3):
            raise DeltaFallbackError(f"unsupported delta version {s.version}")
        if s.version == 3:
            # v3 deltas are registry images only balenaEngine can apply; ask anyway so a server
            # error surfaces as the reference's would, then pull.
            self._request(src, dest, abort)
            raise DeltaFallbackError("v3 deltas need balenaEngine; this engine cannot apply them")
        last: Exception | None = None
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, APPLY_ATTEMPTS + 1):
            location = self._request(src, dest, abort)
            with tempfile.TemporaryDirectory(dir=self.workdir, prefix="delta-") as tmp:
                work = Path(tmp)
                artifact = work / "artifact"
                self._download(location, artifact, progress, abort)
                deadline = _Deadline(s.apply_timeout_s, abort, self.abort_error)
                try:
                    return self._apply(artifact, src_id, work, deadline, progress)
                except BaseMismatchError as err:
                    raise DeltaFallbackError(str(err)) from err
                except DeltaApplyError as err:
                    log.warning("Delta apply attempt %d of %d for '%s' failed: %s",
                                attempt, APPLY_ATTEMPTS, dest, err)
                    last = err
        raise DeltaFallbackError(f"the delta failed to apply {APPLY_ATTEMPTS} times: {last}")

    # -------------------------------------------------------------- the request (§9.3)
    def _request(self, src: str, dest: str, abort: threading.Event | None) -> str:
        """Ask the endpoint until it has the delta; returns the artifact URL (v2)."""
        import requests

        s = self.settings
        url = f"{s.endpoint}/api/v{s.version}/delta"
        headers = {}
        token = self.token(src, dest) if self.token is not None else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for attempt in range(s.retry_count + 1):
            if abort is not None and abort.is_set():
                raise self.abort_error()
            try:
                response = self.session.get(url, params={"src": src, "dest": dest}, headers=headers,
                                            allow_redirects=False, timeout=s.request_timeout_s)
            except requests.Timeout:
                status = 504  # a server busy computing may not answer in time: same as 504
            except requests.RequestException as err:
                raise DeltaFallbackError(f"cannot reach the delta server: {err}") from err
            else:
                status = response.status_code
                response.close()
            if status in (502, 504):
                if attempt < s.retry_count:
                    log.info("Delta still processing remotely. Will retry...")
                    self.sleep(s.retry_interval_s)
                continue
            if status == 401:
                raise DeltaAuthError("the delta server refused the device's credentials (401)")
            if s.version == 3 and status == 200:
                return ""
            if 300 <= status < 400 and response.headers.get("Location"):
                return requests.compat.urljoin(url, response.headers["Location"])
            raise DeltaFallbackError(f"Got {status} when requesting an image from delta server.")
        raise DeltaFallbackError(f"the delta was still processing after {s.retry_count} retries")

    # -------------------------------------------------------------- the download (§9.4)
    def _download(self, url: str, path: Path, progress: Callable[[int], None] | None,
                  abort: threading.Event | None) -> None:
        """Resumable download: a broken or short transfer continues with a Range request, up to
        ``retry_count`` retries ``retry_interval`` apart."""
        import requests

        s = self.settings
        have, total, failures = 0, 0, 0
        with open(path, "wb") as out:
            while True:
                headers = {"Accept-Encoding": "identity"}  # bytes as stored: offsets must match
                if have:
                    headers["Range"] = f"bytes={have}-"
                try:
                    with self.session.get(url, headers=headers, stream=True,
                                          timeout=s.request_timeout_s) as response:
                        if have and response.status_code == 206:
                            start = _range_start(response.headers.get("Content-Range", ""))
                            if start != have:
                                raise DeltaFallbackError("the delta storage resumed at the wrong offset")
                        elif response.status_code == 200:
                            total = int(response.headers.get("Content-Length") or 0)
                            if total <= 0:
                                raise DeltaFallbackError("Invalid delta URL")
                            have = 0
                            out.seek(0)
                            out.truncate()
                        elif response.status_code >= 500:
                            raise _Retry(f"Got {response.status_code} when requesting delta from storage.")
                        else:
                            raise DeltaFallbackError(
                                f"Got {response.status_code} when requesting delta from storage.")
                        # read1 hands over what has arrived: a cut connection loses nothing
                        # that was received, so the resume starts exactly where the data ended.
                        while chunk := _read1(response.raw):
                            if abort is not None and abort.is_set():
                                raise self.abort_error()
                            out.write(chunk)
                            have += len(chunk)
                            self.downloaded += len(chunk)
                            if progress is not None:
                                progress(min(99, int(have / total * 100 * DOWNLOAD_SHARE)))
                    if have >= total:
                        return
                    raise _Retry(f"the delta download ended after {have} of {total} bytes")
                except (_Retry, requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError) as err:
                    failures += 1
                    if failures > s.retry_count:
                        raise DeltaFallbackError(
                            f"the delta download failed {failures} times: {err}"
                        ) from err
                    log.info("Delta download interrupted at %d bytes (%s); resuming", have, err)
                    self.sleep(s.retry_interval_s)

    # -------------------------------------------------------------- the apply
    def _apply(self, artifact: Path, src_id: str, work: Path, deadline: _Deadline,
               progress: Callable[[int], None] | None) -> str:
        import docker.errors

        from supervisor.delta.artifact import (
            BaseMismatchError,
            apply_artifact,
            load_image,
            read_header,
            save_image,
        )

        with open(artifact, "rb") as f:
            header = read_header(f)
            try:
                info = self.api.inspect_image(src_id)
            except docker.errors.NotFound as err:
                raise BaseMismatchError(f"the delta base image {src_id} is gone") from err
            local = (info.get("RootFS") or {}).get("Layers") or []
            for index in header.base_layers_used():
                if index >= len(local) or local[index] != header.base_diff_ids[index]:
                    raise BaseMismatchError(
                        f"the delta was made against another base image ({header.base_id}) "
                        f"than the device's {src_id}"
                    )
            wanted = {header.base_diff_ids[i] for i in header.base_layers_used()}
            base = save_image(self.api, src_id, work / "base", wanted=wanted)
            deadline.check()

            def on_apply(fraction: float) -> None:
                if progress is not None:
                    progress(min(99, int((DOWNLOAD_SHARE + fraction * (1 - DOWNLOAD_SHARE) * 0.5) * 100)))

            result = apply_artifact(f, header, base, work, check=deadline.check, progress=on_apply)
        image_id = load_image(self.api, result, check=deadline.check)
        if progress is not None:
            progress(99)
        return image_id


def _read1(raw: Any) -> bytes:
    import urllib3.exceptions

    try:
        return raw.read1(CHUNK) if hasattr(raw, "read1") else raw.read(CHUNK)
    except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError) as err:
        import requests

        raise requests.ConnectionError(str(err)) from err


class _Retry(Exception):
    pass


def _range_start(content_range: str) -> int | None:
    try:
        unit, _, spec = content_range.partition(" ")
        return int(spec.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None

"""The binder's HTTP client: one ``requests`` session for every call to the balena API (§10.1).

Keep-alive (one pool shared by the poll, report and tag threads), a timeout per call from
``apiRequestTimeout``, and ``trust_env`` off: as with the Docker client (docs/ARCHITECTURE.md),
proxy variables are not consulted; on balenaOS the host's redsocks proxies transparently.
``requests`` rather than urllib: pooling, timeouts and retries-free semantics we rely on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .backoff import parse_retry_after

log = logging.getLogger(__name__)


class CloudUnavailableError(RuntimeError):
    """The device has no cloud to ask (unmanaged, or not provisioned yet)."""


class CloudRequestError(RuntimeError):
    """The cloud did not answer, or answered with an error; ``str()`` never holds a key."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None, body: bytes = b""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.body = body


class ApiClient:
    """``<apiEndpoint><path>`` with ``Authorization: Bearer <key>``; the endpoint and timeout are
    read at every call."""

    def __init__(self, endpoint: Callable[[], str], timeout_s: Callable[[], float], user_agent: str) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers["User-Agent"] = user_agent
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=4, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def url(self, path: str) -> str:
        return self.endpoint().rstrip("/") + path

    def request(
        self,
        method: str,
        path: str,
        *,
        key: str | None,
        ok: tuple[int, ...] = (200,),
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The response when its status is in ``ok``; else :class:`CloudRequestError`."""
        import requests

        all_headers = dict(headers or {})
        if key:
            all_headers["Authorization"] = f"Bearer {key}"
        try:
            response = self.session.request(
                method,
                self.url(path),
                json=json,
                params=params,
                headers=all_headers,
                timeout=self.timeout_s(),
            )
        except requests.RequestException as exc:
            raise CloudRequestError(f"Could not reach the balena API: {exc.__class__.__name__}") from None
        if response.status_code not in ok:
            raise CloudRequestError(
                f"The balena API answered {response.status_code}",
                status=response.status_code,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
                body=response.content[:1000],
            )
        return response

    def close(self) -> None:
        self.session.close()

"""A minimal Engine API client for the log pipeline: plain sockets, HTTP/1.0, no Docker SDK.

The log pipeline holds one socket per followed container and one for the engine's events. The SDK
(requests + urllib3, about 7 MB of a small device's RAM, issue #17) would cost a thread per stream;
plain sockets let one thread watch every stream with ``selectors``. HTTP/1.0 makes the engine send a
streamed body as is, until it closes the connection: no chunked encoding to undo.

``DOCKER_HOST`` as the Docker CLI reads it: ``unix://<path>`` (default ``/var/run/docker.sock``)
or ``tcp://host:port`` without TLS (the engine on a balenaOS device is always its unix socket).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = ["EngineAddress", "EngineHTTPError", "StreamResponse"]

API_VERSION = "v1.41"
MAX_HEAD = 64 * 1024


class EngineHTTPError(OSError):
    """The engine answered with an error status (``status``), or spoke no HTTP we understand."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class EngineAddress:
    """Where the engine listens."""

    unix_path: str | None = "/var/run/docker.sock"
    tcp: tuple[str, int] | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> EngineAddress:
        host = (env if env is not None else os.environ).get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if host.startswith("unix://"):
            return cls(unix_path=host[len("unix://"):])
        if host.startswith("tcp://"):
            hostport = host[len("tcp://"):].rstrip("/")
            name, _, port = hostport.rpartition(":")
            return cls(unix_path=None, tcp=(name or "127.0.0.1", int(port or 2375)))
        raise ValueError(f"DOCKER_HOST={host}: the log pipeline reads from unix:// or tcp:// engines only")

    def connect(self, timeout: float | None) -> socket.socket:
        if self.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = self.unix_path
        else:
            assert self.tcp is not None
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = self.tcp
        sock.settimeout(timeout)
        try:
            sock.connect(target)
        except BaseException:
            sock.close()
            raise
        return sock

    def open(self, path: str, timeout: float | None = 30.0) -> StreamResponse:
        """``GET /v1.41<path>``; returns once the status line and headers are read (raises
        :class:`EngineHTTPError` for a status >= 400, with the engine's message)."""
        sock = self.connect(timeout)
        try:
            sock.sendall(f"GET /{API_VERSION}{path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode("ascii"))
            response = StreamResponse(sock)
            response.read_head()
        except BaseException:
            sock.close()
            raise
        if response.status >= 400:
            body = response.read_all()
            response.close()
            what = path.split("?")[0]
            raise EngineHTTPError(f"{what}: {response.status} {_message(body)}", response.status)
        return response

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        """A whole JSON answer (inspect, list)."""
        response = self.open(path, timeout)
        try:
            return json.loads(response.read_all())
        finally:
            response.close()


class StreamResponse:
    """An HTTP/1.0 response: the head, then the body as it comes (``body_start`` holds what was read
    past the head)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body_start = b""

    def read_head(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EngineHTTPError("the engine closed the connection before answering")
            data += chunk
            if len(data) > MAX_HEAD:
                raise EngineHTTPError("the engine's answer has no end of headers")
        head, _, self.body_start = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise EngineHTTPError(f"not an HTTP answer: {lines[0][:80]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            raise EngineHTTPError("the engine answered HTTP/1.0 with a chunked body")

    def read_all(self, limit: int = 64 * 1024 * 1024) -> bytes:
        parts = [self.body_start]
        size = len(self.body_start)
        self.body_start = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise EngineHTTPError("the engine's answer is too large")

    def close(self) -> None:
        self.sock.close()


def query(**params: Any) -> str:
    """A query string; dict/list values as JSON (the engine's ``filters``)."""
    items = []
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            value = "1" if value else "0"
        items.append(f"{name}={quote(str(value), safe='')}")
    return "?" + "&".join(items) if items else ""


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message") or body.decode(errors="replace"))
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()[:500]

"""A delta server for tests and self-hosters: ``python -m supervisor.delta serve``.

It speaks the v2 endpoint contract of the balena delta server (spec §9.3-9.4, docs/DELTAS.md):

* ``GET /api/v2/delta?src=<image>&dest=<image>`` with ``Authorization: Bearer <token>``:
  ``302`` with ``Location`` of the artifact once it exists; ``502`` while it is being computed (the
  first request starts the work); ``400`` when an image cannot be read; ``401`` for a bad token.
* ``GET /api/v3/delta``: ``400``. v3 deltas are applied by balenaEngine, which a plain engine is not,
  so a device asking for v3 falls back to a regular pull.
* ``GET /artifacts/<key>``: the artifact, with ``Range`` support (``206``/``416``) so downloads resume.
  The key is an HMAC of the image names under a server secret: the URL is the capability, as the
  signed storage URL of the real server is, so downloads carry no token.

Images are read from a registry (Registry HTTP API v2: manifest, config and layer blobs, decompressed
and checked against the config's diff_ids) or from the local engine (``docker save``).

``DeltaServer.inject`` lets tests make the next responses fail (a status, a truncated or a corrupted
body), so fault handling is tested over real HTTP against the real server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import os
import platform
import re
import secrets
import shutil
import signal
import tempfile
import threading
import urllib.parse
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from supervisor.delta.artifact import CHUNK, ImageLayers, _HashingWriter, save_image, write_artifact

log = logging.getLogger(__name__)

__all__ = ["DeltaServer", "EngineSource", "ImageReadError", "RegistrySource", "main"]

MANIFEST_TYPES = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
))
_LIST_TYPES = {
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}


class ImageReadError(Exception):
    """An image could not be read (unknown name, registry error, bad blob)."""


class ImageSource(Protocol):
    def read(self, name: str, workdir: Path) -> ImageLayers: ...


# ------------------------------------------------------------------------------ registry source
def _split_name(name: str) -> tuple[str | None, str, str]:
    """(registry host or None, repository, tag or digest)."""
    from supervisor.state.target import split_image

    try:
        ref = split_image(name)
    except ValueError as err:
        raise ImageReadError(f"bad image name {name!r}") from err
    return ref.registry, ref.name, ref.digest or ref.tag or "latest"


class RegistrySource:
    """Images from a registry over the Registry HTTP API v2.

    ``url`` serves every name (its registry part is ignored); without it, the name's registry is
    used, over plain HTTP for loopback hosts. ``auth`` is (user, password) for basic auth.
    """

    def __init__(self, url: str | None = None, *, auth: tuple[str, str] | None = None,
                 arch: str | None = None, timeout: float = 60.0) -> None:
        import requests

        self.url = url.rstrip("/") if url else None
        self.session = requests.Session()
        self.session.trust_env = False
        if auth is not None:
            self.session.auth = auth
        self.arch = arch or _ARCH.get(platform.machine(), platform.machine())
        self.timeout = timeout

    def _base(self, registry: str | None) -> str:
        if self.url:
            return self.url
        if registry is None:
            raise ImageReadError("image name has no registry and the server has no --registry")
        local = re.match(r"^(localhost|127\.[0-9.]+|\[::1\])(:[0-9]+)?$", registry)
        return f"{'http' if local else 'https'}://{registry}"

    def _get(self, url: str, **kw: Any) -> Any:
        import requests

        try:
            response = self.session.get(url, timeout=self.timeout, **kw)
        except requests.RequestException as err:
            raise ImageReadError(f"registry request failed: {err}") from err
        if response.status_code != 200:
            response.close()
            raise ImageReadError(f"registry answered {response.status_code} for {url}")
        return response

    def read(self, name: str, workdir: Path) -> ImageLayers:
        registry, repo, ref = _split_name(name)
        base = f"{self._base(registry)}/v2/{repo}"
        manifest = self._get(f"{base}/manifests/{ref}", headers={"Accept": MANIFEST_TYPES}).json()
        if manifest.get("mediaType") in _LIST_TYPES or "manifests" in manifest:
            chosen = next((m for m in manifest.get("manifests", [])
                           if (m.get("platform") or {}).get("architecture") == self.arch), None)
            if chosen is None:
                raise ImageReadError(f"{name} has no manifest for {self.arch}")
            manifest = self._get(f"{base}/manifests/{chosen['digest']}",
                                 headers={"Accept": MANIFEST_TYPES}).json()
        config_digest = manifest["config"]["digest"]
        config = self._get(f"{base}/blobs/{config_digest}").content
        if "sha256:" + hashlib.sha256(config).hexdigest() != config_digest:
            raise ImageReadError(f"config blob of {name} does not match its digest")
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        blobs = manifest["layers"]
        if len(blobs) != len(diff_ids):
            raise ImageReadError(f"{name}: {len(blobs)} layer blobs for {len(diff_ids)} diff_ids")
        workdir.mkdir(parents=True, exist_ok=True)

        def fetch(index: int) -> Path:
            blob = blobs[index]
            media = str(blob.get("mediaType", ""))
            if "zstd" in media:
                raise ImageReadError(f"{name}: zstd layers are not supported")
            gzipped = "gzip" in media
            path = workdir / f"{diff_ids[index].replace(':', '-')}"
            response = self._get(f"{base}/blobs/{blob['digest']}", stream=True)
            z = zlib.decompressobj(wbits=47) if gzipped else None
            with response, open(path, "wb") as out:
                writer = _HashingWriter(out)
                for chunk in response.iter_content(CHUNK):
                    if z is None:
                        writer.write(chunk)
                        continue
                    data = z.decompress(chunk, CHUNK)
                    while data:
                        writer.write(data)
                        data = z.decompress(z.unconsumed_tail, CHUNK) if z.unconsumed_tail else b""
                if z is not None:
                    writer.write(z.flush())
            if writer.digest != diff_ids[index]:
                raise ImageReadError(
                    f"layer {index} of {name} is {writer.digest}, expected {diff_ids[index]}"
                )
            return path

        return ImageLayers(config, fetch)


class EngineSource:
    """Images from the local engine (``docker save``)."""

    def __init__(self) -> None:
        import docker

        self.api = docker.from_env().api

    def read(self, name: str, workdir: Path) -> ImageLayers:
        import docker.errors

        try:
            return save_image(self.api, name, workdir)
        except docker.errors.APIError as err:
            raise ImageReadError(f"engine cannot save {name}: {err.explanation or err}") from err


# ------------------------------------------------------------------------------ jobs
@dataclass
class _Job:
    path: Path
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


@dataclass
class Stats:
    """What the server sent, for tests and the benchmark.

    A request is recorded after its answer went out, so a client can hold the answer before the
    record exists; :meth:`settled` waits until no request is being handled, which is when every
    answer a client has seen is recorded."""

    artifact_bytes: int = 0
    requests: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)
    active: int = 0

    def record(self, what: str, status: int, sent: int = 0) -> None:
        with self.lock:
            self.requests.append((what, status))
            self.artifact_bytes += sent

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Around each request's handling, from before its first byte out to after its record."""
        with self.lock:
            self.active += 1
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1
                self.lock.notify_all()

    def settled(self, timeout: float = 60.0) -> list[tuple[str, int]]:
        """The recorded requests once no request is in flight (raises TimeoutError after ``timeout`` s)."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.active == 0, timeout):
                raise TimeoutError(f"delta server still handling {self.active} request(s) after {timeout}s")
            return list(self.requests)


class DeltaServer:
    """The HTTP server and its artifact cache; ``start()`` serves from a thread."""

    def __init__(
        self,
        source: ImageSource,
        cache_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Iterable[str] | None = None,
        wait_s: float = 5.0,
    ) -> None:
        self.source = source
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.tokens = set(tokens) if tokens else None
        self.wait_s = wait_s
        self.stats = Stats()
        self._secret = self._load_secret()
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._compute = threading.Semaphore(1)  # one delta at a time: they are CPU-bound
        self._faults: dict[str, deque[tuple[str | int, int | None]]] = {"delta": deque(), "artifact": deque()}
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _load_secret(self) -> bytes:
        path = self.cache_dir / "secret"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            from supervisor.atomic import write_atomic

            secret = secrets.token_hex(32)
            write_atomic(path, secret)
            return secret.encode()

    # -------------------------------------------------------------- faults (tests)
    def inject(self, where: str, action: str | int, times: int | None = 1) -> None:
        """Make the next ``times`` (None: all) responses of ``where`` ("delta" or "artifact")
        fail with ``action``: an HTTP status, "truncate" (half the body, then the connection
        closes) or "corrupt" (the last 32 bytes of the artifact inverted)."""
        with self._lock:
            self._faults[where].append((action, times))

    def clear_faults(self) -> None:
        with self._lock:
            for queue in self._faults.values():
                queue.clear()

    def _fault(self, where: str) -> str | int | None:
        with self._lock:
            queue = self._faults[where]
            if not queue:
                return None
            action, times = queue[0]
            if times is not None:
                if times <= 1:
                    queue.popleft()
                else:
                    queue[0] = (action, times - 1)
            return action

    # -------------------------------------------------------------- artifacts
    def key(self, src: str, dest: str) -> str:
        return hmac.new(self._secret, f"{src}\0{dest}".encode(), hashlib.sha256).hexdigest()[:48]

    def request_delta(self, src: str, dest: str) -> tuple[str, str | None]:
        """("ready", key), ("processing", None) or ("failed", message)."""
        key = self.key(src, dest)
        with self._lock:
            job = self._jobs.get(key)
            if job is None:
                path = self.cache_dir / f"{key}.delta"
                job = _Job(path)
                if path.exists():
                    job.done.set()
                else:
                    threading.Thread(target=self._build, args=(job, src, dest), daemon=True).start()
                self._jobs[key] = job
        if not job.done.wait(self.wait_s):
            return "processing", None
        if job.error is not None:
            with self._lock:
                self._jobs.pop(key, None)  # the next request tries again
            return "failed", job.error
        return "ready", key

    def _build(self, job: _Job, src: str, dest: str) -> None:
        try:
            with self._compute, tempfile.TemporaryDirectory(dir=self.cache_dir, prefix="job-") as tmp:
                work = Path(tmp)
                base = self.source.read(src, work / "base")
                target = self.source.read(dest, work / "target")
                with open(work / "artifact", "wb") as out:
                    stats = write_artifact(base, target, out, work)
                os.replace(work / "artifact", job.path)
                log.info("Delta %s -> %s: %d bytes for %d bytes of layers (%d layers shared)",
                         src, dest, stats.artifact_size, stats.target_size, stats.layers_referenced)
        except Exception as err:  # reported to the client as a 400; logged here with the cause
            log.warning("Delta %s -> %s failed: %s", src, dest, err)
            job.error = str(err) or type(err).__name__
        finally:
            job.done.set()

    # -------------------------------------------------------------- HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s %s", self.address_string(), format % args)

            def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                with server.stats.handling():
                    self._get()

            def _get(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                match = re.fullmatch(r"/api/v(\d+)/delta", parsed.path)
                if match:
                    self._delta(int(match.group(1)), urllib.parse.parse_qs(parsed.query))
                elif parsed.path.startswith("/artifacts/"):
                    self._artifact(parsed.path.removeprefix("/artifacts/"))
                else:
                    self._json(404, {"message": "not found"})

            def _authorised(self) -> bool:
                if server.tokens is None:
                    return True
                auth = self.headers.get("Authorization", "")
                scheme, _, token = auth.partition(" ")
                return scheme.lower() == "bearer" and any(
                    hmac.compare_digest(token.strip(), t) for t in server.tokens
                )

            def _delta(self, version: int, query: dict[str, list[str]]) -> None:
                status = self._delta_status(version, query)
                server.stats.record("delta", status)

            def _delta_status(self, version: int, query: dict[str, list[str]]) -> int:
                if not self._authorised():
                    self._json(401, {"message": "Unauthorized"})
                    return 401
                fault = server._fault("delta")
                if isinstance(fault, int):
                    self._json(fault, {"message": f"injected {fault}"})
                    return fault
                if version != 2:
                    self._json(400, {"message": f"this delta server serves v2 deltas only, not v{version}"})
                    return 400
                src, dest = (query.get("src") or [""])[0], (query.get("dest") or [""])[0]
                if not src or not dest:
                    self._json(400, {"message": "src and dest are required"})
                    return 400
                state, value = server.request_delta(src, dest)
                if state == "processing":
                    self._json(502, {"message": "Delta still processing"})
                    return 502
                if state == "failed":
                    self._json(400, {"message": value})
                    return 400
                host = self.headers.get("Host") or server.url.removeprefix("http://")
                self._json(302, {"location": f"/artifacts/{value}"},
                           {"Location": f"http://{host}/artifacts/{value}"})
                return 302

            def _artifact(self, key: str) -> None:
                path = server.cache_dir / f"{key}.delta"
                if not re.fullmatch(r"[0-9a-f]{48}", key) or not path.is_file():
                    self._json(404, {"message": "no such artifact"})
                    server.stats.record("artifact", 404)
                    return
                fault = server._fault("artifact")
                if isinstance(fault, int):
                    self._json(fault, {"message": f"injected {fault}"})
                    server.stats.record("artifact", fault)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                status = 200
                range_header = self.headers.get("Range")
                if range_header:
                    m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header.strip())
                    if not m or int(m.group(1)) >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        server.stats.record("artifact", 416)
                        return
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                    status = 206
                length = end - start + 1
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                limit = length // 2 if fault == "truncate" else length
                sent = _send_file(path, self.wfile, start, limit, size if fault == "corrupt" else None)
                server.stats.record("artifact", status, sent)
                if fault == "truncate":
                    self.close_connection = True

        return Handler

    # -------------------------------------------------------------- lifecycle
    def start(self) -> DeltaServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _send_file(path: Path, out: BinaryIO, start: int, length: int, corrupt_size: int | None) -> int:
    """Copy ``length`` bytes from ``start``; with ``corrupt_size``, invert the file's last 32 bytes."""
    sent = 0
    with open(path, "rb") as f:
        f.seek(start)
        while sent < length:
            data = f.read(min(CHUNK, length - sent))
            if not data:
                break
            if corrupt_size is not None:
                offset = start + sent
                lo = max(corrupt_size - 32, offset)
                if lo < offset + len(data):
                    buf = bytearray(data)
                    for i in range(lo - offset, len(data)):
                        buf[i] ^= 0xFF
                    data = bytes(buf)
            out.write(data)
            sent += len(data)
    out.flush()
    return sent


# ------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.delta serve",
        description="Serve image deltas (v2 contract) computed from a registry or the local engine.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--registry", metavar="URL",
                        help="read every image from this registry (default: the name's registry)")
    source.add_argument("--engine", action="store_true", help="read images from the local Docker engine")
    parser.add_argument("--registry-auth", metavar="USER:PASSWORD", help="basic auth for the registry")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--cache", metavar="DIR", help="artifact cache (default: a temporary directory)")
    parser.add_argument("--token", action="append", metavar="TOKEN",
                        help="accepted bearer token, e.g. a device API key (repeatable; env "
                             "DELTA_SERVER_TOKENS, comma-separated); none: no auth")
    parser.add_argument("--wait", type=float, default=5.0, metavar="S",
                        help="how long a delta request waits for its artifact before answering 502")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    tokens = list(args.token or [])
    tokens += [t for t in os.environ.get("DELTA_SERVER_TOKENS", "").split(",") if t]
    src: ImageSource
    if args.engine:
        src = EngineSource()
    else:
        auth = None
        if args.registry_auth:
            user, _, password = args.registry_auth.partition(":")
            auth = (user, password)
        src = RegistrySource(args.registry, auth=auth)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="delta-server-"))
    server = DeltaServer(src, cache, host=args.host, port=args.port, tokens=tokens or None, wait_s=args.wait)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    print(f"delta server listening on {server.url} (cache {cache})", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


"""``POST /device/v2/<uuid>/log-stream`` as cloud-api.md §5.1 describes the real server.

The route chain: an unknown device waits ``unknown_delay_s`` (the real server: 55 s) and gets an
empty 401; no API key: 401 ``{"error":"API key required"}``; a key that may not write this device's
logs: empty 401; a ``Content-Type`` that is not exactly ``application/x-ndjson``: 415. Then the body
is read as it arrives (chunked or with a length), gunzipped incrementally when ``Content-Encoding`` is
exactly ``gzip``, split into lines, and every line is stored at once (tests read them while the
request is still open, ``GET /_fake/logs``). The answer comes only when the body ends: 201, or 400
on a line that is not JSON (lines before it stay stored). Lines breaking the §5.1 per-line rules are
dropped silently. Unlike the real server the fake keeps every line (not the last 1000) and has no
50-line write buffer, so a test can count exactly what arrived.

Faults (``POST /_fake/faults`` with ``path`` matching the route) besides the generic ones
(``reset``, ``status``, ``slow``, ``429`` at connect): ``stall`` reads nothing for ``delay`` seconds
after the headers (the client's writes back up), then reads on; ``cut`` reads for ``delay`` seconds,
then closes the connection without an answer (what it had not read is lost, as in a crash).

On shutdown (SIGTERM) every open stream is answered 503 ``"The logs storage is unavailable"`` and
read to the client's end (at most a few seconds), so a stop loses nothing the client wrote before it
saw the answer.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from .server import FakeApi, Request

NDJSON = "application/x-ndjson"
READ_SIZE = 65536
#: Longest line the fake buffers while waiting for its newline (the real server has no limit;
#: this only keeps a broken client from eating the test machine's memory).
MAX_LINE = 16 * 1024 * 1024


class ParseError(Exception):
    """A line that is not JSON, or a gzip stream that does not decode: the stream ends with 400."""


def convert(row: Any) -> tuple[Any, ...] | None:
    """``convertLog`` (§5.1): the stored fields, or None for a line that is dropped silently."""
    if not isinstance(row, dict):
        return None
    message, timestamp = row.get("message"), row.get("timestamp")
    if not isinstance(message, str):
        return None
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        return None
    service_id = None
    if "serviceId" in row:
        service_id = row["serviceId"]
        if isinstance(service_id, bool) or not isinstance(service_id, int | float):
            return None  # null included
    if row.get("uuid"):
        return None  # a dependent device's line
    return message, timestamp, row.get("isSystem") is True, row.get("isStdErr") is True, service_id


class Stream:
    """One open log-stream request (for the graceful answer at shutdown)."""

    _ids = itertools.count(int(time.time()) * 1000)  # unique across restarts of the fake

    def __init__(self, handler: BaseHTTPRequestHandler, uuid: str) -> None:
        self.id = next(Stream._ids)
        self.handler = handler
        self.uuid = uuid
        self.answered = False
        self.lock = threading.Lock()

    def answer(self, status: int, body: bytes, content_type: str | None) -> bool:
        """Send the one answer of this request (False when it was sent already)."""
        with self.lock:
            if self.answered:
                return False
            self.answered = True
        h = self.handler
        try:
            h.send_response(status)
            if content_type:
                h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            pass
        return True


class LogStreams:
    """The receiver: open streams, and the line store (``device_log``)."""

    def __init__(self, api: FakeApi, unknown_delay_s: float) -> None:
        self.api = api
        self.unknown_delay_s = unknown_delay_s
        self.lock = threading.Lock()
        self.open: dict[int, Stream] = {}
        self.opened = 0
        self.stopping = False

    # ------------------------------------------------------------------------------ checks
    def check(self, req: Request, uuid: str) -> None:
        """The route chain before the body is read; raises the :class:`Reply` of a refusal."""
        from .server import API_KEY_REQUIRED, empty, text_reply

        device = self.api._device(uuid)
        if device is None:
            time.sleep(self.unknown_delay_s)  # DELETED_FROZEN_DEVICE_LOGS_DELAY_MS, a deliberate backoff
            raise empty(401)
        caller = self.api.caller(req)
        if caller is None:
            raise API_KEY_REQUIRED
        if not self.api._sees_device(caller, device):
            raise empty(401)
        if req.headers.get("Content-Type") != NDJSON:
            raise text_reply(415, "Streaming requests require Content-Type application/x-ndjson")

    # ------------------------------------------------------------------------------ the body
    def receive(
        self, handler: BaseHTTPRequestHandler, req: Request, uuid: str, fault: Any
    ) -> tuple[int, int]:
        """Read and store the body; answer. Returns (status, body bytes read); status 0 when the
        client went away before ending the body (no answer then)."""
        from .server import Reply, text_reply

        stream = Stream(handler, uuid)
        with self.lock:
            if self.stopping:
                stream.answer(503, b'"The logs storage is unavailable"', "application/json; charset=utf-8")
                return 503, 0
            self.open[stream.id] = stream
            self.opened += 1
        bytes_in = 0
        try:
            if fault is not None and fault["kind"] == "stall":
                time.sleep(fault["delay"] or 0)
            cut_at = None
            if fault is not None and fault["kind"] == "cut":
                cut_at = time.monotonic() + (fault["delay"] or 0)
            gzip = req.headers.get("Content-Encoding") == "gzip"  # exactly: GZIP/deflate/br are not decoded
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
            partial = b""
            ended = False
            try:
                for data in _body(handler, req):
                    bytes_in += len(data)
                    if cut_at is not None and time.monotonic() >= cut_at:
                        handler.close_connection = True
                        _abort(handler)
                        return 0, bytes_in
                    if inflater is not None:
                        try:
                            data = inflater.decompress(data)
                        except zlib.error as exc:
                            raise ParseError(f"gzip: {exc}") from None
                    partial = self._lines(stream, partial + data)
                ended = True
                if inflater is not None:
                    partial = self._lines(stream, partial + inflater.flush())
                if partial.strip():
                    self._lines(stream, partial + b"\n")
            except ParseError as exc:
                handler.close_connection = True
                reply: Reply = text_reply(400, str(exc))
                stream.answer(reply.status, reply.body, reply.content_type)
                return 400, bytes_in
            except OSError:
                ended = False
            if not ended:  # the client went away without ending the body: nothing to answer
                handler.close_connection = True
                return (503 if stream.answered else 0), bytes_in
            if stream.answer(201, b"", None):
                return 201, bytes_in
            return 503, bytes_in  # answered at shutdown; the client's end came in time
        finally:
            with self.lock:
                self.open.pop(stream.id, None)

    def _lines(self, stream: Stream, data: bytes) -> bytes:
        """Store each complete line of ``data``; return the unterminated rest."""
        *lines, rest = data.split(b"\n")
        if len(rest) > MAX_LINE:
            raise ParseError(f"Could not parse row {rest[:50].decode('utf-8', 'replace')}...")
        rows = []
        error = None
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:  # the lines before it are still published
                error = ParseError(f"Could not parse row {line[:50].decode('utf-8', 'replace')}...")
                break
            converted = convert(row)
            if converted is not None:
                rows.append(converted)
        self._store(stream, rows)
        if error is not None:
            raise error
        return rest

    def _store(self, stream: Stream, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            now = time.time()
            with self.api.store.tx() as conn:
                conn.executemany(
                    "INSERT INTO device_log (uuid, stream, received_at, message, timestamp, is_system, "
                    "is_stderr, service_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(stream.uuid, stream.id, now, *r) for r in rows],
                )

    # ------------------------------------------------------------------------------ shutdown
    def shutdown(self, timeout: float = 5.0) -> None:
        """Answer every open stream 503 and give each until ``timeout`` to end its body."""
        with self.lock:
            self.stopping = True
            streams = list(self.open.values())
        for stream in streams:
            stream.answer(503, b'"The logs storage is unavailable"', "application/json; charset=utf-8")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.open:
                    return
            time.sleep(0.02)


def _body(handler: BaseHTTPRequestHandler, req: Request):  # noqa: ANN202 - a generator of bytes
    """The request body as it arrives: chunked framing decoded, or ``Content-Length`` bytes."""
    rfile = handler.rfile
    if "chunked" in req.headers.get("Transfer-Encoding", "").lower():
        while True:
            size_line = rfile.readline(1024)
            if not size_line:
                raise OSError("connection closed inside the body")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise OSError(f"bad chunk size {size_line[:20]!r}") from None
            if size == 0:
                while rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            remaining = size
            while remaining:
                data = rfile.read1(min(remaining, READ_SIZE))
                if not data:
                    raise OSError("connection closed inside a chunk")
                remaining -= len(data)
                yield data
            rfile.readline(16)  # the chunk's CRLF
    else:
        remaining = int(req.headers.get("Content-Length") or 0)
        while remaining:
            data = rfile.read1(min(remaining, READ_SIZE))
            if not data:
                raise OSError("connection closed inside the body")
            remaining -= len(data)
            yield data


def _abort(handler: BaseHTTPRequestHandler) -> None:
    import socket

    with contextlib.suppress(OSError):
        handler.connection.shutdown(socket.SHUT_RDWR)

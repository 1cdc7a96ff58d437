"""Long-lived streamed responses (``/v2/local/logs``, ``/v2/journal-logs``) on waitress.

waitress serves each request on a thread of its pool for as long as its body is iterated, so an
open stream holds a thread. The pool has ``api_threads`` threads plus one per open stream: opening a
stream adds a thread to the pool, closing it takes one away (:class:`StreamSlots` ``on_change``, waitress's
``set_thread_count``), so however many clients stream, ``api_threads`` threads stay free for every other
request, and an idle supervisor holds no thread for streams nobody opened (issue #17; it used to start
``api_threads + max_streams`` threads up front). At most ``max_streams`` streams may be open at once
(one more is a 503).

A stream polls its source with a short timeout and checks between polls whether the client went away
(``waitress.client_disconnected``, which needs ``channel_request_lookahead >= 1`` so waitress keeps
reading the socket during a request). Ending the iteration makes waitress call :meth:`StreamBody.close`,
which closes the source (unsubscribes, kills the child process) and frees the slot. waitress sends
every written chunk at once (``send_bytes`` is 1 since waitress 3), so lines are not held back.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ..logs.hub import Message, Subscription

POLL_S = 0.25


class StreamSlots:
    """A counter of open streams with a fixed limit; ``on_change(open)`` is told each new count
    (under the lock, so counts arrive in order)."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.on_change = on_change
        self._lock = threading.Lock()
        self._open = 0

    def try_acquire(self) -> bool:
        with self._lock:
            if self._open >= self.limit:
                return False
            self._open += 1
            if self.on_change is not None:
                self.on_change(self._open)
            return True

    def release(self) -> None:
        with self._lock:
            self._open -= 1
            if self.on_change is not None:
                self.on_change(self._open)

    @property
    def open(self) -> int:
        with self._lock:
            return self._open


class Source(Protocol):
    def read(self, timeout: float) -> bytes | None:
        """The next chunk; None when nothing arrived within ``timeout``; ``b""`` at the end."""

    def close(self) -> None: ...


class StreamBody:
    """A WSGI body iterating a :class:`Source` until it ends or the client disconnects."""

    def __init__(self, source: Source, *, first: bytes = b"", disconnected: Callable[[], bool],
                 release: Callable[[], None]) -> None:
        self._source = source
        self._pending = first
        self._disconnected = disconnected
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()
        self._closed = False

    def __iter__(self) -> StreamBody:
        return self

    def __next__(self) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        while not self._closed and not self._disconnected():
            chunk = self._source.read(POLL_S)
            if chunk is None:
                continue
            if not chunk:
                break
            return chunk
        raise StopIteration

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            release, self._release = self._release, None
        try:
            self._source.close()
        finally:
            if release is not None:
                release()


# ------------------------------------------------------------------------------ /v2/local/logs
STREAMING_LOGS_LINE = b'{"message":"Streaming logs","isSystem":true}\n'


def ndjson(message: Mapping[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class LogLines:
    """Hub messages as NDJSON lines for the local log stream (spec §1.4).

    Container messages get ``serviceName`` first, resolved from ``serviceId`` through the target
    (cached; re-read at most once a second on a miss); a message of an unknown service is dropped, as
    the reference does. Messages flow only while ``active()`` (local mode) says so, checked at most
    once a second.
    """

    def __init__(self, sub: Subscription, *, service_names: Callable[[], Mapping[int, str]],
                 active: Callable[[], bool]) -> None:
        self._sub = sub
        self._service_names = service_names
        self._names: Mapping[int, str] = {}
        self._names_read = 0.0
        self._active = active
        self._active_value = False
        self._active_read = 0.0

    def _is_active(self) -> bool:
        now = time.monotonic()
        if now - self._active_read >= 1.0:
            self._active_value, self._active_read = bool(self._active()), now
        return self._active_value

    def _name(self, service_id: int) -> str | None:
        name = self._names.get(service_id)
        now = time.monotonic()
        if name is None and now - self._names_read >= 1.0:
            self._names, self._names_read = dict(self._service_names()), now
            name = self._names.get(service_id)
        return name

    def render(self, message: Message) -> bytes | None:
        if message.get("isSystem"):
            return ndjson(message)
        service_id = message.get("serviceId")
        name = self._name(service_id) if isinstance(service_id, int) else None
        if name is None:
            return None
        return ndjson({"serviceName": name, **message})

    def read(self, timeout: float) -> bytes | None:
        message = self._sub.get(timeout)
        if message is None:
            return b"" if self._sub.closed else None
        if not self._is_active():
            return None
        return self.render(message)

    def close(self) -> None:
        self._sub.close()


# ---------------------------------------------------------------------------- /v2/journal-logs
class ProcessOutput:
    """A child's stdout; closing kills it (SIGKILL, as the reference) and reaps it."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()

    def read(self, timeout: float) -> bytes | None:
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return None
        return os.read(self._fd, 64 * 1024)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def journalctl_args(body: Mapping[str, Any], *, truthy: Callable[[Any], bool]) -> list[str]:
    """journalctl's arguments for a ``/v2/journal-logs`` body, in the order of spec §8.4."""
    args: list[str] = []
    if truthy(body.get("all")):
        args.append("-a")
    if truthy(body.get("follow")):
        args.append("--follow")
    for key, flag in (("unit", "-u"), ("containerId", "-t")):
        if body.get(key) not in (None, ""):
            args += [flag, str(body[key])]
    count = body.get("count")
    if isinstance(count, str) and count.strip().isdigit():
        count = int(count)
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        args += ["-n", str(count)]
    for key, flag in (("since", "-S"), ("until", "-U")):
        if body.get(key) not in (None, ""):
            args += [flag, str(body[key])]
    args += ["-o", str(body.get("format") or "short")]
    return args

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
from operator import itemgetter
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
    once a second. Keys starting with ``_`` (the cloud backend's ``_ack``) are never written.

    A batch of one container's lines (what the engine log source publishes) is encoded in one go by
    the log codec's ``encode_many`` and ``serviceName`` spliced in front of each line on the bytes
    (JSON escapes every newline inside a string, so ``\n{`` only ever starts the next line): no
    per-line dict copy.
    """

    def __init__(self, sub: Subscription, *, service_names: Callable[[], Mapping[int, str]],
                 active: Callable[[], bool]) -> None:
        from ..logs.codec import load

        self._sub = sub
        self._service_names = service_names
        self._names: Mapping[int, str] = {}
        self._prefixes: dict[int, bytes] = {}
        self._names_read = 0.0
        self._active = active
        self._active_value = False
        self._active_read = 0.0
        self._encode_many = load().encode_many

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
            self._prefixes = {}
            name = self._names.get(service_id)
        return name

    def _prefix(self, service_id: Any) -> bytes | None:
        """``{"serviceName":"<name>",`` of a service, None for an unknown one."""
        prefix = self._prefixes.get(service_id)
        if prefix is None and isinstance(service_id, int) and not isinstance(service_id, bool):
            name = self._name(service_id)
            if name is not None:
                prefix = b'{"serviceName":' + ndjson(name)[:-1] + b","
                self._prefixes[service_id] = prefix
        return prefix

    def render(self, message: Message) -> bytes | None:
        if any(key[:1] == "_" for key in message):
            message = {k: v for k, v in message.items() if k[:1] != "_"}
        if message.get("isSystem"):
            return ndjson(message)
        prefix = self._prefix(message.get("serviceId"))
        if prefix is None:
            return None
        line = ndjson(message)
        return prefix + line[1:] if line != b"{}\n" else prefix[:-1] + b"}\n"

    def render_batch(self, batch: Sequence[Message]) -> bytes:
        first = batch[0]
        if len(batch) > 1 and not first.get("isSystem"):
            try:
                (service_id,) = set(map(_service_id, batch))
            except (KeyError, ValueError):  # several services, or a system message among them
                pass
            else:
                prefix = self._prefix(service_id)
                if prefix is None:
                    return b""
                last = batch[-1]
                if "_ack" in last:
                    batch = [*batch[:-1], {k: v for k, v in last.items() if k[:1] != "_"}]
                body = self._encode_many(batch)
                return prefix + body[1:].replace(b"\n{", b"\n" + prefix)
        return b"".join(line for line in map(self.render, batch) if line is not None)

    def read(self, timeout: float) -> bytes | None:
        batch = self._sub.get_batch(timeout)
        if batch is None:
            return b"" if self._sub.closed else None
        if not self._is_active():
            return None
        return self.render_batch(batch) or None

    def close(self) -> None:
        self._sub.close()


_service_id = itemgetter("serviceId")


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

"""The cloud log stream (spec §8.3; the server side is cloud-api.md §5.1).

One long-lived request, ``POST <logsEndpoint or apiEndpoint>/device/v2/<uuid>/log-stream``, whose
chunked body is a gzip stream of NDJSON lines (``Content-Type: application/x-ndjson``,
``Content-Encoding: gzip``, ``Authorization: Bearer <deviceApiKey>``). The server never answers a
healthy stream: any answer, or the connection closing, is a failure.

What the reference does, kept: 256 KiB of pending messages, then drop-and-count until the buffer has
drained to half, then one ``Warning: Suppressed <N> message(s) due to high load`` system line (with
``isStdErr``) where the gap is; a failure count reset after a connection has stood 5 s; a sync flush at
most every 100 ms; teardown after 60 s without a line; reconnects after ``min(2^n x 5 s, 300 s)``
(``supervisor/cloud/backoff.py``, spread over its upper half); message text cut to 10 000 characters,
``[...]`` included; a non-system message without ``serviceId`` dropped; nothing sent while the device is
unmanaged, in local mode or has ``SUPERVISOR_LOG_CONTROL`` off.

Where it loses lines it need not, this does better (docs/API.md, "Cloud log stream"):

* the pending buffer lives across reconnects, and a write that fails stays pending (resent on the
  next connection); so the buffer only fills while the cloud is down or slower than the device;
* lines are written from the first moment of a connection (the reference waits out its 5 s grace,
  which at 10 000 lines/s overflows the buffer at every connect); what was written during the
  grace is kept aside (at most 1 MiB) and requeued if the server refuses the stream in that time,
  since it refuses before it reads a byte of the body;
* a device that is managed but not provisioned yet keeps its lines (bounded) and sends them once
  registered (the reference drops them, so a fresh device's first lines never reached the cloud);
* a teardown (idle, stop, a new key or endpoint) ends the body and waits for the server's 201, so
  every line written is known to be stored; the server's answer is read before the socket closes,
  so no reset throws away what the server had not read yet.

Lines are lost without a count only when a connection breaks with no answer (the server dies, the
network cuts it): what the server had not read yet.

Every message may carry ``_ack``, a zero-argument callable; the rule is the hub's
(supervisor/logs/hub.py ``LogBackend``): each ack is called once, in the order the messages came.
A line sent: once its bytes were written and sync-flushed on a connection that has stood its grace.
A line dropped under load: held (at most ``max_held_acks``) and called when the ``Suppressed`` line
that counts it is sent, which is queued behind every line accepted before the gap and ahead of every
line after it; an earlier ack would move the source past lines still pending. A line not for the
cloud (no ``serviceId``): with the line queued before it. Off (local mode, logging off): what is
queued is discarded and acknowledged within ``off_check_s``. Not provisioned yet: held, and
acknowledged once sent. Never called for a line still pending (or dropped but not announced) at
stop: a source resuming from acknowledged positions re-reads exactly those after a restart, and
the lines lost are exactly the ``Suppressed`` counts that reached the cloud.
Keys beginning with ``_`` are never sent; only the §8.2 fields are.

``http.client`` rather than ``requests``: the body is written piece by piece as lines arrive, each
piece sync-flushed on its own schedule, while the socket is watched for an early answer; ``requests``
takes a generator body and gives no control over when pieces go out or any view of the socket until
the body has ended.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import logging
import os
import select
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from ..cloud.backoff import Backoff
from ..subsystem import Subsystem
from .codec import load as load_codec

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 10_000
TRUNCATION_SUFFIX = "[...]"
#: Bytes a message costs in the pending budget besides its text: the JSON keys and values (§8.2).
RECORD_OVERHEAD = 64
TIME_SCALE_ENV = "PYSUPERVISOR_LOG_STREAM_TIME_SCALE"

#: What :attr:`CloudLogStream.target` returns besides a :class:`StreamTarget`.
OFF: Final = "off"  # unmanaged, local mode, or SUPERVISOR_LOG_CONTROL false: drop everything
WAIT: Final = "wait"  # managed but not provisioned yet: keep (bounded) until there is a target


@dataclass(frozen=True)
class StreamTarget:
    url: str
    api_key: str = field(repr=False)


@dataclass(frozen=True)
class StreamSettings:
    """Every limit and interval of the stream; ``scaled`` shortens the intervals for tests."""

    max_pending_bytes: int = 256 * 1024  # MAX_PENDING_BYTES
    grace_s: float = 5.0
    flush_interval_s: float = 0.1
    idle_s: float = 60.0
    backoff_min_s: float = 5.0
    backoff_max_s: float = 300.0
    #: Written during a connection's grace and kept for a requeue; past this, the oldest counts as sent.
    max_unconfirmed_bytes: int = 1024 * 1024
    connect_timeout_s: float = 30.0
    #: A write that cannot go out this long (the server stopped reading) fails the connection.
    write_timeout_s: float = 30.0
    #: How long a teardown waits for the server's 201 after ending the body.
    end_timeout_s: float = 5.0
    #: How long ``stop`` spends writing what is pending and ending the body.
    stop_deadline_s: float = 3.0
    #: How stale the thread's view of whether the device logs to the cloud (mode, key, endpoint)
    #: may be when it writes.
    mode_check_s: float = 0.1
    #: How often a stream that is off discards what was queued meanwhile.
    off_check_s: float = 0.25
    #: The longest the thread sleeps with nothing to do.
    idle_wake_s: float = 0.5
    #: Acks of dropped batches held for their Suppressed line (one a batch, a few hundred bytes each);
    #: past this the oldest are forgotten, never called early (an outage of many seconds at full rate).
    max_held_acks: int = 4096
    #: While the stream is healthy (no outage or backoff) a full buffer pauses the sources
    #: (:meth:`CloudLogStream.wait_for_room`) instead of dropping; a batch already read when the
    #: buffer filled still goes in, up to this bound. Past it (a source that does not pause) lines drop.
    max_backpressure_bytes: int = 2 * 1024 * 1024
    compress_level: int = 6

    def scaled(self, factor: float) -> StreamSettings:
        if factor <= 0:
            raise ValueError("time scale must be positive")
        names = ("grace_s", "idle_s", "backoff_min_s", "backoff_max_s")
        return replace(self, **{f.name: getattr(self, f.name) * factor for f in fields(self)
                                if f.name in names})

    @classmethod
    def from_env(cls) -> StreamSettings:
        raw = os.environ.get(TIME_SCALE_ENV)
        try:
            return cls().scaled(float(raw)) if raw else cls()
        except ValueError:
            raise SystemExit(f"supervisor: {TIME_SCALE_ENV} must be a positive number, got {raw!r}") from None


def truncate(text: str) -> str:
    """lodash ``truncate(text, {length: 10000, omission: '[...]'})``: the result, suffix included, is
    at most 10 000 characters."""
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[: MAX_MESSAGE_CHARS - len(TRUNCATION_SUFFIX)] + TRUNCATION_SUFFIX


def to_record(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """The §8.2 line for ``message``, or None when the backend drops it (a non-system message
    without ``serviceId``). Only the §8.2 fields are sent (never ``serviceName`` or ``_`` keys)."""
    is_system = message.get("isSystem") is True
    service_id = message.get("serviceId")
    if not is_system and service_id is None:
        return None
    text = message.get("message")
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    timestamp = message.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        timestamp = int(time.time() * 1000)
    record: dict[str, Any] = {"message": truncate(text), "timestamp": timestamp}
    if is_system:
        record["isSystem"] = True
        if message.get("isStdErr"):
            record["isStdErr"] = True
    else:
        record["isStdErr"] = bool(message.get("isStdErr"))
    if service_id is not None:
        record["serviceId"] = service_id
    return record


def _suppressed(count: int) -> dict[str, Any]:
    return {
        "message": f"Warning: Suppressed {count} message(s) due to high load",
        "timestamp": int(time.time() * 1000),
        "isSystem": True,
        "isStdErr": True,
    }


def _settle(acks: list[Callable[[], None]] | tuple[Callable[[], None], ...]) -> None:
    for ack in acks:
        try:
            ack()
        except Exception:  # a source's bug must not stop the stream
            log.exception("Log acknowledgement failed")


class StreamClosed(Exception):  # noqa: N818 - a state, not an error
    """The server answered or closed the connection (a healthy stream never hears anything)."""


# A pending entry: (a record, or NDJSON bytes: a codec batch or what a failed connection had written;
# its acks; its cost in the budget; how many lines it holds).
_Entry = tuple[Any, tuple[Callable[[], None], ...], int, int]


class _Connection:
    """One log-stream request: headers sent, then chunked gzip pieces, then (maybe) a proper end."""

    def __init__(self, target: StreamTarget, settings: StreamSettings, user_agent: str,
                 context: ssl.SSLContext | None) -> None:
        parts = urlsplit(target.url)
        host = parts.hostname or ""
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.target = target
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, parts.port, timeout=settings.connect_timeout_s,
                                               context=context)
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=settings.connect_timeout_s)
        self.conn = conn
        conn.putrequest("POST", path, skip_accept_encoding=True)
        conn.putheader("User-Agent", user_agent)
        conn.putheader("Authorization", f"Bearer {target.api_key}")
        conn.putheader("Content-Type", "application/x-ndjson")
        conn.putheader("Content-Encoding", "gzip")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()  # connects, sends the headers; the body follows piece by piece
        assert conn.sock is not None
        self.sock = conn.sock
        self.sock.settimeout(settings.write_timeout_s)
        self.compressor = zlib.compressobj(settings.compress_level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        self.opened = time.monotonic()
        self.proven = False  # stood its grace without an answer
        self.status: int | None = None  # the server's answer, once read
        self.unconfirmed: collections.deque[tuple[bytes, tuple[Callable[[], None], ...], int]] = (
            collections.deque())
        self.unconfirmed_bytes = 0

    def answered(self) -> str | None:
        """What the server said, if it said anything (readable socket: an answer or a close)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError) as exc:
            return f"connection failed ({exc})"
        return self._read_answer() if readable else None

    def _read_answer(self) -> str:
        """Read the answer whole, so the socket closes with a FIN: a reset would make the server's
        kernel throw away what it had not read yet. Sets :attr:`status`."""
        try:
            response = self.conn.getresponse()
            body = response.read(4096)
            self.status = response.status
            return f"answered {response.status} {body[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            return f"closed by the server ({type(exc).__name__})"

    @property
    def refused(self) -> bool:
        return self.status is not None and 400 <= self.status < 500

    def write(self, raw: bytes) -> None:
        """Compress, sync-flush and send ``raw`` as one chunk; raises OSError on failure."""
        data = self.compressor.compress(raw) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(b"%x\r\n%b\r\n" % (len(data), data))

    def end(self, timeout: float) -> str:
        """End the body and read the server's answer (201 when every line was stored)."""
        try:
            self.sock.settimeout(max(timeout, 0.1))
            data = self.compressor.flush(zlib.Z_FINISH)
            self.sock.sendall(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data))
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                return f"failed to end ({type(exc).__name__})"
        return self._read_answer()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


class CloudLogStream(Subsystem):
    """The cloud log backend: :meth:`log` (any thread, never blocks) and the ``cloud-logs`` thread.

    ``target`` says, each time it is asked (on the thread, before a write when its last answer is
    older than ``mode_check_s``), where lines go: a :class:`StreamTarget`, :data:`WAIT` or :data:`OFF`.
    """

    name = "cloud-logs"
    acknowledges = True

    def __init__(self, target: Callable[[], StreamTarget | str], *, user_agent: str = "",
                 settings: StreamSettings | None = None, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.target = target
        self.settings = settings or StreamSettings()
        self.user_agent = user_agent
        self.metrics = metrics
        #: The codec that encodes the lines (the twin with SUPERVISOR_LOG_CODEC=python, for the benchmark).
        self._codec = load_codec()
        self._cond = threading.Condition(threading.Lock())
        self._pending: collections.deque[_Entry] = collections.deque()
        self._pending_bytes = 0
        self._dropped = 0  # since the last announcement
        self._dropping = False  # overflowed; stays so until the buffer has drained to half
        #: The acks of the lines dropped since the last announcement: called when it is sent.
        self._held_acks: collections.deque[Callable[[], None]] = collections.deque(
            maxlen=self.settings.max_held_acks)
        self._mode: StreamTarget | str = WAIT
        self._mode_at = 0.0
        #: The cloud is unreachable: from a failed connection until the next one is made. Only then
        #: (or while waiting to be provisioned) does a full buffer drop; otherwise it pushes back.
        self._outage = False
        #: Set while the sources may publish; cleared while a healthy stream's buffer is full.
        self._room = threading.Event()
        self._room.set()
        self._conn: _Connection | None = None
        self._last_write = 0.0
        self._next_attempt = 0.0
        s = self.settings
        self._backoff = Backoff(lambda: s.backoff_min_s, lambda: s.backoff_max_s)
        self._context: ssl.SSLContext | None = None
        #: Counters for tests and the benchmark (the metrics carry the same with backend=cloud).
        self.sent = 0
        self.dropped_total = 0
        self.connections = 0

    # ------------------------------------------------------------------------------ producer side
    def log(self, message: Mapping[str, Any]) -> None:
        """Queue one message (spec §8.3 ``log``); never blocks on the network."""
        self.log_many((message,))

    def log_many(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Queue a batch in order under one lock (the hub's fast path, supervisor/logs/hub.py)."""
        # Queued even while the stream is off: the thread decides with the mode it reads just before
        # writing (a cached "off" here would drop lines logged right after logging was turned on).
        if not messages:
            return
        batch = self._batch_entry(messages)
        entries: list[_Entry | Callable[[], None]] = []  # a bare callable: the ack of a line not sent
        if batch is not None:
            entries.append(batch)
        for message in messages if batch is None else ():
            ack = message.get("_ack")
            record = to_record(message)
            if record is None:  # never for the cloud: acknowledged with the line before it
                if callable(ack):
                    entries.append(ack)
                continue
            size = len(record["message"]) + RECORD_OVERHEAD
            entries.append((record, (ack,) if callable(ack) else (), size, 1))
        if not entries:
            return
        dropped = 0
        now: list[Callable[[], None]] = []  # nothing queued ahead of them: called at once
        limit = self.settings.max_pending_bytes
        with self._cond:
            pending = self._pending
            if not pending:
                self._cond.notify()
            for entry in entries:
                if not isinstance(entry, tuple):  # the ack of a line not for the cloud
                    if self._dropping:
                        self._held_acks.append(entry)
                    elif pending:
                        payload, acks, size, count = pending[-1]
                        pending[-1] = (payload, (*acks, entry), size, count)
                    else:
                        now.append(entry)
                    continue
                if self._dropping or self._pending_bytes + entry[2] > limit:
                    if (not self._dropping and not self._outage and isinstance(self._mode, StreamTarget)
                            and self._pending_bytes + entry[2] <= self.settings.max_backpressure_bytes):
                        # Healthy but behind: kept, and the sources pause until the buffer drains.
                        pending.append(entry)
                        self._pending_bytes += entry[2]
                        self._room.clear()
                        continue
                    # Dropped and counted; its ack waits for the Suppressed line (hub.py LogBackend).
                    self._dropping = True
                    dropped += entry[3]
                    if entry[1]:
                        self._held_acks.extend(entry[1])
                    continue
                pending.append(entry)
                self._pending_bytes += entry[2]
            if dropped:
                self._dropped += dropped
                self.dropped_total += dropped
        if now:
            _settle(now)
        if dropped and self.metrics is not None:
            self.metrics.inc("log_lines_dropped", dropped, "cloud")

    def _batch_entry(self, messages: Sequence[Mapping[str, Any]]) -> _Entry | None:
        """A whole batch as one pending entry of NDJSON bytes when every message is a codec record of
        a service (the engine and journald sources): encoded and checked in one pass by the codec
        (``encode_batch``), no :func:`to_record` copy per line. None for anything else (system
        messages, text to cut, other shapes), which takes the general path."""
        last = messages[-1]
        ack = last.get("_ack") if type(last) is dict else None
        if ack is not None and not callable(ack):
            return None
        encoded = self._codec.encode_batch(messages if type(messages) is list else list(messages),
                                           MAX_MESSAGE_CHARS)
        if encoded is None:
            return None
        raw, chars = encoded
        count = len(messages)
        return (raw, (ack,) if ack is not None else (), chars + RECORD_OVERHEAD * count, count)

    def wait_for_room(self, timeout: float) -> bool:
        """True once the sources may publish again, False after ``timeout`` seconds: a full buffer
        on a healthy stream pushes back on the sources (the engine keeps the lines in its log) rather
        than dropping them. Never waits while the cloud is unreachable, waiting or off."""
        return self._room.wait(timeout)

    @property
    def pending_bytes(self) -> int:
        with self._cond:
            return self._pending_bytes

    # ------------------------------------------------------------------------------ the thread
    def run(self) -> None:
        while not self.stopping:
            self.beat()
            now = time.monotonic()
            if now >= self._mode_at:
                self._refresh_mode(now)
            mode = self._mode
            if not isinstance(mode, StreamTarget):
                self._room.set()
            if mode == OFF:  # what was written goes first, then the rest is acknowledged in order
                self._teardown("logging to the cloud is off")
                self._discard_pending()
                self._sleep(self.settings.off_check_s)
                continue
            if not isinstance(mode, StreamTarget):  # WAIT: keep what is pending
                self._sleep(self.settings.idle_wake_s)
                continue
            conn = self._conn
            if conn is not None:
                answer = conn.answered()
                if answer is not None:
                    self._failed(f"log stream {answer}", refused=conn.refused)
                    continue
                if conn.target != mode:
                    self._teardown("the device's log endpoint or key changed")
                    continue
                if not conn.proven and now - conn.opened >= self.settings.grace_s:
                    self._prove(conn)
            if not self._pending:
                if conn is not None and now - self._last_write >= self.settings.idle_s:
                    self._teardown(None)  # idle: the next line opens a new stream
                    continue
                wait = self.settings.idle_wake_s
                if conn is not None:
                    wait = min(wait, max(0.01, self._last_write + self.settings.idle_s - now))
                    if not conn.proven:
                        wait = min(wait, max(0.01, conn.opened + self.settings.grace_s - now))
                self._sleep(wait, for_work=True)
                continue
            if conn is None:
                if now < self._next_attempt:
                    self._sleep(min(self._next_attempt - now, self.settings.idle_wake_s))
                    continue
                conn = self._connect(mode)
                if conn is None:
                    continue
            due = self._last_write + self.settings.flush_interval_s
            if now < due:
                self._sleep(due - now)
                continue
            self._write(conn)
        self._final_flush()

    def _sleep(self, seconds: float, for_work: bool = False) -> None:
        with self._cond:
            if self.stopping or (for_work and self._pending):
                return
            self._cond.wait(seconds)

    def on_stop(self) -> None:
        self._room.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> bool:
        """Write what is pending and end the body (at most ``stop_deadline_s``); a connection
        still busy after that is cut."""
        self._stopping.set()
        self.on_stop()
        thread = self._thread
        if thread is None:
            return True
        thread.join(min(timeout, self.settings.stop_deadline_s + 0.5))
        if thread.is_alive():
            conn = self._conn
            if conn is not None:
                conn.abort()
            thread.join(max(0.5, timeout - self.settings.stop_deadline_s))
        return not thread.is_alive()

    def _refresh_mode(self, now: float) -> None:
        try:
            self._mode = self.target()
        except Exception:  # config unreadable for a moment: keep the last answer
            log.exception("Could not read the log stream's target")
        self._mode_at = now + self.settings.mode_check_s

    def _discard_pending(self) -> None:
        with self._cond:
            entries = list(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._dropped = 0
            self._dropping = False
            self._room.set()
            held = list(self._held_acks)  # behind every pending line
            self._held_acks.clear()
        for _payload, acks, _size, _count in entries:
            _settle(acks)
        _settle(held)

    # ------------------------------------------------------------------------------ connection
    def _ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            try:
                # The CA bundle requests uses (its certifi), so both cloud paths trust the same roots;
                # through requests, whose package already brings certifi on the device.
                from requests.certs import where

                self._context = ssl.create_default_context(cafile=where())
            except ImportError:
                self._context = ssl.create_default_context()
        return self._context

    def _connect(self, target: StreamTarget) -> _Connection | None:
        context = self._ssl_context() if target.url.startswith("https:") else None
        try:
            conn = _Connection(target, self.settings, self.user_agent, context)
        except (OSError, http.client.HTTPException) as exc:
            self._failed(f"log stream could not connect ({exc})")
            return None
        self._conn = conn
        self.connections += 1
        if self._outage:  # the cloud is back: the gap is announced where it is, then no more drops
            with self._cond:
                self._outage = False
                self._announce_gap()
        self._last_write = time.monotonic()
        log.debug("Log stream connected to %s", target.url)
        return conn

    def _failed(self, reason: str, refused: bool = False) -> None:
        """Tear down after a failure. ``refused``: the server answered 4xx, which it does before it
        reads the body (cloud-api.md §5.1), so what the connection wrote during its grace goes back in
        front. Any other end (5xx, a close) may come after lines were stored: nothing is requeued."""
        conn = self._conn
        self._conn = None
        self._outage = True
        self._room.set()  # unreachable: the sources go on, and what does not fit is dropped and counted
        delay = self._backoff.next()
        self._next_attempt = time.monotonic() + delay
        log.warning("Cloud %s; reconnecting in %.1f s", reason, delay)
        if conn is None:
            return
        conn.abort()
        if refused and not conn.proven and conn.unconfirmed:
            with self._cond:
                for raw, acks, count in reversed(conn.unconfirmed):
                    self._pending.appendleft((raw, acks, len(raw), count))
                    self._pending_bytes += len(raw)
        while conn.unconfirmed:
            self._confirm(conn)

    def _prove(self, conn: _Connection) -> None:
        """The connection stood its grace without an answer: the failure count resets, and what it
        wrote meanwhile counts as sent."""
        conn.proven = True
        self._backoff.reset()
        while conn.unconfirmed:
            self._confirm(conn)

    def _confirm(self, conn: _Connection) -> None:
        raw, acks, _count = conn.unconfirmed.popleft()
        conn.unconfirmed_bytes -= len(raw)
        _settle(acks)

    def _teardown(self, reason: str | None, timeout: float | None = None) -> None:
        """End the stream properly (idle, stop, a new target): the server stores every line and says 201."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        answer = conn.end(self.settings.end_timeout_s if timeout is None else timeout)
        conn.abort()
        if "answered 201" in answer:
            while conn.unconfirmed:
                self._confirm(conn)
            log.debug("Log stream ended%s: %s", f" ({reason})" if reason else "", answer)
        elif conn.refused and conn.unconfirmed and not conn.proven:
            self._conn = conn
            self._failed(f"log stream {answer} at its end", refused=True)
        else:
            while conn.unconfirmed:
                self._confirm(conn)
            log.info("Log stream ended%s: %s", f" ({reason})" if reason else "", answer)

    # ------------------------------------------------------------------------------ writing
    def _write(self, conn: _Connection) -> None:
        """Write everything pending as one sync-flushed chunk; on failure it stays pending."""
        with self._cond:
            batch = list(self._pending)
        parts: list[bytes] = []
        records: list[dict[str, Any]] = []
        acks: list[Callable[[], None]] = []
        lines = 0
        encode_many = self._codec.encode_many
        for payload, entry_acks, _size, count in batch:
            if isinstance(payload, bytes):  # a codec batch (_batch_entry), or requeued
                if records:
                    parts.append(encode_many(records))
                    records = []
                parts.append(payload)
            else:
                records.append(payload)
            acks.extend(entry_acks)
            lines += count
        if records:
            parts.append(encode_many(records))
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            conn.write(raw)
        except OSError as exc:
            answer = conn._read_answer() if not isinstance(exc, TimeoutError) else None
            self._failed(f"log stream write failed ({type(exc).__name__}{'; ' + answer if answer else ''})",
                         refused=conn.refused)
            return
        self._last_write = time.monotonic()
        with self._cond:
            size = 0
            for _ in range(len(batch)):
                size += self._pending.popleft()[2]
            self._pending_bytes -= size
            if self._dropping and self._pending_bytes <= self.settings.max_pending_bytes // 2:
                self._announce_gap()
            if self._pending_bytes < self.settings.max_pending_bytes:
                self._room.set()
        self.sent += lines
        if self.metrics is not None:
            self.metrics.inc("log_lines_sent", lines, "cloud")
        if conn.proven:
            _settle(acks)
            return
        conn.unconfirmed.append((raw, tuple(acks), lines))
        conn.unconfirmed_bytes += len(raw)
        while conn.unconfirmed_bytes > self.settings.max_unconfirmed_bytes and len(conn.unconfirmed) > 1:
            self._confirm(conn)

    def _announce_gap(self) -> None:
        """Stop dropping; queue the Suppressed line for what was dropped (under ``_cond``)."""
        self._dropping = False
        if self._dropped:
            warning = _suppressed(self._dropped)
            self._dropped = 0
            # The gap's place in the order: the dropped lines' acks go with their count.
            held = tuple(self._held_acks)
            self._held_acks.clear()
            self._pending.append((warning, held, len(warning["message"]) + RECORD_OVERHEAD, 1))
            self._pending_bytes += self._pending[-1][2]

    def _final_flush(self) -> None:
        """At stop: what is pending goes out on a live connection, then the body ends; lines that
        cannot go out in time stay unacknowledged (a source re-reads them after a restart)."""
        conn = self._conn
        if conn is None:
            return
        deadline = time.monotonic() + self.settings.stop_deadline_s
        if conn.answered() is None and self._pending:
            conn.sock.settimeout(max(0.1, deadline - time.monotonic()))
            self._write(conn)
        if self._conn is conn:
            self._teardown("stopping", timeout=max(0.1, deadline - time.monotonic()))

"""An in-process publish/subscribe hub for log messages (the local log backend, spec §8.6).

The log pipeline publishes every message; each ``/v2/local/logs`` stream subscribes. Publishing never
blocks: each subscriber has a bounded queue, and a subscriber that falls behind loses messages (counted,
then announced with one warning line, as the cloud backend does under load, spec §8.3) rather than
slowing the pipeline or growing memory. A subscription is removed when its stream closes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 1000

Message = Mapping[str, Any]


class LogBackend(Protocol):
    """A consumer of every published message besides the local streams (the cloud log stream,
    spec §8.3). ``log`` is called on the publisher's thread and must never block: a backend
    buffers (bounded) and sends on a thread of its own.

    Optional, for speed: ``log_many(messages)`` takes a whole batch (a list, in order, all of one
    container or one system message; the backend may keep the list), and is called instead of
    ``log`` for each message when the backend has it.

    Delivery acknowledgement (the sources' resume positions, supervisor/logs/positions.py): a
    backend with the attribute ``acknowledges = True`` calls the zero-argument callable under the
    key ``"_ack"`` of a message exactly once, and every backend calls them in the order the
    messages came (a position counts the lines acknowledged within its margin, so an ack that comes
    early, late out of order, or never, makes a restart skip or repeat lines). Only the last
    message of a batch carries ``_ack``; it stands for the whole batch. When:

    * sent: once the message's bytes were written to the connection and sync-flushed (for the
      cloud, on a connection that stood its grace);
    * dropped under load (counted): when the ``Suppressed <N>`` line that counts it is sent, which
      comes after every line accepted before the gap and before every line after it; never at the
      drop (the source would move past lines still pending, and a restart then skips them);
    * not for this backend (a line without ``serviceId`` for the cloud): with the line before it;
    * the backend switched off (local mode, ``SUPERVISOR_LOG_CONTROL`` off): what it holds is
      discarded and acknowledged promptly (the cloud stream: within 0.25 s), so positions advance;
    * held for later (a managed device not provisioned yet): once sent;
    * still pending, or dropped and not yet announced, at stop: never (a restart re-reads it).

    So no line is skipped by a restart while it was still pending, positions always advance once
    the backend sends again or is off, and the lines lost are exactly the announced ``Suppressed``
    counts. A backend may forget (never call early) the acks of a very long overflow beyond its
    bound: the cost is a few repeated lines after a restart, never a skipped one. Keys starting
    with ``_`` are never sent anywhere. With no acknowledging backend, publishing is delivery.

    Optional, backpressure: ``wait_for_room(timeout) -> bool``, True once the backend can take more
    (waiting at most ``timeout`` seconds). The cloud stream says False while its buffer is full and
    the cloud reachable (supervisor/logs/cloud.py), so a source that can re-read pauses instead of
    the backend dropping; see :meth:`LogHub.wait_for_room`.
    """

    def log(self, message: Message) -> None: ...


class Subscription:
    """One subscriber's queue of batches, bounded in messages. :meth:`get` / :meth:`get_batch` wait
    for what comes next; :meth:`close` unsubscribes."""

    def __init__(self, hub: LogHub, size: int) -> None:
        self._hub = hub
        self._queue: collections.deque[Sequence[Message]] = collections.deque()
        self._queued = 0  # messages in _queue
        self._size = size
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def _offer(self, batch: Sequence[Message]) -> int:
        """Queue a batch, as much of it as there is room for; the number of messages dropped."""
        with self._cond:
            room = self._size - self._queued
            if room <= 0:
                self.dropped += len(batch)
                return len(batch)
            dropped = 0
            if len(batch) > room:
                dropped = len(batch) - room
                batch = batch[:room]
                self.dropped += dropped
            self._queue.append(batch)
            self._queued += len(batch)
            self._cond.notify()
            return dropped

    def get_batch(self, timeout: float) -> Sequence[Message] | None:
        """The next batch (messages of one container, or one system message), or None after
        ``timeout`` seconds or once closed. A warning about messages dropped comes alone."""
        with self._cond:
            if not self._queue and not self.closed:
                self._cond.wait(timeout)
            if self.dropped and self._queued < self._size:
                count, self.dropped = self.dropped, 0
                return ({"message": f"Warning: Suppressed {count} message(s) due to high load",
                         "isSystem": True, "isStdErr": True},)
            if not self._queue:
                return None
            batch = self._queue.popleft()
            self._queued -= len(batch)
            return batch

    def get(self, timeout: float) -> Message | None:
        """The next message, or None after ``timeout`` seconds or once closed."""
        batch = self.get_batch(timeout)
        if batch is None:
            return None
        if len(batch) > 1:
            with self._cond:  # the rest goes back to the front
                rest = batch[1:]
                self._queue.appendleft(rest)
                self._queued += len(rest)
        return batch[0]

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        self._hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class LogHub:
    """Fan-out of log messages to the current subscribers and backends."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE, metrics: Metrics | None = None) -> None:
        self._queue_size = queue_size
        self._metrics = metrics
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscription, ...] = ()
        self._backends: tuple[LogBackend, ...] = ()
        self._acknowledging = 0

    def add_backend(self, backend: LogBackend) -> None:
        """Hand every later message to the backend as well (see :class:`LogBackend`)."""
        with self._lock:
            self._backends = (*self._backends, backend)
            self._acknowledging = sum(1 for b in self._backends if getattr(b, "acknowledges", False))

    def remove_backend(self, backend: LogBackend) -> None:
        with self._lock:
            self._backends = tuple(b for b in self._backends if b is not backend)
            self._acknowledging = sum(1 for b in self._backends if getattr(b, "acknowledges", False))

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._queue_size)
        with self._lock:
            self._subscribers = (*self._subscribers, sub)
        return sub

    def publish(self, message: Message) -> None:
        """Deliver one message to every backend and every subscriber now; local subscribers only
        see what is published while they listen."""
        self.publish_many([dict(message)] if "_ack" in message else [message])

    def publish_many(self, messages: list[dict[str, Any]] | list[Message],
                     delivered: Callable[[], None] | None = None) -> None:
        """Deliver a batch (in order; one container's lines, or system messages). ``delivered`` is
        called once the batch counts as delivered: at once when no backend acknowledges, else when
        every acknowledging backend acknowledged it (the batch's last message gets ``_ack``)."""
        if not messages:
            return
        # Attributes are replaced, never changed in place: reading them needs no lock.
        subscribers, backends, acknowledging = self._subscribers, self._backends, self._acknowledging
        if delivered is not None and acknowledging:
            last = messages[-1]
            assert isinstance(last, dict)
            last["_ack"] = delivered if acknowledging == 1 else _countdown(acknowledging, delivered)
        for backend in backends:
            try:
                log_many = getattr(backend, "log_many", None)
                if log_many is not None:
                    log_many(messages)
                else:
                    for message in messages:
                        backend.log(message)
            except Exception:  # a backend's bug must not cut the local stream or the publisher
                log.exception("Log backend %r failed", backend)
        count = len(messages)
        dropped = sum(sub._offer(messages) for sub in subscribers)
        if delivered is not None and not acknowledging:
            delivered()
        metrics = self._metrics
        if metrics is not None:
            metrics.inc("log_lines_received", count)
            sent = count * len(subscribers) - dropped
            if sent:
                metrics.inc("log_lines_sent", sent, "local")
            if dropped:
                metrics.inc("log_lines_dropped", dropped, "local")

    def wait_for_room(self, timeout: float) -> bool:
        """True once every backend can take more, False after about ``timeout`` seconds. For
        sources whose lines stay readable where they come from (the engine's log): they pause while
        this is False rather than have the cloud backend drop. The local streams never push back
        (their queues stay bounded and lossy, docs/API.md)."""
        deadline = time.monotonic() + timeout
        for backend in self._backends:
            wait = getattr(backend, "wait_for_room", None)
            if wait is not None and not wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """Wake and close every subscriber (at shutdown)."""
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.close()


def _countdown(count: int, done: Callable[[], None]) -> Callable[[], None]:
    """A callable that calls ``done`` on its ``count``-th call (several acknowledging backends)."""
    left = [count]
    lock = threading.Lock()

    def ack() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            done()

    return ack

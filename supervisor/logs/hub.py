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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 1000

Message = Mapping[str, Any]


class LogBackend(Protocol):
    """A consumer of every published message besides the local streams (the cloud log stream,
    spec §8.3). ``log`` is called on the publisher's thread and must never block: a backend
    buffers (bounded) and sends on a thread of its own."""

    def log(self, message: Message) -> None: ...


class Subscription:
    """One subscriber's queue. :meth:`get` waits for the next message; :meth:`close` unsubscribes."""

    def __init__(self, hub: LogHub, size: int) -> None:
        self._hub = hub
        self._queue: collections.deque[Message] = collections.deque()
        self._size = size
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def _offer(self, message: Message) -> bool:
        """Queue a message; False when the queue was full and it was dropped."""
        with self._cond:
            if len(self._queue) >= self._size:
                self.dropped += 1
                return False
            self._queue.append(message)
            self._cond.notify()
            return True

    def get(self, timeout: float) -> Message | None:
        """The next message, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._queue and not self.closed:
                self._cond.wait(timeout)
            if self.dropped and len(self._queue) < self._size:
                count, self.dropped = self.dropped, 0
                return {"message": f"Warning: Suppressed {count} message(s) due to high load",
                        "isSystem": True, "isStdErr": True}
            return self._queue.popleft() if self._queue else None

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
    """Fan-out of log messages to the current subscribers."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE, metrics: Metrics | None = None) -> None:
        self._queue_size = queue_size
        self._metrics = metrics
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self._backends: tuple[LogBackend, ...] = ()

    def add_backend(self, backend: LogBackend) -> None:
        """Hand every later message to ``backend.log`` as well (see :class:`LogBackend`)."""
        with self._lock:
            self._backends = (*self._backends, backend)

    def remove_backend(self, backend: LogBackend) -> None:
        with self._lock:
            self._backends = tuple(b for b in self._backends if b is not backend)

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self._queue_size)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def publish(self, message: Message) -> None:
        """Deliver to every backend and every subscriber now; local subscribers only see what is
        published while they listen."""
        with self._lock:
            subscribers = list(self._subscribers)
            backends = self._backends
        for backend in backends:
            try:
                backend.log(message)
            except Exception:  # a backend's bug must not cut the local stream or the publisher
                log.exception("Log backend %r failed", backend)
        delivered = sum(1 for sub in subscribers if sub._offer(message))
        metrics = self._metrics
        if metrics is not None:
            metrics.inc("log_lines_received")
            if delivered:
                metrics.inc("log_lines_sent", delivered, "local")
            if delivered < len(subscribers):
                metrics.inc("log_lines_dropped", len(subscribers) - delivered, "local")

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

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

"""Resume positions of the engine log streams: where a restarted supervisor picks each stream up.

A position is ``(since_ms, skip)``: follow the container's log with ``since=<since_ms>`` (the engine
returns every line stamped at or after that millisecond, in the order of its log file) and drop the
first ``skip`` lines, which were delivered before. The engine compares nanoseconds, the codec gives
milliseconds rounded down; a line is returned exactly when its millisecond is ``>= since_ms``, so the
count is exact.

Why not simply "the last delivered timestamp": the engine stamps a line when it reads it, per stream,
and the parts of a line longer than 16 KiB all carry the first part's stamp; so the log file is not
in timestamp order (stdout and stderr cross by microseconds, a long line's tail comes after lines
stamped later). ``since_ms`` is therefore kept ``margin_ms`` behind the newest delivered stamp, and
``skip`` counts the delivered lines stamped at or after it: a line stamped up to ``margin_ms`` before
a line delivered earlier is still not skipped, nor delivered twice. (A line the engine holds back
longer than that, e.g. a 16 KiB piece whose end comes many seconds later, can be lost on a restart.)

:class:`Tracker` keeps the stamps of the lines within the margin (8 bytes a line, batches as
``array('q')``), and :class:`PositionStore` writes the positions of every container, atomically
(supervisor/atomic.py), at most once per ``interval_s`` and only when one changed. The source calls
:meth:`PositionStore.flush` as each batch is acknowledged, and a change held back by the interval is
written when it is due (:meth:`PositionStore.due_in`), so what a kill -9 makes the next run send again
is what was acknowledged within the last ``interval_s``: on a RAM filesystem (balenaOS's ``/tmp``, where
the runtime directory is) 5 ms, where a write costs microseconds and no flash (and a trickle of lines is
written line by line); on a disk a second, where a write per batch would wear an SD card
(docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path

from ..atomic import RAM_FILESYSTEMS, filesystem_type, remove_orphans, write_atomic

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MARGIN_MS", "PositionStore", "Tracker"]

DEFAULT_MARGIN_MS = 2000
#: Between two writes of the positions file on a disk (fsynced: an SD card's wear) ...
DEFAULT_INTERVAL_S = 1.0
#: ... and on a RAM filesystem (no flash): short, only so that a burst of acknowledgements (one a
#: source batch, tens in one cloud write) costs one write, not tens.
RAM_INTERVAL_S = 0.005
#: After a failed write (a full or read-only disk), the next attempt.
FAILED_RETRY_S = 1.0


def default_interval(path: Path) -> float:
    """:data:`RAM_INTERVAL_S` when ``path`` is on a RAM filesystem (tmpfs, ramfs), else
    :data:`DEFAULT_INTERVAL_S`."""
    return RAM_INTERVAL_S if filesystem_type(path) in RAM_FILESYSTEMS else DEFAULT_INTERVAL_S


class Tracker:
    """The position after the lines added so far (in the stream's order), for a stream that began at
    ``since_ms`` having skipped ``carry`` lines not added yet (a resumed stream, until they are
    replayed and added with ``replayed=True``)."""

    __slots__ = ("_since", "_carry", "_top", "_batches", "_lock", "_margin", "_changed")

    def __init__(self, since_ms: int = 0, carry: int = 0, margin_ms: int = DEFAULT_MARGIN_MS,
                 changed: Callable[[], None] | None = None) -> None:
        """``changed``: called after each :meth:`add` (the store's, to know there is something to write)."""
        self._changed = changed
        self._since = since_ms
        self._carry = carry
        self._top = since_ms
        self._margin = margin_ms
        self._batches: collections.deque[tuple[int, array]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, stamps: array, *, replayed: bool = False) -> None:
        """Lines delivered (or, with ``replayed``, lines of the carry seen again)."""
        if not stamps:
            return
        top = max(stamps)
        with self._lock:
            batches = self._batches
            batches.append((top, stamps))
            if top > self._top:
                self._top = top
            if replayed:
                self._carry = max(0, self._carry - len(stamps))
            if not self._carry:  # what no position needs any more: memory stays bounded
                floor = self._top - self._margin
                if batches[0][0] < floor:
                    self._since = max(self._since, floor)
                    while batches and batches[0][0] < self._since:
                        batches.popleft()
        if self._changed is not None:
            self._changed()

    def position(self) -> tuple[int, int]:
        """``(since_ms, skip)`` as of now; forgets stamps no longer needed."""
        with self._lock:
            since = self._since if self._carry else max(self._since, self._top - self._margin)
            batches = self._batches
            while batches and batches[0][0] < since:
                batches.popleft()
            skip = self._carry
            for top, stamps in batches:
                if top >= since:
                    skip += len(stamps) if min(stamps) >= since else sum(1 for t in stamps if t >= since)
            self._since = since
            return since, skip


class PositionStore:
    """The acknowledged position of each followed container, in one JSON file."""

    def __init__(self, path: Path, interval_s: float | None = None,
                 margin_ms: int = DEFAULT_MARGIN_MS) -> None:
        """``interval_s``: the least time between two writes (None: :func:`default_interval`)."""
        self.path = path
        self.interval_s = default_interval(path) if interval_s is None else interval_s
        self.margin_ms = margin_ms
        # At load, not only at the next write: unchanged positions are never written again.
        remove_orphans(path)
        self.existed = path.exists()
        self._trackers: dict[str, Tracker] = {}
        self._loaded: dict[str, tuple[int, int]] = {}
        self._written = ""
        self._last_write = 0.0
        #: A position changed since the last write (set without a lock: a flag, read and cleared by
        #: the flush, which clears it before it reads the positions).
        self._dirty = False
        self._failing = False
        self._lock = threading.Lock()
        #: One flush at a time (the source's thread and the backend's acknowledgements): two writers
        #: could otherwise rename an older text over a newer one.
        self._flush_lock = threading.Lock()
        if self.existed:
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                self._loaded = {str(cid): (int(pos[0]), int(pos[1])) for cid, pos in raw.items()}
            except (OSError, ValueError, TypeError, IndexError, AttributeError) as err:
                log.warning("Log positions in %s are unreadable (%s): streams without one start over",
                            path, err)

    def saved(self, container_id: str) -> tuple[int, int] | None:
        """The position a previous run stored for the container."""
        with self._lock:
            return self._loaded.get(container_id)

    def track(self, container_id: str, since_ms: int, carry: int) -> Tracker:
        """The tracker of acknowledged lines of a stream that starts now (replaces an older one)."""
        tracker = Tracker(since_ms, carry, self.margin_ms, changed=self._changed)
        with self._lock:
            self._trackers[container_id] = tracker
            self._loaded.pop(container_id, None)
        self._dirty = True
        return tracker

    def _changed(self) -> None:
        self._dirty = True

    def forget(self, container_id: str) -> None:
        with self._lock:
            self._trackers.pop(container_id, None)
            self._loaded.pop(container_id, None)
        self._dirty = True

    def retain(self, container_ids: set[str]) -> None:
        """Drop the positions of containers that no longer exist."""
        with self._lock:
            for cid in [c for c in self._loaded if c not in container_ids]:
                del self._loaded[cid]
            for cid in [c for c in self._trackers if c not in container_ids]:
                del self._trackers[cid]
        self._dirty = True

    def flush(self, force: bool = False) -> bool:
        """Write the positions if one changed and ``interval_s`` has passed (or ``force``); any thread.
        False when nothing was written (unchanged, or held back: see :meth:`due_in`)."""
        if not force and (not self._dirty or time.monotonic() - self._last_write < self.interval_s):
            return False
        with self._flush_lock:
            return self._flush()

    def due_in(self) -> float | None:
        """Seconds until a change held back by the interval is due to be written; None when there is
        none (the caller's thread waits that long at most, then calls :meth:`flush`)."""
        if not self._dirty:
            return None
        return max(0.0, self._last_write + self.interval_s - time.monotonic())

    def _flush(self) -> bool:
        now = time.monotonic()
        self._dirty = False  # before the positions are read: a change from now on sets it again
        with self._lock:
            positions = dict(self._loaded)
            trackers = list(self._trackers.items())
        for cid, tracker in trackers:
            positions[cid] = tracker.position()
        text = json.dumps({cid: list(pos) for cid, pos in sorted(positions.items())}, separators=(",", ":"))
        if text == self._written and self.existed:
            return False
        self._last_write = now
        try:
            write_atomic(self.path, text)
        except OSError as err:
            if not self._failing:  # once, not at every attempt
                log.warning("Could not store log positions in %s: %s", self.path, err)
            self._failing, self._dirty = True, True
            self._last_write = now + max(0.0, FAILED_RETRY_S - self.interval_s)  # tried again then
            return False
        self._written, self.existed, self._failing = text, True, False
        return True

"""The engine log source: every attached container's ``logs`` stream, followed on ONE thread (§8.1).

For engines whose containers log with the ``json-file`` or ``local`` driver (dev boards, a laptop),
the output is read back through ``GET /containers/<id>/logs?follow=1&stdout=1&stderr=1&timestamps=1
&since=<position>``. Each stream is a plain socket (supervisor/logs/engine_http.py); one thread
waits on all of them with ``selectors`` and, after each wake-up, gives the engine ``coalesce_s``
to send more before reading again: at 10,000 lines/s a read then carries tens of lines instead of
one, and everything after it (the codec's ``feed``, the hub, the backends) works per batch.

Bytes go through the compiled codec (:mod:`supervisor.logs.codec`; ``codec="python"`` or
``SUPERVISOR_LOG_CODEC=python`` selects the pure-Python twin, for the benchmark): demultiplexed,
split into lines (the engine's 16 KiB pieces joined again), timestamps parsed.

Positions (supervisor/logs/positions.py): each stream has two trackers, the lines published (for a
re-attach in this process, after ``die`` + ``start``) and the lines delivered (acknowledged by the
cloud backend, or published when no backend acknowledges), which are stored for the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Protocol

from .codec import load as load_codec
from .engine_http import EngineAddress, query
from .monitor import LogLevel
from .positions import PositionStore, Tracker

log = logging.getLogger(__name__)

__all__ = ["DockerLogSource", "DeliveringPublish"]

#: Reads stay below glibc's initial mmap threshold (128 KiB): a larger buffer, once freed, raises
#: the threshold and later buffers come from (and fragment) the heap: the RSS grows by megabytes.
READ_SIZE = 64 * 1024
#: Bytes read from one stream per round at most, so one chatty container cannot starve the others.
MAX_ROUND_BYTES = 1024 * 1024
COALESCE_S = 0.025
#: After a follow ended, the engine is given this long to finish writing the log before the
#: catch-up read (see ``_end``).
CATCH_UP_DELAY_S = 0.2
#: The longest the thread sleeps with nothing to read.
IDLE_WAKE_S = 1.0
#: While the backends push back, how long the thread waits before it looks at its commands again.
PAUSE_CHECK_S = 0.1
RETRY_MAX_S = 30.0
_stamp = itemgetter("timestamp")
#: A line stamped this much before the newest of its stream is taken as new, not a repeat (a clock
#: set back): the engine's repeats (the codec's RepeatFilter) go back milliseconds.
REPEAT_WINDOW_MS = 1000


class DeliveringPublish(Protocol):
    """Publish a batch; ``delivered()`` is called once it counts as delivered (acknowledged)."""

    def __call__(self, messages: list[dict[str, Any]],
                 delivered: Callable[[], None] | None = None) -> None: ...


@dataclass
class _Stream:
    container_id: str
    service_id: int
    level: LogLevel
    tty: bool
    since_ms: int
    skip: int
    skip_known: bool  # the skipped lines are in the trackers already (a re-attach in this process)
    published: Tracker
    delivered: Tracker
    sock: Any = None
    head: bytes = b""
    in_body: bool = False
    demuxer: Any = None
    follow: bool = True  # False: the one read to the end of the log after a follow ended
    restart: bool = False  # attached again while a stream was open: follow again once it ends
    retry_at: float = 0.0
    failures: int = 0
    pending: list[bytes] = field(default_factory=list)
    #: The codec's RepeatFilter: drops the engine's repeats of lines delivered already (see _deliver).
    repeats: Any = None


class DockerLogSource:
    """Follows attached containers' engine logs and publishes their lines (see module doc)."""

    def __init__(
        self,
        publish: DeliveringPublish,
        *,
        engine: EngineAddress,
        positions: PositionStore,
        codec: str | None = None,
        coalesce_s: float = COALESCE_S,
        max_line: int = 65536,
        room: Callable[[float], bool] | None = None,
    ) -> None:
        self._publish = publish
        #: Backpressure (LogHub.wait_for_room): while it says no, no stream is read; the lines wait
        #: in the engine's log, so pausing loses nothing (the cloud stream drops only in an outage).
        self._room = room
        self._engine = engine
        self._positions = positions
        self._codec = load_codec(codec)  # the twin with codec="python" (tests/bench/bench_logs.py)
        twin = self._codec.__name__.endswith("_codec_py")
        self.codec_name = "python" if twin else self._codec.IMPLEMENTATION
        self._coalesce_s = coalesce_s
        self._max_line = max_line
        self._lock = threading.Lock()
        self._commands: list[tuple[str, str, dict[str, Any]]] = []
        self._streams: dict[str, _Stream] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ LogSource
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="logs-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        else:  # never started: nothing else will release the selector and the wake pipe
            self._release()

    def attach(self, container_id: str, service_id: int, log_level: LogLevel, *, tty: bool = False,
               started_ms: int = 0) -> None:
        """Follow the container (again). ``started_ms``: where a container without a stored
        position starts (its ``State.StartedAt``; 0 for its whole log)."""
        self._command("attach", container_id, service_id=service_id, level=log_level, tty=tty,
                      started_ms=started_ms)

    def detach(self, container_id: str) -> None:
        self._command("detach", container_id)

    # ------------------------------------------------------------------ what the monitor reads
    def attached(self) -> dict[str, int]:
        with self._lock:
            return {cid: st.service_id for cid, st in self._streams.items()}

    def _command(self, kind: str, container_id: str, **args: Any) -> None:
        with self._lock:
            self._commands.append((kind, container_id, args))
        self._wake()

    def _wake(self) -> None:
        # Under the lock, and only while the pipe is open: once closed, its number may already be
        # another file's (the kernel hands out the lowest free one), which a write would corrupt.
        with self._lock, contextlib.suppress(BlockingIOError, OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    def _release(self) -> None:
        """Close the selector and the wake pipe, once."""
        with self._lock:
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
            if fds[0] < 0:
                return
            self._selector.close()
            for fd in fds:
                os.close(fd)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._run_commands()
                if self._room is not None and not self._room(0.0):
                    self._room(PAUSE_CHECK_S)  # bounded: commands and stop are seen meanwhile
                    self._positions.flush()
                    continue
                timeout = self._next_timeout()
                ready = self._selector.select(timeout)
                got_data = False
                for key, _ in ready:
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError, OSError):
                            os.read(self._wake_r, 4096)
                        continue
                    got_data |= self._read(key.data)
                self._publish_pending()
                self._retry_due()
                self._positions.flush()
                if got_data and self._coalesce_s:
                    self._stopping.wait(self._coalesce_s)  # let the engine send more: bigger batches
        except Exception:
            log.exception("The engine log source failed")
        finally:
            # An unterminated line is not flushed: it may be a piece of a longer one. It was not
            # delivered, so the next run reads it again, whole.
            for st in list(self._streams.values()):
                self._close(st)
            self._positions.flush(force=True)
            self._release()

    def _next_timeout(self) -> float:
        due = self._positions.due_in()
        timeout = IDLE_WAKE_S if due is None else min(due, IDLE_WAKE_S)
        now = time.monotonic()
        for st in self._streams.values():
            if st.sock is None and st.retry_at:
                timeout = min(timeout, max(0.0, st.retry_at - now))
        return timeout

    def _run_commands(self) -> None:
        with self._lock:
            commands, self._commands = self._commands, []
        for kind, cid, args in commands:
            if kind == "detach":
                st = self._streams.get(cid)
                if st is not None:
                    self._close(st)
                    self._finish(st)
                    with self._lock:
                        del self._streams[cid]
                self._positions.forget(cid)
                continue
            st = self._streams.get(cid)
            if st is not None:
                st.service_id, st.level, st.tty = args["service_id"], args["level"], args["tty"]
                # A start (after a die): an open follow of the run before may never end (the engine
                # keeps it on the old run's log): it is ended now, read to its end, then followed.
                if st.sock is None and not st.retry_at:  # ended: nothing under way
                    self._follow_again(st)
                elif st.follow and st.sock is not None:
                    st.restart = True
                    self._end(st)
                else:  # the catch-up read (or a retry) is under way: follow once it ends
                    st.restart = True
                continue
            saved = self._positions.saved(cid)
            since, skip = saved if saved is not None else (args["started_ms"], 0)
            st = _Stream(cid, args["service_id"], args["level"], args["tty"], since, skip, False,
                         published=Tracker(since, skip, self._positions.margin_ms),
                         delivered=self._positions.track(cid, since, skip),
                         repeats=self._codec.RepeatFilter(REPEAT_WINDOW_MS))
            with self._lock:
                self._streams[cid] = st
            self._open(st)

    def _follow_again(self, st: _Stream) -> None:
        """Follow a stream that ended again, from what was published (nothing twice, nothing left
        out)."""
        st.follow, st.restart = True, False
        self._reopen(st)

    def _reopen(self, st: _Stream) -> None:
        st.since_ms, st.skip = st.published.position()
        st.skip_known = True
        self._open(st)

    def _open(self, st: _Stream) -> None:
        since = f"{st.since_ms // 1000}.{st.since_ms % 1000:03d}000000" if st.since_ms > 0 else "0"
        path = f"/containers/{st.container_id}/logs" + query(
            follow=st.follow, stdout=True, stderr=True, timestamps=True, since=since)
        try:
            sock = self._engine.connect(10.0)
            sock.sendall(f"GET /v1.41{path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode("ascii"))
        except OSError as err:
            self._failed(st, f"could not follow its log: {err}")
            return
        sock.setblocking(False)
        st.sock, st.head, st.in_body, st.retry_at = sock, b"", False, 0.0
        st.demuxer = self._codec.Demuxer(st.service_id, multiplexed=not st.tty, timestamps=True,
                                         max_line=self._max_line)
        self._selector.register(sock, selectors.EVENT_READ, st)
        log.debug("Container %s: reading its log from %s (skip %d, follow %s)", st.container_id[:12], since,
                  st.skip, st.follow)

    def _failed(self, st: _Stream, why: str) -> None:
        st.failures += 1
        delay = min(2 ** (st.failures - 1), RETRY_MAX_S)
        if st.failures <= 3 or st.failures % 20 == 0:
            log.warning("Container %s: %s (retrying in %.0f s)", st.container_id[:12], why, delay)
        st.retry_at = time.monotonic() + delay

    def _retry_due(self) -> None:
        now = time.monotonic()
        for st in list(self._streams.values()):
            if st.sock is None and st.retry_at and st.retry_at <= now:
                st.retry_at = 0.0
                self._reopen(st)

    def _read(self, st: _Stream) -> bool:
        """Read what the stream has (bounded); False when nothing came."""
        total = 0
        ended = False
        while total < MAX_ROUND_BYTES:
            try:
                data = st.sock.recv(READ_SIZE)
            except BlockingIOError:
                break
            except OSError as err:
                log.warning("Container %s: log stream failed: %s", st.container_id[:12], err)
                ended = True
                break
            if not data:
                ended = True
                break
            total += len(data)
            if st.in_body:
                st.pending.append(data)
            else:
                self._head(st, data)
                if st.sock is None:
                    return total > 0
        if ended:
            self._end(st)
        return total > 0

    def _head(self, st: _Stream, data: bytes) -> None:
        st.head += data
        end = st.head.find(b"\r\n\r\n")
        if end < 0:
            if len(st.head) > 65536:
                self._close(st)
                self._failed(st, "the engine's answer has no end of headers")
            return
        head, body = st.head[:end], st.head[end + 4:]
        st.head = b""
        status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        if status != 200:
            self._close(st)
            if status == 404:  # the container is gone: its destroy event detaches it
                log.info("Container %s: no log to follow (%s)", st.container_id[:12],
                         body[:200].decode(errors="replace"))
                return
            self._failed(st, f"the engine answered {status}: {body[:200].decode(errors='replace')}")
            return
        st.in_body, st.failures = True, 0
        if body:
            st.pending.append(body)

    def _end(self, st: _Stream) -> None:
        """The engine ended the stream. A follow ends when the container stops, but the engine may
        end it before its last lines (a final line without newline is written last, and was seen
        missing): the log is read once more to its end, without follow, from what was published.
        That read's end is the end of the log: its unterminated line is a line. Then wait for a
        start (or follow at once if one came meanwhile)."""
        self._publish_stream(st)
        self._close(st)
        if st.follow:
            st.demuxer = None  # its unterminated line is read again, whole, by the catch-up
            st.follow = False
            st.retry_at = time.monotonic() + CATCH_UP_DELAY_S
            return
        self._finish(st)
        if st.restart:
            self._follow_again(st)

    def _close(self, st: _Stream) -> None:
        if st.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(st.sock)
            st.sock.close()
            st.sock = None

    def _finish(self, st: _Stream) -> None:
        """An ended stream's unterminated last lines (a partial final line is a line too)."""
        if st.demuxer is not None:
            nanos = array("i")
            self._deliver(st, st.demuxer.close(nanos), nanos)
            st.demuxer = None

    def _publish_pending(self) -> None:
        for st in self._streams.values():
            if st.pending:
                self._publish_stream(st)

    def _publish_stream(self, st: _Stream) -> None:
        if not st.pending or st.demuxer is None:
            st.pending.clear()
            return
        chunks, st.pending = st.pending, []
        nanos = array("i")  # the stamps' nanoseconds, which tell the engine's repeats (RepeatFilter)
        records: list[dict[str, Any]] = []
        try:
            for chunk in chunks:  # fed one by one: no joined copy (see READ_SIZE)
                records += st.demuxer.feed(chunk, nanos)
        except self._codec.LogStreamError as err:
            log.error("Container %s: %s; following it again", st.container_id[:12], err)
            self._deliver(st, records + err.records, nanos)
            self._close(st)
            st.demuxer = None
            self._reopen(st)
            return
        self._deliver(st, records, nanos)

    def _deliver(self, st: _Stream, records: list[dict[str, Any]], nanos: array) -> None:
        """Publish a batch of one stream (``nanos``: what the codec collected for it): the replayed
        head skipped, the engine's repeats dropped, stderr only for ``err``."""
        if not records:
            return
        if st.skip:
            n = min(st.skip, len(records))
            st.skip -= n
            if not st.skip_known:
                stamps = array("q", map(_stamp, records[:n]))
                st.published.add(stamps, replayed=True)
                st.delivered.add(stamps, replayed=True)
            records, nanos = records[n:], nanos[n:]
            if not records:
                return
        # The engine's repeats out, in the codec (one C pass); the stamps of what is left.
        records, stamps = st.repeats.filter(records, nanos)
        if not records:
            return
        st.published.add(stamps)
        if st.level == "err":
            records = [r for r in records if r["isStdErr"]]
        delivered, positions, thread = st.delivered, self._positions, self._thread

        def acknowledged() -> None:
            delivered.add(stamps)
            # At once, what a kill -9 would repeat; held back by the interval (a burst of acks), the
            # thread writes it when due: woken, since a backend's thread acknowledges, not ours.
            held = not positions.flush() and positions.due_in() is not None
            if held and threading.current_thread() is not thread:
                self._wake()

        if records:
            self._publish(records, acknowledged)
        else:
            acknowledged()


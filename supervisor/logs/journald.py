"""The journald log source (spec §8.1): ONE ``journalctl`` process follows the engine's and the host
units' journal, for containers that log with the engine's ``journald`` driver (balenaOS).

Arguments in the §8.4 order: ``-a --follow -S "<since>" -o json _SYSTEMD_UNIT=balena.service
_SYSTEMD_UNIT=os-power-mode.service ...`` (the engine and the five host units). Each stdout line is a
JSON row:

* ``CONTAINER_ID_FULL`` of an attached container: a container message (§8.2) with the container's
  ``serviceId``, ``isStdErr`` = ``PRIORITY <= 3`` (with ``BALENA_LOGS_LEVEL=err`` only those), rows of
  the supervisor's own container (``CONTAINER_NAME`` ``balena_supervisor``/``resin_supervisor``) and of
  containers not attached skipped;
* ``_SYSTEMD_UNIT`` one of the five host units: a system message;
* ``MESSAGE`` a string, or an array of byte values (journald's form for text that is not valid UTF-8
  or holds control characters), decoded as UTF-8 with replacement characters (the reference maps each
  byte to one character, which garbles every non-ASCII character); any other type is dropped;
* ``timestamp`` = ``floor(__REALTIME_TIMESTAMP / 1000)``.

When ``journalctl`` exits it is started again after ``min(2^attempts x 5 s, 15 min)``; the attempt count
goes back to 0 once a process is running, and grows only while it cannot be started. A restarted
``journalctl`` begins at the second of the last row read (``-S`` has whole seconds): rows of that second
already read (same ``__REALTIME_TIMESTAMP`` and ``__CURSOR``) and older ones are skipped, so nothing is
published twice.

Positions across a supervisor restart: the position of the last *delivered* row (acknowledged through the
hub's ``delivered`` callback, supervisor/logs/hub.py) is stored in ``position_path``
(``<runtime dir>/journald-position.json``, next to the engine source's ``log-positions.json``; tmpfs on
balenaOS, as the journal there) with :func:`supervisor.atomic.write_atomic`, at most once per
``position_interval_s`` and only when it changed, and once at stop; the interval is the engine source's
(supervisor/logs/positions.py ``default_interval``): 0 on a RAM filesystem (balenaOS's ``/tmp``), where
the position is written as each batch is acknowledged, 1 s on a disk. Shape::

    {"realtime_us": <__REALTIME_TIMESTAMP, µs>, "cursors": [<__CURSOR of each row read at that µs>],
     "attached": {"<container id>": [<serviceId>, "all" | "err"]}}

A read's position counts as delivered when its last batch is acknowledged (acks come in order), or at once
when nothing is pending. A new source resumes from it exactly as a respawned ``journalctl`` does: ``-S`` at
that second, older rows and the stored cursors skipped. The previous run's attachments apply to rows older
than ``since_ms`` (read before the monitor attaches the containers again). No file: ``since_ms``; an
unreadable one: ``since_ms`` and one warning. After a kill -9, rows read but not acknowledged, and rows
acknowledged after the last write, are published again; none is skipped (docs/ARCHITECTURE.md).

Push-back: ``room`` (``LogHub.wait_for_room``) False stops reading ``journalctl``'s stdout (looking at stop
every 0.1 s); ``journalctl`` blocks on the full pipe and the rows wait in the journal, as the engine
source's lines wait in the engine's log.

``since`` is given as UTC with an explicit zone (``YYYY-MM-DD HH:MM:SS UTC``): the reference's bare form
is read in the host's local zone, which is UTC on balenaOS but not on every dev board.

The binary and extra leading arguments (``--file <path>``, ``-D <dir>``, ``-m``) are injectable: the tests
follow a real journal file written by ``systemd-journal-remote``. The source matches the log monitor's
``LogSource`` (supervisor/logs/monitor.py): ``start``, ``stop``, ``attach``, ``detach``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from ..atomic import remove_orphans, write_atomic
from .positions import default_interval

log = logging.getLogger(__name__)

__all__ = ["ENGINE_UNIT", "HOST_UNITS", "POSITION_FILE", "JournaldLogSource", "format_since", "journal_args",
           "message_text"]

ENGINE_UNIT = "balena.service"
#: Host units whose rows are system messages (§8.1).
HOST_UNITS = (
    "os-power-mode.service",
    "os-fan-profile.service",
    "nvpmodel.service",
    "jetson-qspi-manager.service",
    "os-update.service",
)
SUPERVISOR_CONTAINERS = frozenset({"balena_supervisor", "resin_supervisor"})
RESPAWN_MIN_S = 5.0
RESPAWN_MAX_S = 15 * 60.0
READ_SIZE = 256 * 1024
#: Longest row kept while waiting for its newline (journald's own limit on a field is 64 KiB by
#: default, its JSON form up to ~6x that); a longer one is dropped whole.
MAX_ROW = 4 * 1024 * 1024
#: The stored resume position's name in the runtime directory (next to the engine's log-positions.json).
POSITION_FILE = "journald-position.json"
#: While the backends push back, how long the thread waits before it looks at stop again.
PAUSE_CHECK_S = 0.1
#: How long the thread waits for journalctl's output before it looks at stop and the position again.
SELECT_S = 0.5

LogLevel = Literal["all", "err"]


def format_since(ms: int) -> str:
    """``YYYY-MM-DD HH:MM:SS UTC`` of an epoch in ms (whole seconds, rounded down)."""
    return datetime.fromtimestamp(ms // 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def journal_args(since_ms: int, units: Iterable[str] = (ENGINE_UNIT, *HOST_UNITS)) -> list[str]:
    """The monitor's arguments in the §8.4 order: ``-a --follow -S <since> -o json <filters>``."""
    return ["-a", "--follow", "-S", format_since(since_ms), "-o", "json",
            *(f"_SYSTEMD_UNIT={unit}" for unit in units)]


def message_text(value: Any) -> str | None:
    """``MESSAGE`` as text: a string, or an array of byte values; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in value):
        return bytes(value).decode("utf-8", "replace")
    return None


#: A resume position: the realtime (µs) of the newest row up to which everything is delivered, and the
#: ``__CURSOR`` of every row read at that instant (rows can share a microsecond).
Position = tuple[int, tuple[str, ...]]
Attached = dict[str, tuple[int, LogLevel]]


class JournaldLogSource:
    """Follows the journal with one ``journalctl`` and publishes attached containers' rows and the host
    units' rows (see the module doc).

    ``publish(messages, delivered)`` takes one batch (one container's rows, or system rows, in order);
    ``delivered`` is called once the batch counts as delivered (the hub's acknowledgement, in order),
    which moves :attr:`delivered_ms` and the stored position. ``since_ms``: where the first
    ``journalctl`` begins when there is no stored position (the supervisor container's
    ``State.FinishedAt`` or the process start, §8.1; default now). ``room(timeout) -> bool``:
    ``LogHub.wait_for_room``, no reading while it says False. ``position_path``: the stored
    position (None: kept in memory only).
    """

    def __init__(
        self,
        publish: Callable[..., None],
        *,
        since_ms: int | None = None,
        journalctl: str | None = None,
        extra_args: Sequence[str] = (),
        units: Sequence[str] = (ENGINE_UNIT, *HOST_UNITS),
        respawn_min_s: float = RESPAWN_MIN_S,
        respawn_max_s: float = RESPAWN_MAX_S,
        room: Callable[[float], bool] | None = None,
        position_path: Path | None = None,
        position_interval_s: float | None = None,
    ) -> None:
        self._publish = publish
        self._journalctl = journalctl
        self._extra_args = list(extra_args)
        self._units = tuple(units)
        self._host_units = frozenset(u for u in self._units if u != ENGINE_UNIT)
        self._respawn_min_s = respawn_min_s
        self._respawn_max_s = respawn_max_s
        #: Backpressure (LogHub.wait_for_room): while it says no, journalctl's output is not read; it
        #: then blocks on the full pipe and the rows wait in the journal, so pausing loses nothing.
        self._room = room
        self._since_ms = int(time.time() * 1000) if since_ms is None else since_ms
        self._lock = threading.Lock()
        self._attached: Attached = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # The newest row read: its realtime (µs) and the cursors of the rows read at that instant.
        self._last_us: int | None = None
        self._last_cursors: set[str] = set()
        # Where the running journalctl resumes: older rows, and rows of that instant already read,
        # are skipped until the first newer row (-S has whole seconds).
        self._resume_us: int | None = self._since_ms * 1000
        self._resume_cursors: frozenset[str] = frozenset()
        self.delivered_ms: int | None = None
        #: journalctl processes started (tests watch a respawn through it).
        self.spawns = 0
        # Delivery positions (under _pos_lock): after the rows read so far, and after the rows delivered;
        # _outstanding counts the batches published and not acknowledged yet.
        self._pos_lock = threading.Lock()
        self._read_pos: Position = (self._since_ms * 1000, ())
        self._delivered_pos: Position = self._read_pos
        self._outstanding = 0
        # The stored position (under _flush_lock): the text last written, and when.
        self._position_path = position_path
        if position_interval_s is None:
            position_interval_s = default_interval(position_path) if position_path is not None else 1.0
        self._position_interval_s = position_interval_s
        self._flush_lock = threading.Lock()
        self._written: str | None = None
        self._last_write = 0.0
        self._write_failed = False
        #: Position files written (tests check that an unchanged position is not written again).
        self.position_writes = 0
        # The previous run's attachments, for the rows it had not delivered (read before the monitor
        # attaches the containers again): used for rows older than since_ms only.
        self._restored: Attached = {}
        stored = self._load()
        if stored is not None:
            position, self._restored = stored
            self._last_us, self._last_cursors = position[0], set(position[1])
            self._resume_us, self._resume_cursors = position[0], frozenset(position[1])
            self._read_pos = self._delivered_pos = position

    # ------------------------------------------------------------------ LogSource
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="logs-journald", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread and journalctl, then store the position of what was delivered (acks that
        came while the thread ended included)."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()  # the thread sees the end of its output, reaps the process and ends
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._flush(force=True)

    def attach(self, container_id: str, service_id: int, log_level: LogLevel = "all", **_: Any) -> None:
        """Publish the container's rows from now on (again: only ``service_id``/``log_level`` change)."""
        with self._lock:
            self._attached[container_id] = (service_id, log_level)

    def detach(self, container_id: str) -> None:
        with self._lock:
            self._attached.pop(container_id, None)
            self._restored.pop(container_id, None)

    @property
    def pid(self) -> int | None:
        """The running ``journalctl``'s pid (None between processes)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def args(self) -> list[str]:
        """The command line of the next ``journalctl``: from the last row read (or the stored
        position), else ``since_ms``."""
        since = self._since_ms if self._last_us is None else self._last_us // 1000
        binary = self._journalctl or shutil.which("journalctl") or "journalctl"
        return [binary, *self._extra_args, *journal_args(since, self._units)]

    # ------------------------------------------------------------------ the stored position
    def _load(self) -> tuple[Position, Attached] | None:
        """The position a previous run stored; None when there is none or it is unreadable (one
        warning: the source then starts at ``since_ms``)."""
        path = self._position_path
        if path is None:
            return None
        remove_orphans(path)  # at load: an unchanged position is never written again
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("Could not read the journal position in %s (%s): reading the journal from %s",
                        path, err, format_since(self._since_ms))
            return None
        try:
            text = data.decode("utf-8")
            raw = json.loads(text)
            realtime, cursors, attached = raw["realtime_us"], raw["cursors"], raw["attached"]
            if type(realtime) is not int or realtime < 0:
                raise ValueError(f"realtime_us {realtime!r}")
            if not isinstance(cursors, list) or not all(isinstance(c, str) for c in cursors):
                raise ValueError(f"cursors {cursors!r:.80}")
            restored: Attached = {}
            for cid, (service_id, level) in attached.items():
                if type(service_id) is not int or level not in ("all", "err"):
                    raise ValueError(f"attached {cid!r:.20}")
                restored[str(cid)] = (service_id, level)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            log.warning("The journal position in %s is unreadable (%s): reading the journal from %s",
                        path, err, format_since(self._since_ms))
            return None
        self._written = text
        return (realtime, tuple(cursors)), restored

    def _flush(self, force: bool = False) -> None:
        """Store the delivered position if it changed, at most once per interval (or ``force``).
        Shape: ``{"realtime_us": int, "cursors": [str, ...], "attached": {cid: [serviceId, level]}}``."""
        path = self._position_path
        if path is None:
            return
        now = time.monotonic()
        if not force and now - self._last_write < self._position_interval_s:
            return
        with self._flush_lock:
            with self._pos_lock:
                realtime, cursors = self._delivered_pos
            with self._lock:
                attached = {**self._restored, **self._attached}
            text = json.dumps({"realtime_us": realtime, "cursors": list(cursors),
                               "attached": {cid: list(v) for cid, v in sorted(attached.items())}},
                              separators=(",", ":"))
            if text == self._written:
                return
            self._last_write = now
            try:
                if write_atomic(path, text):
                    self.position_writes += 1
            except OSError as err:
                if not self._write_failed:
                    log.warning("Could not store the journal position in %s: %s", path, err)
                self._write_failed = True
                return
            self._written, self._write_failed = text, False

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        attempts = 0
        while not self._stopping.is_set():
            try:
                proc = subprocess.Popen(self.args(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL)
            except OSError as exc:
                delay = min(self._respawn_min_s * 2 ** attempts, self._respawn_max_s)
                attempts += 1
                log.warning("Could not start journalctl (%s); trying again in %.0f s", exc, delay)
                self._wait(delay)
                continue
            attempts = 0  # the pipeline started (§8.1)
            if self._last_us is not None:
                self._resume_us, self._resume_cursors = self._last_us, frozenset(self._last_cursors)
            self._proc = proc
            self.spawns += 1
            try:
                self._follow(proc)
            except Exception:  # a row this reader cannot handle must not end log collection
                log.exception("journald log source failed")
            finally:
                self._kill()
            if not self._stopping.is_set():
                log.info("journalctl exited (%s); following again in %.0f s", proc.returncode,
                         self._respawn_min_s)
                self._wait(self._respawn_min_s)

    def _wait(self, seconds: float) -> None:
        """Wait ``seconds`` or until stop, storing the position meanwhile (acks still come)."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stopping.wait(min(left, max(self._position_interval_s, PAUSE_CHECK_S)))
            self._flush()

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def _follow(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        partial = b""
        room = self._room
        while not self._stopping.is_set():
            self._flush()
            if room is not None and not room(0.0):
                # Pushed back: journalctl blocks on the full pipe, the rows wait in the journal.
                # Bounded, so stop is seen within PAUSE_CHECK_S (also when room() does not wait).
                began = time.monotonic()
                if not room(PAUSE_CHECK_S):
                    self._stopping.wait(max(0.0, PAUSE_CHECK_S - (time.monotonic() - began)))
                continue
            readable, _, _ = select.select([fd], [], [], SELECT_S)
            if not readable:
                continue
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                return
            if not data:
                return
            *rows, partial = (partial + data).split(b"\n")
            if len(partial) > MAX_ROW:
                log.warning("Dropped a journal row longer than %d bytes", MAX_ROW)
                partial = b""
            self._handle(rows)

    def _handle(self, rows: list[bytes]) -> None:
        """Turn rows into batches, per container and for the host units, in order, and publish them.
        The position after these rows is delivered once the last batch is (acks come in order), or at
        once when nothing is outstanding."""
        with self._lock:
            attached = dict(self._attached)
            restored = dict(self._restored) if self._restored else None
        restored_until = self._since_ms * 1000
        batches: dict[str | None, list[dict[str, Any]]] = {}
        for raw in rows:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError:
                continue  # parse errors are ignored (§8.1)
            if not isinstance(row, dict):
                continue
            try:
                realtime = int(row["__REALTIME_TIMESTAMP"])
            except (KeyError, TypeError, ValueError):
                continue
            if not self._new(realtime, str(row.get("__CURSOR", ""))):
                continue
            message = self._message(row, realtime, attached,
                                    restored if restored and realtime < restored_until else None)
            if message is None:
                continue
            key = row.get("CONTAINER_ID_FULL") if "serviceId" in message else None
            batches.setdefault(key, []).append(message)
        position = None if self._last_us is None else (self._last_us, tuple(sorted(self._last_cursors)))
        if restored and position is not None and position[0] >= restored_until:
            with self._lock:  # the rows of the previous run's time are read: the monitor's attachments rule
                self._restored.clear()
        todo = list(batches.values())
        with self._pos_lock:
            if position is not None:
                self._read_pos = position
            self._outstanding += len(todo)
            if not self._outstanding:
                self._delivered_pos = self._read_pos
        for i, batch in enumerate(todo):
            after = position if i == len(todo) - 1 else None
            self._publish(batch, self._delivered(max(m["timestamp"] for m in batch), after))

    def _new(self, realtime: int, cursor: str) -> bool:
        """Whether a row was not read before (a restarted journalctl, or a resumed run, re-reads the
        second of its position)."""
        resume = self._resume_us
        if resume is not None:
            if realtime < resume or (realtime == resume and cursor in self._resume_cursors):
                return False
            if realtime > resume:
                self._resume_us = None
        last = self._last_us
        if last is None or realtime > last:
            self._last_us = realtime
            self._last_cursors = {cursor}
        elif realtime == last:
            self._last_cursors.add(cursor)
        return True

    def _message(self, row: dict[str, Any], realtime: int, attached: Attached,
                 restored: Attached | None = None) -> dict[str, Any] | None:
        text = message_text(row.get("MESSAGE"))
        if text is None:
            return None
        try:
            stderr = int(row.get("PRIORITY", 6)) <= 3
        except (TypeError, ValueError):
            stderr = False
        timestamp = realtime // 1000
        container = row.get("CONTAINER_ID_FULL")
        if container:
            if row.get("CONTAINER_NAME") in SUPERVISOR_CONTAINERS:
                return None
            found = attached.get(container)
            if found is None and restored is not None:
                found = restored.get(container)
            if found is None:
                return None
            service_id, level = found
            if level == "err" and not stderr:
                return None
            return {"message": text, "isStdErr": stderr, "timestamp": timestamp, "serviceId": service_id}
        if row.get("_SYSTEMD_UNIT") in self._host_units:
            return {"message": text, "isSystem": True, "isStdErr": stderr, "timestamp": timestamp}
        return None

    def _delivered(self, timestamp_ms: int, position: Position | None) -> Callable[[], None]:
        """A batch's acknowledgement; ``position`` is the one after its rows when it is the last batch
        of its read (earlier batches of that read only count down)."""
        def delivered() -> None:
            with self._pos_lock:
                if self.delivered_ms is None or timestamp_ms > self.delivered_ms:
                    self.delivered_ms = timestamp_ms
                self._outstanding = max(0, self._outstanding - 1)
                if not self._outstanding:
                    self._delivered_pos = self._read_pos
                elif position is not None:
                    self._delivered_pos = position
            self._flush()  # at once (at most every interval): what a kill -9 repeats

        return delivered

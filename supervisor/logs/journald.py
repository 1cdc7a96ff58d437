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
from typing import Any, Literal

log = logging.getLogger(__name__)

__all__ = ["ENGINE_UNIT", "HOST_UNITS", "JournaldLogSource", "format_since", "journal_args", "message_text"]

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


class JournaldLogSource:
    """Follows the journal with one ``journalctl`` and publishes attached containers' rows and the host
    units' rows (see the module doc).

    ``publish(messages, delivered)`` takes one batch (one container's rows, or system rows, in order);
    ``delivered`` is called once the batch counts as delivered (the hub's acknowledgement), which
    moves :attr:`delivered_ms`. ``since_ms``: where the first ``journalctl`` begins (the supervisor
    container's ``State.FinishedAt`` or the process start, §8.1; default now).
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
    ) -> None:
        self._publish = publish
        self._journalctl = journalctl
        self._extra_args = list(extra_args)
        self._units = tuple(units)
        self._host_units = frozenset(u for u in self._units if u != ENGINE_UNIT)
        self._respawn_min_s = respawn_min_s
        self._respawn_max_s = respawn_max_s
        self._since_ms = int(time.time() * 1000) if since_ms is None else since_ms
        self._lock = threading.Lock()
        self._attached: dict[str, tuple[int, LogLevel]] = {}
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

    # ------------------------------------------------------------------ LogSource
    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="logs-journald", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()  # the thread sees the end of its output, reaps the process and ends
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def attach(self, container_id: str, service_id: int, log_level: LogLevel = "all", **_: Any) -> None:
        """Publish the container's rows from now on (again: only ``service_id``/``log_level`` change)."""
        with self._lock:
            self._attached[container_id] = (service_id, log_level)

    def detach(self, container_id: str) -> None:
        with self._lock:
            self._attached.pop(container_id, None)

    @property
    def pid(self) -> int | None:
        """The running ``journalctl``'s pid (None between processes)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def args(self) -> list[str]:
        """The command line of the next ``journalctl``: from the last row read, else ``since_ms``."""
        since = self._since_ms if self._last_us is None else self._last_us // 1000
        binary = self._journalctl or shutil.which("journalctl") or "journalctl"
        return [binary, *self._extra_args, *journal_args(since, self._units)]

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
                self._stopping.wait(delay)
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
                self._stopping.wait(self._respawn_min_s)

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
        while not self._stopping.is_set():
            readable, _, _ = select.select([fd], [], [], 0.5)
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
        """Turn rows into batches, per container and for the host units, in order, and publish them."""
        with self._lock:
            attached = dict(self._attached)
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
            message = self._message(row, realtime, attached)
            if message is None:
                continue
            key = row.get("CONTAINER_ID_FULL") if "serviceId" in message else None
            batches.setdefault(key, []).append(message)
        for batch in batches.values():
            self._publish(batch, self._delivered(max(m["timestamp"] for m in batch)))

    def _new(self, realtime: int, cursor: str) -> bool:
        """Whether a row was not read before (a restarted journalctl re-reads the last second)."""
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

    def _message(self, row: dict[str, Any], realtime: int, attached: dict[str, tuple[int, LogLevel]]
                 ) -> dict[str, Any] | None:
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
            if found is None:
                return None
            service_id, level = found
            if level == "err" and not stderr:
                return None
            return {"message": text, "isStdErr": stderr, "timestamp": timestamp, "serviceId": service_id}
        if row.get("_SYSTEMD_UNIT") in self._host_units:
            return {"message": text, "isSystem": True, "isStdErr": stderr, "timestamp": timestamp}
        return None

    def _delivered(self, timestamp_ms: int) -> Callable[[], None]:
        def delivered() -> None:
            if self.delivered_ms is None or timestamp_ms > self.delivered_ms:
                self.delivered_ms = timestamp_ms

        return delivered

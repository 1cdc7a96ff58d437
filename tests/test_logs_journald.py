"""The journald log source (supervisor/logs/journald.py, spec §8.1) and ``/v2/journal-logs`` (§1.4,
§8.4) against a real journal: a journal file written by ``systemd-journal-remote`` from the export
format, followed by the real ``journalctl``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from supervisor.logs.journald import ENGINE_UNIT, HOST_UNITS, JournaldLogSource, format_since, journal_args
from tests.fixtures.device import free_port, wait_for

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
JOURNALCTL = shutil.which("journalctl") or "/usr/bin/journalctl"
BOOT_ID = "0123456789abcdef0123456789abcdef"
A, B, C, SUP = ("a" * 64), ("b" * 64), ("c" * 64), ("5" * 64)


class Journal:
    """A journal directory with one file; :meth:`append` adds entries through systemd-journal-remote
    (the journal's own writer), which a following ``journalctl -D`` picks up."""

    def __init__(self, directory: Path) -> None:
        assert os.access(JOURNAL_REMOTE, os.X_OK), "systemd-journal-remote is missing: run .ci/setup"
        self.dir = directory
        self.file = directory / "test.journal"
        self.monotonic = 1

    def append(self, entries: list[tuple[int, dict[str, str | bytes]]]) -> None:
        """``(realtime µs, fields)`` each; a bytes value is written in the binary field form."""
        out = bytearray()
        for realtime, fields in entries:
            self.monotonic += 1
            out += (f"__REALTIME_TIMESTAMP={realtime}\n__MONOTONIC_TIMESTAMP={self.monotonic}\n"
                    f"_BOOT_ID={BOOT_ID}\n").encode()
            for name, value in fields.items():
                if isinstance(value, bytes):
                    out += name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
                else:
                    out += f"{name}={value}\n".encode()
            out += b"\n"
        subprocess.run([JOURNAL_REMOTE, "-o", str(self.file), "-"], input=bytes(out), check=True,
                       capture_output=True, timeout=30)


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    directory = tmp_path / "journal"
    directory.mkdir()
    return Journal(directory)


class Published:
    """What the source published: batches, and their delivery callbacks (called at once here)."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()
        #: Batches whose delivery callback has returned (a batch is visible in ``batches`` first).
        self.acknowledged = 0

    def __call__(self, messages: list[dict[str, Any]], delivered: Any = None) -> None:
        with self.lock:
            self.batches.append(messages)
        if delivered is not None:
            delivered()
        with self.lock:
            self.acknowledged += 1

    def settled(self) -> bool:
        """Every batch published so far has been acknowledged to the source."""
        with self.lock:
            return self.acknowledged == len(self.batches)

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return [m for batch in self.batches for m in batch]

    def texts(self) -> list[str]:
        return [m["message"] for m in self.messages]


@pytest.fixture
def source_factory(journal: Journal) -> Iterator[Any]:
    made: list[JournaldLogSource] = []

    def make(published: Published, since_ms: int, **kw: Any) -> JournaldLogSource:
        source = JournaldLogSource(published, since_ms=since_ms, journalctl=JOURNALCTL,
                                   extra_args=["-D", str(journal.dir)], respawn_min_s=0.2, **kw)
        made.append(source)
        return source

    yield make
    for source in made:
        source.stop()


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def container_row(cid: str, message: str | bytes, priority: int = 6, unit: str = ENGINE_UNIT,
                  name: str = "main_1_1") -> dict[str, str | bytes]:
    return {"MESSAGE": message, "PRIORITY": str(priority), "_SYSTEMD_UNIT": unit, "CONTAINER_ID_FULL": cid,
            "CONTAINER_NAME": name, "SYSLOG_IDENTIFIER": cid[:12]}


def test_arguments_in_the_reference_order(journal: Journal, source_factory) -> None:
    since = 1_700_000_000_999
    assert format_since(since) == "2023-11-14 22:13:20 UTC"
    assert journal_args(since)[:6] == ["-a", "--follow", "-S", "2023-11-14 22:13:20 UTC", "-o", "json"]
    assert journal_args(since)[6:] == [f"_SYSTEMD_UNIT={u}" for u in (
        "balena.service", "os-power-mode.service", "os-fan-profile.service", "nvpmodel.service",
        "jetson-qspi-manager.service", "os-update.service")]
    source = source_factory(Published(), since)
    assert source.args() == [JOURNALCTL, "-D", str(journal.dir), *journal_args(since)]


def test_rows_to_messages_with_unit_filters_priority_and_byte_messages(
    journal: Journal, source_factory
) -> None:
    """Attached containers' rows become container messages (stderr = PRIORITY <= 3, ``err`` level
    only those), host units' rows system messages; the supervisor's own container, containers not
    attached, the engine's own rows and units outside the filter are left out; a byte-array
    MESSAGE is decoded as UTF-8."""
    t0 = _now_us()
    journal.append([(t0 - 30_000_000, container_row(A, "before since"))])
    published = Published()
    source = source_factory(published, since_ms=t0 // 1000)
    source.attach(A, 11, "all")
    source.attach(B, 22, "err")
    source.attach(SUP, 99, "all")
    source.start()
    wait_for(lambda: source.pid, "journalctl running")
    rows = [
        container_row(A, "a out", 6),
        container_row(A, "a err", 3),
        container_row(B, "b out", 6),
        container_row(B, "b crit", 2),
        container_row(SUP, "supervisor's own", 6, name="balena_supervisor"),
        container_row(C, "not attached", 3),
        {"MESSAGE": "dockerd itself", "PRIORITY": "6", "_SYSTEMD_UNIT": ENGINE_UNIT},
        {"MESSAGE": "updating the OS", "PRIORITY": "6", "_SYSTEMD_UNIT": "os-update.service"},
        {"MESSAGE": "fan failed", "PRIORITY": "3", "_SYSTEMD_UNIT": "os-fan-profile.service"},
        container_row(A, "outside the unit filter", 6, unit="other.service"),
        {"MESSAGE": "other host unit", "PRIORITY": "6", "_SYSTEMD_UNIT": "sshd.service"},
        container_row(A, "caf\u00e9 \x1b[31mred\x1b[0m".encode() + b" \xff", 6),
        container_row(A, "last", 6),
    ]
    journal.append([(t0 + 1000 * i, row) for i, row in enumerate(rows)])
    wait_for(lambda: "last" in published.texts(), "the last row", context=published.texts)
    wait_for(published.settled, "the last batch acknowledged")
    time.sleep(0.3)
    messages = published.messages
    assert [m["message"] for m in messages if m.get("serviceId") == 11] == [
        "a out", "a err", "caf\u00e9 \x1b[31mred\x1b[0m \ufffd", "last"]
    assert [(m["message"], m["isStdErr"]) for m in messages if m.get("serviceId") == 22] == [("b crit", True)]
    a_err = next(m for m in messages if m["message"] == "a err")
    assert a_err == {"message": "a err", "isStdErr": True, "timestamp": (t0 + 1000) // 1000, "serviceId": 11}
    system = [m for m in messages if m.get("isSystem")]
    assert system == [
        {"message": "updating the OS", "isSystem": True, "isStdErr": False, "timestamp": (t0 + 7000) // 1000},
        {"message": "fan failed", "isSystem": True, "isStdErr": True, "timestamp": (t0 + 8000) // 1000},
    ]
    assert len(messages) == 7
    # Batches: one container's rows, or system rows, never mixed.
    for batch in published.batches:
        assert len({m.get("serviceId") for m in batch}) == 1
    assert source.delivered_ms == (t0 + 12_000) // 1000

    source.detach(A)
    journal.append([(t0 + 20_000, container_row(A, "after detach")),
                    (t0 + 21_000, container_row(B, "b2", 3))])
    wait_for(lambda: "b2" in published.texts(), "the next row")
    time.sleep(0.3)
    assert "after detach" not in published.texts()


def test_respawn_resumes_after_the_last_row_without_duplicates(journal: Journal, source_factory) -> None:
    """journalctl killed: a new one starts (after respawn_min_s) at the second of the last row read;
    rows of that second already published are skipped, the new ones arrive once."""
    second = (_now_us() // 1_000_000) * 1_000_000
    journal.append([(second - 60_000_000, container_row(A, "long ago"))])  # journalctl needs a file
    published = Published()
    source = source_factory(published, since_ms=second // 1000)
    source.attach(A, 1, "all")
    source.start()
    wait_for(lambda: source.pid, "journalctl running")
    journal.append([(second + 100_000 + i, container_row(A, f"n{i}")) for i in range(5)])
    wait_for(lambda: len(published.messages) == 5, "the first rows")
    first_pid = source.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    # Rows in the same second as the last one read, while no journalctl runs.
    journal.append([(second + 200_000 + i, container_row(A, f"n{5 + i}")) for i in range(5)])
    wait_for(lambda: source.spawns == 2 and source.pid not in (None, first_pid), "journalctl started again")
    assert "-S" in source.args() and format_since(second // 1000) in source.args()
    journal.append([(second + 2_000_000 + i, container_row(A, f"n{10 + i}")) for i in range(5)])
    wait_for(lambda: len(published.messages) >= 15, "the rows after the restart", context=published.texts)
    time.sleep(0.5)
    assert published.texts() == [f"n{i}" for i in range(15)]


def test_unstartable_journalctl_is_retried(tmp_path: Path) -> None:
    published = Published()
    source = JournaldLogSource(published, journalctl=str(tmp_path / "missing"), respawn_min_s=0.05)
    source.start()
    time.sleep(0.3)
    assert source.spawns == 0 and source.pid is None
    source.stop()


# --------------------------------------------------------------------------- /v2/journal-logs
def test_journal_logs_reads_a_real_journal(journal: Journal, device_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``/v2/journal-logs`` runs the real journalctl with the body's options in the §8.4 order; here
    the journal is the test's (``journalctl`` on PATH is the real one with ``-D <dir>`` in front)."""
    from supervisor.runtime import Settings, Supervisor

    t0 = _now_us()
    journal.append([
        (t0, {"MESSAGE": "update 1", "PRIORITY": "6", "_SYSTEMD_UNIT": "os-update.service"}),
        (t0 + 1000, container_row(A, "app line")),
        (t0 + 2000, {"MESSAGE": "update 2", "PRIORITY": "6", "_SYSTEMD_UNIT": "os-update.service"}),
        (t0 + 3000, {"MESSAGE": "update 3", "PRIORITY": "6", "_SYSTEMD_UNIT": "os-update.service"}),
    ])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "journalctl"
    wrapper.write_text(f'#!/bin/sh\nexec {JOURNALCTL} -D "{journal.dir}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/pysupervisor-test/docker.sock")
    sup = Supervisor(Settings(root=str(device_root), port=free_port(), host="127.0.0.1", led="none",
                              host_setup=False))
    sup.start()
    try:
        url = f"http://127.0.0.1:{sup.server.port}/v2/journal-logs"
        body = {"all": True, "unit": "os-update.service", "count": 2, "format": "json"}
        response = requests.post(url, json=body, timeout=30)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
        rows = [json.loads(line) for line in response.text.splitlines()]
        assert [r["MESSAGE"] for r in rows] == ["update 2", "update 3"]
        until = format_since(t0 // 1000 + 2000)  # a second after all four rows
        since = format_since(t0 // 1000 - 5000)
        window = requests.post(url, json={"unit": "os-update.service", "format": "cat", "since": since,
                                          "until": until}, timeout=30)
        assert window.text == "update 1\nupdate 2\nupdate 3\n"
        later = requests.post(url, json={"format": "cat", "since": until}, timeout=30)
        assert later.text == ""
        by_tag = requests.post(url, json={"containerId": A[:12], "format": "cat"}, timeout=30)
        assert by_tag.text == "app line\n"
        short = requests.post(url, json={"unit": "os-update.service", "count": 1}, timeout=30)
        assert short.text.rstrip().endswith("update 3")
    finally:
        sup.stop()


def test_host_units_are_the_reference_list() -> None:
    assert ENGINE_UNIT == "balena.service" and len(HOST_UNITS) == 5


# --------------------------------------------------------------------------- stored position, push-back
REPO = Path(__file__).resolve().parents[1]

#: A supervisor stand-in for the kill -9 test: follows the journal with a stored position; every
#: published message goes to a file as a JSON line; batches are acknowledged until a message starting
#: with "hold" comes (those and all later ones stay unacknowledged, as in a backend that had not sent
#: them yet). Each pass of the reader's loop (where it stores the position, at most once a second) asks
#: for room: the number of passes goes to a file, for the test to know that a store was due.
KILLED_SOURCE = r'''
import json, sys, threading
from pathlib import Path
from supervisor.logs.journald import JournaldLogSource

journalctl, journal_dir, position, out, since_ms, container, passes = sys.argv[1:8]
lock = threading.Lock()
holding = []
count = [0]

def room(timeout):
    count[0] += 1
    Path(passes).write_text(str(count[0]))
    return True

def publish(messages, delivered=None):
    with lock, open(out, "a", encoding="utf-8") as fh:
        for message in messages:
            fh.write(json.dumps(message) + "\n")
            if message["message"].startswith("hold"):
                holding.append(True)
    if delivered is not None and not holding:
        delivered()

source = JournaldLogSource(publish, since_ms=int(since_ms), journalctl=journalctl,
                           extra_args=["-D", journal_dir], respawn_min_s=0.2, position_path=Path(position),
                           room=room)
source.attach(container, 7, "all")
source.start()
threading.Event().wait()
'''


def _position(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _at(path: Path, realtime: int, cursors: int) -> bool:
    """Whether the stored position is after ``cursors`` rows of the instant ``realtime`` (µs)."""
    position = _position(path)
    return bool(position) and position["realtime_us"] == realtime and len(position["cursors"]) == cursors


def test_resume_after_stop_delivers_the_rows_of_the_downtime_once(journal: Journal, source_factory,
                                                                  tmp_path: Path) -> None:
    """A stopped source stores the position of the last delivered row; the next one (same runtime
    directory, a later ``since_ms``) starts at that row's second and publishes exactly the rows the
    journal got meanwhile: three rows shared the last delivered microsecond, two more with that very
    microsecond and one more of that second come while it is down, and none is published twice."""
    second = (_now_us() // 1_000_000) * 1_000_000
    instant = second + 300_000
    path = tmp_path / "run" / "journald-position.json"
    journal.append([(second - 60_000_000, container_row(A, "long ago"))])
    first = Published()
    source = source_factory(first, since_ms=second // 1000, position_path=path)
    source.attach(A, 1, "all")
    source.start()
    wait_for(lambda: source.pid, "journalctl running")
    journal.append([(second + 100_000 + i, container_row(A, f"p{i}")) for i in range(3)]
                   + [(instant, container_row(A, f"q{i}")) for i in range(3)])
    wait_for(lambda: len(first.messages) == 6, "the first rows", context=first.texts)
    wait_for(first.settled, "the first rows acknowledged")  # the stop stores what was acknowledged
    source.stop()
    assert _at(path, instant, 3), _position(path)
    assert first.texts() == ["p0", "p1", "p2", "q0", "q1", "q2"]

    # While no supervisor runs: rows of the same microsecond, the same second, the next second.
    journal.append([(instant, container_row(A, "r0")), (instant, container_row(A, "r1")),
                    (second + 400_000, {"MESSAGE": "r2", "PRIORITY": "6",
                                        "_SYSTEMD_UNIT": "os-update.service"}),
                    (second + 400_001, container_row(C, "not attached")),
                    (second + 1_500_000, container_row(A, "r3"))])
    second_run = Published()
    resumed = source_factory(second_run, since_ms=second // 1000 + 10_000, position_path=path)
    assert resumed.args()[-11:-7] == ["--follow", "-S", format_since(instant // 1000), "-o"]
    resumed.attach(A, 1, "all")
    resumed.start()
    wait_for(lambda: {"r2", "r3"} <= set(second_run.texts()), "the rows of the downtime",
             context=second_run.texts)
    # In order per container and for the host units (one read's rows are one batch of each).
    assert [m["message"] for m in second_run.messages if not m.get("isSystem")] == ["r0", "r1", "r3"]
    assert [m["message"] for m in second_run.messages if m.get("isSystem")] == ["r2"]
    wait_for(lambda: _at(path, second + 1_500_000, 1), "the new position stored",
             context=lambda: _position(path))
    resumed.stop()


def test_resume_after_kill_9_repeats_only_unacknowledged_rows(journal: Journal, source_factory,
                                                               tmp_path: Path) -> None:
    """A supervisor killed with SIGKILL (its process group: journalctl too) after its position was
    stored: the next run publishes the rows it had read but not got acknowledged (at least once) and
    the rows of the downtime, each once, and none it had acknowledged. The acknowledged and the
    unacknowledged rows share one microsecond. The containers the killed run had attached are
    attached for the rows of the downtime, before the monitor attaches them again."""
    second = (_now_us() // 1_000_000) * 1_000_000
    instant = second + 300_000
    path = tmp_path / "run" / "journald-position.json"
    out = tmp_path / "published.jsonl"
    out.touch()
    passes = tmp_path / "passes"
    passes.write_text("0")
    journal.append([(second - 60_000_000, container_row(A, "long ago"))])

    def published_texts() -> list[str]:
        return [json.loads(line)["message"] for line in out.read_text(encoding="utf-8").splitlines()]

    killed = subprocess.Popen(
        [sys.executable, "-c", KILLED_SOURCE, JOURNALCTL, str(journal.dir), str(path), str(out),
         str(second // 1000), A, str(passes)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def running_journalctl() -> bool:
            found = subprocess.run(["pgrep", "-g", str(killed.pid), "-x", "journalctl"], capture_output=True)
            return found.returncode == 0

        wait_for(running_journalctl, "the killed run's journalctl")
        journal.append([(second + 100_000, container_row(A, "k0"))]
                       + [(instant, container_row(A, f"k{i}")) for i in range(1, 3)])
        wait_for(lambda: _at(path, instant, 2), "the position of k2 stored", context=lambda: _position(path))
        journal.append([(instant, container_row(A, "hold0")), (second + 350_000, container_row(A, "hold1"))])
        wait_for(lambda: "hold1" in published_texts(), "the unacknowledged rows read",
                 context=published_texts)
        # A row that publishes nothing (not attached) behind the unacknowledged ones, then passes
        # of the loop for over two seconds: position stores were due, and must not have moved.
        journal.append([(second + 355_000, container_row(C, "not attached"))])
        passed = int(passes.read_text() or 0)
        wait_for(lambda: int(passes.read_text() or 0) >= passed + 5, "the killed run's loop to go round")
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(10)
    assert published_texts() == ["k0", "k1", "k2", "hold0", "hold1"]
    assert _at(path, instant, 2), _position(path)

    journal.append([(second + 350_000, container_row(A, "d0")),
                    (second + 360_000, container_row(B, "d1 of a container not attached before")),
                    (second + 1_200_000, container_row(A, "d2"))])
    later = second // 1000 + 10_000
    resumed_run = Published()
    resumed = source_factory(resumed_run, since_ms=later, position_path=path)
    resumed.start()  # nothing attached yet: the monitor has not seen the containers
    wait_for(lambda: "d2" in resumed_run.texts(), "the rows of the downtime", context=resumed_run.texts)
    assert resumed_run.texts() == ["hold0", "hold1", "d0", "d2"]
    assert {m["serviceId"] for m in resumed_run.messages} == {7}
    # Rows from this run's start on follow the monitor's attachments.
    resumed.attach(B, 8, "all")
    journal.append([(later * 1000 + 1000, container_row(A, "after the start, A not attached")),
                    (later * 1000 + 2000, container_row(B, "b after the start"))])
    wait_for(lambda: "b after the start" in resumed_run.texts(), "a row after the start",
             context=resumed_run.texts)
    assert resumed_run.texts() == ["hold0", "hold1", "d0", "d2", "b after the start"]


@pytest.mark.parametrize("content", [
    b"{not json", b"", b"\xff\xfe", b"[]",
    b'{"realtime_us": "x", "cursors": [], "attached": {}}',
    b'{"realtime_us": 5, "cursors": [1], "attached": {}}',
    b'{"realtime_us": 5, "cursors": [], "attached": {"a": [1, "some"]}}',
])
def test_corrupt_position_file_starts_from_since(journal: Journal, source_factory, tmp_path: Path,
                                                 content: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """An unreadable position: one warning, the journal is read from ``since_ms`` as without one,
    and the position is stored anew."""
    second = (_now_us() // 1_000_000) * 1_000_000
    path = tmp_path / "journald-position.json"
    path.write_bytes(content)
    journal.append([(second - 60_000_000, container_row(A, "long ago")),
                    (second - 1_000, container_row(A, "before since"))])
    published = Published()
    with caplog.at_level(logging.WARNING, logger="supervisor.logs.journald"):
        source = source_factory(published, since_ms=second // 1000, position_path=path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreadable" in warnings[0].getMessage()
    assert source.args()[-11:-7] == ["--follow", "-S", format_since(second // 1000), "-o"]
    source.attach(A, 1, "all")
    source.start()
    wait_for(lambda: source.pid, "journalctl running")
    journal.append([(second + 5_000, container_row(A, "after since"))])
    wait_for(lambda: published.texts() == ["after since"], "the row after since", context=published.texts)
    wait_for(lambda: _at(path, second + 5_000, 1), "a new position stored", context=lambda: _position(path))


def test_push_back_holds_reading_then_delivers_every_row_once(journal: Journal, source_factory) -> None:
    """While ``room`` says no, nothing is read: journalctl stays (blocked on its pipe once it fills),
    the source keeps asking; once there is room every row arrives once, in order."""
    second = (_now_us() // 1_000_000) * 1_000_000
    journal.append([(second - 60_000_000, container_row(A, "long ago"))])
    open_ = threading.Event()
    asked = [0]

    def room(timeout: float) -> bool:
        asked[0] += 1
        return open_.wait(timeout)

    published = Published()
    source = source_factory(published, since_ms=second // 1000, room=room)
    source.attach(A, 1, "all")
    source.start()
    wait_for(lambda: source.pid, "journalctl running")
    pid = source.pid
    count = 1500  # ~1 MB of JSON: far beyond the pipe's 64 KiB
    journal.append([(second + 1000 + i, container_row(A, f"row {i:04d} " + "x" * 200)) for i in range(count)])
    asked_then = asked[0]
    wait_for(lambda: asked[0] >= asked_then + 20, "the source to keep asking for room (~2 s)")
    assert published.messages == [] and source.pid == pid and source.spawns == 1
    open_.set()
    wait_for(lambda: len(published.messages) >= count, "every row", context=lambda: len(published.messages))
    journal.append([(second + 10_000_000, container_row(A, "last"))])
    wait_for(lambda: "last" in published.texts(), "the last row")
    assert [t[:8] for t in published.texts()] == [f"row {i:04d}" for i in range(count)] + ["last"]
    assert source.spawns == 1


def test_position_file_is_replaced_atomically_and_only_when_changed(journal: Journal, source_factory,
                                                                    tmp_path: Path) -> None:
    """The position is written by rename (a new inode, never a torn file: a reader polling all along
    always reads whole JSON), at most once per interval, and not at all while it does not change."""
    second = (_now_us() // 1_000_000) * 1_000_000
    path = tmp_path / "run" / "journald-position.json"
    journal.append([(second - 60_000_000, container_row(A, "long ago"))])
    ticks = [0]

    def room(_timeout: float) -> bool:
        ticks[0] += 1  # a probe: the reader's loop (and its position check) went round
        return True

    published = Published()
    source = source_factory(published, since_ms=second // 1000, room=room, position_path=path,
                            position_interval_s=1.0)  # a disk's, whatever tmp_path is on
    source.attach(A, 1, "all")
    source.start()
    wait_for(lambda: source.pid, "journalctl running")

    reads, torn, stop = [0], [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            reads[0] += 1
            try:
                json.loads(text)["realtime_us"]
            except (ValueError, KeyError) as err:
                torn.append((text, err))

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    began = time.monotonic()
    try:
        for n in range(12):
            journal.append([(second + 100_000 * (n + 1), container_row(A, f"n{n}"))])
            wait_for(lambda n=n: f"n{n}" in published.texts(), f"row n{n}")
        wait_for(lambda: _at(path, second + 1_200_000, 1), "the last position",
                 context=lambda: _position(path))
    finally:
        stop.set()
        watcher.join(5)
    elapsed = time.monotonic() - began
    assert not torn and reads[0] > 0
    assert 1 <= source.position_writes <= elapsed / 1.0 + 2
    assert not list(path.parent.glob(".journald-position.json.*.tmp"))

    # Unchanged: not written again (same inode and mtime) while the reader goes round for seconds.
    before, writes = path.stat(), source.position_writes
    ticks_then = ticks[0]
    wait_for(lambda: ticks[0] >= ticks_then + 6, "the reader's loop to go round (~3 s)")
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert source.position_writes == writes
    source.stop()  # the stop-time write: unchanged, so none
    assert path.stat().st_ino == before.st_ino and source.position_writes == writes

    # Changed: a new file renamed over the old one.
    resumed = source_factory(Published(), since_ms=second // 1000, position_path=path)
    resumed.attach(B, 2, "all")
    resumed.stop()
    assert path.stat().st_ino != before.st_ino and resumed.position_writes == 1
    stored = _position(path)
    assert stored is not None and stored["realtime_us"] == second + 1_200_000
    assert stored["attached"] == {A: [1, "all"], B: [2, "all"]}


def test_on_a_ram_filesystem_each_acknowledged_row_is_stored_at_once(journal: Journal,
                                                                    source_factory) -> None:
    """balenaOS keeps the runtime directory on a tmpfs: there the position is written in the
    acknowledgement itself, so a kill -9 right after it repeats nothing (on a disk at most once a
    second, tests above)."""
    ram = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="pysupervisor-test-"))
    path = ram / "journald-position.json"
    seen: list[int | None] = []

    class Storing(Published):
        def __call__(self, messages: list[dict[str, Any]], delivered: Any = None) -> None:
            super().__call__(messages, delivered)  # acknowledged at once
            position = _position(path)
            seen.append(position["realtime_us"] if position else None)

    second = (_now_us() // 1_000_000) * 1_000_000
    published = Storing()
    source = source_factory(published, since_ms=second // 1000, position_path=path)
    try:
        source.attach(A, 1, "all")
        source.start()
        wait_for(lambda: source.pid, "journalctl running")
        for n in range(3):
            journal.append([(second + 100_000 * (n + 1), container_row(A, f"n{n}"))])
            wait_for(lambda n=n: len(seen) == n + 1, f"row n{n}", context=published.texts)
        assert seen == [second + 100_000, second + 200_000, second + 300_000]
    finally:
        source.stop()  # its last write first: then the directory can go
        shutil.rmtree(ram)

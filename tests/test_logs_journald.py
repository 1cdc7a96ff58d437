"""The journald log source (supervisor/logs/journald.py, spec §8.1) and ``/v2/journal-logs`` (§1.4,
§8.4) against a real journal: a journal file written by ``systemd-journal-remote`` from the export
format, followed by the real ``journalctl``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import struct
import subprocess
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

    def __call__(self, messages: list[dict[str, Any]], delivered: Any = None) -> None:
        with self.lock:
            self.batches.append(messages)
        if delivered is not None:
            delivered()

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

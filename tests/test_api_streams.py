"""Streamed responses over real HTTP (waitress): ``/v2/local/logs`` and ``/v2/journal-logs``.

The supervisor runs in-process so a test can publish into its log hub and look at what is left
once clients go away (subscribers, stream slots, child processes).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from supervisor.runtime import Settings, Supervisor
from tests.fixtures.device import free_port, wait_for, write_config_json

FIRST = {"message": "Streaming logs", "isSystem": True}
TARGET = {"local": {"name": "d", "config": {}, "apps": {"1011": {
    "name": "a", "commit": "c" * 32, "releaseId": 1,
    "services": {"23": {"serviceName": "main", "imageId": 12, "image": "img",
                        "environment": {}, "labels": {}}}}}}}


def _until(check: Callable[[], Any], what: str) -> Any:
    return wait_for(check, what, timeout=30.0, interval=0.02)


@pytest.fixture(autouse=True)
def _no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests only stream: the in-process supervisor gets no Docker engine."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/pysupervisor-test/docker.sock")


def _start(root: Path, **settings: Any) -> Supervisor:
    sup = Supervisor(Settings(root=str(root), port=free_port(), host="127.0.0.1", led="none",
                              host_setup=False, **settings))  # never the machine's firewall
    sup.start()
    sup.url = f"http://127.0.0.1:{sup.server.port}"  # type: ignore[attr-defined]
    return sup


@pytest.fixture
def in_process(device_root: Path) -> Iterator[Supervisor]:
    sup = _start(device_root)
    yield sup
    sup.stop()


class RawStream:
    """A streaming GET/POST on a plain socket: what arrives is seen as it arrives, and closing the
    socket is a client going away."""

    def __init__(self, url: str, method: str = "GET", path: str = "/v2/local/logs",
                 body: dict[str, Any] | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + data)
        self.buffer = b""
        self.status = int(self._read_until(b"\r\n\r\n").split(b" ", 2)[1])

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def chunk(self) -> bytes:
        """One HTTP chunk's payload (b"" at the end of the body)."""
        size = int(self._read_until(b"\r\n"), 16)
        while len(self.buffer) < size + 2:
            more = self.sock.recv(65536)
            if not more:
                raise EOFError(self.buffer)
            self.buffer += more
        data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        return data

    def line(self) -> dict[str, Any]:
        return json.loads(self.chunk())

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------ /v2/local/logs
def test_logs_stream_first_line_then_messages_as_they_come(in_process: Supervisor) -> None:
    sup = in_process
    assert requests.post(sup.url + "/v2/local/target-state", json=TARGET, timeout=30).status_code == 200
    stream = RawStream(sup.url)
    try:
        assert stream.status == 200
        assert stream.line() == FIRST
        _until(lambda: sup.logs.subscriber_count == 1, "the subscription")
        sup.logs.publish({"message": "unknown service", "isStdErr": False, "timestamp": 1, "serviceId": 99})
        sup.logs.publish({"message": "hello", "isStdErr": False, "timestamp": 2, "serviceId": 23})
        started = time.monotonic()
        line = stream.line()
        # Not held back in a server buffer (that would hold it until more data or the end); the
        # bound leaves room for a descheduled thread on a loaded machine.
        assert time.monotonic() - started < 2.0
        assert list(line) == ["serviceName", "message", "isStdErr", "timestamp", "serviceId"]
        assert line == {"serviceName": "main", "message": "hello", "isStdErr": False, "timestamp": 2,
                        "serviceId": 23}
        sup.logs.publish({"message": "Applying", "isSystem": True, "timestamp": 3})
        assert stream.line() == {"message": "Applying", "isSystem": True, "timestamp": 3}
    finally:
        stream.close()
    _until(lambda: sup.logs.subscriber_count == 0 and sup.streams.open == 0, "the stream to be released")


def test_logs_content_type_is_ndjson(in_process: Supervisor) -> None:
    with requests.get(in_process.url + "/v2/local/logs", stream=True, timeout=30) as response:
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert json.loads(next(response.iter_lines())) == FIRST


def test_outside_local_mode_only_the_first_line_flows(device_root: Path) -> None:
    write_config_json(device_root, {"uuid": "e" * 32, "apiEndpoint": "https://api.example"})
    sup = _start(device_root)
    try:
        (key,) = sup.config.db.query("SELECT key FROM apiSecret WHERE appId = 0")[0]
        stream = RawStream(sup.url, path=f"/v2/local/logs?apikey={key}")
        assert stream.line() == FIRST
        _until(lambda: sup.logs.subscriber_count == 1, "the subscription")
        sup.logs.publish({"message": "not for local", "isSystem": True, "timestamp": 1})
        stream.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            stream.chunk()
        stream.close()
        assert RawStream(sup.url).status == 401  # and it needs a key there
    finally:
        sup.stop()


def test_twenty_streams_do_not_starve_the_api(in_process: Supervisor) -> None:
    sup = in_process
    threads_before = threading.active_count()
    streams = [RawStream(sup.url) for _ in range(20)]
    try:
        assert all(s.status == 200 and s.line() == FIRST for s in streams)
        for _ in range(10):
            started = time.monotonic()
            response = requests.get(sup.url + "/ping", timeout=30)  # starved: no answer at all
            assert (response.status_code, response.text) == (200, "OK")
            assert time.monotonic() - started < 5
        assert requests.get(sup.url + "/v2/version", timeout=30).status_code == 200
        sup.logs.publish({"message": "to all", "isSystem": True, "timestamp": 1})
        assert all(s.line()["message"] == "to all" for s in streams)
    finally:
        for s in streams:
            s.close()
    _until(lambda: sup.logs.subscriber_count == 0 and sup.streams.open == 0, "every stream to end")
    # no thread per stream left behind (one that is ending may take a moment to be gone)
    _until(lambda: threading.active_count() == threads_before, "the threads back to where they were")


def test_streams_beyond_the_limit_are_503(device_root: Path) -> None:
    sup = _start(device_root, api_threads=2, api_streams=3)
    try:
        streams = [RawStream(sup.url) for _ in range(3)]
        assert [s.status for s in streams] == [200, 200, 200]
        response = requests.get(sup.url + "/v2/local/logs", timeout=30)
        assert response.status_code == 503
        assert response.json() == {"status": "failed",
                                   "message": "Too many open streams (at most 3): close one and try again"}
        assert requests.get(sup.url + "/ping", timeout=30).text == "OK"  # the other threads are free
        streams.pop().close()
        _until(lambda: sup.streams.open == 2, "a slot to be freed")
        again = RawStream(sup.url)
        assert again.status == 200 and again.line() == FIRST
        for s in [*streams, again]:
            s.close()
        _until(lambda: sup.streams.open == 0, "every slot to be freed")
    finally:
        sup.stop()


def test_server_stop_ends_open_streams(device_root: Path) -> None:
    sup = _start(device_root)
    stream = RawStream(sup.url)
    assert stream.line() == FIRST
    started = time.monotonic()
    sup.stop()
    assert time.monotonic() - started < 3
    assert sup.logs.subscriber_count == 0
    stream.close()


# --------------------------------------------------------------------------- /v2/journal-logs
FAKE_JOURNALCTL = """#!/bin/sh
# Stands in for journalctl (no journald runs here): prints its argv, then follows like --follow.
echo "$$" > "{pidfile}"
echo "ARGS: $*"
case " $* " in *" --follow "*) while :; do echo tick; sleep 0.1; done ;; esac
"""


@pytest.fixture
def fake_journalctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pidfile = tmp_path / "journalctl.pid"
    script = bin_dir / "journalctl"
    script.write_text(FAKE_JOURNALCTL.format(pidfile=pidfile))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return pidfile


def test_journal_logs_arguments_in_the_reference_order(in_process: Supervisor, fake_journalctl: Path) -> None:
    body = {"all": True, "count": 5, "unit": "balena.service", "containerId": "abc", "since": "2024-01-01",
            "until": "2024-01-02", "format": "json", "follow": False}
    response = requests.post(in_process.url + "/v2/journal-logs", json=body, timeout=30)
    assert response.status_code == 200
    assert response.text == ("ARGS: -a -u balena.service -t abc -n 5 -S 2024-01-01 -U 2024-01-02 -o json\n")
    default = requests.post(in_process.url + "/v2/journal-logs", timeout=30)
    assert default.text == "ARGS: -o short\n"
    form = requests.post(in_process.url + "/v2/journal-logs", data={"count": "3", "all": "1"}, timeout=30)
    assert form.text == "ARGS: -a -n 3 -o short\n"
    # the slot is freed once the worker has finished, which may be a moment after the client read the end
    _until(lambda: in_process.streams.open == 0, "the slot to be freed")


def test_journal_logs_follow_streams_and_the_process_dies_with_the_client(
    in_process: Supervisor, fake_journalctl: Path
) -> None:
    stream = RawStream(in_process.url, method="POST", path="/v2/journal-logs", body={"follow": True})
    assert stream.status == 200
    assert stream.chunk().startswith(b"ARGS: --follow -o short")
    pid = int(_until(lambda: fake_journalctl.exists() and fake_journalctl.read_text().strip(), "the pid"))
    assert b"tick" in stream.chunk()
    assert Path(f"/proc/{pid}").exists()
    stream.close()
    _until(lambda: not Path(f"/proc/{pid}").exists(), "journalctl to be killed and reaped")
    _until(lambda: in_process.streams.open == 0, "the slot to be freed")


def test_journal_logs_without_journalctl_is_503(in_process: Supervisor, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nowhere with a journalctl
    response = requests.post(in_process.url + "/v2/journal-logs", json={}, timeout=30)
    assert response.status_code == 503
    assert response.json() == {"status": "failed",
                               "message": "journalctl is not available on this device: no journal to read"}


def test_journal_logs_invalid_json_is_400(in_process: Supervisor, fake_journalctl: Path) -> None:
    response = requests.post(in_process.url + "/v2/journal-logs", data="{nope",
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["status"] == "failed"


def test_a_stream_ending_after_stop_starts_no_worker_threads(device_root: Path) -> None:
    """A stream's slot is freed when its worker notices the client left, which may come after the
    server stopped: the pool must not grow again then (8 leaked threads per stop, CI run 3)."""
    before = {t.ident for t in threading.enumerate()}
    sup = _start(device_root)
    stream = RawStream(sup.url)
    assert stream.line() == FIRST
    stream.close()  # the worker sees it within a poll (0.25 s): after the stop below has begun
    sup.stop()
    _until(lambda: sup.streams.open == 0, "the slot to be freed")
    _until(lambda: not [t for t in threading.enumerate()
                        if t.ident not in before and t.name.startswith("waitress")],
           "every worker thread of the stopped server to end")

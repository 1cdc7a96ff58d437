"""The cloud log stream (spec §8.3; supervisor/logs/cloud.py) against the fake balena API's receiver
(cloud-api.md §5.1, tests/fakecloud/logstream.py) on a real socket, and the receiver's own rules.

Intervals are shortened through :class:`StreamSettings`; every wait is a condition with a deadline.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import re
import threading
import time
import uuid
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from supervisor.logs.cloud import OFF, WAIT, CloudLogStream, StreamSettings, StreamTarget
from tests.fakecloud.client import FakeCloud
from tests.fixtures.device import wait_for

FAST = StreamSettings(grace_s=0.5, idle_s=30.0, backoff_min_s=0.2, backoff_max_s=1.0, end_timeout_s=3.0)
SUPPRESSED = re.compile(r"^Warning: Suppressed (\d+) message\(s\) due to high load$")


class Device:
    """A registered device in the fake and a switchable target for the stream."""

    def __init__(self, api: FakeCloud) -> None:
        self.api = api
        app = api.create_application(f"fleet-{uuid.uuid4().hex[:6]}")
        self.uuid, self.key = uuid.uuid4().hex, uuid.uuid4().hex
        self.id = api.create_device(app["id"], self.uuid, self.key)
        self.url = f"{api.url}/device/v2/{self.uuid}/log-stream"
        self.mode: StreamTarget | str = StreamTarget(self.url, self.key)
        #: What the stream's thread read, each time it asked for its target (a test-side probe).
        self.reads: list[StreamTarget | str] = []

    def _target(self) -> StreamTarget | str:
        mode = self.mode
        self.reads.append(mode)
        return mode

    def read_since(self, count: int, mode: StreamTarget | str) -> bool:
        """Whether the thread read ``mode`` after its first ``count`` reads: from then on it acts on it."""
        return mode in self.reads[count:]

    def stream(self, settings: StreamSettings = FAST) -> CloudLogStream:
        return CloudLogStream(self._target, user_agent="Supervisor/test", settings=settings)

    def lines(self) -> list[dict[str, Any]]:
        return self.api.logs(self.uuid)

    def streams(self) -> list[dict[str, Any]]:
        return [r for r in self.api.requests() if r["kind"] == "log_stream"]


@pytest.fixture
def device(fake_api: FakeCloud) -> Device:
    return Device(fake_api)


@pytest.fixture
def running(device: Device):
    made: list[CloudLogStream] = []

    def start(settings: StreamSettings = FAST) -> CloudLogStream:
        stream = device.stream(settings)
        stream.start()
        made.append(stream)
        return stream

    yield start
    for stream in made:
        stream.stop()


def _line(i: int, **extra: Any) -> dict[str, Any]:
    return {"message": f"line {i}", "timestamp": 1_700_000_000_000 + i, "serviceId": 7,
            "isStdErr": False, **extra}


def _numbers(lines: list[dict[str, Any]]) -> list[int]:
    return [int(m["message"].split()[1]) for m in lines if m["message"].startswith("line ")]


# ---------------------------------------------------------------------------------------------- receiver
def _post(api: FakeCloud, path: str, headers: dict[str, str]) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.putrequest("POST", path)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    return conn


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def test_receiver_checks_before_the_body(device: Device) -> None:
    """§5.1 route chain: unknown device 401 after the delay, no key 401 JSON, another device's key
    an empty 401, a content type that is not exactly application/x-ndjson 415."""
    api = device.api
    ndjson = {"Content-Type": "application/x-ndjson", "Transfer-Encoding": "chunked"}
    started = time.monotonic()
    unknown = _post(api, f"/device/v2/{uuid.uuid4().hex}/log-stream",
                    {**ndjson, "Authorization": f"Bearer {device.key}"}).getresponse()
    assert (unknown.status, unknown.read()) == (401, b"")
    assert time.monotonic() - started >= api.logs_unknown_delay_s * 0.9
    no_key = _post(api, f"/device/v2/{device.uuid}/log-stream", ndjson).getresponse()
    assert (no_key.status, json.loads(no_key.read())) == (401, {"error": "API key required"})
    other = Device(api)
    wrong = _post(api, f"/device/v2/{device.uuid}/log-stream",
                  {**ndjson, "Authorization": f"Bearer {other.key}"}).getresponse()
    assert (wrong.status, wrong.read()) == (401, b"")
    charset = _post(api, f"/device/v2/{device.uuid}/log-stream",
                    {**ndjson, "Content-Type": "application/x-ndjson; charset=utf-8",
                     "Authorization": f"Bearer {device.key}"}).getresponse()
    assert charset.status == 415
    assert charset.read() == b"Streaming requests require Content-Type application/x-ndjson"


def test_receiver_stores_lines_as_they_arrive_and_answers_at_the_end(device: Device) -> None:
    """Each gzip piece is stored while the request is open; no answer until the body ends, then
    201; lines breaking the per-line rules are dropped silently (§5.1)."""
    api = device.api
    conn = _post(api, f"/device/v2/{device.uuid}/log-stream", {
        "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip",
        "Transfer-Encoding": "chunked", "Authorization": f"Bearer {device.key}"})
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)
    rows = [
        {"message": "kept", "timestamp": 1, "serviceId": 3, "isStdErr": True},
        {"message": "string timestamp", "timestamp": "2024-01-01T00:00:00Z"},
        {"message": "null service", "timestamp": 2, "serviceId": None},
        {"message": "dependent", "timestamp": 3, "uuid": "abc"},
        {"message": 5, "timestamp": 4},
        {"message": "system", "timestamp": 5, "isSystem": True, "isStdErr": "yes"},
    ]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode() + b"\n"
    assert conn.sock is not None
    conn.sock.sendall(_chunk(gz.compress(body) + gz.flush(zlib.Z_SYNC_FLUSH)))
    stored = wait_for(lambda: device.lines() if len(device.lines()) == 2 else None, "two stored lines")
    assert [(r["message"], r["isStdErr"], r["isSystem"], r.get("serviceId")) for r in stored] == [
        ("kept", True, False, 3), ("system", False, True, None)]
    conn.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        conn.sock.recv(1)  # no answer while the body is open
    conn.sock.settimeout(10)
    conn.sock.sendall(_chunk(gz.compress(b'{"message":"last","timestamp":6}\n') + gz.flush()) + b"0\r\n\r\n")
    response = conn.getresponse()
    assert (response.status, response.read()) == (201, b"")
    assert [r["message"] for r in device.lines()] == ["kept", "system", "last"]


def test_receiver_400_on_a_bad_line_keeps_the_earlier_ones(device: Device) -> None:
    body = gzip.compress(
        b'{"message":"before","timestamp":1}\nnot json at all\n{"message":"after","timestamp":2}\n')
    conn = _post(device.api, f"/device/v2/{device.uuid}/log-stream", {
        "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip",
        "Content-Length": str(len(body)), "Authorization": f"Bearer {device.key}"})
    conn.send(body)
    response = conn.getresponse()
    assert response.status == 400 and response.read().startswith(b"Could not parse row not json at all")
    assert [r["message"] for r in device.lines()] == ["before"]
    # Only "gzip" exactly is decoded: GZIP is read as plain NDJSON.
    plain = b'{"message":"plain","timestamp":3}\n'
    conn = _post(device.api, f"/device/v2/{device.uuid}/log-stream", {
        "Content-Type": "application/x-ndjson", "Content-Encoding": "GZIP",
        "Content-Length": str(len(plain)), "Authorization": f"Bearer {device.key}"})
    conn.send(plain)
    assert conn.getresponse().status == 201
    assert device.lines()[-1]["message"] == "plain"


# ---------------------------------------------------------------------------------------------- backend
def test_lines_arrive_once_in_order_with_the_reference_fields(device: Device, running) -> None:
    stream = running()
    for i in range(500):
        stream.log(_line(i, isStdErr=i % 3 == 0, serviceName="main", _private=1))
    stream.log({"message": "no service id", "timestamp": 1, "isStdErr": False})  # dropped (§8.3)
    stream.log({"message": "x" * 10_001 + "é", "isSystem": True, "timestamp": 2})
    stream.log({"message": "é" * 10_000, "isSystem": True, "timestamp": 3})  # exactly 10 000: kept whole
    lines = wait_for(lambda: device.lines() if len(device.lines()) >= 502 else None, "502 lines")
    time.sleep(0.3)
    lines = device.lines()
    assert _numbers(lines) == list(range(500))
    assert all(r["serviceId"] == 7 and r["isStdErr"] == (int(r["message"][5:]) % 3 == 0)
               and not r["isSystem"] for r in lines[:500])
    long, exact = lines[500], lines[501]
    assert len(long["message"]) == 10_000 and long["message"].endswith("x[...]") and long["isSystem"]
    assert exact["message"] == "é" * 10_000
    assert len(lines) == 502 and len({r["stream"] for r in lines}) == 1


def test_headers_and_body_are_gzip_ndjson(device: Device, running) -> None:
    """What goes on the wire, seen by a raw socket server: the §8.3 headers and a chunked gzip body
    of compact JSON lines without the private keys."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    device.mode = StreamTarget(f"http://127.0.0.1:{server.getsockname()[1]}/device/v2/{device.uuid}/log-stream",
                               "secret-key")
    stream = running()
    stream.log(_line(1, _ack=lambda: None, serviceName="main"))
    sock, _ = server.accept()
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"POST /device/v2/{device.uuid}/log-stream HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/x-ndjson"
    assert headers["Content-Encoding"] == "gzip" and headers["Transfer-Encoding"] == "chunked"
    assert headers["Authorization"] == "Bearer secret-key" and headers["User-Agent"] == "Supervisor/test"
    while body.count(b"\r\n") < 2:
        body += sock.recv(65536)
    size, _, rest = body.partition(b"\r\n")
    piece = rest[: int(size, 16)]
    text = zlib.decompressobj(31).decompress(piece)
    assert text == b'{"message":"line 1","timestamp":1700000000001,"isStdErr":false,"serviceId":7}\n'
    sock.close()
    server.close()


def test_acks_only_after_the_write_and_the_grace(device: Device, running) -> None:
    """No ack while the stream waits (not provisioned); acks once the lines were written and the
    connection stood its grace; a message not for the cloud (no ``serviceId``) is acknowledged with
    the line queued before it, or at once when nothing is queued."""
    device.mode = WAIT
    acked: dict[int, float] = {}
    stream = running(StreamSettings(grace_s=1.0, backoff_min_s=0.2, backoff_max_s=1.0))
    for i in range(20):
        stream.log(_line(i, _ack=lambda i=i: acked.setdefault(i, time.time())))
    dropped: list[bool] = []
    stream.log({"message": "no service", "timestamp": 1,
                "_ack": lambda: dropped.append(19 in acked)})
    time.sleep(1.0)
    assert not acked and not device.lines() and not dropped
    switched = time.time()
    device.mode = StreamTarget(device.url, device.key)
    wait_for(lambda: len(acked) == 20, "20 acks")
    # Line 19's ack and the dropped message's are called one after the other on the stream's thread.
    wait_for(lambda: dropped, "the dropped message's ack")
    assert dropped == [True]  # right after line 19's ack
    alone: list[bool] = []
    stream.log({"message": "no service", "timestamp": 2, "_ack": lambda: alone.append(True)})
    assert alone == [True]
    # Acked once written and the grace stood; the receiver may store them a moment later.
    wait_for(lambda: len(device.lines()) >= 20, "the 20 lines stored")
    assert len(device.lines()) == 20
    # The connection was made after the switch, and the 1 s grace from the connect stood before any
    # ack (a bound on the device's side: the receiver's clock reading can lag under load).
    assert min(acked.values()) >= switched + 1.0 - 0.05


def test_off_drops_and_acks_wait_keeps(device: Device, running) -> None:
    """Off (local mode, logging off): discarded and acknowledged within ``off_check_s``; wait (not
    provisioned): kept, and sent once there is a target."""
    device.mode = OFF
    stream = running()
    wait_for(lambda: device.read_since(0, OFF), "the thread to read the mode")
    acked: list[int] = []
    for i in range(5):
        stream.log(_line(i, _ack=lambda i=i: acked.append(i)))
    wait_for(lambda: acked == list(range(5)) and stream.pending_bytes == 0, "the lines discarded")
    reads = len(device.reads)
    device.mode = WAIT
    wait_for(lambda: device.read_since(reads, WAIT), "the thread to read the new mode")
    for i in range(5, 10):
        stream.log(_line(i))
    time.sleep(0.5)
    assert stream.pending_bytes > 0 and not device.lines()
    device.mode = StreamTarget(device.url, device.key)  # provisioned: what was kept goes out
    wait_for(lambda: _numbers(device.lines()) == list(range(5, 10)), "the kept lines")


def test_backoff_doubles_from_the_minimum(device: Device, running,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """Four refused connections (reset): the attempts are min(2^n x 0.2 s, 1 s) apart (x 0.5-1.0
    jitter), then the stream connects and delivers."""
    caplog.set_level(logging.DEBUG, logger="supervisor.logs.cloud")
    device.api.fault("reset", path="log-stream", count=4)
    stream = running()
    stream.log(_line(0))
    wait_for(lambda: _numbers(device.lines()) == [0], "the line after the refusals", timeout=30)
    assert len(device.streams()) >= 4, device.streams()
    # On the device's side (the fake's clock reading of a request can lag under load): each failure
    # logs the delay the stream chose (to 0.1 s), then the next attempt logs its connect.
    events = [(r.created, r.getMessage()) for r in caplog.records if r.name == "supervisor.logs.cloud"]
    failures = [(at, float(m[1])) for at, text in events
                if (m := re.search(r"reconnecting in ([\d.]+) s", text))]
    connects = [at for at, text in events if text.startswith("Log stream connected")]
    assert len(failures) >= 3, events
    for n, (failed_at, delay) in enumerate(failures[:3], start=1):
        expected = min(0.2 * 2 ** (n - 1), 1.0)
        assert expected * 0.5 - 0.05 <= delay <= expected + 0.05, (n, failures)
        # Never earlier than the delay; later only by a descheduled thread on a loaded machine.
        gap = min(at for at in connects if at >= failed_at) - failed_at
        assert delay - 0.06 <= gap <= delay + 1.0, (n, gap, failures)


def test_pending_lines_survive_an_outage(device: Device, running) -> None:
    """Lines logged while the cloud is down are kept and sent once it is back, once each."""
    stream = running()
    stream.log(_line(0))
    wait_for(lambda: _numbers(device.lines()) == [0], "the first line")
    device.api.stop()
    for i in range(1, 200):
        stream.log(_line(i))
    time.sleep(1.5)  # several refused reconnects
    device.api.start()
    wait_for(lambda: len(device.lines()) >= 200, "the lines of the outage", timeout=30)
    time.sleep(0.3)
    assert _numbers(device.lines()) == list(range(200))


def test_refusal_during_the_grace_requeues_what_was_written(device: Device, running) -> None:
    """A server that refuses (here a revoked key, answered late) stored nothing: the lines written
    on that connection go out again on the next one, once."""
    bad = Device(device.api)
    device.api.revoke(key=bad.key)
    device.mode = StreamTarget(device.url, bad.key)
    device.api.fault("slow", path="log-stream", delay=0.5, count=1)  # the 401 comes after our writes
    stream = running(StreamSettings(grace_s=3.0, backoff_min_s=0.2, backoff_max_s=1.0))
    for i in range(50):
        stream.log(_line(i))
    wait_for(lambda: any(r["status"] == 401 for r in device.streams()), "the refusal")
    device.mode = StreamTarget(device.url, device.key)
    wait_for(lambda: len(device.lines()) >= 50, "the requeued lines")
    time.sleep(0.3)
    assert _numbers(device.lines()) == list(range(50))


def test_idle_stream_ends_with_201_and_reopens(device: Device, running) -> None:
    stream = running(StreamSettings(grace_s=0.2, idle_s=0.6, backoff_min_s=0.2))
    stream.log(_line(0))
    wait_for(lambda: [r["status"] for r in device.streams()] == [201], "the idle stream's 201")
    stream.log(_line(1))
    wait_for(lambda: _numbers(device.lines()) == [0, 1], "the next line on a new stream")
    assert len({r["stream"] for r in device.lines()}) == 2


def test_stop_flushes_and_ends_the_body(device: Device) -> None:
    stream = device.stream(StreamSettings(grace_s=0.2, flush_interval_s=0.5))
    stream.start()
    stream.log(_line(0))
    wait_for(lambda: device.lines(), "the first line")
    for i in range(1, 100):
        stream.log(_line(i))
    assert stream.stop()
    assert _numbers(device.lines()) == list(range(100))
    # The fake logs a stream's request once its 201 has gone out: a moment after the device read it.
    wait_for(lambda: device.streams(), "the stream's request logged")
    assert [r["status"] for r in device.streams()] == [201]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _produce(stream: CloudLogStream, rate: float, stop: threading.Event, count: list[int],
             acked: list[int], honour_room: bool = False) -> None:
    """Lines at ``rate`` per second, in batches of 10 (as the hub hands them on), the last of each
    batch carrying the batch's ack; ``honour_room``: paused while the stream pushes back, as the
    engine log source is (supervisor/logs/docker_source.py)."""
    started = time.monotonic()
    i = 0
    while not stop.is_set():
        if honour_room and not stream.wait_for_room(0.1):
            continue
        due = started + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(min(due - now, 0.01))
            continue
        batch = [_line(n, isStdErr=n % 2 == 1) for n in range(i, i + 10)]
        batch[-1]["_ack"] = lambda last=i + 9: acked.append(last)
        stream.log_many(batch)
        i += 10
    count.append(i)


@pytest.mark.parametrize("honour_room", [False, True], ids=["plain", "backpressured"])
def test_outage_under_load_is_bounded_and_counted(device: Device, running, record_property,
                                                  honour_room: bool) -> None:
    """4000 lines/s; the cloud goes away for 4 s and comes back: pending memory stays at its
    budget, the lines missing are exactly those the Suppressed line counts, the stream resumes by
    itself, nothing is lost or repeated while the cloud is up, and acks come in order for exactly
    the batches delivered. A producer that honours ``wait_for_room`` is not held up by an outage
    (the stream drops and counts then, as the reference does)."""
    stream = running()
    stop, count, acked = threading.Event(), [], []
    producer = threading.Thread(target=_produce, args=(stream, 4000.0, stop, count, acked, honour_room))
    rss_before = _rss_kib()
    producer.start()
    try:
        wait_for(lambda: len(device.lines()) > 2000, "lines flowing")
        device.api.stop()
        peak_pending, peak_rss = 0, 0
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            peak_pending = max(peak_pending, stream.pending_bytes)
            peak_rss = max(peak_rss, _rss_kib())
            time.sleep(0.05)
        device.api.start()
        wait_for(lambda: device.api.log_streams()["opened"] >= 1, "the stream back", timeout=30)
        time.sleep(2.0)  # under load while the cloud is up again
    finally:
        stop.set()
        producer.join()
    total = count[0]

    def delivered() -> list[dict[str, Any]] | None:
        lines = device.lines()
        return lines if _numbers(lines)[-1:] == [total - 1] else None

    lines = wait_for(delivered, "the last line", timeout=30)
    numbers = _numbers(lines)
    suppressed = [int(m[1]) for r in lines if (m := SUPPRESSED.match(r["message"]))]
    assert numbers == sorted(set(numbers)), "a line repeated or out of order"
    missing = total - len(numbers)
    assert suppressed and sum(suppressed) == missing, (suppressed, missing)
    assert stream.dropped_total == missing
    warning = next(r for r in lines if SUPPRESSED.match(r["message"]))
    assert warning["isSystem"] and warning["isStdErr"]
    # Nothing missing before the outage or after the recovery: the gap is one run of numbers.
    gaps = [(a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b != a + 1]
    assert len(gaps) == 1, gaps
    # Every batch acknowledged exactly once and in order (hub.py LogBackend): the dropped ones with
    # their Suppressed line, after every line before the gap and before every line after it.
    wait_for(lambda: len(acked) == total // 10, "every batch acked")
    assert acked == list(range(9, total, 10))
    budget = FAST.max_pending_bytes
    assert peak_pending <= budget
    record_property("peak_pending_bytes", peak_pending)
    record_property("rss_growth_kib", peak_rss - rss_before)
    print(f"\n{total} lines, {missing} suppressed during the outage, pending peak {peak_pending} B "
          f"(budget {budget}), RSS growth {peak_rss - rss_before} KiB")
    assert peak_rss - rss_before < 16 * 1024


def test_a_slow_receiver_pushes_back_instead_of_dropping(device: Device, running) -> None:
    """The cloud is up but stops reading for 3 s (the fake's ``stall``): with the buffer full the
    stream pushes back (``wait_for_room`` False) and the producer, like the engine log source,
    pauses; nothing is dropped, no Suppressed line, every line arrives once and in order."""
    import os

    settings = replace(FAST, max_pending_bytes=16 * 1024)
    device.api.fault("stall", path="log-stream", delay=3.0, count=1)
    stream = running(settings)
    waits = 0
    peak = 0
    i = 0
    pad = os.urandom(200).hex()  # 400 characters that gzip cannot shrink much
    ends = time.monotonic() + 5.0
    while time.monotonic() < ends:
        if not stream.wait_for_room(0.1):
            waits += 1
            continue
        stream.log_many([_line(n, message=f"line {n} {pad}") for n in range(i, i + 10)])
        i += 10
        peak = max(peak, stream.pending_bytes)
    lines = wait_for(lambda: (ls := device.lines()) and _numbers(ls)[-1:] == [i - 1] and ls,
                     "every line", timeout=30)
    assert _numbers(lines) == list(range(i))
    assert not [r for r in lines if SUPPRESSED.match(r["message"])]
    assert stream.dropped_total == 0
    assert waits > 0, "the stall never filled the buffer"
    assert peak <= settings.max_backpressure_bytes
    print(f"\n{i} lines, {waits} waits for room, pending peak {peak} B")


def test_dropped_lines_are_acknowledged_with_their_suppressed_line(device: Device, running) -> None:
    """The ack rule for drops (hub.py LogBackend): while the cloud is unreachable nothing is
    acknowledged, neither the lines pending nor those dropped (an ack for a dropped line would move
    its source past pending ones); once the cloud is back the acks come in order, the dropped
    batches' exactly when their Suppressed line went out, and the held acks stay bounded."""
    settings = replace(FAST, max_pending_bytes=4096, max_held_acks=64)
    device.mode = WAIT  # not reachable yet: the buffer fills, then drops
    stream = running(settings)
    acked: list[int] = []
    events: list[tuple[str, int]] = []
    for b in range(200):  # 200 batches of 5 lines
        batch = [_line(n) for n in range(b * 5, b * 5 + 5)]
        batch[-1]["_ack"] = lambda last=b * 5 + 4: (acked.append(last), events.append(("ack", last)))
        stream.log_many(batch)
    time.sleep(0.5)
    assert not acked and stream.dropped_total > 0
    kept = 1000 - stream.dropped_total
    assert len(stream._held_acks) == 64  # bounded: the oldest forgotten, none called early
    device.mode = StreamTarget(device.url, device.key)
    lines = wait_for(lambda: (ls := device.lines()) and any(SUPPRESSED.match(r["message"]) for r in ls)
                     and ls, "the Suppressed line")
    assert _numbers(lines) == list(range(kept))
    assert int(SUPPRESSED.match(lines[-1]["message"])[1]) == 1000 - kept
    forgotten = (1000 - kept) // 5 - 64 + (1 if kept % 5 else 0)
    expected = [n for n in range(4, 1000, 5) if n < kept] + list(range(4, 1000, 5))[-64:]
    wait_for(lambda: acked == expected, "the acks in order", context=lambda: (acked, forgotten))
    stream.log(_line(1000, _ack=lambda: acked.append(1000)))
    wait_for(lambda: acked[-1:] == [1000], "a line after the gap acked after it")


def test_settings_scale_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSUPERVISOR_LOG_STREAM_TIME_SCALE", "0.01")
    scaled = StreamSettings.from_env()
    assert (scaled.grace_s, scaled.idle_s, scaled.backoff_min_s, scaled.backoff_max_s) == pytest.approx(
        (0.05, 0.6, 0.05, 3.0))
    assert scaled.flush_interval_s == 0.1 and scaled.max_pending_bytes == 256 * 1024




def test_runtime_target_follows_mode_provisioning_and_log_control(tmp_path: Path) -> None:
    """runtime.py: unmanaged has no stream; a managed device waits until provisioned, then streams to
    ``logsEndpoint`` (else ``apiEndpoint``); local mode and ``SUPERVISOR_LOG_CONTROL=false`` turn it
    off, and leaving them turns it back on (§8.3)."""
    from supervisor.runtime import Settings, Supervisor
    from tests.fixtures.device import write_config_json

    unmanaged_root = tmp_path / "unmanaged"
    (unmanaged_root / "mnt/boot").mkdir(parents=True)
    sup = Supervisor(Settings(root=str(unmanaged_root), port=0, host="127.0.0.1", led="none"))
    try:
        assert sup.cloud_logs is None and all(s.name != "cloud-logs" for s in sup.subsystems)
    finally:
        sup.config.db.close()

    root = tmp_path / "managed"
    config = {"uuid": "a" * 32, "apiEndpoint": "https://api.example/", "deviceApiKey": "k" * 32}
    write_config_json(root, config)
    sup = Supervisor(Settings(root=str(root), port=0, host="127.0.0.1", led="none"))
    try:
        assert sup.cloud_logs is not None and sup.subsystems[0] is sup.cloud_logs
        # not balenaOS, no journald container yet: the journald source is not made (no journalctl)
        assert sup.journald_logs is not None and sup.journald_logs.made is None
        assert sup._log_stream_target() == WAIT  # not registered yet
        sup.config.json.set(registered_at=1, deviceId=5)
        target = sup._log_stream_target()
        assert target == StreamTarget(f"https://api.example/device/v2/{'a' * 32}/log-stream", "k" * 32)
        assert "k" * 32 not in repr(target)
        sup.config.json.set(logsEndpoint="https://logs.example")
        assert sup._log_stream_target().url == f"https://logs.example/device/v2/{'a' * 32}/log-stream"
        sup.config.set_db(localMode=True)
        assert sup._log_stream_target() == OFF
        sup.config.set_db(localMode=False)
        assert isinstance(sup._log_stream_target(), StreamTarget)
        sup.config.set_db(loggingEnabled=False)
        assert sup._log_stream_target() == OFF
    finally:
        sup.config.db.close()


def test_codec_batches_go_as_they_are(device: Device, running) -> None:
    """A batch of codec records (supervisor/logs/codec.py: message, isStdErr, timestamp, serviceId)
    is sent without a per-line copy: the §8.2 fields only (the last line's ``_ack`` stripped, the
    hub's record untouched), the batch acknowledged once; a batch with a line to cut goes the
    per-line way and is cut to 10 000 characters."""
    from supervisor.logs.codec import Demuxer

    payload = b"".join(b"2026-01-01T00:00:00.%03dZ line %d\n" % (n, n) for n in range(20))
    batch = Demuxer(7, multiplexed=False, timestamps=True).feed(payload)
    acked: list[int] = []
    batch[-1]["_ack"] = lambda: acked.append(19)
    long = Demuxer(7, multiplexed=False, timestamps=True).feed(
        b"2026-01-01T00:00:01.000Z line 20 " + b"x" * 20_000 + b"\n")
    stream = running()
    stream.log_many(batch)
    stream.log_many(long)
    lines = wait_for(lambda: (ls := device.lines()) and len(ls) == 21 and ls, "21 lines")
    assert _numbers(lines) == list(range(21))
    assert "_ack" in batch[-1]  # the hub's message is shared with the local streams: not changed
    assert lines[0]["timestamp"] == 1767225600000 and lines[0]["serviceId"] == 7
    assert len(lines[-1]["message"]) == 10_000 and lines[-1]["message"].endswith("[...]")
    wait_for(lambda: acked == [19], "the batch acked once")

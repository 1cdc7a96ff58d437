"""The log pipeline's plain-data parts: routing a container to a source (spec §8.1), resume positions,
the hub's batches and acknowledgements, the local stream's rendering, system message texts (§8.2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from array import array
from pathlib import Path
from typing import Any

import pytest

from supervisor.api.streams import LogLines
from supervisor.atomic import RAM_FILESYSTEMS, filesystem_type
from supervisor.logs import codec
from supervisor.logs.hub import LogHub
from supervisor.logs.monitor import ContainerInfo, Route, log_level, route
from supervisor.logs.positions import DEFAULT_INTERVAL_S, RAM_INTERVAL_S, PositionStore, Tracker
from supervisor.logs.system import compose
from tests.fixtures.device import wait_for


def inspect(driver: str = "json-file", env: list[str] | None = None, **labels: str) -> dict[str, Any]:
    base = {"io.balena.supervised": "true", "io.balena.app-id": "7", "io.balena.service-id": "21",
            "io.balena.service-name": "main"}
    return {"Id": "c" * 64, "Config": {"Labels": {**base, **labels}, "Env": env or ["A=1"]},
            "HostConfig": {"LogConfig": {"Type": driver, "Config": {}}}, "State": {"Running": True}}


@pytest.mark.parametrize(("driver", "source"), [
    ("json-file", "engine"), ("local", "engine"), ("journald", "journald"), ("none", None), ("syslog", None),
])
def test_the_log_driver_chooses_the_source(driver: str, source: str | None) -> None:
    info = ContainerInfo.from_inspect(inspect(driver))
    assert (info.service_id, info.app_id, info.service_name, info.log_driver) == (21, 7, "main", driver)
    assert route(info).source == source


@pytest.mark.parametrize(("value", "level"), [
    (None, "all"), ("", "all"), ("info", "all"), ("none", None), ("NONE", None), ("err", "err"),
    ("error", "err"), ("Error", "err"),
])
def test_balena_logs_level(value: str | None, level: str | None) -> None:
    env = [] if value is None else [f"BALENA_LOGS_LEVEL={value}"]
    assert log_level(ContainerInfo.from_inspect(inspect(env=env)).env) == level
    routed = route(ContainerInfo.from_inspect(inspect(env=env)))
    expected = Route(None, reason="BALENA_LOGS_LEVEL=none") if level is None else Route("engine", level)
    assert routed == expected


def test_only_supervised_service_containers_of_managed_apps() -> None:
    plain = inspect()
    del plain["Config"]["Labels"]["io.balena.supervised"]
    assert route(ContainerInfo.from_inspect(plain)).source is None
    no_service = inspect()
    del no_service["Config"]["Labels"]["io.balena.service-id"]
    assert route(ContainerInfo.from_inspect(no_service)).source is None
    info = ContainerInfo.from_inspect(inspect())
    assert route(info, frozenset({"8"})).source is None
    assert route(info, frozenset({"7"})).source == "engine"
    assert ContainerInfo.from_inspect({"Id": "x"}).log_driver == ""  # nothing at all: no crash


# ------------------------------------------------------------------------------------ positions
def test_a_position_counts_the_lines_within_the_margin() -> None:
    tracker = Tracker(0, margin_ms=100)
    assert tracker.position() == (0, 0)
    tracker.add(array("q", [1000, 1000, 1001]))
    assert tracker.position() == (901, 3)  # since 100 ms before the newest, all three after it
    # stderr and stdout cross: a line stamped earlier than one delivered before is still counted
    tracker.add(array("q", [1200, 1150, 1300]))
    assert tracker.position() == (1200, 2)  # 1200 and 1300; 1150 < since is not returned again


def test_a_resumed_stream_keeps_its_start_until_the_skipped_lines_came_back() -> None:
    tracker = Tracker(500, carry=3, margin_ms=100)
    tracker.add(array("q", [900]))  # new lines before the replay: impossible, but never lose the carry
    assert tracker.position() == (500, 4)
    tracker.add(array("q", [500, 520, 530]), replayed=True)
    assert tracker.position() == (800, 1)


def test_positions_are_written_atomically_and_only_when_changed(tmp_path: Path) -> None:
    path = tmp_path / "log-positions.json"
    store = PositionStore(path, interval_s=0, margin_ms=0)
    tracker = store.track("a" * 64, 0, 0)
    tracker.add(array("q", [10, 11, 11]))
    assert store.flush()
    assert json.loads(path.read_text()) == {"a" * 64: [11, 2]}
    assert not store.flush()  # unchanged
    again = PositionStore(path)
    assert again.saved("a" * 64) == (11, 2)
    again.retain(set())
    again.flush(force=True)
    assert json.loads(path.read_text()) == {}


def test_a_write_cut_short_by_a_kill_is_cleared_at_load_though_nothing_is_written(tmp_path: Path) -> None:
    """A kill between the temp file and the rename leaves ``.log-positions.json.<pid>.<x>.tmp``; the
    next run's positions may never change (no new line), so the load clears it, not the next write.
    A live writer's temp file is a write under way and stays (found red in fresh-clone CI run 22)."""
    path = tmp_path / "log-positions.json"
    path.write_text('{"' + "a" * 64 + '":[11,2]}')
    dead = subprocess.Popen(["true"])
    dead.wait()
    torn = tmp_path / f".log-positions.json.{dead.pid}.abc123.tmp"
    live = tmp_path / f".log-positions.json.{os.getpid()}.def456.tmp"
    torn.write_text('{"a":')
    live.write_text("")
    store = PositionStore(path)
    assert not torn.exists() and live.exists()
    assert store.saved("a" * 64) == (11, 2) and not store.flush()


def test_unreadable_positions_start_over(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{not json")
    assert PositionStore(path).saved("x") is None


# ------------------------------------------------------------------------------------ hub
class Acknowledging:
    acknowledges = True

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def log_many(self, messages: list[dict[str, Any]]) -> None:
        self.got += messages

    def log(self, message: dict[str, Any]) -> None:  # pragma: no cover - log_many is preferred
        raise AssertionError("log_many is called for a batch")


def test_a_batch_is_delivered_when_acknowledged_else_when_published() -> None:
    hub = LogHub()
    delivered: list[int] = []
    hub.publish_many([{"message": "a"}], lambda: delivered.append(1))
    assert delivered == [1]  # nobody acknowledges: publishing is delivery
    backend = Acknowledging()
    hub.add_backend(backend)
    batch = [{"message": "b"}, {"message": "c"}]
    hub.publish_many(batch, lambda: delivered.append(2))
    assert delivered == [1] and "_ack" not in backend.got[0] and "_ack" in backend.got[1]
    backend.got[1]["_ack"]()
    assert delivered == [1, 2]


def test_the_local_stream_renders_a_batch_with_names_first_and_no_private_keys() -> None:
    hub = LogHub()
    sub = hub.subscribe()
    hub.add_backend(Acknowledging())
    lines = LogLines(sub, service_names=lambda: {21: 'ma"in'}, active=lambda: True)
    batch = [{"message": f"line {i}\n{{x", "isStdErr": False, "timestamp": i, "serviceId": 21}
             for i in range(3)]
    hub.publish_many(batch, lambda: None)
    hub.publish({"message": "sys", "isSystem": True, "timestamp": 9})
    hub.publish({"message": "unknown", "isStdErr": True, "timestamp": 9, "serviceId": 99})
    out = b"".join(lines.read(0) or b"" for _ in range(3))
    rendered = [json.loads(line) for line in out.splitlines()]
    assert rendered == [{"serviceName": 'ma"in', **m} for m in
                        [{k: v for k, v in b.items() if k != "_ack"} for b in batch]] + [
        {"message": "sys", "isSystem": True, "timestamp": 9}]
    assert all(list(r)[0] == "serviceName" for r in rendered[:3])


# ------------------------------------------------------------------------------------ system messages
@pytest.mark.parametrize(("human", "fields", "text", "is_error"), [
    ("Killing service", {"service": "main", "image": "reg/img:1"}, "Killing service 'main reg/img:1'", False),
    ("Failed to start service", {"service": "main", "image": "img", "error": "boom"},
     "Failed to start service 'main img' due to 'boom'", True),
    ("Failed to download image", {"image": "img", "error": ""},
     "Failed to download image 'img' due to 'Unknown cause'", True),
    ("Creating network", {"network": "default"}, "Creating network 'default'", False),
    ("Removing volume", {"volume": "data"}, "Removing volume 'data'", False),
    ("Taking update locks", {}, "Taking update locks", False),
    ("Something", {"fields": ["a", "b"]}, "Something 'a,b'", False),
])
def test_system_message_composition(human: str, fields: dict[str, Any], text: str, is_error: bool) -> None:
    assert compose(human, fields) == (text, is_error)


def test_cloud_acks_keep_positions_exact_when_it_holds_drops_or_is_off() -> None:
    """hub.py's ack rule with the real cloud backend and a real tracker: while the stream holds lines
    (not provisioned) and drops past its budget, the position does not move (a restart re-reads what
    is pending, skips nothing); switched off, everything is discarded and acknowledged in order, and
    the position counts every line (a restart repeats nothing)."""
    import time

    from supervisor.logs.cloud import OFF, WAIT, CloudLogStream, StreamSettings

    mode = [WAIT]
    stream = CloudLogStream(lambda: mode[0], settings=StreamSettings(max_pending_bytes=2048,
                                                                     off_check_s=0.05, idle_wake_s=0.05))
    hub = LogHub()
    hub.add_backend(stream)
    tracker = Tracker(since_ms=1000, margin_ms=10_000)
    stream.start()
    try:
        for b in range(40):  # 40 batches of 5 lines, 1 ms apart: far past the 2 KiB budget
            stamps = array("q", range(1000 + b * 5, 1005 + b * 5))
            batch = [{"message": f"line {t}", "timestamp": t, "serviceId": 21, "isStdErr": False}
                     for t in stamps]
            hub.publish_many(batch, lambda s=stamps: tracker.add(s))
        time.sleep(0.3)
        assert stream.dropped_total > 0
        assert tracker.position() == (1000, 0)  # nothing acknowledged: all is re-read after a restart
        mode[0] = OFF
        wait_for(lambda: tracker.position() == (1000, 200), "every line discarded and acknowledged",
                 timeout=30, interval=0.02, context=tracker.position)
    finally:
        stream.stop()


class Recording:
    """A LogSource that records what the monitor asks of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def start(self) -> None:
        self.calls.append(("start",))

    def stop(self) -> None:
        self.calls.append(("stop",))

    def attach(self, container_id: str, service_id: int, log_level: str, **extra: Any) -> None:
        self.calls.append(("attach", container_id, service_id, log_level))

    def detach(self, container_id: str) -> None:
        self.calls.append(("detach", container_id))


class Inspected:
    """The engine's answers to ``GET /containers/<id>/json``, as recorded data."""

    def __init__(self, *containers: dict[str, Any]) -> None:
        self.containers = {c["Id"]: c for c in containers}

    def get_json(self, path: str) -> dict[str, Any]:
        return self.containers[path.split("/")[2]]


def test_a_journald_container_goes_to_the_journald_source_made_only_then() -> None:
    """§8.1 routing by driver through the monitor: a json-file container is read by the engine source
    and makes no journald source (no journalctl on an idle dev board); the first journald-driver
    container makes it, started, and attaches to it; destroy detaches it. Eager (balenaOS): made at
    start."""
    from supervisor.logs.monitor import LazySource, LogMonitor

    plain = {**inspect("json-file"), "Id": "a" * 64}
    journal = {**inspect("journald", env=["BALENA_LOGS_LEVEL=error"]), "Id": "b" * 64}
    engine, made = Recording(), []
    lazy = LazySource(lambda: made.append(Recording()) or made[-1])
    monitor = LogMonitor(Inspected(plain, journal), {"engine": engine, "journald": lazy})  # type: ignore[arg-type]
    lazy.start()
    monitor._attach("a" * 64, at_start=True)
    assert engine.calls[0][:4] == ("attach", "a" * 64, 21, "all") and lazy.made is None
    monitor._attach("b" * 64, at_start=True)
    assert len(made) == 1 and made[0].calls == [("start",), ("attach", "b" * 64, 21, "err")]
    monitor._event({"Action": "destroy", "Actor": {"ID": "b" * 64, "Attributes": {
        "io.balena.supervised": "true", "io.balena.app-id": "7"}}})
    assert made[0].calls[-1] == ("detach", "b" * 64) and len(engine.calls) == 1
    lazy.stop()
    assert made[0].calls[-1] == ("stop",)

    eager = LazySource(lambda: made.append(Recording()) or made[-1], eager=True)
    eager.start()
    assert eager.made is made[-1] and made[-1].calls == [("start",)]


def test_filesystem_type_is_the_longest_mount_above_a_path(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\n"
                      "tmpfs /tmp tmpfs rw 0 0\n"
                      "/dev/vdb /tmp/a\\040b ext4 rw 0 0\n"
                      "tmpfs /tmpx tmpfs rw 0 0\n")
    assert filesystem_type("/tmp/balena-supervisor/x", str(mounts)) == "tmpfs"
    assert filesystem_type("/tmp/a b/c", str(mounts)) == "ext4"  # the escaped space
    assert filesystem_type("/tmpy/z", str(mounts)) == "ext4"  # a prefix of a name is not a parent
    assert filesystem_type("/x", str(tmp_path / "missing")) is None
    # The machine's own: /dev/shm is a tmpfs on every Linux host and container.
    assert filesystem_type("/dev/shm/not-yet/made") == "tmpfs"


def test_positions_on_a_ram_filesystem_are_written_within_milliseconds(tmp_path: Path) -> None:
    ram = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="pysupervisor-test-"))
    try:
        assert PositionStore(ram / "log-positions.json").interval_s == RAM_INTERVAL_S
        if filesystem_type(tmp_path) not in RAM_FILESYSTEMS:
            assert PositionStore(tmp_path / "log-positions.json").interval_s == DEFAULT_INTERVAL_S
    finally:
        shutil.rmtree(ram)


CID = "c" * 64


def source_with_a_stream(store: PositionStore) -> tuple[Any, Any, list[Any]]:
    """A real engine source (no engine: batches are handed to ``_deliver``) whose publish keeps each
    batch's acknowledgement, and one stream of container :data:`CID` on ``store``."""
    from supervisor.logs.docker_source import REPEAT_WINDOW_MS, DockerLogSource, _Stream
    from supervisor.logs.engine_http import EngineAddress

    acks: list[Any] = []
    source = DockerLogSource(lambda records, delivered=None: acks.append(delivered),
                             engine=EngineAddress(unix_path="/nonexistent.sock"), positions=store)
    st = _Stream(CID, 7, "all", False, 0, 0, False, published=Tracker(0, 0), delivered=store.track(CID, 0, 0),
                 repeats=codec.RepeatFilter(REPEAT_WINDOW_MS))
    return source, st, acks


def deliver(source: Any, st: Any, stamp: int) -> None:
    """One line stamped ``stamp`` (ms) through the source's delivery (repeats, positions, publish)."""
    source._deliver(st, [{"message": "x", "isStdErr": False, "timestamp": stamp, "serviceId": 7}],
                    array("i", [0]))


@pytest.mark.parametrize("interval", [0.0, 60.0])
def test_an_acknowledged_batch_moves_the_stored_position_at_once(tmp_path: Path, interval: float) -> None:
    """The engine source stores a batch's position when the backend acknowledges it, not at its next
    round: a kill -9 after the acknowledgement repeats nothing. A disk's interval holds it back."""
    path = tmp_path / "log-positions.json"
    store = PositionStore(path, interval_s=interval, margin_ms=0)
    source, st, acks = source_with_a_stream(store)
    cid = CID
    store.flush(force=True)
    before = path.read_text()
    for stamp in (1000, 2000):
        deliver(source, st, stamp)
    assert path.read_text() == before  # published, not acknowledged
    acks[0]()
    if interval:
        assert path.read_text() == before  # within the interval: written at a later flush
    else:
        assert json.loads(path.read_text()) == {cid: [1000, 1]}
        acks[1]()
        assert json.loads(path.read_text()) == {cid: [2000, 1]}


def test_a_change_held_back_by_the_interval_is_due_and_written_then(tmp_path: Path) -> None:
    path = tmp_path / "log-positions.json"
    store = PositionStore(path, interval_s=30.0, margin_ms=0)
    assert store.due_in() is None and not store.flush()  # nothing to write
    tracker = store.track("a" * 64, 0, 0)
    assert store.due_in() == 0  # a new stream: its position is to be written
    assert store.flush() and store.due_in() is None and not store.flush()  # nothing changed
    tracker.add(array("q", [10]))
    assert not store.flush()  # held back: written 30 s after the last write
    assert 29.0 < store.due_in() <= 30.0
    assert json.loads(path.read_text()) == {"a" * 64: [0, 0]}
    assert store.flush(force=True) and json.loads(path.read_text()) == {"a" * 64: [10, 1]}
    assert store.due_in() is None


def test_an_acknowledgement_from_another_thread_wakes_the_source_to_write_what_is_held_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Acks come on the cloud backend's thread; one held back by the interval is written when due by
    the source's thread, which they wake (it would otherwise sleep IDLE_WAKE_S, made long here)."""
    import threading

    from supervisor.logs import docker_source

    monkeypatch.setattr(docker_source, "IDLE_WAKE_S", 60.0)
    path = tmp_path / "log-positions.json"
    store = PositionStore(path, interval_s=0.2, margin_ms=0)
    source, st, acks = source_with_a_stream(store)
    cid = CID
    source.start()
    try:
        for stamp in (1000, 2000):
            deliver(source, st, stamp)
        wait_for(lambda: path.exists(), "the first write (the new stream)")
        acker = threading.Thread(target=lambda: [ack() for ack in acks])  # as the cloud's thread does
        acker.start()
        acker.join()
        wait_for(lambda: json.loads(path.read_text()) == {cid: [2000, 1]}, "the held-back position",
                 timeout=10.0, context=path.read_text)
    finally:
        source.stop()

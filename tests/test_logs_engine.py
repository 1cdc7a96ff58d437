"""The engine log pipeline end to end (issue #14): a real ``python -m supervisor`` in local mode on
the real engine, services built from busybox printing numbered lines, read back from
``GET /v2/local/logs`` (and, across a supervisor kill -9, from the acknowledging test sink
``SUPERVISOR_TEST_LOG_SINK``, which sees every run), compared with what the engine itself stored.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.device import SupervisorProcess, log_position_settled, wait_for
from tests.fixtures.docker import TEST_LABEL
from tests.test_reconcile import OWNER_LABEL, SETTLED, remove_app, start_local

pytestmark = pytest.mark.docker

UNICODE = 'ünï€😀 "q" \\ tab\tx'
LONG = 20000  # over the engine's 16 KiB split

#: Prints COUNT rounds (forever when 0) while /tmp/go exists (created at start unless PAUSED), each:
#: a stdout and a stderr line, every 7th round a long line, and a \r\n line; the round number
#: carries on across container restarts (/tmp/n); then a final line without newline, and exits.
#: Paused (no /tmp/go), it touches /tmp/idle between rounds: no line comes until /tmp/go is back.
SCRIPT = r"""#!/bin/sh
[ -n "$PAUSED" ] || touch /tmp/go
n=$(cat /tmp/n 2>/dev/null || echo 0)
end=$((n + COUNT))
while [ "$COUNT" = 0 ] || [ $n -lt $end ]; do
  if [ ! -e /tmp/go ]; then touch /tmp/idle; sleep 0.05; continue; fi
  echo "$NAME out $n UNICODE"
  echo "$NAME err $n" >&2
  if [ $((n % 7)) -eq 3 ]; then
    printf '%s long %s ' "$NAME" $n; head -c LONG /dev/zero | tr '\0' 'L'; echo
  fi
  printf '%s crlf %s\r\n' "$NAME" $n
  n=$((n + 1))
  echo $n > /tmp/n
  sleep "$DELAY"
done
printf '%s partial-end' "$NAME"
""".replace("UNICODE", UNICODE.replace("\\", "\\\\").replace('"', '\\"')).replace("LONG", str(LONG))


def expected_lines(name: str, start: int, stop: int, *, partial: bool) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    for n in range(start, stop):
        out.append((False, f"{name} out {n} {UNICODE}"))
        out.append((True, f"{name} err {n}"))
        if n % 7 == 3:
            out.append((False, f"{name} long {n} " + "L" * LONG))
        out.append((False, f"{name} crlf {n}"))
    if partial:
        out.append((False, f"{name} partial-end"))
    return out


class LogReader:
    """``GET /v2/local/logs`` over HTTP/1.0 (the body comes as is), every line kept."""

    def __init__(self, sup: SupervisorProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", sup.port), timeout=120)
        self.sock.sendall(b"GET /v2/local/logs HTTP/1.0\r\nHost: x\r\n\r\n")
        self.lines: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_for(lambda: self.lines, "the stream's first line", sup, timeout=30)
        assert self.lines[0] == {"message": "Streaming logs", "isSystem": True}

    def _run(self) -> None:
        data = b""
        head = True
        while True:
            try:
                chunk = self.sock.recv(262144)
            except OSError:
                return
            if not chunk:
                return
            data += chunk
            if head:
                if b"\r\n\r\n" not in data:
                    continue
                data = data.split(b"\r\n\r\n", 1)[1]
                head = False
            *complete, data = data.split(b"\n")
            self.lines.extend(json.loads(line) for line in complete if line)

    def service_lines(self, name: str) -> list[dict[str, Any]]:
        return [m for m in list(self.lines) if m.get("serviceName") == name]

    def system(self) -> list[str]:
        return [m["message"] for m in list(self.lines) if m.get("isSystem")]

    def close(self) -> None:
        self.sock.close()


def sink_lines(path: Path, service_id: int) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_bytes().decode()
    return [m for m in map(json.loads, text.splitlines()) if m.get("serviceId") == service_id]


def engine_lines(client: Any, container_id: str) -> list[tuple[bool, str]]:
    """What the engine stored, split per stream (a long line's pieces joined)."""
    out = []
    for stream, flag in (("stdout", False), ("stderr", True)):
        raw = client.api.logs(container_id, stdout=stream == "stdout", stderr=stream == "stderr")
        text = raw.decode()
        parts = text.split("\n")
        out += [(flag, p.removesuffix("\r")) for p in parts[:-1]]
        if parts[-1]:
            out.append((flag, parts[-1]))
    return out


def _missing(got: list[dict[str, Any]], expected: dict[bool, list[str]]) -> Any:
    have = per_stream([(m["isStdErr"], m["message"]) for m in got])
    return {flag: [t[:80] for t in expected[flag] if t not in have[flag]][:5] for flag in (False, True)}


def per_stream(lines: list[tuple[bool, str]]) -> dict[bool, list[str]]:
    return {flag: [text for f, text in lines if f == flag] for flag in (False, True)}


@pytest.fixture
def app(docker_client, make_image) -> Iterator[tuple[int, str, str]]:
    """(app id, image, owner) of a test app whose image runs SCRIPT; removed afterwards."""
    app_id, owner = int.from_bytes(os.urandom(3), "big") + 10**6, uuid.uuid4().hex
    image = f"pysupervisor-test/logs-{uuid.uuid4().hex[:10]}:latest"
    make_image(image, files={"run.sh": SCRIPT}, cmd=["sh", "/run.sh"], labels={OWNER_LABEL: owner})
    try:
        yield app_id, image, owner
    finally:
        remove_app(docker_client, app_id, owner)


def service(name: str, image: str, image_id: int, **env: str) -> dict[str, Any]:
    return {"serviceName": name, "imageId": image_id, "image": image,
            "environment": {"NAME": name, "COUNT": "0", "DELAY": "0.05", **env},
            "labels": {TEST_LABEL: "1"}, "running": True, "stop_grace_period": "0s", "restart": "no",
            "tty": False}  # balena's default is a TTY, which merges stderr into stdout


def target(app_id: int, services: dict[int, dict[str, Any]], *, commit: str | None = None,
           config: dict[str, str] | None = None) -> dict[str, Any]:
    app = {"name": "logs-test", "commit": commit or uuid.uuid4().hex, "releaseId": 1,
           "services": {str(sid): svc for sid, svc in services.items()}, "volumes": {}, "networks": {}}
    return {"local": {"name": "logs-device", "config": config or {}, "apps": {str(app_id): app}}}


def apply(sup: SupervisorProcess, body: dict[str, Any]) -> None:
    offset = len(sup.output())
    response = sup.post("/v2/local/target-state", json=body)
    assert response.status_code == 200, response.text
    wait_for(lambda: SETTLED in sup.output()[offset:], "the target to be applied", sup, timeout=120)


def container_of(client: Any, app_id: int, name: str) -> dict[str, Any]:
    (entry,) = [c for c in client.api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"})
                if c["Labels"]["io.balena.service-name"] == name]
    return entry


# ---------------------------------------------------------------------------------------------
def test_every_line_of_three_services_arrives_once_in_order(start_supervisor, device_root: Path,
                                                            docker_client, app) -> None:
    app_id, image, _ = app
    sup = start_local(start_supervisor, device_root, [app_id])
    reader = LogReader(sup)
    started_ms = int(time.time() * 1000)
    counts = {"one": 40, "two": 25, "three": 60}
    services = {21: service("one", image, 1, COUNT="40", DELAY="0.02"),
                22: service("two", image, 2, COUNT="25", DELAY="0.05"),
                23: service("three", image, 3, COUNT="60", DELAY="0")}
    try:
        apply(sup, target(app_id, services))
        for (sid, _svc), name in zip(services.items(), counts, strict=True):
            expected = per_stream(expected_lines(name, 0, counts[name], partial=True))
            wait_for(lambda name=name, expected=expected: len(reader.service_lines(name))
                     >= sum(map(len, expected.values())), f"every line of {name}", sup, timeout=90,
                     context=lambda name=name, expected=expected: _missing(reader.service_lines(name),
                                                                           expected))
            got = reader.service_lines(name)
            assert {m["serviceId"] for m in got} == {sid}
            assert per_stream([(m["isStdErr"], m["message"]) for m in got]) == expected
            assert list(got[0]) == ["serviceName", "message", "isStdErr", "timestamp", "serviceId"]
            for flag in (False, True):
                stamps = [m["timestamp"] for m in got if m["isStdErr"] == flag]
                assert stamps == sorted(stamps)
                assert started_ms - 2000 <= stamps[0] and stamps[-1] <= int(time.time() * 1000) + 2000
            # the engine stored exactly that
            cid = container_of(docker_client, app_id, name)["Id"]
            assert per_stream(engine_lines(docker_client, cid)) == expected
        # the system messages of the install, with the reference's composition (§8.2)
        # (published by the apply, possibly after the service's own lines: waited for, each)
        for name in counts:
            for human in ("Installing service", "Installed service", "Starting service", "Started service"):
                wait_for(lambda text=f"{human} '{name} {image}'": text in reader.system(),
                         f"the system message {human} '{name}'", sup, timeout=30, context=reader.system)
        # the engine's die event, which may trail the exited service's last line
        wait_for(lambda: f"Service exited 'three {image}'" in reader.system(), "three's exit message", sup,
                 context=reader.system)
        assert all(len(reader.service_lines(n)) == sum(map(len, per_stream(
            expected_lines(n, 0, counts[n], partial=True)).values())) for n in counts)
    finally:
        reader.close()


def test_restart_and_recreation_lose_nothing_and_repeat_nothing(start_supervisor, device_root: Path,
                                                                docker_client, app) -> None:
    app_id, image, _ = app
    sup = start_local(start_supervisor, device_root, [app_id])
    reader = LogReader(sup)
    try:
        apply(sup, target(app_id, {31: service("main", image, 1, GEN="1")}))
        wait_for(lambda: len(reader.service_lines("main")) > 20, "lines", sup)
        first = container_of(docker_client, app_id, "main")["Id"]
        docker_client.api.restart(first, timeout=0)  # die + start of the same container
        wait_for(lambda: any(m["message"] == "Restarting service 'main " + image + "'"
                             for m in list(reader.lines)), "the restart's system message", sup)
        before = len(reader.service_lines("main"))
        wait_for(lambda: len(reader.service_lines("main")) > before + 20, "lines after the restart", sup)
        # recreation by an update (a new environment: a new container)
        apply(sup, target(app_id, {31: service("main", image, 1, GEN="2")}))
        second = container_of(docker_client, app_id, "main")["Id"]
        assert second != first
        # The update's system messages, composed as §8.2: the engine's (a service exited) come from
        # its event stream, which may trail the apply's answer.
        for text in (f"Killing service 'main {image}'", f"Killed service 'main {image}'",
                     f"Installing service 'main {image}'", f"Started service 'main {image}'",
                     "Taking update locks", "Releasing update locks", f"Service exited 'main {image}'"):
            wait_for(lambda text=text: text in reader.system(), f"the system message {text!r}", sup,
                     context=reader.system)
        before = len(reader.service_lines("main"))
        wait_for(lambda: len(reader.service_lines("main")) > before + 20, "lines of the new container", sup)
        docker_client.api.stop(second, timeout=0)
        engine = per_stream(engine_lines(docker_client, second))
        # The new container's whole log arrived, once, after the old one's (which, killed, can only
        # be checked for order and gaps: its rounds are 0..k without repeat).

        def main_lines() -> dict[bool, list[str]]:
            return per_stream([(m["isStdErr"], m["message"]) for m in reader.service_lines("main")])

        def caught_up() -> bool:  # each stream's last line; a partial final one comes with the catch-up read
            lines = main_lines()
            return all(lines[err][-len(engine[err]):] == engine[err] for err in (True, False))

        wait_for(caught_up, "the new container's last lines", sup,
                 context=lambda: {err: [t[:40] for t in lines[-3:]] for err, lines in main_lines().items()})
        got = main_lines()
        errs = got[True]
        rounds = [int(text.split()[2]) for text in errs]
        first_run = rounds[: len(rounds) - len(engine[True])]
        assert first_run == list(range(len(first_run)))  # restart included: no gap, no repeat
        assert errs[len(first_run):] == engine[True]
        assert got[False][-len(engine[False]):] == engine[False]
    finally:
        reader.close()


def test_a_killed_supervisor_resumes_every_stream_where_it_was(start_supervisor, device_root: Path,
                                                               docker_client, app, tmp_path: Path) -> None:
    app_id, image, _ = app
    sink = tmp_path / "sink.ndjson"
    env = {"SUPERVISOR_TEST_LOG_SINK": str(sink)}
    sup = start_local(start_supervisor, device_root, [app_id], env=env)
    positions = device_root / "tmp/balena-supervisor/log-positions.json"
    apply(sup, target(app_id, {41: service("main", image, 1)}))
    cid = container_of(docker_client, app_id, "main")["Id"]
    wait_for(lambda: len(sink_lines(sink, 41)) > 30, "lines in the sink", sup)

    def pause() -> None:
        """Stop the script's rounds and wait until it is between two (a round under way when the
        flag goes writes its remaining lines: "delivered" must not be judged halfway through it)."""
        docker_client.api.exec_start(docker_client.api.exec_create(cid, ["rm", "-f", "/tmp/idle", "/tmp/go"]))

        def idle() -> bool:
            probe = docker_client.api.exec_create(cid, ["test", "-e", "/tmp/idle"])
            docker_client.api.exec_start(probe)
            return docker_client.api.exec_inspect(probe["Id"])["ExitCode"] == 0

        wait_for(idle, "the service's script to pause between rounds", sup, interval=0.3)

    def resume() -> None:
        docker_client.api.exec_start(docker_client.api.exec_create(cid, ["touch", "/tmp/go"]))

    def delivered_all() -> bool:
        return len(sink_lines(sink, 41)) == len(engine_lines(docker_client, cid))

    # Quiet, everything delivered and its position stored: then kill -9.
    pause()
    wait_for(delivered_all, "every line in the sink", sup)
    wait_for(log_position_settled(positions, cid), "the stream's position to be stored", sup)
    sup.stop(signal.SIGKILL)
    resume()  # lines the engine keeps while no supervisor reads them
    count = len(engine_lines(docker_client, cid))
    wait_for(lambda: len(engine_lines(docker_client, cid)) > count + 40, "lines while no supervisor runs")
    sup = start_local(start_supervisor, device_root, [app_id], env=env)
    wait_for(lambda: len(sink_lines(sink, 41)) > count + 60, "lines of the second run", sup)
    pause()
    wait_for(delivered_all, "every line in the sink after the restart", sup,
             context=lambda: (len(sink_lines(sink, 41)), len(engine_lines(docker_client, cid))))
    got = [(m["isStdErr"], m["message"]) for m in sink_lines(sink, 41)]
    assert per_stream(got) == per_stream(engine_lines(docker_client, cid))  # once each, in order


def test_log_levels_and_log_control(start_supervisor, device_root: Path, docker_client, app) -> None:
    app_id, image, _ = app
    sup = start_local(start_supervisor, device_root, [app_id])
    reader = LogReader(sup)
    try:
        services = {51: service("quiet", image, 1, BALENA_LOGS_LEVEL="none"),
                    52: service("errors", image, 2, BALENA_LOGS_LEVEL="error"),
                    53: service("all", image, 3)}
        commit = uuid.uuid4().hex
        apply(sup, target(app_id, services, commit=commit))
        cid = container_of(docker_client, app_id, "all")["Id"]
        wait_for(lambda: len(reader.service_lines("errors")) > 10 and len(reader.service_lines("all")) > 10,
                 "lines", sup)
        assert reader.service_lines("quiet") == []
        assert {m["isStdErr"] for m in reader.service_lines("errors")} == {True}
        assert {m["isStdErr"] for m in reader.service_lines("all")} == {False, True}
        # SUPERVISOR_LOG_CONTROL=false: nothing is published any more (§8.1, §8.6)
        apply(sup, target(app_id, services, commit=commit, config={"SUPERVISOR_LOG_CONTROL": "false"}))
        assert container_of(docker_client, app_id, "all")["Id"] == cid  # not recreated
        engine_count = len(engine_lines(docker_client, cid))
        wait_for(lambda: len(engine_lines(docker_client, cid)) > engine_count + 60, "more lines", sup)
        count = len(reader.service_lines("all"))
        wait_for(lambda: len(engine_lines(docker_client, cid)) > engine_count + 120, "still more lines", sup)
        assert len(reader.service_lines("all")) == count
    finally:
        reader.close()

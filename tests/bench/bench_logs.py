"""Benchmark of the engine log pipeline end to end (issue #14), on the real engine.

Run as a script from the repository root: ``python tests/bench/bench_logs.py [--seconds 60]``
(see tests/bench/README.md). For each path and each codec, in the same run:

* paths: ``cloud``, a managed supervisor provisioned against the fake balena API
  (tests/fakecloud, a separate process) that delivers to its log stream
  (``POST /device/v2/<uuid>/log-stream``, reference-supervisor.md §8.3, cloud-api.md §5.1);
  ``local``, a supervisor in local mode read through ``GET /v2/local/logs`` (§1.4);
* codecs: ``compiled``, the supervisor as shipped (``supervisor._logcodec``); ``twin``, the same
  supervisor with ``SUPERVISOR_LOG_CODEC=python`` (the pure-Python twin in the engine log source and
  in the local stream's encoder),

a real ``python -m supervisor`` process runs an app of 4 services (busybox, no TTY) that together
print ``--rate`` lines/s (default 10,000) for ``--seconds`` s, each line numbered per service
(``<name> <n> ...``). Local: the lines are read and checked as they come (every number once, in
order, per service). Cloud: the fake counts what it stored (``GET /_fake/log-counts``: per service
count, distinct numbers, min and max; polled with ``after`` while the run lasts, once in full at the
end), so no line is lost and none repeated when count == distinct == max == expected, min == 1.
Printed per path and codec: lines/s delivered, lines lost and repeated (and ``Suppressed``
warnings), the supervisor's CPU seconds per 100,000 lines (``/proc/<pid>/stat`` utime+stime over
the window from the warm-up's end to the last line) and its RSS growth over that window
(``VmRSS``, after a 3 s warm-up). Targets: no loss at 10,000 lines/s while the cloud is up, compiled
CPU <= 0.5x twin CPU, RSS growth <= 8 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests.fixtures, when run as a script
    sys.path.insert(0, str(ROOT))

from tests.cloud_helpers import fleet, fresh_device  # noqa: E402
from tests.fakecloud.client import FakeCloud  # noqa: E402
from tests.fixtures.apps import remove_app  # noqa: E402
from tests.fixtures.device import SupervisorProcess, free_port  # noqa: E402
from tests.fixtures.docker import build_image_archive, build_layer  # noqa: E402

#: The bench's own label on its image and containers, not ``TEST_LABEL``: a pytest session of someone
#: else on the shared engine sweeps every ``TEST_LABEL`` container and image at its end (which once
#: stopped the 4 services mid-run). Removed by the script itself (``remove_app``, the image at exit).
BENCH_LABEL = "io.pysupervisor.bench.logs"

SERVICES = 4
TICK_S = 0.1
#: Prints RATE lines/s as PER_TICK lines every TICK_S (paced by the clock, not by sleeps alone), each
#: "<name> <n> <payload>", n from 1, for SECONDS s; then sleeps.
SCRIPT = r"""#!/bin/sh
i=1
end=$((RATE * SECONDS))
per=$((RATE / 10))
start=$(date +%s)
tick=0
while [ $i -le $end ]; do
  seq $i $((i + per - 1)) | sed "s/.*/$NAME & lorem ipsum dolor sit amet, consectetur: sensor=42 ok/"
  i=$((i + per))
  tick=$((tick + 1))
  # ahead of the clock by more than a tick: wait
  while [ $(( ($(date +%s) - start) * 10 )) -lt $((tick - 10)) ]; do sleep 0.05; done
  sleep 0.08
done
exec sleep 100000
"""


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Counter:
    """Reads ``/v2/local/logs`` (HTTP/1.0: the body as is) and checks each service's numbers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        self.sock.sendall(b"GET /v2/local/logs HTTP/1.0\r\nHost: x\r\n\r\n")
        self.next: dict[str, int] = {}
        self.seen: dict[str, bytearray] = {}  # per service: how often each number came (capped at 2)
        self.lines = 0
        self.unique = 0  # distinct numbers
        self.errors: list[str] = []
        self.suppressed = 0
        self.first: float | None = None
        self.last = 0.0
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._read()
        except Exception as err:  # say why the count stopped
            self.errors.append(f"reader failed: {err!r}")
        self.ended = time.monotonic()

    def _read(self) -> None:
        data = b""
        head = True
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
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
            *lines, data = data.split(b"\n")
            for raw in lines:
                if b'"isSystem":true' in raw:
                    message = json.loads(raw)
                    if message["message"].startswith("Warning: Suppressed"):
                        self.suppressed += int(message["message"].split()[2])
                    continue
                # {"serviceName":"s0","message":"s0 17 lorem...","isStdErr":false,"timestamp":...}
                try:
                    name_b, number = raw[raw.index(b'"message":"') + 11:].split(b" ", 2)[:2]
                    name = name_b.decode()
                    int(number)
                except ValueError:
                    self.errors.append(f"not a line of the test: {raw[:200]!r}")
                    continue
                expected = self.next.get(name, 1)
                if int(number) != expected and len(self.errors) < 10:
                    kind = "repeat" if int(number) < expected else "gap"
                    self.errors.append(f"{name}: {kind}, {int(number)} after {expected - 1}")
                self.next[name] = int(number) + 1
                seen = self.seen.setdefault(name, bytearray())
                n = int(number)
                if n >= len(seen):
                    seen.extend(bytes(n + 1 - len(seen)))
                if not seen[n]:
                    self.unique += 1
                seen[n] = min(2, seen[n] + 1)
                self.lines += 1
                now = time.monotonic()
                if self.first is None:
                    self.first = now
                self.last = now

    @property
    def progress(self) -> int:
        return self.unique

    def close(self) -> None:
        self.sock.close()

    def result(self, expected: int) -> dict[str, Any]:
        per = expected // SERVICES
        repeated = sum(seen.count(2) for seen in self.seen.values())
        missing = sum(seen[1:per + 1].count(0) + max(0, per + 1 - len(seen)) for seen in self.seen.values())
        missing += per * (SERVICES - len(self.seen))
        return {"delivered": self.lines, "lost": missing, "repeated": repeated, "suppressed": self.suppressed,
                "lines_per_s": self.lines / max(1e-9, self.last - (self.first or 0))}


class CloudCounter:
    """Follows what the fake cloud stored (``GET /_fake/log-counts?after=``, every 0.5 s): the count
    of service lines so far, and when the last of them was seen; the full check is :meth:`result`."""

    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        self.lines = 0
        self.after = 0
        self.errors: list[str] = []
        self.first: float | None = None
        self.last = 0.0
        self.ended: float | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                counts = self.cloud.log_counts(after=self.after)
            except Exception as err:  # say why the count stopped
                self.errors.append(f"count failed: {err!r}")
                self.ended = time.monotonic()
                return
            new = sum(s["lines"] for s in counts["services"])
            self.after = counts["lastId"]
            if new:
                now = time.monotonic()
                self.lines += new
                self.first = self.first if self.first is not None else now
                self.last = now

    def repeats(self, limit: int = 3) -> list[dict[str, Any]]:
        """A few numbers stored twice, read from the fake's SQLite file (what tells an engine repeat,
        the same ``stream``, from a resend after a reconnect, another ``stream``)."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.cloud.db)) as conn:
            rows = conn.execute(
                "SELECT message, group_concat(stream), group_concat(timestamp), group_concat(id) "
                "FROM device_log WHERE is_system = 0 GROUP BY service_id, message HAVING count(*) > 1 "
                "LIMIT ?", (limit,)).fetchall()
        return [{"line": r[0][:12], "streams": r[1], "timestamps": r[2], "ids": r[3]} for r in rows]

    @property
    def progress(self) -> int:
        return self.lines

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(10)

    def result(self, expected: int) -> dict[str, Any]:
        """The check over every stored line: per service count, distinct numbers, min, max."""
        counts = self.cloud.log_counts()
        per = expected // SERVICES
        services = counts["services"]
        lines = sum(s["lines"] for s in services)
        missing = per * (SERVICES - len(services))
        repeated = 0
        for s in services:
            if s["min"] < 1 or s["max"] > per:
                self.errors.append(f"service {s['serviceId']}: numbers {s['min']}..{s['max']}, "
                                   f"expected 1..{per}")
            missing += per - s["distinct"]
            repeated += s["lines"] - s["distinct"]
        if repeated:
            self.errors.append(f"repeats: {self.repeats()}")
        span = (max((s["lastAt"] for s in services), default=0)
                - min((s["firstAt"] for s in services), default=0))
        return {"delivered": lines, "lost": missing, "repeated": repeated, "suppressed": counts["suppressed"],
                "lines_per_s": lines / max(1e-9, span)}


def services_of(image: str, rate: int, seconds: int) -> dict[str, dict[str, Any]]:
    """The 4 services, by name: ``s<n>`` printing ``rate`` lines/s for ``seconds`` s."""
    return {f"s{n}": {"image": image, "labels": {BENCH_LABEL: "1"},
                      "environment": {"NAME": f"s{n}", "RATE": str(rate), "SECONDS": str(seconds)}}
            for n in range(SERVICES)}


def measure(sup: SupervisorProcess, counter: Any, expected: int, args: argparse.Namespace) -> dict[str, Any]:
    """Waits for the first line, a warm-up, then every line (or 10 s of none); the supervisor's CPU
    and RSS over that window, and the counter's check."""
    deadline = time.monotonic() + 120
    while counter.first is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(min(3.0, args.seconds / 4))  # warm-up: buffers and caches reach their size
    pid = sup.proc.pid
    cpu0, rss0, lines0, t0 = proc_cpu(pid), proc_rss(pid), counter.lines, time.monotonic()
    deadline = time.monotonic() + args.seconds + 60
    samples: list[float] = []
    while counter.progress < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        if len(samples) < (time.monotonic() - t0) // 5:
            samples.append(round(proc_rss(pid) / 2**20, 1))
        if time.monotonic() - counter.last > 10 and counter.lines:
            break  # nothing for 10 s: what is missing is lost
    cpu1, rss1, t1 = proc_cpu(pid), proc_rss(pid), counter.last
    counter.close()
    window = counter.lines - lines0
    checked = counter.result(expected)
    if counter.ended is not None:
        counter.errors.append(f"the count ended after {counter.ended - t0:.1f} s")
    if counter.errors or checked["lost"] or checked["repeated"]:  # what the supervisor said about it
        output = sup.output().splitlines()
        notes = [line for line in output if "WARNING" in line or "ERROR" in line or "Error" in line]
        print("\n".join(notes[-20:] + output[-15:]), file=sys.stderr)
    return {
        "expected": expected, **checked, "errors": counter.errors,
        "cpu_per_100k": (cpu1 - cpu0) / max(1, window) * 100_000, "cpu_s": cpu1 - cpu0,
        "window_s": t1 - t0, "rss_growth_mb": (rss1 - rss0) / 2**20, "rss_mb": rss1 / 2**20,
        "rss_start_mb": rss0 / 2**20, "rss_samples": samples,
    }


def supervisor_args(app_id: int) -> list[str]:
    return ["--apps", str(app_id), "--no-host-setup"]


def codec_env(codec: str) -> dict[str, str]:
    return {"SUPERVISOR_LOG_CODEC": codec} if codec == "python" else {}


def run_local(codec: str, args: argparse.Namespace, client: docker.DockerClient,
              image: str) -> dict[str, Any]:
    """A supervisor in local mode, the app given as its local target, read at ``/v2/local/logs``."""
    app_id = random.randint(10**6, 10**9)
    rate = args.rate // SERVICES
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        root = Path(tmp) / "root"
        (root / "mnt/boot").mkdir(parents=True)
        sup = SupervisorProcess(root, free_port(), supervisor_args(app_id), codec_env(codec))
        try:
            sup.wait_ready()
            counter = Counter(sup.port)
            services = {
                str(100 + n): {**svc, "serviceName": name, "imageId": 200 + n, "tty": False, "running": True,
                               "stop_grace_period": "0s"}
                for n, (name, svc) in enumerate(services_of(image, rate, args.seconds).items())}
            body = {"local": {"name": "bench", "config": {}, "apps": {str(app_id): {
                "name": "bench-logs", "commit": uuid.uuid4().hex, "releaseId": 1, "services": services,
                "volumes": {}, "networks": {}}}}}
            assert sup.post("/v2/local/target-state", json=body).status_code == 200
            return measure(sup, counter, rate * args.seconds * SERVICES, args)
        finally:
            sup.stop()
            remove_app(client, app_id)


def run_cloud(codec: str, args: argparse.Namespace, client: docker.DockerClient,
              image: str) -> dict[str, Any]:
    """A fresh fake cloud with a fleet whose release is the app; a device provisioned into it (as
    tests/test_cloud_e2e.py does) delivering to the fake's log stream. The release's image is the
    one loaded into the engine (as bench_footprint.py's managed run): nothing to pull, the pull is
    not what is measured."""
    app_id = random.randint(10**6, 10**9)
    rate = args.rate // SERVICES
    with tempfile.TemporaryDirectory(prefix="bench-logs-cloud-") as tmp:
        work = Path(tmp)
        (work / "cloud").mkdir()
        cloud = FakeCloud(work / "cloud", free_port()).start()
        sup = None
        try:
            app = fleet(cloud, f"benchlogs{app_id}", app_id=app_id)
            services = {name: {**svc, "composition": {"stop_grace_period": "0s"}}
                        for name, svc in services_of(image, rate, args.seconds).items()}
            cloud.create_release(app_id, services)
            root = work / "root"
            fresh_device(root, cloud, app)
            sup = SupervisorProcess(root, free_port(), supervisor_args(app_id), codec_env(codec))
            sup.wait_ready()
            return measure(sup, CloudCounter(cloud), rate * args.seconds * SERVICES, args)
        finally:
            if sup is not None:
                sup.stop()
            cloud.stop()
            remove_app(client, app_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=int, default=10_000, help="lines/s of all services together")
    parser.add_argument("--codecs", default="compiled,python")
    parser.add_argument("--paths", default="cloud,local",
                        help="cloud (the fake balena API's log stream), local (/v2/local/logs)")
    args = parser.parse_args()
    client = docker.from_env()
    arch = client.version().get("Arch", "amd64")
    image = f"pysupervisor-test/bench-logs-{uuid.uuid4().hex[:8]}:latest"
    _, archive = build_image_archive(image, build_layer({"run.sh": SCRIPT}), arch=arch, cmd=["sh", "/run.sh"],
                                     labels={BENCH_LABEL: "1"}, env={}, workdir=None)
    for line in client.api.load_image(archive, quiet=True):
        if "error" in line:
            raise RuntimeError(line["error"])
    results = []
    try:
        for path in args.paths.split(","):
            for codec in args.codecs.split(","):
                result = {"path": path, "codec": codec,
                          **(run_cloud if path == "cloud" else run_local)(codec, args, client, image)}
                results.append(result)
                report(result)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_image(image, force=True)
    for path in args.paths.split(","):
        by = {r["codec"]: r for r in results if r["path"] == path}
        if "compiled" in by and "python" in by:
            ratio = by["compiled"]["cpu_per_100k"] / max(1e-9, by["python"]["cpu_per_100k"])
            print(f"{path:>5} compiled/twin CPU: {ratio:.2f}x (target <= 0.5)")
    return 0 if all(r["lost"] == 0 and not r["repeated"] and not r["errors"] for r in results) else 1


def report(result: dict[str, Any]) -> None:
    codec = "twin" if result["codec"] == "python" else result["codec"]
    print(f"{result['path']:>5} {codec:>8}: {result['delivered']:,}/{result['expected']:,} lines, "
          f"{result['lines_per_s']:,.0f} lines/s delivered, lost {result['lost']:,}, "
          f"repeated {result['repeated']:,} "
          f"(suppressed {result['suppressed']:,}), CPU {result['cpu_per_100k']:.2f} s per 100k lines "
          f"({result['cpu_s']:.1f} s over {result['window_s']:.0f} s), RSS growth "
          f"{result['rss_growth_mb']:+.1f} MB (RSS {result['rss_start_mb']:.1f} -> "
          f"{result['rss_mb']:.1f} MB,"
          f" every 5 s: {result['rss_samples']})"
          + (f", errors {result['errors']}" if result["errors"] else ""), flush=True)


if __name__ == "__main__":
    sys.exit(main())

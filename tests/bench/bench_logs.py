"""Benchmark of the engine log pipeline end to end (issue #14), on the real engine.

Run as a script from the repository root: ``python tests/bench/bench_logs.py [--seconds 60]``
(see tests/bench/README.md). For each codec, in the same run and on the same path:

* ``compiled``: the supervisor as shipped (``supervisor._logcodec``);
* ``twin``: the same supervisor with ``SUPERVISOR_LOG_CODEC=python`` (the pure-Python twin in the
  engine log source and in the local stream's encoder),

a real ``python -m supervisor`` process in local mode runs an app of 4 services (busybox, no TTY)
that together print ``--rate`` lines/s (default 10,000) for ``--seconds`` s, each line numbered per
service. The lines are read from ``GET /v2/local/logs`` (until the cloud log stream exists, the
only backend) and checked: every number once, in order, per service. Printed per codec: lines/s
delivered, lines lost (and ``Suppressed`` warnings), the supervisor's CPU seconds per 100,000 lines
(``/proc/<pid>/stat`` utime+stime over the window from the first line to the last) and its RSS
growth over that window (``VmRSS``, after a 3 s warm-up). Targets: no loss at 10,000 lines/s,
compiled CPU <= 0.5x twin CPU, RSS growth <= 8 MB.
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

from tests.fixtures.apps import remove_app  # noqa: E402
from tests.fixtures.device import SupervisorProcess, free_port  # noqa: E402
from tests.fixtures.docker import TEST_LABEL, build_image_archive, build_layer  # noqa: E402

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

    def close(self) -> None:
        self.sock.close()


def run(codec: str, args: argparse.Namespace, client: docker.DockerClient, image: str) -> dict[str, Any]:
    app_id = random.randint(10**6, 10**9)
    rate = args.rate // SERVICES
    with tempfile.TemporaryDirectory(prefix="bench-logs-") as tmp:
        root = Path(tmp) / "root"
        (root / "mnt/boot").mkdir(parents=True)
        env = {"SUPERVISOR_LOG_CODEC": codec} if codec == "python" else {}
        sup = SupervisorProcess(root, free_port(), ["--apps", str(app_id), "--no-host-setup"], env)
        try:
            sup.wait_ready()
            counter = Counter(sup.port)
            services = {
                str(100 + n): {
                    "serviceName": f"s{n}", "imageId": 200 + n, "image": image, "tty": False,
                    "environment": {"NAME": f"s{n}", "RATE": str(rate), "SECONDS": str(args.seconds)},
                    "labels": {TEST_LABEL: "1"}, "running": True, "stop_grace_period": "0s",
                } for n in range(SERVICES)}
            body = {"local": {"name": "bench", "config": {}, "apps": {str(app_id): {
                "name": "bench-logs", "commit": uuid.uuid4().hex, "releaseId": 1, "services": services,
                "volumes": {}, "networks": {}}}}}
            assert sup.post("/v2/local/target-state", json=body).status_code == 200
            deadline = time.monotonic() + 120
            while counter.first is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(min(3.0, args.seconds / 4))  # warm-up: buffers and caches reach their size
            pid = sup.proc.pid
            cpu0, rss0, lines0, t0 = proc_cpu(pid), proc_rss(pid), counter.lines, time.monotonic()
            expected = rate * args.seconds * SERVICES
            deadline = time.monotonic() + args.seconds + 60
            samples: list[float] = []
            while counter.unique < expected and time.monotonic() < deadline:
                time.sleep(0.1)
                if len(samples) < (time.monotonic() - t0) // 5:
                    samples.append(round(proc_rss(pid) / 2**20, 1))
                if time.monotonic() - counter.last > 10 and counter.lines:
                    break  # nothing for 10 s: what is missing is lost
            cpu1, rss1, t1 = proc_cpu(sup.proc.pid), proc_rss(sup.proc.pid), counter.last
            counter.close()
            window = counter.lines - lines0
            per = expected // SERVICES
            repeated = sum(seen.count(2) for seen in counter.seen.values())
            missing = sum(seen[1:per + 1].count(0) + max(0, per + 1 - len(seen))
                          for seen in counter.seen.values())
            missing += per * (SERVICES - len(counter.seen))
            if counter.ended is not None:
                counter.errors.append(f"the stream ended after {counter.ended - t0:.1f} s")
            if counter.errors or counter.unique != expected:  # what the supervisor said about it
                output = sup.output().splitlines()
                notes = [line for line in output if "WARNING" in line or "ERROR" in line or "Error" in line]
                print("\n".join(notes[-20:] + output[-15:]), file=sys.stderr)
            return {
                "codec": codec, "expected": expected, "delivered": counter.lines,
                "lost": missing, "repeated": repeated, "suppressed": counter.suppressed,
                "errors": counter.errors,
                "lines_per_s": counter.lines / max(1e-9, counter.last - (counter.first or 0)),
                "cpu_per_100k": (cpu1 - cpu0) / max(1, window) * 100_000, "cpu_s": cpu1 - cpu0,
                "window_s": t1 - t0, "rss_growth_mb": (rss1 - rss0) / 2**20, "rss_mb": rss1 / 2**20,
                "rss_start_mb": rss0 / 2**20, "rss_samples": samples,
            }
        finally:
            sup.stop()
            remove_app(client, app_id)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=int, default=10_000, help="lines/s of all services together")
    parser.add_argument("--codecs", default="compiled,python")
    args = parser.parse_args()
    client = docker.from_env()
    arch = client.version().get("Arch", "amd64")
    image = f"pysupervisor-test/bench-logs-{uuid.uuid4().hex[:8]}:latest"
    _, archive = build_image_archive(image, build_layer({"run.sh": SCRIPT}), arch=arch, cmd=["sh", "/run.sh"],
                                     labels={TEST_LABEL: "1"}, env={}, workdir=None)
    for line in client.api.load_image(archive, quiet=True):
        if "error" in line:
            raise RuntimeError(line["error"])
    results = []
    try:
        for codec in args.codecs.split(","):
            result = run(codec, args, client, image)
            results.append(result)
            print(f"{codec:>8}: {result['delivered']:,}/{result['expected']:,} lines, "
                  f"{result['lines_per_s']:,.0f} lines/s delivered, lost {result['lost']:,}, "
                  f"repeated {result['repeated']:,} "
                  f"(suppressed {result['suppressed']:,}), CPU {result['cpu_per_100k']:.2f} s per 100k lines "
                  f"({result['cpu_s']:.1f} s over {result['window_s']:.0f} s), RSS growth "
                  f"{result['rss_growth_mb']:+.1f} MB (RSS {result['rss_start_mb']:.1f} -> "
                  f"{result['rss_mb']:.1f} MB,"
                  f" every 5 s: {result['rss_samples']})"
                  + (f", order errors {result['errors']}" if result["errors"] else ""), flush=True)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_image(image, force=True)
    by = {r["codec"]: r for r in results}
    if "compiled" in by and "python" in by:
        ratio = by["compiled"]["cpu_per_100k"] / max(1e-9, by["python"]["cpu_per_100k"])
        print(f"compiled/twin CPU: {ratio:.2f}x (target <= 0.5)")
    return 0 if all(r["lost"] == 0 and not r["repeated"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The cloud binder's cost at fleet scale (issue #12): N devices against one fake balena API.

Each device is a real :class:`supervisor.cloud.CloudBinder` (its own config.json and SQLite, the
shared HTTP client code, the real poll/report/tag threads) with a stub state engine: a stored
target is "applied" at once and reported as running. Every binder interval is scaled by
``--scale`` (default 0.01: the 15-minute poll becomes 9 s). The binders run in ``--workers``
processes; every figure is read from the fake API's request log and stored reports, so what is
measured is what the server saw.

Timeline (real seconds): warm-up, steady state, a release change at ``--change-at``, an API
outage of 5 minutes (scaled) at ``--outage-at``, the end at ``--duration``. Printed: requests and
bytes per device-day by kind (scaled time converted back to device time), the 95th percentile of
"release change -> the device's report of it", and the peak request rate after the outage against
the steady rate. Targets: polls per device-day <= what the reference's intervals imply
(86400 / (900 + 30 mean jitter)), reports carry only diffs, post-outage peak <= 2x steady.

    python tests/bench/bench_fleet.py                   # 200 devices, about 2.5 minutes
    python tests/bench/bench_fleet.py --devices 50 --duration 60 --change-at 20 --outage-at 35
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

DAY_S = 86_400.0
REFERENCE_POLL_S = 900.0 + 30.0  # appUpdatePollInterval + mean jitter


class StubDevice:
    """The binder's ``DeviceSide`` with an instant state engine."""

    def __init__(self, app_uuid: str, seed: int) -> None:
        self.app_uuid = app_uuid
        self.rng = random.Random(seed)
        self.running: tuple[str, dict[str, str]] | None = None  # (commit, service -> image)
        self.target: Any = None
        self.binder: Any = None

    def store_target(self, device: Any) -> None:
        self.target = device

    def host_view(self) -> None:
        return None  # no device facts: the fleet bench admits on the target alone

    def apply(self, *, force: bool, cancel: bool) -> None:
        app = self.target.apps.get(self.app_uuid) if self.target else None
        release = app.release if app else None
        self.running = (
            (release.commit, {n: s.image for n, s in release.services.items()}) if release else None
        )
        self.binder.reporter.changed()

    def report_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "status": "Idle",
            "api_port": 48484,
            "os_version": "balenaOS 6.5.44+rev2",
            "os_variant": "prod",
            "supervisor_version": "0.1.0",
            "provisioning_progress": None,
            "provisioning_state": "",
            "ip_address": "192.168.1.20",
            "mac_address": "00:11:22:33:44:55",
        }
        apps: dict[str, Any] = {}
        if self.running is not None:
            commit, services = self.running
            apps[self.app_uuid] = {
                "release_uuid": commit,
                "releases": {
                    commit: {
                        "update_status": "done",
                        "services": {
                            n: {"image": image, "status": "Running"} for n, image in services.items()
                        },
                    }
                },
            }
        state["apps"] = apps
        return state

    def metrics(self) -> dict[str, Any]:
        """Noisy like a real board: hysteresis and the 300 s rule decide what is sent."""
        return {
            "cpu_usage": self.rng.randint(2, 30),
            "memory_usage": 300 + self.rng.randint(-8, 8),
            "memory_total": 3800,
            "storage_usage": 1200 + self.rng.randint(0, 3),
            "storage_total": 28000,
            "storage_block_device": "/dev/mmcblk0p6",
            "cpu_temp": 45 + self.rng.randint(-2, 2),
            "cpu_id": "10000000abcdef",
            "is_undervolted": False,
        }

    def current_config(self) -> dict[str, str]:
        return {}

    def facts(self) -> dict[str, Any]:
        return {"device_type": "raspberrypi4-64"}

    def local_mode(self) -> bool:
        return False

    def connectivity_check_enabled(self) -> bool:
        # Off: 200 TCP checks every 0.1 s would measure the fake's accept loop, not the binder.
        return False


def run_worker(
    devices: list[dict[str, Any]],
    api_url: str,
    app_uuid: str,
    scale: float,
    stop_at: float,
    workdir: str,
    result: Any,
) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # an outage makes every binder warn; the figures say it
    os.environ["PYSUPERVISOR_CLOUD_TIME_SCALE"] = str(scale)
    from supervisor.cloud import CloudBinder, Timing
    from supervisor.config import Config, ConfigJson
    from supervisor.db import Database

    binders = []
    for dev in devices:
        root = Path(workdir) / dev["uuid"]
        root.mkdir(parents=True)
        (root / "config.json").write_text(
            json.dumps(
                {
                    "uuid": dev["uuid"],
                    "apiEndpoint": api_url,
                    "deviceApiKey": dev["key"],
                    "deviceId": dev["id"],
                    "registered_at": 1700000000000,
                }
            )
        )
        config = Config(ConfigJson(root / "config.json"), Database(root / "db.sqlite"))
        stub = StubDevice(app_uuid, dev["id"])
        binder = CloudBinder(
            config,
            stub,
            timing=Timing.from_env(),
            report_cache=root / "report-cache",
            vpn_status=root / "vpn",
            user_agent="Supervisor/0.1.0 (Linux; bench; prod)",
        )
        stub.binder = binder
        binder.tags.want({"bench": "yes"})
        binders.append(binder)
    for binder in binders:
        binder.start()
    while time.time() < stop_at:
        time.sleep(0.2)
    for binder in binders:
        binder.stop(timeout=0.5)
    result.put({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "devices": len(devices)})


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=0.01)
    parser.add_argument("--duration", type=float, default=150.0, help="real seconds")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--change-at", type=float, default=50.0)
    parser.add_argument("--outage-at", type=float, default=90.0)
    parser.add_argument("--outage", type=float, default=300.0, help="device seconds (scaled)")
    args = parser.parse_args()

    from tests.fakecloud.client import FakeCloud
    from tests.fixtures.device import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    api = FakeCloud(work, free_port()).start()
    app = api.create_application("benchfleet", "raspberrypi4-64")
    image = "registry2.example/v2/" + "ab" * 16 + "@sha256:" + "1" * 64
    api.create_release(app["id"], {"main": {"image": image, "environment": {"A": "1"}}})
    devices = []
    for _ in range(args.devices):
        uuid, key = os.urandom(16).hex(), os.urandom(16).hex()
        devices.append({"uuid": uuid, "key": key, "id": api.create_device(app["id"], uuid, key)})

    t0 = time.time()
    stop_at = t0 + args.duration
    result: Any = multiprocessing.Queue()
    procs = []
    for w in range(args.workers):
        part = devices[w :: args.workers]
        proc = multiprocessing.Process(
            target=run_worker,
            args=(part, api.url, app["uuid"], args.scale, stop_at, str(work / f"w{w}"), result),
        )
        proc.start()
        procs.append(proc)

    def at(offset: float) -> None:
        while time.time() < t0 + offset:
            time.sleep(0.05)

    at(args.change_at)
    change_time = time.time()
    second = api.create_release(app["id"], {"main": {"image": image, "environment": {"A": "2"}}})
    at(args.outage_at)
    api.stop()
    outage_start = time.time()
    time.sleep(args.outage * args.scale)
    api.start()
    outage_end = time.time()
    workers = [result.get(timeout=args.duration + 60) for _ in procs]
    for proc in procs:
        proc.join(30)
    end = time.time()

    log = api.requests()
    reports = api.reports()
    api.stop()

    # ---- figures ---------------------------------------------------------------------------
    window = [r for r in log if t0 + args.warmup <= r["at"] < end - 2]
    device_days = args.devices * ((end - 2 - (t0 + args.warmup)) / args.scale) / DAY_S
    kinds: dict[str, dict[str, float]] = {}
    for r in window:
        k = kinds.setdefault(r["kind"], {"requests": 0, "bytes_in": 0, "bytes_out": 0})
        k["requests"] += 1
        k["bytes_in"] += r["bytes_in"]
        k["bytes_out"] += r["bytes_out"]
    print(
        f"bench_fleet: {args.devices} devices in {args.workers} processes, time x{args.scale}, "
        f"{end - t0:.0f} s real = {(end - t0) / args.scale / 3600:.1f} device-hours each"
    )
    print(f"per device-day (window after {args.warmup:.0f} s warm-up, {device_days:.2f} device-days):")
    print(f"  {'kind':<12} {'requests':>9} {'KiB in':>9} {'KiB out':>9}")
    for kind in sorted(kinds):
        k = kinds[kind]
        print(
            f"  {kind:<12} {k['requests'] / device_days:9.1f} {k['bytes_in'] / 1024 / device_days:9.1f} "
            f"{k['bytes_out'] / 1024 / device_days:9.1f}"
        )
    polls = kinds.get("state_get", {}).get("requests", 0) / device_days
    print(
        f"  polls: {polls:.1f}/device-day; the reference's intervals imply {DAY_S / REFERENCE_POLL_S:.1f} "
        f"(+ retries during the outage)"
    )

    tags = [r for r in log if r["kind"] == "tags_patch"]
    print(f"  tags: {len(tags)} PATCHes in the whole run for {args.devices} devices (one wanted tag each)")

    patches = [r for r in reports if t0 + args.warmup <= r["at"]]
    full_keys = {"status", "api_port", "os_version", "supervisor_version", "ip_address", "mac_address"}
    full = sum(1 for r in patches if full_keys <= set(r["body"]))
    from supervisor.cloud.metrics import METRIC_KEYS

    metrics_only = sum(1 for r in patches if set(r["body"]) <= set(METRIC_KEYS))
    mean_bytes = sum(len(json.dumps(r["body"])) for r in patches) / max(len(patches), 1)
    print(
        f"reports after warm-up: {len(patches)}, full-state bodies {full}, metrics-only {metrics_only}, "
        f"mean body {mean_bytes:.0f} B"
    )

    latency = []
    for dev in devices:
        seen = [
            r["at"]
            for r in reports
            if r["uuid"] == dev["uuid"]
            and r["at"] >= change_time
            and second["commit"] in json.dumps(r["body"].get("apps", {}))
        ]
        if seen:
            latency.append(min(seen) - change_time)
    p95 = percentile(latency, 95)
    print(
        f"release change -> report: {len(latency)}/{args.devices} devices reported it; p50 "
        f"{percentile(latency, 50):.2f} s, p95 {p95:.2f} s real = {p95 / args.scale:.0f} s device time "
        f"(poll interval 900 s + jitter <= 60 s)"
    )

    bucket = 2.0

    def rate(lo: float, hi: float) -> list[float]:
        counts = [0] * max(1, int((hi - lo) / bucket))
        for r in log:
            if lo <= r["at"] < lo + len(counts) * bucket:
                counts[int((r["at"] - lo) / bucket)] += 1
        return [c / bucket for c in counts]

    steady = rate(t0 + args.warmup, change_time - 1)
    steady_mean = sum(steady) / len(steady)
    interval_real = 900 * args.scale
    after = rate(outage_end, outage_end + 2 * interval_real)
    peak = max(after) if after else 0.0
    print(
        f"request rate ({bucket:.0f} s buckets): steady mean {steady_mean:.1f}/s (max {max(steady):.1f}/s); "
        f"after the outage ({(outage_end - outage_start):.1f} s real) peak {peak:.1f}/s = "
        f"{peak / steady_mean:.2f}x steady"
    )
    rss = max(w["maxrss_kib"] for w in workers)
    print(
        f"memory: max RSS of a worker {rss / 1024:.0f} MiB for {max(w['devices'] for w in workers)} binders"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

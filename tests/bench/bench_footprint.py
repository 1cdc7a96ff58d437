"""The supervisor's footprint (issue #17): idle memory, threads, startup, import costs, and a soak.

Run from the repository root (printed figures, not a timed test; see tests/bench/README.md):

    python tests/bench/bench_footprint.py                 # idle unmanaged + managed, 60 s each
    python tests/bench/bench_footprint.py --idle 10       # quicker, less settled
    python tests/bench/bench_footprint.py --soak          # the soak only (about 10-20 minutes)

The supervisor runs as a real process (``python -S -m supervisor``, the repository and site-packages on
``PYTHONPATH``): ``-S`` leaves out the ``.pth`` hooks of this machine's site-packages (an editable
install's finder, sandbox certificates), which a device does not have; the interpreter's own baseline
under the same flags is printed for reference. Bytecode is compiled first (as on a device).

* unmanaged, no app: VmRSS and threads after ``--idle`` seconds, time from exec to the first ``/ping``;
* managed (the fake balena API, ``python -m tests.fakecloud``) with a 3-service app running whose
  services print a line a second: the same figures once the app runs and ``--idle`` seconds passed;
* each module's import cost (``-X importtime``) of the unmanaged run: the 25 costliest, and the
  supervisor's own;
* ``--soak``: a local-mode supervisor with a 2-service app; 100,000 API requests of every kind
  (streams opened and dropped among them), 10,000 reconcile rounds (``POST /v1/update`` on the
  settled app, back to back), 20 release updates and 1,000,000 log lines printed by the app's
  services (through the supervisor once the log pipeline of #14 attaches to them), spread over the
  run; VmRSS at every 10 %; growth from the 10 % mark to the end (target <= 2 MB).

Targets (x86-64): <= 30 MB idle unmanaged, <= 38 MB managed with the app, /ping <= 1.0 s.
Everything created carries ``io.pysupervisor.test=1`` and a per-run label, and is removed at the end.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import random
import re
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import requests

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests.*, when run as a script
    sys.path.insert(0, str(ROOT))

from tests.fixtures.device import free_port  # noqa: E402
from tests.fixtures.docker import TEST_LABEL, _Session, build_image_archive, build_layer  # noqa: E402

RUN_LABEL = "io.pysupervisor.bench.run"
IDLE_TARGET_MB, MANAGED_TARGET_MB, PING_TARGET_S, SOAK_GROWTH_MB = 30.0, 38.0, 1.0, 2.0
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)$")


# ----------------------------------------------------------------------------- process helpers
def device_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a device-like ``python -S`` run: this repo and site-packages on the path,
    and the unit file's ``MALLOC_ARENA_MAX=2`` (unless ``--arenas`` says otherwise)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    env["PYTHONUNBUFFERED"] = "1"
    if ARENAS:
        env["MALLOC_ARENA_MAX"] = ARENAS
    else:
        env.pop("MALLOC_ARENA_MAX", None)
    return {**env, **(extra or {})}


#: MALLOC_ARENA_MAX of the supervisor runs ("" = glibc's default); the unit file sets 2.
ARENAS = "2"
#: What the supervisor imports at some point, each measured alone (VmRSS growth over a bare
#: ``python -S``): libraries that share a dependency (OpenSSL) each show it.
LIBRARIES = ("logging", "sqlite3", "hashlib", "ssl", "waitress", "werkzeug", "flask", "requests", "docker",
             "psutil", "prometheus_client", "supervisor.runtime", "supervisor.api.app")


def import_cost_kb(module: str) -> int:
    """VmRSS growth of a bare ``python -S`` importing ``module`` (nothing else)."""
    probe = ("import sys\n"
             "def rss():\n"
             "    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])\n"
             f"before = rss()\nimport {module}\nprint(rss() - before)")
    out = subprocess.check_output([sys.executable, "-S", "-c", probe], env=device_env(), cwd=ROOT)
    return int(out.strip())


def status_of(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of a process, plus Pss/Private_Dirty (kB) from smaps_rollup."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            if key in ("Pss", "Private_Dirty", "Anonymous"):
                out[key] = int(value.split()[0])
    return out


def baseline_kb() -> int:
    """VmRSS of the bare interpreter under the same flags (what no code of ours can save)."""
    probe = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    return int(subprocess.check_output([sys.executable, "-S", "-c", probe], env=device_env()).strip())


class Supervisor:
    """``python -S [-X importtime] -m supervisor`` on a free port; stderr to a file."""

    def __init__(self, root: Path, args: list[str], env: dict[str, str] | None = None,
                 importtime: bool = False) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "supervisor.log"
        flags = ["-X", "importtime"] if importtime else []
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-S", *flags, "-m", "supervisor", "--root", str(root), "--port",
                 str(self.port), "--host", "127.0.0.1", "--no-host-setup", *args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=device_env(env),
            )
        self.session = requests.Session()
        self.session.trust_env = False

    def wait_ping(self, timeout: float = 30.0) -> float:
        """Seconds from exec to the first 200 of /ping."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"supervisor exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                if self.session.get(f"{self.url}/ping", timeout=1).status_code == 200:
                    return time.monotonic() - self.started
            except requests.ConnectionError:
                pass
            time.sleep(0.01)
        raise SystemExit(f"no /ping after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def status(self) -> dict[str, int]:
        return status_of(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(check: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------- images
def make_images(client: docker.DockerClient, run: str, count: int, lines: int = 0) -> list[str]:
    """``count`` busybox images whose command prints ``lines`` lines at once (0: one a second),
    then a line a second for ever; labelled with the run."""
    arch = client.version().get("Arch", "amd64")
    script = ("i=0; while [ $i -lt $N ]; do echo \"line $i of a log that flows\"; i=$((i+1)); done; "
              "while true; do echo tick; sleep 1; done")
    names = []
    for index in range(count):
        ref = f"pysupervisor-bench/footprint-{run}-{index}:latest"
        _, archive = build_image_archive(
            ref, build_layer({"/svc.txt": f"{run}-{index}"}), arch=arch, cmd=["sh", "-c", script],
            labels={TEST_LABEL: "1", RUN_LABEL: run}, env={"N": str(lines)}, workdir=None,
        )
        for line in client.api.load_image(archive, quiet=True):
            if "error" in line:
                raise SystemExit(f"loading {ref} failed: {line['error']}")
        names.append(ref)
    return names


def remove_run(client: docker.DockerClient, app_ids: list[int], run: str) -> None:
    api = client.api
    for app_id in app_ids:
        for container in api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"}):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(container["Id"], force=True, v=True)
        for network in api.networks(filters={"label": f"io.balena.app-id={app_id}"}):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_network(network["Id"])
    for image in api.images(filters={"label": f"{RUN_LABEL}={run}"}):
        with contextlib.suppress(docker.errors.APIError):
            api.remove_image(image["Id"], force=True)


def running(client: docker.DockerClient, app_id: int) -> int:
    return len(client.api.containers(filters={"label": f"io.balena.app-id={app_id}", "status": "running"}))


def local_app(app_id: int, images: list[str], release: int) -> dict[str, Any]:
    services = {
        str(10 + i): {"serviceName": f"svc{i}", "imageId": 100 + i, "image": image, "running": True,
                      "environment": {"RELEASE": str(release)}, "labels": {TEST_LABEL: "1"},
                      "stop_grace_period": "0s"}
        for i, image in enumerate(images)
    }
    app = {"name": "footprint", "commit": uuid.uuid4().hex, "releaseId": release, "services": services,
           "volumes": {}, "networks": {}}
    return {"local": {"name": "footprint-device", "apps": {str(app_id): app}}}


# --------------------------------------------------------------------------------------- idle
def import_costs(log_text: str) -> list[tuple[int, int, str]]:
    """(self us, cumulative us, module) of each ``-X importtime`` line."""
    out = []
    for line in log_text.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            out.append((int(m[1]), int(m[2]), m[4]))
    return out


def idle_unmanaged(idle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        root = Path(tmp)
        (root / "mnt/boot").mkdir(parents=True)
        sup = Supervisor(root, ["--apps", str(random.randint(10**6, 10**9))], importtime=True)
        try:
            ping = sup.wait_ping()
            time.sleep(idle_s)
            status = sup.status()
        finally:
            sup.stop()
        imports = import_costs(sup.log_path.read_text(errors="replace"))
    return {"ping_s": ping, **status, "imports": imports}


def idle_managed(idle_s: float, client: docker.DockerClient, run: str) -> dict[str, Any]:
    from tests.cloud_helpers import fleet, fresh_device
    from tests.fakecloud.client import FakeCloud

    app_id = random.randint(10**6, 10**9)
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        work = Path(tmp)
        (work / "cloud").mkdir()
        cloud = FakeCloud(work / "cloud", free_port()).start()
        sup = None
        try:
            images = make_images(client, run, 3)
            app = fleet(cloud, f"footprint{app_id}", app_id=app_id)
            cloud.create_release(app_id, {f"svc{i}": {"image": image, "labels": {TEST_LABEL: "1"},
                                                      "composition": {"stop_grace_period": "0s"}}
                                          for i, image in enumerate(images)})
            root = work / "root"
            fresh_device(root, cloud, app)
            sup = Supervisor(root, ["--apps", str(app_id)])
            ping = sup.wait_ping()
            wait_until(lambda: running(client, app_id) == 3, "the managed app's 3 services to run")
            time.sleep(idle_s)
            status = sup.status()
        finally:
            if sup is not None:
                sup.stop()
            cloud.stop()
            remove_run(client, [app_id], run)
    return {"ping_s": ping, **status}


# --------------------------------------------------------------------------------------- soak
class Soak:
    """The load of ``--soak`` against one local-mode supervisor running a 2-service app."""

    GETS = ("/ping", "/v1/healthy", "/v2/version", "/v2/state/status", "/v2/applications/state",
            "/v1/device", "/v2/local/target-state", "/metrics", "/v2/local/device-info", "/v1/apps/{app}",
            "/v2/applications/{app}/state", "/v2/containerId", "/v2/device/name", "/v2/nowhere",
            "/openapi.json")

    def __init__(self, sup: Supervisor, app_id: int, images: list[str], requests_total: int) -> None:
        self.sup, self.app_id, self.images = sup, app_id, images
        self.total = requests_total
        self.done = 0
        self.errors: dict[str, int] = {}
        self.lock = threading.Lock()

    def one(self, session: requests.Session, n: int) -> None:
        """Request number ``n``: mostly GETs of every kind; every 10th a reconcile trigger, every 50th a
        bad body, every 200th a log stream opened, read and dropped."""
        url = self.sup.url
        try:
            if n % 200 == 0:
                with session.get(f"{url}/v2/local/logs", stream=True, timeout=10) as response:
                    next(response.iter_lines(), None)  # the "Streaming logs" line; then hang up
                return
            if n % 10 == 0:
                response = session.post(f"{url}/v1/update", json={}, timeout=30)
            elif n % 50 == 1:
                response = session.post(f"{url}/v2/local/target-state", data="{bad json",
                                        headers={"Content-Type": "application/json"}, timeout=30)
            else:
                path = self.GETS[n % len(self.GETS)].format(app=self.app_id)
                response = session.get(f"{url}{path}", timeout=30)
            if response.status_code >= 500:
                with self.lock:
                    key = f"{response.request.method} {response.request.path_url} {response.status_code}"
                    self.errors[key] = self.errors.get(key, 0) + 1
        except requests.RequestException as err:
            with self.lock:
                self.errors[type(err).__name__] = self.errors.get(type(err).__name__, 0) + 1

    def worker(self, indices: Iterator[int]) -> None:
        session = requests.Session()
        session.trust_env = False
        for n in indices:
            self.one(session, n)
            with self.lock:
                self.done += 1


def rounds_so_far(sup: Supervisor) -> float:
    text = sup.session.get(f"{sup.url}/metrics", timeout=30).text
    m = re.search(r"^supervisor_reconcile_rounds_total (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def keep_reconciling(sup: Supervisor, target: int, stop: threading.Event) -> None:
    """Trigger rounds back to back until ``target`` rounds ran (triggers that arrive during an apply
    are coalesced by the loop, so the request mix alone gives fewer rounds on a slow machine)."""
    session = requests.Session()
    session.trust_env = False
    posts = 0
    while not stop.is_set():
        if posts % 50 == 0 and rounds_so_far(sup) >= target:
            return
        with contextlib.suppress(requests.RequestException):
            session.post(f"{sup.url}/v1/update", json={}, timeout=30)
        posts += 1
        time.sleep(0.005)


def soak(client: docker.DockerClient, run: str, total: int, updates: int, log_lines: int,
         workers: int, rounds_target: int, keep_log: Path | None = None) -> dict[str, Any]:
    app_id = random.randint(10**6, 10**9)
    images = make_images(client, run, 2, lines=log_lines // (2 * (updates + 1)))
    with tempfile.TemporaryDirectory(prefix="footprint-soak-") as tmp:
        root = Path(tmp)
        (root / "mnt/boot").mkdir(parents=True)
        sup = Supervisor(root, ["--apps", str(app_id)])
        samples: list[tuple[int, float, int]] = []
        try:
            sup.wait_ping()
            post = sup.session.post(f"{sup.url}/v2/local/target-state", json=local_app(app_id, images, 0),
                                    timeout=30)
            assert post.status_code == 200, post.text
            wait_until(lambda: running(client, app_id) == 2, "the soak app to run")
            load = Soak(sup, app_id, images, total)
            chunks = [iter(range(w, total, workers)) for w in range(workers)]
            threads = [threading.Thread(target=load.worker, args=(c,), daemon=True) for c in chunks]
            stop = threading.Event()
            rounder = threading.Thread(target=keep_reconciling, args=(sup, rounds_target, stop), daemon=True)
            started = time.monotonic()
            for thread in (*threads, rounder):
                thread.start()
            next_mark, release = 1, 0
            while any(t.is_alive() for t in (*threads, rounder)) or next_mark <= 10 or release < updates:
                with load.lock:
                    requested = load.done
                # Progress: the slower of the requests and the rounds, in requests.
                done = min(requested, int(rounds_so_far(sup) / rounds_target * total))
                if not any(t.is_alive() for t in (*threads, rounder)):
                    done = total
                # A release update at each 1/updates of the run (each prints its share of the lines).
                if release < updates and done >= (release + 1) * total // (updates + 1):
                    release += 1
                    body = local_app(app_id, images, release)
                    sup.session.post(f"{sup.url}/v2/local/target-state", json=body, timeout=60)
                if done >= next_mark * total // 10:
                    rss = sup.status()["VmRSS"]
                    samples.append((next_mark * 10, time.monotonic() - started, rss))
                    rounds = rounds_so_far(sup)
                    print(f"  soak {next_mark * 10:3d} %: {requested:7d} requests, {rounds:7.0f} rounds, "
                          f"{release:2d} updates, VmRSS {rss / 1024:6.1f} MB", flush=True)
                    next_mark += 1
                    continue
                time.sleep(0.5)
            stop.set()
            rounds = rounds_so_far(sup)
            final = sup.status()
        finally:
            sup.stop()
            if keep_log is not None:  # the run's directory goes: keep the supervisor's log
                keep_log.write_bytes(sup.log_path.read_bytes())
            remove_run(client, [app_id], run)
    return {"samples": samples, "errors": load.errors, "rounds": rounds, "updates": release,
            "seconds": time.monotonic() - started, "final": final}


# --------------------------------------------------------------------------------------- main
def main() -> int:
    global ARENAS
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds idle before measuring (default 60)")
    parser.add_argument("--soak", action="store_true", help="run the soak instead of the idle figures")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10_000, help="reconcile rounds of the soak")
    parser.add_argument("--log-lines", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=4, help="client threads of the soak")
    parser.add_argument("--keep-log", type=Path, default=None,
                        help="copy the soak supervisor's log (stdout+stderr) to this file at the end")
    parser.add_argument("--arenas", default=ARENAS,
                        help="MALLOC_ARENA_MAX of the runs ('' for glibc's default; default 2, as the unit)")
    args = parser.parse_args()
    ARENAS = args.arenas
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stopped run still removes what it made

    compileall.compile_dir(str(ROOT / "supervisor"), quiet=1)  # bytecode, as installed on a device
    compileall.compile_dir(str(ROOT / "hw"), quiet=1)
    client = docker.from_env()
    # Registered as a live test session: a pytest run starting meanwhile then leaves the labelled
    # images of this run alone (its sweep removes every labelled image when no other session lives).
    session = _Session()
    try:
        return _run(args, client)
    finally:
        session.close()


def _run(args: argparse.Namespace, client: docker.DockerClient) -> int:
    run = uuid.uuid4().hex[:10]
    base = baseline_kb()
    print(f"interpreter baseline (python -S, nothing imported): {base / 1024:.1f} MB; "
          f"MALLOC_ARENA_MAX={ARENAS or 'glibc default'}")
    if args.soak:
        print(f"soak: {args.requests} requests, {args.rounds} reconcile rounds, {args.updates} release "
              f"updates, {args.log_lines} log lines")
        result = soak(client, run, args.requests, args.updates, args.log_lines, args.workers, args.rounds,
                      args.keep_log)
        ten = next(rss for mark, _, rss in result["samples"] if mark == 10)
        end = result["samples"][-1][2]
        growth = (end - ten) / 1024
        print(f"soak: {result['seconds']:.0f} s, {result['rounds']:.0f} reconcile rounds, "
              f"{result['updates']} updates, 5xx/errors: {result['errors'] or 'none'}")
        verdict = "OK" if growth <= SOAK_GROWTH_MB else "OVER"
        print(f"soak growth from the 10 % mark: {growth:+.2f} MB (target <= {SOAK_GROWTH_MB} MB): {verdict}; "
              f"peak VmHWM {result['final']['VmHWM'] / 1024:.1f} MB")
        return 0

    idle = idle_unmanaged(args.idle)
    print(f"unmanaged, no app, after {args.idle:.0f} s: VmRSS {idle['VmRSS'] / 1024:.1f} MB "
          f"(target <= {IDLE_TARGET_MB}), Pss {idle.get('Pss', 0) / 1024:.1f} MB, "
          f"private dirty {idle.get('Private_Dirty', 0) / 1024:.1f} MB, {idle['Threads']} threads, "
          f"first /ping {idle['ping_s']:.2f} s (target <= {PING_TARGET_S})")
    managed = idle_managed(args.idle, client, run)
    print(f"managed, 3-service app running, after {args.idle:.0f} s: VmRSS {managed['VmRSS'] / 1024:.1f} MB "
          f"(target <= {MANAGED_TARGET_MB}), {managed['Threads']} threads, "
          f"first /ping {managed['ping_s']:.2f} s")

    imports = idle["imports"]
    print("\ncostliest imports of the unmanaged run (cumulative, top-level packages; -X importtime):")
    tops = [(cum, name) for _, cum, name in imports if "." not in name]
    for cum, name in sorted(tops, reverse=True)[:25]:
        print(f"  {cum / 1000:8.1f} ms  {name}")
    print("the supervisor's own modules (self time):")
    own = [(us, name) for us, _, name in imports if name.split(".")[0] in ("supervisor", "hw")]
    for us, name in sorted(own, reverse=True):
        print(f"  {us / 1000:8.1f} ms  {name}")
    print(f"  total {sum(us for us, _ in own) / 1000:.1f} ms in {len(own)} modules; "
          f"all imports {sum(us for us, _, _ in imports) / 1000:.1f} ms")
    heavy = ("docker", "requests", "urllib3", "psutil", "prometheus_client", "sdbus", "pyroute2",
             "charset_normalizer", "flask", "werkzeug", "jinja2", "ssl", "_hashlib", "asyncio")
    loaded = sorted({name for _, _, name in imports} & set(heavy))
    print(f"heavy modules loaded by the idle unmanaged supervisor: {', '.join(loaded) or 'none'}")
    print("\nresident cost of each library imported alone in a bare python -S (VmRSS growth):")
    for module in LIBRARIES:
        print(f"  {import_cost_kb(module) / 1024:6.1f} MB  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

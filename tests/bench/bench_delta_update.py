"""Image update by delta vs a full pull, end to end, on the real engine and a loopback registry.

Release 1 and release 2 of a busybox-based image carry ``--app-mib`` MiB of app files (half random,
half text); release 2 changes a few KiB in two files, adds one file and removes one. Both are pushed
to a loopback ``docker-registry``; the device has release 1. Each round fetches release 2 twice
through ``ImageManager.fetch``, removing it from the engine before each fetch:

* ``pull``: a regular pull from the registry (what a device without deltas does);
* ``delta``: ``fetch(..., delta_source=release 1)`` against a ``DeltaServer`` (in this process)
  reading the same registry: request, download, ``docker save`` of the base, patch, ``docker load``
  and verification. The artifact is made once, before the rounds; its making time is printed apart
  (the real delta server also makes each delta once and serves it to every device).

Printed: best and median seconds of each path, and the bytes each moved over HTTP (the pull: the
compressed layer and config blobs from the manifest; the delta: the artifact bytes received).
Everything created carries ``io.pysupervisor.test=1`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import requests

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # tests.fixtures, when run as a script
    sys.path.insert(0, str(ROOT))

from supervisor.db import Database  # noqa: E402
from supervisor.delta.fetch import DeltaFetcher, DeltaSettings  # noqa: E402
from supervisor.delta.server import DeltaServer, RegistrySource  # noqa: E402
from supervisor.state.current import Image  # noqa: E402
from supervisor.state.images import ImageManager  # noqa: E402
from tests.fixtures.docker import TEST_LABEL, build_image_archive, build_layer  # noqa: E402
from tests.fixtures.registry import Registry  # noqa: E402

RUN_LABEL = "io.pysupervisor.bench.run"


def app_files(seed: int, mib: int, version: int) -> dict[str, bytes | str]:
    rng = random.Random(seed)
    files: dict[str, bytes | str] = {}
    count = max(4, mib * 2)  # 512 KiB files
    for i in range(count):
        if i % 2:
            files[f"/app/lib/text{i}.js"] = "".join(
                f"export const value{i}_{j} = {rng.randint(0, 10**9)};\n" for j in range(12_000)
            ).encode()[: 512 * 1024]
        else:
            files[f"/app/lib/blob{i}.bin"] = rng.randbytes(512 * 1024)
    if version == 2:
        text = bytearray(files["/app/lib/text1.js"])  # type: ignore[arg-type]
        text[100_000:100_000] = b"// release 2: a changed line\n" * 40
        files["/app/lib/text1.js"] = bytes(text)
        blob = bytearray(files["/app/lib/blob0.bin"])  # type: ignore[arg-type]
        blob[200_000:204_096] = bytes(4096)
        files["/app/lib/blob0.bin"] = bytes(blob)
        files["/app/added.conf"] = "added = true\n" * 100
        del files["/app/lib/text3.js"]
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-mib", type=int, default=32, help="MiB of app files in each release")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path")
    args = parser.parse_args()

    client = docker.from_env()
    client.ping()
    api = client.api
    arch = client.version().get("Arch", "amd64")
    token = uuid.uuid4().hex[:12]
    labels = {TEST_LABEL: "1", RUN_LABEL: token}
    root = Path(tempfile.mkdtemp(prefix="pysupervisor-bench-delta-"))
    (root / "registry").mkdir()
    registry = Registry(client, root / "registry")
    server: DeltaServer | None = None
    try:
        registry.start()
        refs, ids = [], []
        for version in (1, 2):
            local = f"pysupervisor-bench/delta-{token}:v{version}"
            image_id, archive = build_image_archive(
                local, build_layer(app_files(1, args.app_mib, version)), arch=arch,
                cmd=["sleep", "100000"], labels=labels, env={}, workdir=None,
            )
            for line in api.load_image(archive, quiet=True):
                if "error" in line:
                    raise RuntimeError(line["error"])
            refs.append(registry.push(local, f"bench-delta-{token}", f"v{version}"))
            api.remove_image(local)
            ids.append(image_id)
        v1, v2 = refs
        manifest = requests.get(
            f"{registry.url}/v2/bench-delta-{token}/manifests/v2",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, timeout=10,
        ).json()
        pull_bytes = sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]
        layer_bytes = api.inspect_image(ids[1])["Size"]

        server = DeltaServer(RegistrySource(), root / "cache", wait_s=600).start()
        started = time.perf_counter()
        status = requests.get(f"{server.url}/api/v2/delta", params={"src": v1, "dest": v2},
                              allow_redirects=False, timeout=600).status_code
        make_s = time.perf_counter() - started
        assert status == 302, status
        artifact_bytes = next((root / "cache").glob("*.delta")).stat().st_size

        settings = DeltaSettings(enabled=True, endpoint=server.url, retry_interval_s=0.1)
        fetcher = DeltaFetcher(api, settings, root / "device/deltas")
        db = Database(root / "device/db.sqlite")
        with_delta = ImageManager(client, db, delta=lambda: fetcher)
        plain = ImageManager(client, db)
        record = Image(name=v2, app_id=1, app_uuid="bench", service_id=1, service_name="main",
                       image_id=2, release_id=2, commit="c2")
        times: dict[str, list[float]] = {"pull": [], "delta": []}
        moved: dict[str, int] = {}
        for round_no in range(args.rounds):
            order = ("pull", "delta") if round_no % 2 == 0 else ("delta", "pull")
            for path in order:
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_image(ids[1], force=True)
                started = time.perf_counter()
                if path == "pull":
                    fetched = plain.fetch(record)
                else:
                    fetched = with_delta.fetch(record, delta_source=v1)
                    moved["delta"] = fetcher.downloaded
                times[path].append(time.perf_counter() - started)
                assert fetched.docker_image_id == ids[1], (path, fetched)
                has_digest = bool(api.inspect_image(ids[1]).get("RepoDigests"))
                assert has_digest == (path == "pull"), f"{path} did not take its own path"
        moved["pull"] = pull_bytes

        print(f"image: {layer_bytes / 2**20:.1f} MiB uncompressed layer, {pull_bytes / 2**20:.2f} MiB "
              f"compressed blobs in the registry; delta artifact {artifact_bytes / 1024:.1f} KiB "
              f"(made once in {make_s:.2f} s)")
        print(f"{'path':<6} {'best s':>8} {'median s':>9} {'bytes moved':>14}")
        for path in ("pull", "delta"):
            best, median = min(times[path]), statistics.median(times[path])
            print(f"{path:<6} {best:8.3f} {median:9.3f} {moved[path]:14,d}")
        print(f"delta/pull: time {min(times['delta']) / min(times['pull']):.2f}x (best), "
              f"{statistics.median(times['delta']) / statistics.median(times['pull']):.2f}x (median); "
              f"bytes {moved['delta'] / moved['pull']:.4f}x")
        for mbit in (10, 100):  # loopback moves bytes for free; a device's link does not
            pull = min(times["pull"]) + moved["pull"] * 8 / (mbit * 1e6)
            delta = min(times["delta"]) + moved["delta"] * 8 / (mbit * 1e6)
            print(f"estimate over a {mbit} Mbit/s link: pull {pull:.2f} s, delta {delta:.2f} s")
    finally:
        if server is not None:
            server.stop()
        for entry in api.images(filters={"label": f"{RUN_LABEL}={token}"}):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_image(entry["Id"], force=True)
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)
        client.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS (ru_maxrss) of this process, delta server included: {rss:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

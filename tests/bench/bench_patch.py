"""Benchmark of the librsync patcher: ours (compiled and twin) vs ``rdiff patch``, same files, one run.

Run as a script: ``python tests/bench/bench_patch.py`` (see tests/bench/README.md). It generates
a 200 MiB random basis and a target with scattered edits and insertions (deterministic seed,
in a temporary directory), makes the delta with ``rdiff delta``, checks that every path
produces the target byte for byte, then times, interleaved round by round
(after an untimed round that checks every output):

* rdiff:        ``rdiff patch basis delta out`` (a subprocess)
* compiled:     ``supervisor._rsync.patch`` in this process (how the supervisor calls it)
* compiled-cli: ``python -m supervisor.delta patch basis delta out`` (a subprocess, like rdiff)
* twin:         ``supervisor.delta._rsync_py.patch`` in this process

Every path writes a fresh output file in the same directory. The files are read once before
timing, so the page cache is warm for all of them. Peak RSS of the subprocesses comes from
``/usr/bin/time``. For the in-process paths, the figure is the tracemalloc peak of a separate
untimed pass.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from supervisor import _rsync as compiled  # noqa: E402
from supervisor.delta import _rsync_py as twin  # noqa: E402

MiB = 1 << 20


def generate(directory: Path, size_mib: int, seed: int) -> tuple[Path, Path]:
    """basis: size_mib of random bytes; target: the basis with an edit every 0.2-2 MiB."""
    rng = random.Random(seed)
    basis, target = directory / "basis", directory / "target"
    with basis.open("wb") as f:
        for _ in range(size_mib):
            f.write(rng.randbytes(MiB))
    edits = {"overwrite": 0, "insert": 0, "delete": 0, "replace": 0}
    with basis.open("rb") as src, target.open("wb") as dst:
        while segment := bytearray(src.read(rng.randrange(MiB // 5, 2 * MiB))):
            kind = rng.choice(sorted(edits))
            pos = rng.randrange(len(segment))
            n = rng.randrange(1, 4096)
            if kind == "overwrite":
                segment[pos : pos + n] = rng.randbytes(len(segment[pos : pos + n]))
            elif kind == "insert":
                segment[pos:pos] = rng.randbytes(n)
            elif kind == "delete":
                del segment[pos : pos + n]
            else:
                segment[pos : pos + n] = rng.randbytes(rng.randrange(1, 8192))
            edits[kind] += 1
            dst.write(segment)
    print(f"edits: {', '.join(f'{v} {k}s' for k, v in edits.items())}")
    return basis, target


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def run_child(argv: list[str]) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one child process.

    The RSS comes from /usr/bin/time when it is installed. Python's own wait4 figure would
    include the forking interpreter: Linux charges the pre-exec address space to the child.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    timer = ["/usr/bin/time", "-f", "%M"] if os.path.exists("/usr/bin/time") else []
    start = time.perf_counter()
    proc = subprocess.run([*timer, *argv], env=env, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{argv} failed with status {proc.returncode}: {proc.stderr.decode()}")
    return elapsed, int(proc.stderr.split()[-1]) if timer else -1


def run_inprocess(module, basis: Path, delta: Path, out: Path) -> float:
    gc.collect()
    start = time.perf_counter()
    with basis.open("rb") as b, delta.open("rb") as d, out.open("wb") as o:
        module.patch(b, d, o)
    return time.perf_counter() - start


def traced_peak(module, basis: Path, delta: Path, out: Path) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        run_inprocess(module, basis, delta, out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def compare_generation(basis: Path, target: Path, rdiff_sig: Path, rdiff_delta: Path) -> None:
    """For information: our signature and delta on the same pair, against rdiff's files."""
    sig, delta = basis.with_name("our.sig"), basis.with_name("our.delta")
    start = time.perf_counter()
    with basis.open("rb") as b, sig.open("wb") as o:
        compiled.signature(b, o)
    middle = time.perf_counter()
    with sig.open("rb") as s, target.open("rb") as t, delta.open("wb") as o:
        compiled.delta(s, t, o)
    end = time.perf_counter()
    same_sig = sha256(sig) == sha256(rdiff_sig)
    same_delta = sha256(delta) == sha256(rdiff_delta)
    print(
        f"\ngeneration (compiled, once): signature {middle - start:.2f} s "
        f"({'identical to' if same_sig else 'DIFFERENT from'} rdiff's), delta {end - middle:.2f} s "
        f"({delta.stat().st_size / MiB:.2f} MiB, {'identical to' if same_delta else 'differs from'} rdiff's)"
    )
    sig.unlink()
    delta.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=200, help="basis size")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per path; best is kept")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, help="work here (kept) instead of a temporary directory")
    parser.add_argument(
        "--no-signature",
        dest="signature",
        action="store_false",
        help="skip the closing comparison of our signature and delta generation with rdiff's",
    )
    args = parser.parse_args()
    rdiff = shutil.which("rdiff")
    if not rdiff:
        print("rdiff is not installed (apt-get install -y rdiff)", file=sys.stderr)
        return 1

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_patch."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        basis, target = generate(work, args.size_mib, args.seed)
        took = time.perf_counter() - t0
        print(f"generated {basis.stat().st_size / MiB:.0f} MiB basis + target in {took:.1f} s")
        t0 = time.perf_counter()
        sig, delta = work / "sig", work / "delta"
        subprocess.run([rdiff, "-f", "signature", str(basis), str(sig)], check=True)
        t1 = time.perf_counter()
        subprocess.run([rdiff, "-f", "delta", str(sig), str(target), str(delta)], check=True)
        t2 = time.perf_counter()
        size = target.stat().st_size
        print(
            f"rdiff signature {t1 - t0:.2f} s, rdiff delta {t2 - t1:.2f} s: "
            f"delta {delta.stat().st_size / MiB:.2f} MiB for a {size / MiB:.1f} MiB target"
        )

        want = sha256(target)
        for f in (basis, delta):  # warm the page cache for everyone
            sha256(f)
        paths = {
            "rdiff": lambda out: run_child([rdiff, "patch", str(basis), str(delta), str(out)]),
            "compiled": lambda out: (run_inprocess(compiled, basis, delta, out), 0),
            "compiled-cli": lambda out: run_child(
                [sys.executable, "-m", "supervisor.delta", "patch", str(basis), str(delta), str(out)]
            ),
            "twin": lambda out: (run_inprocess(twin, basis, delta, out), 0),
        }
        times: dict[str, list[float]] = {name: [] for name in paths}
        rss: dict[str, int] = {}
        names = list(paths)
        for round_ in range(args.repeat + 1):  # round 0 warms up and checks the outputs
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:  # rotate the order
                out = work / f"out.{name}"
                out.unlink(missing_ok=True)
                elapsed, maxrss = paths[name](out)
                if round_ == 0 and sha256(out) != want:
                    print(f"{name}: output DIFFERS from the target")
                    return 1
                out.unlink()
                rss[name] = max(rss.get(name, 0), maxrss)
                if round_:
                    times[name].append(elapsed)
                    print(f"  round {round_} {name:12} {elapsed:7.3f} s")
        print("all outputs identical to the target (sha256)")
        best = {name: min(t) for name, t in times.items()}
        median = {name: statistics.median(t) for name, t in times.items()}

        idle_time, idle_rss = min(
            run_child([sys.executable, "-c", "import supervisor.delta.rsync"]) for _ in range(3)
        )
        peaks = {
            "compiled": traced_peak(compiled, basis, delta, work / "out.peak"),
            "twin": traced_peak(twin, basis, delta, work / "out.peak"),
        }
        (work / "out.peak").unlink()

        print(f"\n{'path':12} {'best s':>8} {'MiB/s out':>10} {'vs rdiff':>9} {'median':>7}  memory")
        for name, elapsed in best.items():
            if name in peaks:
                memory = f"tracemalloc peak {peaks[name] / 1024:,.0f} KiB (in process)"
            else:
                memory = f"peak RSS {rss[name] / 1024:.1f} MiB" if rss[name] >= 0 else "no /usr/bin/time"
                if name == "compiled-cli":
                    memory += f" (interpreter + import alone: {idle_rss / 1024:.1f} MiB, {idle_time:.3f} s)"
            print(
                f"{name:12} {elapsed:8.3f} {size / MiB / elapsed:10.0f} "
                f"{best['rdiff'] / elapsed:8.2f}x {median['rdiff'] / median[name]:6.2f}x  {memory}"
            )
        print(
            f"\ncompiled / rdiff = {best['rdiff'] / best['compiled']:.2f}x throughput (target >= 1.0), "
            f"best of {args.repeat} ({median['rdiff'] / median['compiled']:.2f}x on medians), "
            f"warm page cache, {os.cpu_count()} CPUs"
        )
        if args.signature:
            compare_generation(basis, target, sig, delta)
        return 0
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

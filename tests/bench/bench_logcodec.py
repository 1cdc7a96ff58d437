"""Benchmark of the log pipeline: Docker multiplexed stream -> records -> NDJSON bytes.

Run as a script: ``python tests/bench/bench_logcodec.py`` (see tests/bench/README.md).
It compares, on the same generated input and in the same process:

* compiled: ``supervisor._logcodec`` Demuxer + encode_many
* twin:     ``supervisor.logs._codec_py`` Demuxer + encode_many (the pure-Python fallback)
* orjson:   the twin's Demuxer + ``orjson.dumps(record) + b"\\n"`` per record

Each pipeline does ``out += encode_many(demuxer.feed(chunk))`` per chunk, with ``out`` a
bytearray that is emptied every 1 MiB, as a socket writer would do. The input is held
in memory beforehand and is not part of the measurement.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable

import orjson

from supervisor import _logcodec as compiled
from supervisor.logs import _codec_py as twin

SINK_LIMIT = 1 << 20

_WORDS = [
    "request",
    "handled",
    "cache",
    "miss",
    "retry",
    "upstream",
    "timeout",
    "connected",
    "worker",
    "queue",
    "batch",
    "flush",
    "session",
    "token",
    "refreshed",
    "sensor",
    "reading",
    "gpio",
    "pin",
    "mqtt",
    "publish",
    "subscribe",
    "payload",
    "ok",
    "done",
    "starting",
    "stopping",
    "config",
    "reload",
    "healthcheck",
    "passed",
    "failed",
    "pending",
    "scheduled",
]
_UNICODE = [
    "Température 21.5°C",
    "Verbindung hergestellt ✓",
    "温度センサー OK",
    "🚀 deployed",
    "naïve café",
    "Ошибка сети",
]
_STDOUT_TEMPLATES = [
    'GET /api/v1/devices/{n} 200 {ms}ms "Mozilla/5.0 (X11; Linux aarch64)"',
    "[INFO] worker-{k}: processed batch {n} in {ms} ms",
    '{{"level":"info","msg":"published to mqtt://broker:1883/{n}","qos":1,"ok":true}}',
    "key=sensor-{k}\tvalue={ms}\tunit=mV\tstatus=ok",
    "Loading C:\\data\\fleet\\device-{k}\\config.json",
    "{uni}: reading {n}",
    "INFO: Uvicorn running on http://0.0.0.0:{k}80 (Press CTRL+C to quit)",
]
_STDERR_TEMPLATES = [
    "Traceback (most recent call last):",
    '  File "/usr/src/app/main.py", line {k}, in <module>',
    "ERROR: connection refused (errno 111) while contacting {uni}",
    'WARN [db] slow query took {ms} ms: SELECT * FROM "events" WHERE id = {n}',
]


def generate(lines: int, chunk_size: int, seed: int) -> tuple[list[bytes], int]:
    """A realistic multiplexed stream with timestamps, cut into chunk_size-byte chunks."""
    rng = random.Random(seed)
    stream = bytearray()
    t_ns = 1_709_296_496_000_000_000
    done = 0
    stamp_secs, stamp = None, ""
    while done < lines:
        is_err = rng.random() < 0.15
        templates = _STDERR_TEMPLATES if is_err else _STDOUT_TEMPLATES
        payload = bytearray()
        for _ in range(min(rng.choice((1, 1, 1, 2, 3, 4)), lines - done)):  # lines per write
            t_ns += rng.randrange(1, 2_000_000)
            secs, nanos = divmod(t_ns, 1_000_000_000)
            if secs != stamp_secs:
                stamp_secs, stamp = secs, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
            frac = f"{nanos:09d}".rstrip("0")  # Docker's RFC3339Nano trims trailing zeros
            text = rng.choice(templates).format(
                n=rng.randrange(10**6),
                k=rng.randrange(100),
                ms=rng.randrange(5000),
                uni=rng.choice(_UNICODE),
            )
            target = rng.randrange(40, 201) - 31  # bytes after the timestamp prefix
            while len(text) < target:
                text += " " + rng.choice(_WORDS)
            payload += f"{stamp}{'.' + frac if frac else ''}Z {text}\n".encode()
            done += 1
        stream += bytes((2 if is_err else 1, 0, 0, 0)) + len(payload).to_bytes(4, "big")
        stream += payload
    chunks = [bytes(stream[i : i + chunk_size]) for i in range(0, len(stream), chunk_size)]
    return chunks, len(stream)


def _encode_orjson(records: list[dict]) -> bytes:
    dumps = orjson.dumps
    return b"".join([dumps(r) + b"\n" for r in records])


PIPELINES: dict[str, tuple[type, Callable[[list[dict]], bytes]]] = {
    "compiled": (compiled.Demuxer, compiled.encode_many),
    "twin": (twin.Demuxer, twin.encode_many),
    "orjson": (twin.Demuxer, _encode_orjson),
}


def run(name: str, chunks: list[bytes]) -> int:
    """The measured pipeline; returns the number of NDJSON bytes produced."""
    demuxer_cls, encode_many = PIPELINES[name]
    demuxer = demuxer_cls(1, now_ms=lambda: 0)
    out = bytearray()
    total = 0
    for chunk in chunks:
        out += encode_many(demuxer.feed(chunk))
        if len(out) >= SINK_LIMIT:
            total += len(out)
            out.clear()
    out += encode_many(demuxer.close())
    return total + len(out)


def output(name: str, chunks: list[bytes]) -> bytes:
    demuxer_cls, encode_many = PIPELINES[name]
    demuxer = demuxer_cls(1, now_ms=lambda: 0)
    return b"".join(encode_many(demuxer.feed(c)) for c in chunks) + encode_many(demuxer.close())


def peak_memory(name: str, chunks: list[bytes]) -> int:
    """tracemalloc peak of one untimed pass (input excluded: it was allocated before start)."""
    gc.collect()
    tracemalloc.start()
    try:
        run(name, chunks)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=32 * 1024, help="chunk size in bytes")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per path; best is kept")
    parser.add_argument(
        "--mem-lines", type=int, default=200_000, help="lines in the (slow, untimed) tracemalloc pass"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    t0 = time.perf_counter()
    chunks, size = generate(args.lines, args.chunk, args.seed)
    print(
        f"input: {args.lines:,} lines, {size / 2**20:.1f} MiB, {len(chunks):,} chunks of "
        f"{args.chunk:,} B (generated in {time.perf_counter() - t0:.1f} s)"
    )

    sample = chunks[:64]
    reference = output("twin", sample)
    for name in PIPELINES:
        same = output(name, sample) == reference
        print(
            f"output of {name:8} on the first {len(sample)} chunks: "
            f"{'identical to the twin' if same else 'DIFFERENT from the twin'}"
        )
        if name != "orjson" and not same:
            return 1

    best: dict[str, float] = {}
    for round_ in range(args.repeat):
        for name in PIPELINES:  # interleaved, so drift on a shared machine hits all paths
            gc.collect()
            start = time.perf_counter()
            produced = run(name, chunks)
            elapsed = time.perf_counter() - start
            best[name] = min(best.get(name, elapsed), elapsed)
            print(f"  round {round_ + 1} {name:8} {elapsed:7.3f} s  ({produced / 2**20:.1f} MiB out)")

    mem_chunks = chunks[: max(1, len(chunks) * args.mem_lines // args.lines)]
    print(f"\n{'path':8} {'best s':>8} {'lines/s':>12} {'MiB/s in':>9} {'tracemalloc peak':>17}")
    for name, elapsed in best.items():
        peak = peak_memory(name, mem_chunks)
        print(
            f"{name:8} {elapsed:8.3f} {args.lines / elapsed:12,.0f} "
            f"{size / 2**20 / elapsed:9.1f} {peak / 2**10:13,.0f} KiB"
        )
    # the encoder alone, on records that already exist (the pipeline above is mostly demux)
    demuxer = compiled.Demuxer(1, now_ms=lambda: 0)
    records = [r for c in mem_chunks for r in demuxer.feed(c)]
    print(f"\nencoder only, {len(records):,} prebuilt records, best of {args.repeat}:")
    for name, encode in (
        ("compiled", compiled.encode_many),
        ("twin", twin.encode_many),
        ("orjson", _encode_orjson),
    ):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            for i in range(0, len(records), 200):  # about one 32 KiB chunk's worth per call
                encode(records[i : i + 200])
            times.append(time.perf_counter() - start)
        print(f"  {name:8} {len(records) / min(times):12,.0f} records/s")
    del records

    print(f"\ncompiled/twin   = {best['twin'] / best['compiled']:.2f}x  (target >= 3)")
    print(f"compiled/orjson = {best['orjson'] / best['compiled']:.2f}x  (target >= 1.0)")
    print(
        f"peak memory: tracemalloc peak of one untimed pass over the first {len(mem_chunks):,} "
        f"chunks (~{args.mem_lines:,} lines), input excluded;\n"
        f"the output sink is emptied every {SINK_LIMIT // 2**10} KiB. Process ru_maxrss "
        f"(input included): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

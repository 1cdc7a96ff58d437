"""Docker log stream codec: demux + line split, the engine's repeats dropped, NDJSON encode (public
entry point). Every per-line step of the engine log path runs here, so the rest works per batch.

It uses the compiled ``supervisor._logcodec``. The pure-Python twin is used only when the
extension is not installed at all, for example in a source checkout that was never built.
The fallback logs a warning because it is several times slower. A broken build (one whose
import fails for any other reason) still raises, so it cannot go unnoticed.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

try:
    from supervisor._logcodec import (
        Demuxer,
        LogStreamError,
        RepeatFilter,
        encode,
        encode_batch,
        encode_many,
        parse_timestamp,
    )

    IMPLEMENTATION = "compiled"
except ModuleNotFoundError as exc:
    if exc.name != "supervisor._logcodec":
        raise
    from supervisor.logs._codec_py import (
        Demuxer,
        LogStreamError,
        RepeatFilter,
        encode,
        encode_batch,
        encode_many,
        parse_timestamp,
    )

    IMPLEMENTATION = "python"
    logging.getLogger(__name__).warning(
        "compiled log codec supervisor._logcodec is not built; using the slower pure-Python twin"
    )



def load(name: str | None = None) -> ModuleType:
    """The codec module for the log pipeline: this one (the compiled codec when it is built), or
    with ``name == "python"`` (default: ``SUPERVISOR_LOG_CODEC``) the pure-Python twin, which the
    benchmark runs on the same path (tests/bench/bench_logs.py)."""
    import sys

    name = name or os.environ.get("SUPERVISOR_LOG_CODEC") or "compiled"
    if name == "python":
        from . import _codec_py

        return _codec_py
    return sys.modules[__name__]


__all__ = [
    "IMPLEMENTATION",
    "load",
    "Demuxer",
    "LogStreamError",
    "RepeatFilter",
    "encode",
    "encode_batch",
    "encode_many",
    "parse_timestamp",
]

"""Binary deltas in the librsync format (what ``rdiff`` reads and writes).

``supervisor.delta.rsync`` holds the API (compiled, with a pure-Python twin); ``python -m
supervisor.delta signature|delta|patch`` is an rdiff-compatible command line. The names below
resolve lazily: the compiled module imports the twin from this package while it initialises.
"""

from __future__ import annotations

__all__ = [
    "IMPLEMENTATION",
    "RS_BLAKE2_SIG_MAGIC",
    "RS_DELTA_MAGIC",
    "RS_MD4_SIG_MAGIC",
    "RS_RK_BLAKE2_SIG_MAGIC",
    "RS_RK_MD4_SIG_MAGIC",
    "DeltaFormatError",
    "Patcher",
    "Signature",
    "delta",
    "load_signature",
    "patch",
    "signature",
]


def __getattr__(name: str) -> object:
    if name in __all__:
        from supervisor.delta import rsync

        return getattr(rsync, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""librsync signatures, deltas and patches (public entry point).

It uses the compiled ``supervisor._rsync``. The pure-Python twin ``_rsync_py`` is used only when
the extension is not installed at all, for example in a source checkout that was never built.
The fallback logs a warning because the twin is far slower. A broken build (one whose import fails
for any other reason) still raises, so it cannot go unnoticed.

``patch`` never makes a partial result look complete: on any error it raises, and the caller
must discard what was written so far (write to a temporary file, rename on success).
"""

from __future__ import annotations

import logging

from supervisor.delta._rsync_py import (
    RS_BLAKE2_SIG_MAGIC,
    RS_DELTA_MAGIC,
    RS_MD4_SIG_MAGIC,
    RS_RK_BLAKE2_SIG_MAGIC,
    RS_RK_MD4_SIG_MAGIC,
    DeltaFormatError,
)

try:
    from supervisor._rsync import Patcher, Signature, delta, load_signature, patch, signature

    IMPLEMENTATION = "compiled"
except ModuleNotFoundError as exc:
    if exc.name != "supervisor._rsync":
        raise
    from supervisor.delta._rsync_py import Patcher, Signature, delta, load_signature, patch, signature

    IMPLEMENTATION = "python"
    logging.getLogger(__name__).warning(
        "compiled rsync delta module supervisor._rsync is not built; using the slower pure-Python twin"
    )

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

"""Atomic, power-loss-safe file writes.

Every write of persistent state goes through :func:`write_atomic`: the new content goes to a temp
file in the same directory, is fsynced, renamed over the target and the directory is fsynced, so a
power cut leaves either the old or the new file, never a torn one. Unchanged content is not written
at all (SD cards wear, and the boot partition is FAT).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` atomically; return False (and write nothing) when unchanged."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        if target.read_bytes() == payload:
            return False
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (the directory entry)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # some filesystems (FAT through fuse) refuse to open directories
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)

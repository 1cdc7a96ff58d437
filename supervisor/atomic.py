"""Atomic, power-loss-safe file writes.

Every write of persistent state goes through :func:`write_atomic`: the new content goes to a temp
file in the same directory, is fsynced, renamed over the target and the directory is fsynced, so a
power cut leaves either the old or the new file, never a torn one. Unchanged content is not written
at all (SD cards wear, and the boot partition is FAT).

A process killed between creating the temp file and the rename leaves the temp file behind (issue #17,
tests/test_faults_kill.py). Temp names carry the writer's pid (``.<name>.<pid>.<random>.tmp``), so the
next write of the same file, and :func:`remove_orphans` at start, delete those of dead writers only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` atomically; return False (and write nothing) when unchanged."""
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    remove_orphans(target)
    try:
        if target.read_bytes() == payload:
            return False
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
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


#: Paths whose orphans this process has looked for already: orphans come only from a writer that died,
#: so after the first write of a path in a process there are none of its own to find (issue #17).
_CHECKED: set[Path] = set()


def remove_orphans(path: str | os.PathLike[str]) -> int:
    """Delete the temp files of writes of ``path`` cut short by a kill (their writer is gone); the
    number deleted. Looks once per path in a process."""
    target = Path(path)
    if target in _CHECKED:
        return 0
    _CHECKED.add(target)
    prefix = f".{target.name}."
    removed = 0
    try:
        entries = [e.name for e in os.scandir(target.parent)
                   if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:  # no directory yet
        return 0
    for name in entries:
        if writer_alive(name):
            continue  # a live writer's (this process or another), or a reused pid: kept
        with contextlib.suppress(OSError):  # gone already, or a read-only partition: left alone
            os.unlink(target.parent / name)
            removed += 1
    if removed:
        log.warning("Removed %d temp file(s) of an interrupted write of %s", removed, target)
    return removed


def writer_alive(temp: str | os.PathLike[str]) -> bool:
    """Whether the process that made a temp file of :func:`write_atomic` still runs (its name is
    ``.<name>.<pid>.<random>.tmp``; the random part has no dot): then it is a write under way, not
    an orphan."""
    pid = Path(temp).name.removesuffix(".tmp").rsplit(".", 2)[-2]
    return pid.isdigit() and _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
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


#: Filesystems held in RAM: nothing written there reaches flash, and it is gone at a reboot.
RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def filesystem_type(path: str | os.PathLike[str], mounts: str = "/proc/self/mounts") -> str | None:
    """The type (``ext4``, ``tmpfs``, ...) of the filesystem ``path`` is (or would be created) on: the
    longest mount point above it in ``mounts``; None when that cannot be read."""
    wanted = existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    target = existing.resolve() / wanted.relative_to(existing)  # symlinks followed where they exist
    best, kind = -1, None
    try:
        with open(mounts, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) < 3:
                    continue
                # Spaces, tabs, newlines and backslashes in a mount point are octal escapes (fstab(5)).
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
                if (target == Path(point) or Path(point) in target.parents) and len(point) >= best:
                    best, kind = len(point), fields[2]
    except OSError:
        return None
    return kind

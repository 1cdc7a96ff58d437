"""System metrics for the state report (spec §13.6), read with psutil.

psutil rather than parsing /proc by hand: it is maintained, covers the kernel's format changes,
and is what the rest of the Python world reads these numbers with. MB means ``floor(bytes/MiB)``.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: §10.4 hysteresis: a new value replaces the last reported one only when ``floor(v/bucket)`` moves.
BUCKETS = {"cpu_usage": 20, "cpu_temp": 5, "memory_usage": 10}
METRIC_KEYS = (
    "cpu_usage",
    "memory_usage",
    "memory_total",
    "storage_usage",
    "storage_total",
    "storage_block_device",
    "cpu_temp",
    "cpu_id",
)
_SERIAL_FILES = (
    "/proc/device-tree/serial-number",
    "/proc/device-tree/product-sn",
    "/sys/devices/soc0/serial_number",
)


def _storage(data_dir: Path) -> dict[str, Any]:
    """The partition whose mount point contains ``/data`` (§13.6), else the one holding the
    supervisor's data directory."""
    import psutil

    partitions = psutil.disk_partitions(all=False)
    chosen = next((p for p in partitions if "/data" in p.mountpoint), None)
    path = chosen.mountpoint if chosen else str(data_dir if data_dir.exists() else "/")
    if chosen is None:
        best = max(
            (p for p in partitions if path.startswith(p.mountpoint)),
            key=lambda p: len(p.mountpoint),
            default=None,
        )
        chosen = best
    usage = psutil.disk_usage(path)
    return {
        "storage_block_device": chosen.device if chosen else None,
        "storage_usage": usage.used // MIB,
        "storage_total": usage.total // MIB,
    }


def _cpu_temp() -> int | None:
    import psutil

    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):
        return None
    for entries in sensors.values():
        for entry in entries:
            if entry.current is not None and entry.current > 0:
                return round(entry.current)
    return None


def cpu_id(root: Path) -> str | None:
    """The board serial (NUL bytes stripped, lower-cased), or None."""
    for name in _SERIAL_FILES:
        try:
            raw = (root / name.lstrip("/")).read_bytes()
        except OSError:
            continue
        text = raw.replace(b"\0", b"").decode("ascii", "replace").strip().lower()
        if text:
            return text
    return None


def is_undervolted() -> bool:
    """The kernel log mentions under-voltage (§13.6); False when dmesg cannot be read."""
    dmesg = shutil.which("dmesg")
    if dmesg is None:
        return False
    try:
        out = subprocess.run([dmesg], capture_output=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return (
        b"under-voltage" in out.lower() or b"undervoltage" in out.lower() or b"under voltage" in out.lower()
    )


def system_metrics(root: Path, data_dir: Path) -> dict[str, Any]:
    """cpu, memory, temperature and storage now; a value that cannot be read is None."""
    import psutil

    memory = psutil.virtual_memory()
    values: dict[str, Any] = {
        # cpu_percent(None) is the usage since the previous call: the report period.
        "cpu_usage": round(psutil.cpu_percent(interval=None)),
        # used = total - free - buffers - cached (psutil, Linux): the reference's
        # used - cached - buffers - reclaimable.
        "memory_usage": memory.used // MIB,
        "memory_total": memory.total // MIB,
        "cpu_temp": _cpu_temp(),
        "cpu_id": cpu_id(root),
    }
    try:
        values.update(_storage(data_dir))
    except OSError:
        values.update(storage_block_device=None, storage_usage=None, storage_total=None)
    return values


def disabled_metrics() -> dict[str, Any]:
    """``SUPERVISOR_HARDWARE_METRICS=false``: every metric is sent as null (§2.3)."""
    return dict.fromkeys(METRIC_KEYS)


def with_hysteresis(new: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """Keep the last reported value of a bucketed metric while it stays in its bucket."""
    out = dict(new)
    for key, bucket in BUCKETS.items():
        value, previous = new.get(key), last.get(key)
        if value is None or previous is None or not isinstance(previous, int | float):
            continue
        if math.floor(value / bucket) == math.floor(previous / bucket):
            out[key] = previous
    return out

"""What a board is when no ``device-type.json`` says it (a dev board running ``python -m supervisor``).

balenaOS writes ``/mnt/boot/device-type.json`` (``slug``, ``arch``); a Raspberry Pi OS, a NUC or a laptop
has none. There the device reports what the machine itself says, in balena's names:

* ``arch`` from the machine the supervisor runs on (``uname -m``, and the pointer size for a 32-bit
  userland on a 64-bit kernel): :data:`ARCHES`.
* ``deviceType`` from the board: ``/proc/device-tree/model`` for an ARM board (a Raspberry Pi's
  model string -> its balena slug, :data:`PI_MODELS`), ``/sys/class/dmi/id`` for a PC (DMI present ->
  ``generic-amd64``). Anything else gets :data:`GENERIC` for its arch, and a board of an arch balena has
  no name for gets ``unknown``.

The board files are read under the root prefix (``--root``), so tests give fake ``/proc`` and ``/sys``
trees. All tables of the mapping live here.
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass
from typing import Final

from .paths import Paths

__all__ = ["ARCHES", "GENERIC", "PI_MODELS", "DetectedType", "balena_arch", "detect", "pi_slug"]

UNKNOWN: Final = "unknown"

#: ``uname -m`` -> balena arch.
ARCHES: Final[dict[str, str]] = {
    "x86_64": "amd64", "amd64": "amd64",
    "i386": "i386", "i486": "i386", "i586": "i386", "i686": "i386",
    "aarch64": "aarch64", "arm64": "aarch64",
    "armv7l": "armv7hf", "armv8l": "armv7hf",
    "armv6l": "rpi",
}

#: A 64-bit kernel running a 32-bit userland (Raspberry Pi OS 32-bit on a Pi 4): the containers the
#: engine runs are the userland's arch.
_USERLAND_32: Final[dict[str, str]] = {"aarch64": "armv7hf", "amd64": "i386"}

#: Raspberry Pi model strings (``/proc/device-tree/model`` starts with the key; first match wins, so
#: longer names come first) -> (slug on a 64-bit userland, slug on a 32-bit one).
PI_MODELS: Final[tuple[tuple[str, str, str], ...]] = (
    ("Raspberry Pi 5", "raspberrypi5", "raspberrypi5"),
    ("Raspberry Pi Compute Module 5", "raspberrypi5", "raspberrypi5"),
    ("Raspberry Pi 400", "raspberrypi400-64", "raspberrypi400-64"),
    ("Raspberry Pi Compute Module 4", "raspberrypicm4-ioboard", "raspberrypicm4-ioboard"),
    ("Raspberry Pi 4", "raspberrypi4-64", "raspberrypi4-64"),
    ("Raspberry Pi Zero 2", "raspberrypi0-2w-64", "raspberrypi3"),
    ("Raspberry Pi Compute Module 3", "raspberrypi3-64", "raspberrypi3"),
    ("Raspberry Pi 3", "raspberrypi3-64", "raspberrypi3"),
    ("Raspberry Pi 2", "raspberry-pi2", "raspberry-pi2"),
    ("Raspberry Pi", "raspberry-pi", "raspberry-pi"),  # 1, Zero, Zero W, Compute Module 1
)

#: The device type of a board nothing above names, by arch.
GENERIC: Final[dict[str, str]] = {
    "amd64": "generic-amd64",
    "aarch64": "generic-aarch64",
    "armv7hf": "generic-armv7ahf",
    "i386": "qemux86",
    "rpi": "raspberry-pi",
}


@dataclass(frozen=True)
class DetectedType:
    """``arch`` and ``slug`` in balena's names; ``source`` says where the slug came from (logged)."""

    arch: str
    slug: str
    source: str


def balena_arch(machine: str | None = None, pointer_bits: int | None = None) -> str:
    """The balena arch of ``machine`` (default: this one), or ``unknown``."""
    machine = (machine if machine is not None else platform.machine()).lower()
    bits = pointer_bits if pointer_bits is not None else struct.calcsize("P") * 8
    arch = ARCHES.get(machine, UNKNOWN)
    return _USERLAND_32.get(arch, arch) if bits == 32 else arch


def pi_slug(model: str, arch: str) -> str | None:
    """The balena slug of a Raspberry Pi model string, or None when it is not a Raspberry Pi."""
    for prefix, slug64, slug32 in PI_MODELS:
        if model.startswith(prefix):
            return slug64 if arch == "aarch64" else slug32
    return None


def _read(paths: Paths, path: str) -> str:
    try:
        raw = paths.host(path).read_bytes()[:4096]
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()  # device-tree strings end in NUL


def detect(paths: Paths, machine: str | None = None, pointer_bits: int | None = None) -> DetectedType:
    """The device's arch and type from the machine and its board files under ``paths.root``."""
    arch = balena_arch(machine, pointer_bits)
    model = _read(paths, "/proc/device-tree/model")
    if model:
        slug = pi_slug(model, arch)
        if slug is not None:
            return DetectedType(arch, slug, f"/proc/device-tree/model {model!r}")
    elif arch == "amd64" and (_read(paths, "/sys/class/dmi/id/sys_vendor")
                              or _read(paths, "/sys/class/dmi/id/product_name")):
        return DetectedType(arch, "generic-amd64", "/sys/class/dmi/id")
    return DetectedType(arch, GENERIC.get(arch, UNKNOWN), f"the default for {arch}")

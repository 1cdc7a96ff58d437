"""ODMDATA of the Jetson TX2 (spec §5.5 Odmdata): the UPHY lane mode in the eMMC ``boot0``
hardware partition, written in place on the raw device ``/dev/mmcblk0boot0``.

``HOST_ODMDATA_configuration`` is ``1``..``6``; mode N is the byte ``[0x0,0x1,0x6,0x7,0x2,0x3][N-1]``
at each of the offsets 1659, 5243 and 18043 (three copies, all equal). Only on ``*-tx2`` device types:
any other device's boot0 is never touched. A value outside 1..6 is logged and ignored; an absent
value leaves the partition alone. The partition is read-only unless ``force_ro`` is 0, so a write
is ``force_ro=0``, three one-byte writes and an fsync, ``force_ro=1``. A raw device cannot be renamed
over, so this is the one boot write that is not atomic: a crash between the copies leaves them
unequal, which reads as "no mode" and the next apply writes all three again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Backend, Options

log = logging.getLogger(__name__)

OFFSETS = (1659, 5243, 18043)
MODE_BYTES = (0x0, 0x1, 0x6, 0x7, 0x2, 0x3)  # mode N -> MODE_BYTES[N-1]
#: Size of the TX2's eMMC boot0 hardware partition (4 MiB): what a test image must be.
BOOT0_SIZE = 4 * 1024 * 1024


class Odmdata(Backend):
    name = "ODMDATA"
    prefix = "HOST_ODMDATA_"
    supported_keys = frozenset({"configuration"})

    def __init__(self, boot: Path, root: Path) -> None:
        super().__init__(boot)
        self.root = root

    def matches(self, device_type: str, os_version: str | None) -> bool:
        return device_type.endswith("-tx2")

    @property
    def path(self) -> Path:
        return self.root / "dev" / "mmcblk0boot0"

    @property
    def force_ro(self) -> Path:
        return self.root / "sys" / "block" / "mmcblk0boot0" / "force_ro"

    # raw = the byte at each offset
    def read_raw(self) -> bytes | None:
        try:
            with open(self.path, "rb") as dev:
                return bytes(os.pread(dev.fileno(), 1, offset)[0] for offset in OFFSETS)
        except (OSError, IndexError):
            log.error("Could not read ODMDATA from %s", self.path)
            return None

    def parse(self, raw: bytes | None) -> Options:
        if raw is None:
            return {}
        if len(set(raw)) != 1:
            log.error("ODMDATA copies differ (%s): no mode", raw.hex())
            return {}
        if raw[0] not in MODE_BYTES:
            log.error("Unknown ODMDATA byte 0x%02x", raw[0])
            return {}
        return {"configuration": str(MODE_BYTES.index(raw[0]) + 1)}

    def render(self, options: Mapping[str, Any], raw: bytes | None) -> bytes | None:
        if "configuration" not in options:
            return raw
        value = str(options["configuration"]).strip()
        if not value.isdigit() or not 1 <= int(value) <= len(MODE_BYTES):
            log.error("Invalid ODMDATA configuration %r: expected 1-6; ignored", value)
            return raw
        return bytes([MODE_BYTES[int(value) - 1]] * len(OFFSETS))

    def write_raw(self, raw: bytes | None) -> bool:
        if raw is None:
            return False
        self._set_force_ro("0")
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                for offset, byte in zip(OFFSETS, raw, strict=True):
                    os.pwrite(fd, bytes([byte]), offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            self._set_force_ro("1")
        return True

    def _set_force_ro(self, value: str) -> None:
        try:
            self.force_ro.write_text(value)
        except OSError as err:  # a test image has no sysfs switch; a device must have one
            if self.root == Path("/"):
                raise
            log.debug("No %s: %s", self.force_ro, err)

"""The boot splash image (spec §5.5 SplashImage), on every device type.

``HOST_SPLASH_image`` (suffix matched case-insensitively) is a data URI ``data:<mime>;base64,<data>``
or bare base64 (taken as PNG). The image is the first of ``balena-logo.png``/``resin-logo.png``
present in ``/mnt/boot/splash`` (``balena-logo.png`` when neither is). The OS's image is copied to
``balena-logo-default.png`` the first time (:meth:`initialise`); the current value is empty while
the image equals that default, and an empty target puts the default back. Data that is not a PNG is
refused with an error log and the image stays as it is.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from .base import Backend, Options

log = logging.getLogger(__name__)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_NAME = "balena-logo-default.png"
_NAMES = ("balena-logo.png", "resin-logo.png")


@dataclass(frozen=True)
class SplashFiles:
    image: bytes | None
    default: bytes | None


def decode_image(value: str) -> bytes | None:
    """The image bytes of a data URI or bare base64; None (logged) when not a PNG."""
    text = value.strip()
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        log.error("Splash image is not valid base64; ignored")
        return None
    if not data.startswith(PNG_MAGIC):
        log.error("Splash image is not a PNG; ignored")
        return None
    return data


class SplashImage(Backend):
    name = "splash"
    prefix = "HOST_SPLASH_"
    supported_keys = frozenset({"image"})

    def matches(self, device_type: str, os_version: str | None) -> bool:
        return True

    def is_boot_var(self, env_name: str) -> bool:
        return env_name.lower().startswith(self.prefix.lower())

    def option_name(self, env_name: str) -> str:
        name = env_name[len(self.prefix):]
        return "image" if name.lower() == "image" else name

    @property
    def directory(self) -> Path:
        return self.boot / "splash"

    @property
    def path(self) -> Path:
        for name in sorted(_NAMES):
            if (self.directory / name).exists():
                return self.directory / name
        return self.directory / _NAMES[0]

    def initialise(self) -> None:
        """Keep the OS's own image as the default, once."""
        default = self.directory / DEFAULT_NAME
        if not default.exists() and self.path.exists():
            write_atomic(default, self.path.read_bytes())

    def read_raw(self) -> SplashFiles:
        def read(path: Path) -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        return SplashFiles(read(self.path), read(self.directory / DEFAULT_NAME))

    def write_raw(self, raw: SplashFiles) -> bool:
        return raw.image is not None and write_atomic(self.path, raw.image)

    def parse(self, raw: SplashFiles) -> Options:
        if raw.image is None or raw.image == raw.default:
            return {}
        return {"image": "data:image/png;base64," + base64.b64encode(raw.image).decode("ascii")}

    def render(self, options: Mapping[str, Any], raw: SplashFiles) -> SplashFiles:
        value = str(options.get("image") or "")
        if not value:
            return SplashFiles(raw.default if raw.default is not None else raw.image, raw.default)
        data = decode_image(value)
        return raw if data is None else SplashFiles(data, raw.default)

"""The identify LED: a GPIO pin (gpiozero), a kernel LED brightness file, or nothing.

A device without a usable LED is a normal configuration, not an error: every way of failing to get
an LED (no pin factory off a Raspberry Pi, a missing brightness file) degrades to :class:`NullLed`
with a log line. Only a spec that cannot mean anything raises, so the CLI can report the typo.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

#: Pin names gpiozero understands: ``17``, ``GPIO17``, ``BCM17``, ``BOARD11``, ``WPI0``, ``J8:11``.
_PIN_RE = re.compile(r"^[A-Za-z0-9_]+(:[A-Za-z0-9_]+)?$")


@runtime_checkable
class LED(Protocol):
    """What the blinker needs from an LED. Implementations need not be thread-safe."""

    def on(self) -> None: ...

    def off(self) -> None: ...

    def close(self) -> None: ...

    def describe(self) -> str: ...


class NullLed:
    """No LED: switching it is a no-op, so callers never need to special-case its absence."""

    def __init__(self, reason: str = "no LED configured") -> None:
        self.reason = reason

    def on(self) -> None:
        pass

    def off(self) -> None:
        pass

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"none ({self.reason})"


class FileLed:
    """A kernel LED driven through its brightness file, overwritten with ``1``/``0`` per change.

    The file is reopened on every write, like the reference's ``fs.writeFile``, so nothing is held
    open between blinks. It is written in place with one ``write`` and no truncation: sysfs takes
    the value either way, and a regular file (a test's, or a board's shim) never shows a reader an
    empty moment between truncate and write. A failing write is logged once and otherwise ignored:
    losing the identify LED must never take the blinking thread down.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._closed = False
        self._write_failed = False

    def _write(self, value: str) -> None:
        if self._closed:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                data = value.encode()
                os.write(fd, data)
                if not self.path.startswith("/sys/"):
                    os.ftruncate(fd, len(data))  # after the write: "255" -> "155" -> "1", never ""
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._write_failed:
                log.warning("cannot write LED brightness file %s: %s", self.path, exc)
            self._write_failed = True
        else:
            self._write_failed = False

    def on(self) -> None:
        self._write("1")

    def off(self) -> None:
        self._write("0")

    def close(self) -> None:
        self._closed = True

    def describe(self) -> str:
        return f"file {self.path}"


class GpioLed:
    """An LED on a GPIO pin via gpiozero, which picks the pin driver (lgpio, RPi.GPIO, ...)."""

    def __init__(self, pin: int | str, pin_factory: Any = None) -> None:
        import gpiozero  # heavy (probes pin drivers): only when a GPIO LED is configured

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self._led = gpiozero.LED(pin, pin_factory=pin_factory)
            finally:
                # gpiozero warns once per pin driver it falls back from; useful only when debugging.
                for warning in caught:
                    log.debug("gpiozero: %s", warning.message)
        self.pin = pin

    def on(self) -> None:
        self._led.on()

    def off(self) -> None:
        self._led.off()

    def close(self) -> None:
        self._led.close()

    def describe(self) -> str:
        return f"gpio {self._led.pin}"


def _parse_pin(spec: str, pin: str) -> int | str:
    if not _PIN_RE.match(pin):
        raise ValueError(f"invalid LED spec {spec!r}: bad GPIO pin {pin!r}")
    return int(pin) if pin.isdigit() else pin


#: The optional extra with the pin library gpiozero needs on a Raspberry Pi (lgpio: /dev/gpiochip*).
GPIO_EXTRA = "pip install 'pysupervisor[gpio]'"


def no_pin_factory_reason(dev: str = "/dev") -> str:
    """Why gpiozero found no pin factory, and how to get one, in one line (its own message, "Unable
    to load any default pin factory!", says neither)."""
    import glob

    if not glob.glob(os.path.join(dev, "gpiochip*")):
        return (f"this machine has no GPIO chip ({dev}/gpiochip*), so there is no pin to drive; on a "
                f"Raspberry Pi, install the pin library with {GPIO_EXTRA}")
    return f"no GPIO pin library is installed: install it with {GPIO_EXTRA}"


def _make_gpio(spec: str, pin: int | str, pin_factory: Any) -> LED:
    from gpiozero import BadPinFactory, GPIOZeroError, PinInvalidPin

    try:
        return GpioLed(pin, pin_factory=pin_factory)
    except PinInvalidPin as exc:
        raise ValueError(f"invalid LED spec {spec!r}: {exc}") from exc
    except BadPinFactory:
        reason = no_pin_factory_reason()
        log.warning("identify LED %s unavailable (running without it): %s", spec, reason)
        return NullLed(f"{spec}: {reason}")
    except (GPIOZeroError, ImportError, OSError, RuntimeError) as exc:
        # A pin already in use, no access to /dev/gpiomem, ...
        log.warning("identify LED %r unavailable, blinking disabled: %s", spec, exc)
        return NullLed(f"{spec}: {exc}")


def _make_file(spec: str, path: str) -> LED:
    if not path:
        raise ValueError(f"invalid LED spec {spec!r}: empty path")
    if os.path.realpath(path) == os.devnull:
        # The reference's production default (LED_FILE=/dev/null) means "no LED".
        return NullLed(path)
    if not os.path.exists(path):
        # The reference writes to /dev/null instead; a NullLed is the same, and says so.
        log.warning("LED brightness file %s does not exist, blinking disabled", path)
        return NullLed(f"{path} does not exist")
    return FileLed(path)


def make_led(spec: str | None, *, pin_factory: Any = None) -> LED:
    """Build the identify LED from a config string; never fails for a merely absent LED.

    ``gpio:<pin>`` (``gpio:17``, ``gpio:GPIO17``), ``file:<path>`` or an absolute path (a kernel
    LED brightness file), ``none``/empty/None for no LED. ``pin_factory`` is passed to gpiozero
    (tests use its ``MockFactory``). A spec that cannot be parsed raises :class:`ValueError`.
    """
    text = (spec or "").strip()
    if not text or text.lower() == "none":
        return NullLed()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if sep and kind == "gpio":
        return _make_gpio(text, _parse_pin(text, rest.strip()), pin_factory)
    if sep and kind == "file":
        return _make_file(text, rest.strip())
    if os.path.isabs(text):
        return _make_file(text, text)
    raise ValueError(f"invalid LED spec {text!r}: expected gpio:<pin>, file:<path>, a path or none")

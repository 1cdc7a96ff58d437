"""Sizes (`mem_limit`, `shm_size`) and durations (`stop_grace_period`, healthcheck timings).

Sizes follow the reference's `parseMemoryNumber`: digits plus an optional b/k/m/g unit in powers of 1024,
anything unparseable falls back to the field default. Durations follow the duration-js grammar the
reference uses: a sum of `<number><unit>` terms (ns, us, ms, s, m, h, d, w), truncated to whole
milliseconds; a bare number is a count of milliseconds.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from .errors import ComposeError

_SIZE_RE = re.compile(r"^([0-9]+)([bkmg]?)b?$", re.IGNORECASE)
_POWERS = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3}

_TERM_RE = re.compile(r"([-+\d.]+)([a-zµμ]+)")
_UNIT_MS = {
    "ns": Fraction(1, 1_000_000),
    "us": Fraction(1, 1000),
    "µs": Fraction(1, 1000),
    "μs": Fraction(1, 1000),
    "ms": Fraction(1),
    "s": Fraction(1000),
    "m": Fraction(60_000),
    "h": Fraction(3_600_000),
    "d": Fraction(86_400_000),
    "w": Fraction(604_800_000),
}

DEFAULT_SHM_SIZE = 64 * 1024 * 1024
DEFAULT_STOP_GRACE_PERIOD = 10


def parse_size(value: Any, default: str | None = None) -> int:
    """`"64m"` -> 67108864; None or garbage -> the parsed default (or 0)."""
    if value is not None and not isinstance(value, bool):
        match = _SIZE_RE.match(str(value))
        if match:
            return int(match.group(1)) * 1024 ** _POWERS[match.group(2).lower()]
    return parse_size(default) if default is not None else 0


def duration_ms(value: Any) -> int:
    """A duration in whole milliseconds; raises ComposeError when it cannot be read."""
    if isinstance(value, bool) or value is None:
        raise ComposeError(f"Invalid duration: {value!r}")
    if isinstance(value, int | float):
        return int(value)
    text = str(value)
    if text in ("0", "+0", "-0"):
        return 0
    total = Fraction(0)
    count = 0
    for number, unit in _TERM_RE.findall(text):
        count += 1
        try:
            amount = abs(Fraction(number))
        except (ValueError, ZeroDivisionError) as err:
            raise ComposeError(f"Invalid duration: {text!r}") from err
        if unit not in _UNIT_MS:
            raise ComposeError(f"Invalid duration unit {unit!r} in {text!r}")
        total += amount * _UNIT_MS[unit]
    if count == 0:
        raise ComposeError(f"Invalid duration: {text!r}")
    sign = -1 if text.startswith("-") else 1
    return sign * (total.numerator // total.denominator)


def duration_seconds(value: Any) -> int:
    """Whole seconds, rounded down (used for `stop_grace_period` -> StopTimeout)."""
    return duration_ms(value) // 1000


def duration_ns(value: Any) -> int:
    """Nanoseconds, for the engine's healthcheck fields."""
    return duration_ms(value) * 1_000_000

"""The reference's loose value checks (`checkInt`, `checkTruthy`, JS truthiness).

Composition values arrive untyped (YAML numbers, strings, booleans); these helpers decide what they mean
exactly as the reference does, so both supervisors read the same target the same way.
"""

from __future__ import annotations

import math
import re
from typing import Any

_INT_RE = re.compile(r"^-?[0-9]+\.?0*$")
_TRUE = {"1", "true", "on"}
_FALSE = {"0", "false", "off"}


def check_int(value: Any, *, positive: bool = False) -> int | None:
    """An integer written as a number or a string (`"5"`, `"5.00"`), else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return None
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str):
        if not _INT_RE.match(value):
            return None
        number = int(value.split(".")[0])
    else:
        return None
    if positive and number <= 0:
        return None
    return number


def check_truthy(value: Any) -> bool:
    """True for `true`, `1`, `'1'`, `'true'`, `'on'` (case-insensitive); everything else is False."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    if isinstance(value, str):
        return value.lower() in _TRUE
    return False


def check_falsey(value: Any) -> bool:
    """True for `false`, `0`, `'0'`, `'false'`, `'off'`; a value can be neither truthy nor falsey."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        return value.lower() in _FALSE
    return False


def js_truthy(value: Any) -> bool:
    """JavaScript `Boolean(x)`: the reference coerces some flags this way (`'false'` is true!)."""
    if value is None or value is False:
        return False
    if isinstance(value, int | float):
        return value != 0 and not (isinstance(value, float) and math.isnan(value))
    if isinstance(value, str):
        return value != ""
    return True

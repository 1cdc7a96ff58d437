"""Basic validated types of the target state (reference §2.1) as small, reusable check functions.

Every check takes a decoded JSON value plus the path it was found at, and either returns the value
in canonical Python form or raises :class:`ValidationError` naming that path and the broken rule.
The target-state parsers compose them; the API layer can reuse them so that a single field is
judged by exactly the rules the reference applies.

A field that is absent from its object is passed as :data:`MISSING` (distinct from JSON ``null``),
because the reference treats the two differently: a required field rejects both, ``withDefault``
maps both to the default, and an optional (``t.partial``) field accepts absence but not ``null``.

Rules follow the reference's io-ts codecs, with these deliberate differences:

* string lengths are counted in UTF-16 code units, as JavaScript's ``length`` does, so the
  255-character limit accepts exactly what the reference accepts;
* patterns must match the whole string (``re.fullmatch``); Python's ``$`` would also accept a
  trailing newline, JavaScript's does not;
* numeric identifiers are capped at 2**53 - 1: beyond it the reference silently loses precision;
  exotic numeric strings JavaScript happens to accept (``"0x0"``, ``"5e0"``) are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

__all__ = [
    "CONFIG_VAR_NAME_PATTERN",
    "DOCKER_NAME_PATTERN",
    "ENV_VAR_NAME_PATTERN",
    "LABEL_NAME_PATTERN",
    "MAX_SAFE_INTEGER",
    "MISSING",
    "SHORT_STRING_MAX",
    "ValidationError",
    "boolean",
    "child",
    "config_var_name_key",
    "config_var_object",
    "describe",
    "device_name",
    "docker_name",
    "docker_name_key",
    "env_var_name_key",
    "env_var_object",
    "expect_object",
    "expect_string",
    "is_numeric_identifier",
    "json_type",
    "label_name_key",
    "label_object",
    "numeric_identifier",
    "optional",
    "record",
    "short_string",
    "short_string_key",
    "string_identifier",
    "utf16_length",
    "uuid_string",
    "with_default",
]

T = TypeVar("T")
Check = Callable[[Any, str], T]


class _Missing:
    """Sentinel type for an absent object field (JSON has no ``undefined``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

SHORT_STRING_MAX: Final = 255
#: JavaScript's Number.MAX_SAFE_INTEGER: the largest id the reference can represent exactly.
MAX_SAFE_INTEGER: Final = 2**53 - 1

DOCKER_NAME_PATTERN: Final = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
ENV_VAR_NAME_PATTERN: Final = "^[a-zA-Z_][a-zA-Z0-9_]*$"
CONFIG_VAR_NAME_PATTERN: Final = "^[a-zA-Z_][a-zA-Z0-9_:]*$"
#: Printable ASCII except space, double quote, single quote and backtick.
LABEL_NAME_PATTERN: Final = "^[!#-&(-_a-~]+$"


def _compile(display: str) -> re.Pattern[str]:
    """Compile a ``^...$`` display pattern for use with ``fullmatch`` (anchors stripped)."""
    return re.compile(display[1:-1])


_DOCKER_NAME_RE = _compile(DOCKER_NAME_PATTERN)
_ENV_VAR_NAME_RE = _compile(ENV_VAR_NAME_PATTERN)
_CONFIG_VAR_NAME_RE = _compile(CONFIG_VAR_NAME_PATTERN)
_LABEL_NAME_RE = _compile(LABEL_NAME_PATTERN)
# A decimal integer as JavaScript's `+s === parseInt(s, 10)` accepts it: optional sign, digits,
# optionally a dot followed only by zeros ("1.", "1.00").
_NUMERIC_STRING_RE = re.compile(r"[+-]?([0-9]+)(?:\.0*)?")
_SIMPLE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


class ValidationError(ValueError):
    """A value broke a rule; ``path`` says where (dotted, ``[i]`` for arrays), ``rule`` says what."""

    def __init__(self, path: str, rule: str) -> None:
        super().__init__(f"{path}: {rule}" if path else rule)
        self.path = path
        self.rule = rule


# --------------------------------------------------------------------------------- helpers
def child(path: str, key: str | int) -> str:
    """Path of ``key`` under ``path``: ``a.b``, ``a[0]``, or ``a["io.balena.x"]`` for odd keys."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _SIMPLE_KEY_RE.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_quote(key)}]"


def _quote(text: str, limit: int = 60) -> str:
    """Quote ``text`` for a message, cut to ``limit`` characters so messages stay short."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for "expected X, got Y" messages."""
    if value is MISSING:
        return "nothing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def describe(value: Any) -> str:
    """A short rendering of a value for messages (strings quoted and truncated)."""
    if isinstance(value, str):
        return _quote(value)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    return json_type(value)


def _expected(path: str, expected: str, value: Any) -> ValidationError:
    if value is MISSING:
        return ValidationError(path, "is required")
    return ValidationError(path, f"expected {expected}, got {json_type(value)}")


def utf16_length(text: str) -> int:
    """Length as JavaScript counts it (UTF-16 code units): astral characters count twice."""
    if text.isascii():
        return len(text)
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


# ------------------------------------------------------------------------------- scalars
def expect_string(value: Any, path: str) -> str:
    """Any string."""
    if not isinstance(value, str):
        raise _expected(path, "string", value)
    return value


def short_string(value: Any, path: str) -> str:
    """ShortString: a string of at most 255 characters."""
    text = expect_string(value, path)
    if utf16_length(text) > SHORT_STRING_MAX:
        raise ValidationError(path, f"must be at most {SHORT_STRING_MAX} characters long")
    return text


#: UUID is a ShortString: the reference does not check for hex (fixtures use ``myapp``).
uuid_string = short_string


def device_name(value: Any, path: str) -> str:
    """DeviceName: a ShortString without a newline."""
    text = short_string(value, path)
    if "\n" in text:
        raise ValidationError(path, "must not contain newline characters")
    return text


def docker_name(value: Any, path: str) -> str:
    """DockerName: a ShortString matching the Docker object-name pattern."""
    text = short_string(value, path)
    if not _DOCKER_NAME_RE.fullmatch(text):
        raise ValidationError(path, f"{describe(text)} must match {DOCKER_NAME_PATTERN}")
    return text


def _numeric_value(value: Any) -> int | None:
    """The id a NumericIdentifier decodes to, or None when the value is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        number = int(value)
    elif isinstance(value, str):
        match = _NUMERIC_STRING_RE.fullmatch(value.strip())
        if match is None:
            return None
        digits = match.group(1).lstrip("0") or "0"
        if len(digits) > len(str(MAX_SAFE_INTEGER)):
            return None  # also keeps int() clear of Python's 4300-digit conversion limit
        number = int(digits)
        if value.strip().startswith("-") and number != 0:
            return None
    else:
        return None
    if number < 0 or number > MAX_SAFE_INTEGER:
        return None
    return number


def is_numeric_identifier(value: Any) -> bool:
    """Predicate form of :func:`numeric_identifier` (the reference's ``NumericIdentifier.is``)."""
    return _numeric_value(value) is not None


def numeric_identifier(value: Any, path: str) -> int:
    """NumericIdentifier: a number or numeric string for an integer >= 0; decodes to an int.

    Booleans are not numbers here (Python's ``True == 1`` must not sneak through).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _expected(path, "number or numeric string", value)
    number = _numeric_value(value)
    if number is None:
        raise ValidationError(
            path,
            f"must be an integer between 0 and {MAX_SAFE_INTEGER}, got {describe(value)}",
        )
    return number


def string_identifier(value: Any, path: str) -> str:
    """StringIdentifier: a string that parses to an integer >= 0 (kept as the string)."""
    text = expect_string(value, path)
    if _numeric_value(text) is None:
        raise ValidationError(path, f"must be a string holding an integer >= 0, got {describe(text)}")
    return text


def boolean(value: Any, path: str) -> bool:
    """A JSON boolean (no truthy strings: the reference's io-ts ``t.boolean``)."""
    if not isinstance(value, bool):
        raise _expected(path, "boolean", value)
    return value


# ------------------------------------------------------------------------------- objects
def expect_object(value: Any, path: str) -> Mapping[str, Any]:
    """A JSON object: a mapping with string keys (arrays are not objects)."""
    if not isinstance(value, Mapping):
        raise _expected(path, "object", value)
    for key in value:
        if not isinstance(key, str):
            raise ValidationError(path, f"key {describe(key)} must be a string")
    return value


def _key_check(pattern: re.Pattern[str] | None, display: str | None) -> Check[str]:
    """A check for record keys: a ShortString, optionally matching ``pattern``."""

    def check(key: Any, path: str) -> str:
        if utf16_length(key) > SHORT_STRING_MAX:
            raise ValidationError(
                path, f"key {describe(key)} must be at most {SHORT_STRING_MAX} characters long"
            )
        if pattern is not None and not pattern.fullmatch(key):
            raise ValidationError(path, f"key {describe(key)} must match {display}")
        return key

    return check


short_string_key: Final = _key_check(None, None)
docker_name_key: Final = _key_check(_DOCKER_NAME_RE, DOCKER_NAME_PATTERN)
env_var_name_key: Final = _key_check(_ENV_VAR_NAME_RE, ENV_VAR_NAME_PATTERN)
config_var_name_key: Final = _key_check(_CONFIG_VAR_NAME_RE, CONFIG_VAR_NAME_PATTERN)
label_name_key: Final = _key_check(_LABEL_NAME_RE, LABEL_NAME_PATTERN)


def record(
    value: Any,
    path: str,
    key_check: Check[str],
    value_check: Callable[[str, Any, str], T],
) -> dict[str, T]:
    """A JSON object whose keys pass ``key_check(key, path)`` and whose values pass
    ``value_check(key, value, child_path)``. Errors are reported in key order; the first wins."""
    obj = expect_object(value, path)
    out: dict[str, T] = {}
    for key, item in obj.items():
        key_check(key, path)
        out[key] = value_check(key, item, child(path, key))
    return out


def _string_value(_key: str, value: Any, path: str) -> str:
    return expect_string(value, path)


def env_var_object(value: Any, path: str) -> dict[str, str]:
    """EnvVarObject: variable names (``^[a-zA-Z_][a-zA-Z0-9_]*$``) to strings."""
    return record(value, path, env_var_name_key, _string_value)


def config_var_object(value: Any, path: str) -> dict[str, str]:
    """ConfigVarObject: like EnvVarObject, but a colon is allowed (``HOST_CONFIG_hdmi_mode:1``)."""
    return record(value, path, config_var_name_key, _string_value)


def label_object(value: Any, path: str) -> dict[str, str]:
    """LabelObject: printable-ASCII label names (no space or quotes) to strings."""
    return record(value, path, label_name_key, _string_value)


# ----------------------------------------------------------------------------- modifiers
def with_default(check: Check[T], default: T) -> Check[T]:
    """The reference's ``withDefault``: an absent field or ``null`` decodes to ``default``."""

    def checked(value: Any, path: str) -> T:
        if value is MISSING or value is None:
            return default
        return check(value, path)

    return checked


def optional(check: Check[T]) -> Check[T | None]:
    """An io-ts ``t.partial`` field: absence gives None, but an explicit ``null`` is checked
    (and so refused by every non-nullable check), exactly as the reference does."""

    def checked(value: Any, path: str) -> T | None:
        if value is MISSING:
            return None
        return check(value, path)

    return checked

"""What the engine (and the kernel) would refuse in a service composition, said before anything runs.

The field modules (ports, mounts, units, ...) read a composition as leniently as the reference does, so
a container either supervisor creates compares equal. That leniency is wrong at the door: `"99999:80"`,
`restart: sometimes` or `mem_limit: 1.5g` were stored, the old container removed, and the new one never
created (issue #10 §2). These rules run on a target before it is stored; each refusal is a
:class:`ValidationError` whose path is the field as the user wrote it (their key spelling, list
indices), e.g. ``services.web.ports[0]: port 99999 is out of range 0-65535``.

One table, :data:`RULES`, maps each supported key (camelCased as the reference reads it) to its check.
A check gets ``(value, path, scope)`` and returns warnings (things accepted but not applied, such as a
bind mount the supervisor drops); keys that are not in the table are accepted as the reference accepts
them, with a warning naming the closest supported key (difflib).

Limits the kernel sets for a process's environment (``include/uapi/linux/binfmts.h``): each string is at
most ``MAX_ARG_STRLEN`` (32 pages = 131072 bytes, NUL included), and argv + envp together at most
``ARG_MAX``, a quarter of the stack limit (2 MiB with the usual 8 MiB stack), pointers included.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from supervisor.state.validation import ValidationError, child, describe, json_type

from .casing import SUPPORTED_KEYS, camel_case
from .command import as_argv
from .errors import ComposeError
from .fields import MAX_RETRY_COUNT, RESTART_POLICIES
from .ports import parse_port
from .units import duration_ms

__all__ = [
    "ARG_MAX",
    "MAX_ARG_STRLEN",
    "RULES",
    "ReleaseScope",
    "check_environment_size",
    "dependencies",
    "env_pairs",
    "image_reference",
    "check_network_config",
    "check_service",
    "check_volume_config",
    "suggest",
]

MAX_ARG_STRLEN: Final = 131072
ARG_MAX: Final = 2 * 1024 * 1024
#: What the user's environment may use of ARG_MAX: the rest is kept for the variables the supervisor
#: injects (BALENA_*, ~1 KiB), the image's own environment and the command line.
ENV_BUDGET: Final = ARG_MAX - 256 * 1024
_POINTER: Final = 8
#: The engine's floor for `mem_limit` (moby daemon/daemon_unix.go linuxMinMemory).
MIN_MEMORY: Final = 6 * 1024 * 1024

Check = Callable[[Any, str, "ReleaseScope"], list[str] | None]


@dataclass(frozen=True)
class ReleaseScope:
    """What a service may refer to: the release's services, volumes and networks (name -> config),
    the service being checked, and the host's CPU count (the engine refuses more CPUs than it has)."""

    services: frozenset[str] = frozenset()
    volumes: frozenset[str] = frozenset()
    networks: Mapping[str, Any] = field(default_factory=dict)
    service: str = ""
    cpus: int = 1
    network_mode: str = ""


# --------------------------------------------------------------------------------- helpers
def _fail(path: str, rule: str) -> ValidationError:
    return ValidationError(path, rule)


def _scalar(value: Any, path: str) -> str:
    """A YAML scalar written as text (strings and numbers; the reference stringifies them)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(path, f"expected a string, got {json_type(value)}")
    return str(value)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {json_type(value)}")
    return value


def _list(value: Any, path: str, *, string_ok: bool = True) -> list[tuple[Any, str]]:
    """(item, path) pairs of a list field; a lone string is a one-item list where compose allows it."""
    if isinstance(value, str) and string_ok:
        return [(value, path)]
    if not isinstance(value, list | tuple):
        expected = "a string or a list" if string_ok else "a list"
        raise _fail(path, f"expected {expected}, got {json_type(value)}")
    return [(item, child(path, i)) for i, item in enumerate(value)]


def _scalars(value: Any, path: str, scope: ReleaseScope) -> None:
    for item, item_path in _list(value, path):
        _scalar(item, item_path)


def _boolean(value: Any, path: str, scope: ReleaseScope) -> None:
    if isinstance(value, bool) or value in (0, 1):
        return
    hint = " (the reference reads any non-empty string as true)" if isinstance(value, str) else ""
    raise _fail(path, f"expected true or false, got {json_type(value)} {describe(value)}{hint}")


def _integer(value: Any, path: str, low: int | None = None, high: int | None = None) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float):
        number = int(value) if value.is_integer() else None
    elif isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,19}", value.strip()):
        number = int(value)
    if number is None:
        raise _fail(path, f"expected an integer, got {json_type(value)} {describe(value)}")
    if high is None and low is not None and number < low:
        raise _fail(path, f"{number} must be at least {low}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise _fail(path, f"{number} is out of range {low}-{high}")
    return number


def _int_rule(low: int | None, high: int | None) -> Check:
    def check(value: Any, path: str, scope: ReleaseScope) -> None:
        _integer(value, path, low, high)

    return check


def _any_string(value: Any, path: str, scope: ReleaseScope) -> None:
    _scalar(value, path)


def _ip(text: str, path: str, what: str = "IP address") -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _fail(path, f"{describe(text)} is not a valid {what}") from None


def _one_of(value: Any, path: str, allowed: tuple[str, ...], what: str) -> str:
    text = _string(value, path)
    if text not in allowed:
        names = ", ".join(repr(a) for a in allowed)
        raise _fail(path, f"{what} {describe(text)} is not one of {names}")
    return text


def suggest(key: str, known: list[str]) -> str:
    """`` (did you mean 'restart'?)`` for a key close to a known one, else ``""``."""
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------------------------- sizes
_SIZE_RE = re.compile(r"([0-9]+)([bkmg]?)b?", re.IGNORECASE)


def _size(value: Any, path: str) -> int:
    """The units `parse_size` reads: bytes, or digits with b/k/m/g (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _fail(
            path,
            f"invalid size {describe(value)}: expected a whole number of bytes, optionally with "
            "a unit b, k, m or g (e.g. '512m')",
        )
    return int(match[1]) * 1024 ** {"": 0, "b": 0, "k": 1, "m": 2, "g": 3}[match[2].lower()]


def _memory(value: Any, path: str, scope: ReleaseScope) -> None:
    size = _size(value, path)
    if 0 < size < MIN_MEMORY:
        raise _fail(path, f"{describe(value)} is below the engine's minimum memory limit of 6m")


def _shm_size(value: Any, path: str, scope: ReleaseScope) -> None:
    _size(value, path)


def _duration(value: Any, path: str, *, min_ms: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _fail(path, f"expected a duration such as '10s', got {json_type(value)}")
    try:
        ms = duration_ms(value)
    except ComposeError:
        raise _fail(path, f"invalid duration {describe(value)}: expected e.g. '1m30s', '500ms'") from None
    if ms < 0:
        raise _fail(path, f"duration {describe(value)} must not be negative")
    if 0 < ms < min_ms:
        raise _fail(path, f"duration {describe(value)} must be 0 or at least {min_ms}ms")
    return ms


def _stop_grace(value: Any, path: str, scope: ReleaseScope) -> None:
    _duration(value, path)


# ---------------------------------------------------------------------------------- ports
_PORT_KEYS = ("target", "published", "protocol", "host_ip", "mode", "name", "app_protocol")


def _port_entry(item: Any, path: str) -> dict[str, Any]:
    if isinstance(item, Mapping):
        for key in item:
            if key not in _PORT_KEYS:
                hint = suggest(str(key), list(_PORT_KEYS))
                raise _fail(child(path, str(key)), f"unknown key in a port mapping{hint}")
        if "target" not in item:
            raise _fail(child(path, "target"), "is required")
        protocol = item.get("protocol")
        if protocol is not None and protocol not in ("tcp", "udp"):
            raise _fail(child(path, "protocol"), f"protocol {describe(protocol)} is not 'tcp' or 'udp'")
        host_ip = item.get("host_ip")
        if host_ip:
            _ip(_string(host_ip, child(path, "host_ip")), child(path, "host_ip"), "host IP address")
        numbers = [(item["target"], child(path, "target"))]
        if item.get("published") not in (None, ""):
            numbers.append((item["published"], child(path, "published")))
        for number, number_path in numbers:
            if isinstance(number, bool) or not isinstance(number, int | str):
                raise _fail(number_path, f"expected a port number, got {json_type(number)}")
    elif isinstance(item, bool) or not isinstance(item, str | int):
        raise _fail(path, f"expected a port such as '8080:80', got {json_type(item)}")
    text = item if isinstance(item, str) else None
    if text is not None:
        _port_text(text, path)
    try:
        port = parse_port(item)
    except ComposeError as err:
        if "does not match" in str(err):
            raise _fail(path, "the host and container port ranges have different lengths") from None
        if "cannot be lower" in str(err):
            raise _fail(path, "a port range ends before it starts") from None
        raise _fail(
            path,
            f"invalid port {describe(item if not isinstance(item, Mapping) else dict(item))}: expected "
            "[HOST_IP:][HOST_PORT[-END]:]CONTAINER_PORT[-END][/tcp|/udp]",
        ) from None
    for key in ("internalStart", "internalEnd", "externalStart", "externalEnd"):
        if not 0 <= port[key] <= 65535:
            raise _fail(path, f"port {port[key]} is out of range 0-65535")
    if port["internalStart"] == 0:
        raise _fail(path, "container port 0 is not a port the engine can publish (1-65535)")
    return port


def _port_text(text: str, path: str) -> None:
    """Clearer messages than the grammar's for the common mistakes: numbers, protocol, host IP."""
    body, _, protocol = text.partition("/")
    if protocol and protocol not in ("tcp", "udp"):
        raise _fail(path, f"protocol {protocol!r} is not 'tcp' or 'udp'")
    parts = body.rsplit(":", 2)  # [host ip:][host port(s):]container port(s)
    for number in re.findall(r"[0-9]+", ":".join(parts[-2:])):
        if int(number) > 65535:
            raise _fail(path, f"port {int(number)} is out of range 0-65535")
    if len(parts) == 3 and parts[0]:
        host = parts[0][1:-1] if parts[0].startswith("[") and parts[0].endswith("]") else parts[0]
        _ip(host, path, "host IP address")
    for part in parts[-2:]:
        if "-" in part:
            start, _, end = part.partition("-")
            if start.isdigit() and end.isdigit() and int(end) < int(start):
                raise _fail(path, f"port range {part} ends before it starts")


def _ports(value: Any, path: str, scope: ReleaseScope) -> None:
    for item, item_path in _list(value, path, string_ok=False):
        port = _port_entry(item, item_path)
        if port["internalEnd"] - port["internalStart"] != port["externalEnd"] - port["externalStart"]:
            raise _fail(item_path, "the host and container port ranges have different lengths")


def published_ports(value: Any) -> list[tuple[str, str, int]]:
    """(host IP, protocol, host port) of every binding of a valid ``ports`` list."""
    out = []
    for item in value or []:
        port = parse_port(item)
        for offset in range(port["externalEnd"] - port["externalStart"] + 1):
            out.append((port["host"], port["protocol"], port["externalStart"] + offset))
    return out


# --------------------------------------------------------------------------- restart, signals
_POLICY_NAMES: Final = "'no', 'always', 'on-failure[:N]', 'unless-stopped'"


def _restart(value: Any, path: str, scope: ReleaseScope) -> None:
    """A restart policy the engine takes: one of the four names, or ``on-failure:N`` with N the
    engine's MaximumRetryCount (0 or more; the engine refuses a negative count)."""
    if isinstance(value, bool) and value is False:
        raise _fail(path, f"expected one of {_POLICY_NAMES}, got false (quote 'no' in YAML)")
    text = _string(value, path).strip().lower()
    if text in RESTART_POLICIES or text == "":
        return
    name, colon, count = text.partition(":")
    if name == "on-failure" and colon:
        if not re.fullmatch(r"[0-9]{1,10}", count) or int(count) > MAX_RETRY_COUNT:
            raise _fail(
                path,
                f"{describe(value)}: the retry count must be a whole number from 0 to {MAX_RETRY_COUNT}",
            )
        return
    raise _fail(path, f"restart policy {describe(value)} is not one of {_POLICY_NAMES}")


_SIGNALS = frozenset(s.name for s in signal.Signals if s.name.startswith("SIG") and "_" not in s.name)
_SIGRTMAX: Final = 64


def _stop_signal(value: Any, path: str, scope: ReleaseScope) -> None:
    text = _scalar(value, path).strip().upper()
    if text.isdigit() and 1 <= int(text) <= _SIGRTMAX:
        return
    name = text if text.startswith("SIG") else f"SIG{text}"
    rt = re.fullmatch(r"SIGRT(MIN|MAX)(?:([+-])([0-9]+))?", name)
    if name in _SIGNALS or (rt and int(rt[3] or 0) <= 30):
        return
    raise _fail(path, f"{describe(value)} is not a signal name (e.g. 'SIGTERM') or number (1-64)")


# ---------------------------------------------------------------------------- capabilities
#: Linux capabilities the engine knows (moby's `capabilities.GetAllCapabilities`).
CAPABILITIES: Final = frozenset(
    """CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
    NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO
    SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME
    SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG
    WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE""".split()  # noqa: SIM905 (a table reads better as words)
)


def _caps(value: Any, path: str, scope: ReleaseScope) -> None:
    for item, item_path in _list(value, path):
        name = _string(item, item_path).upper()
        name = name[4:] if name.startswith("CAP_") else name
        if name != "ALL" and name not in CAPABILITIES:
            raise _fail(
                item_path, f"unknown capability {describe(item)}{suggest(name, sorted(CAPABILITIES))}"
            )


# ---------------------------------------------------------------------------- command, env
#: Of the ARG_MAX share kept outside the environment (ENV_BUDGET), what one of `command` and
#: `entrypoint` may take; the rest is for the supervisor's variables and the image's.
ARGV_BUDGET: Final = 64 * 1024


def _command(value: Any, path: str, scope: ReleaseScope) -> None:
    if not isinstance(value, str):
        for item, item_path in _list(value, path):
            _scalar(item, item_path)
    argv = as_argv(value) or []
    total = 0
    for index, arg in enumerate(argv):
        size = _text_bytes(arg) + 1
        if size > MAX_ARG_STRLEN:
            where = path if isinstance(value, str) else child(path, index)
            raise _fail(
                where,
                f"an argument of {size} bytes is over the {MAX_ARG_STRLEN} bytes the kernel "
                "passes per argument (MAX_ARG_STRLEN)",
            )
        total += size + _POINTER
    if total > ARGV_BUDGET:
        raise _fail(
            path,
            f"takes {total} bytes; at most {ARGV_BUDGET} bytes of what the kernel passes to a "
            f"process (ARG_MAX {ARG_MAX}) are kept for it",
        )


def _text_bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def env_pairs(value: Any, path: str, *, what: str) -> list[tuple[str, str, str]]:
    """(key, value, path) of a compose environment/labels field: a mapping or a ``K=V`` list."""
    out: list[tuple[str, str, str]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            item_path = child(path, str(key))
            if item is not None and not isinstance(item, str | int | float):
                raise _fail(item_path, f"expected a string, got {json_type(item)}")
            text = (
                ""
                if item is None
                else (("true" if item else "false") if isinstance(item, bool) else str(item))
            )
            out.append((str(key), text, item_path))
    else:
        for item, item_path in _list(value, path, string_ok=False):
            key, _, text = _string(item, item_path).partition("=")
            out.append((key, text, item_path))
    for key, text, item_path in out:
        if not key or "=" in key or "\0" in key:
            raise _fail(item_path, f"{describe(key)} is not a valid {what} name")
        if "\0" in text:
            raise _fail(item_path, f"a {what} value cannot contain a NUL character")
    return out


def _environment(value: Any, path: str, scope: ReleaseScope) -> None:
    env_pairs(value, path, what="variable")


def _labels(value: Any, path: str, scope: ReleaseScope) -> None:
    env_pairs(value, path, what="label")


def check_environment_size(pairs: list[tuple[str, str, str]], path: str, *, what: str) -> None:
    """Refuse an environment (or label set) the kernel cannot pass to a process: one string over
    MAX_ARG_STRLEN, or all of them over this supervisor's share of ARG_MAX."""
    total = 0
    for key, text, item_path in pairs:
        size = _text_bytes(key) + 1 + _text_bytes(text) + 1
        if size > MAX_ARG_STRLEN:
            raise _fail(
                item_path,
                f"{what} {describe(key)} is {size} bytes; the kernel passes at most {MAX_ARG_STRLEN} bytes "
                "per variable to a process (MAX_ARG_STRLEN)",
            )
        total += size + _POINTER
    if total > ENV_BUDGET:
        raise _fail(
            path,
            f"the {what}s take {total} bytes; at most {ENV_BUDGET} bytes fit in what the kernel passes "
            f"to a process (ARG_MAX {ARG_MAX} bytes, of which {ARG_MAX - ENV_BUDGET} are kept for the "
            "supervisor's variables, the image's and the command line)",
        )


# ----------------------------------------------------------------------------- networking
def _declared_network(name: str, path: str, scope: ReleaseScope) -> None:
    if name != "default" and name not in scope.networks:
        declared = sorted(scope.networks)
        hint = f" (declared: {', '.join(declared)})" if declared else " (the release declares none)"
        raise _fail(path, f"network {describe(name)} is not declared in the release's networks{hint}")


def _network_mode(value: Any, path: str, scope: ReleaseScope) -> list[str] | None:
    mode = _string(value, path).strip()
    if mode in ("host", "bridge", "none"):
        return None
    service = re.fullmatch(r"service:\s*(.*)", mode)
    if service:
        target = service[1]
        if target not in scope.services:
            raise _fail(path, f"service {describe(target)} is not a service of this release")
        if target == scope.service:
            raise _fail(path, "a service cannot share its own network namespace")
        return None
    if mode.startswith("container:"):
        return [f"{path}: {describe(mode)} is not supported and ignored (the default network is used)"]
    _declared_network(mode, path, scope)
    return None


_ENDPOINT_KEYS = ("aliases", "ipv4_address", "ipv6_address", "link_local_ips", "priority")


def _subnets(config: Any) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    ipam = config.get("ipam") if isinstance(config, Mapping) else None
    for pool in (ipam or {}).get("config") or [] if isinstance(ipam, Mapping) else []:
        if isinstance(pool, Mapping) and isinstance(pool.get("subnet"), str):
            with contextlib.suppress(ValueError):
                out.append(ipaddress.ip_network(pool["subnet"], strict=False))
    return out


def _networks(value: Any, path: str, scope: ReleaseScope) -> list[str] | None:
    warnings: list[str] = []
    if isinstance(value, list | tuple):
        for item, item_path in _list(value, path, string_ok=False):
            _declared_network(_string(item, item_path), item_path, scope)
        return None
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a list or an object, got {json_type(value)}")
    for name, entry in value.items():
        entry_path = child(path, str(name))
        _declared_network(str(name), entry_path, scope)
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise _fail(entry_path, f"expected an object, got {json_type(entry)}")
        for key, item in entry.items():
            key_path = child(entry_path, str(key))
            snake = _snake(str(key))
            if snake not in _ENDPOINT_KEYS:
                hint = suggest(snake, list(_ENDPOINT_KEYS))
                warnings.append(f"unknown key {str(key)!r} in {entry_path} ignored{hint}")
            elif snake == "aliases" or snake == "link_local_ips":
                for alias, alias_path in _list(item, key_path, string_ok=False):
                    text = _string(alias, alias_path)
                    if snake == "link_local_ips":
                        _ip(text, alias_path)
            elif snake in ("ipv4_address", "ipv6_address"):
                address = _ip(_string(item, key_path), key_path)
                if address.version != (4 if snake == "ipv4_address" else 6):
                    raise _fail(
                        key_path,
                        f"{describe(item)} is not an IPv{4 if snake == 'ipv4_address' else 6} address",
                    )
                subnets = _subnets(scope.networks.get(str(name)))
                if not any(address in net for net in subnets if net.version == address.version):
                    raise _fail(
                        key_path,
                        f"a static address needs a network with a subnet that contains it: declare "
                        f"networks.{name}.ipam.config[].subnet",
                    )
    return warnings


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _dns(value: Any, path: str, scope: ReleaseScope) -> None:
    for item, item_path in _list(value, path):
        _ip(_string(item, item_path), item_path, "DNS server address")


def _extra_hosts(value: Any, path: str, scope: ReleaseScope) -> None:
    """A list of ``host:ip`` (or ``host=ip``), or compose's mapping ``{host: ip}``."""
    if isinstance(value, Mapping):
        for host, address in value.items():
            item_path = child(path, str(host))
            text = _string(address, item_path)
            if not str(host) or ":" in str(host):
                raise _fail(item_path, f"{describe(host)} is not a host name")
            if text != "host-gateway":
                _ip(text[1:-1] if text.startswith("[") else text, item_path)
        return
    for item, item_path in _list(value, path):
        text = _string(item, item_path)
        sep = "=" if "=" in text else ":"
        host, found, address = text.partition(sep)
        if not found or not host:
            raise _fail(item_path, f"{describe(text)} is not 'host:ip'")
        if address != "host-gateway":
            _ip(address[1:-1] if address.startswith("[") else address, item_path)


_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def _mac(value: Any, path: str, scope: ReleaseScope) -> None:
    if not _MAC_RE.fullmatch(_string(value, path)):
        raise _fail(path, f"{describe(value)} is not a MAC address (xx:xx:xx:xx:xx:xx)")


_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _hostname(value: Any, path: str, scope: ReleaseScope) -> None:
    text = _scalar(value, path)
    if text and (len(text) > 64 or not _HOSTNAME_RE.fullmatch(text)):
        raise _fail(
            path, f"{describe(text)} is not a valid hostname (letters, digits, '-' and '.', at most 64)"
        )


def _mode_rule(allowed: tuple[str, ...], what: str) -> Check:
    def check(value: Any, path: str, scope: ReleaseScope) -> None:
        _one_of(value, path, allowed, what)

    return check


# ------------------------------------------------------------------------------- devices
_DEVICE_PERMS = re.compile(r"[rwm]{1,3}")


def _devices(value: Any, path: str, scope: ReleaseScope) -> None:
    for item, item_path in _list(value, path, string_ok=False):
        if isinstance(item, Mapping):
            host = item.get("PathOnHost")
            parts = [host, item.get("PathInContainer") or host]
            perms = item.get("CgroupPermissions") or "rwm"
        else:
            text = _string(item, item_path)
            parts = text.split(":")
            if len(parts) > 3:
                raise _fail(item_path, f"{describe(text)} is not 'host_path[:container_path[:rwm]]'")
            perms = parts[2] if len(parts) == 3 else "rwm"
            parts = parts[:2] if len(parts) > 1 else [parts[0], parts[0]]
        for part in parts:
            if not isinstance(part, str) or not part.startswith("/"):
                raise _fail(item_path, f"device path {describe(part)} must be absolute")
        if not isinstance(perms, str) or not _DEVICE_PERMS.fullmatch(perms):
            raise _fail(item_path, f"device permissions {describe(perms)} must be made of r, w and m")


# ------------------------------------------------------------------------------- volumes
_MOUNT_MODES = frozenset(
    {
        "ro",
        "rw",
        "z",
        "Z",
        "nocopy",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "private",
        "rprivate",
        "delegated",
        "cached",
        "consistent",
    }
)
_VOLUME_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def _declared_volume(name: str, path: str, scope: ReleaseScope) -> None:
    if not _VOLUME_NAME_RE.fullmatch(name):
        raise _fail(path, f"volume name {describe(name)} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    if name not in scope.volumes:
        declared = sorted(scope.volumes)
        hint = f" (declared: {', '.join(declared)})" if declared else " (the release declares none)"
        raise _fail(path, f"volume {describe(name)} is not declared in the release's volumes{hint}")


def _volumes(value: Any, path: str, scope: ReleaseScope) -> list[str]:
    warnings: list[str] = []
    for item, item_path in _list(value, path, string_ok=False):
        if isinstance(item, Mapping):
            kind = item.get("type")
            if kind not in ("volume", "bind", "tmpfs"):
                raise _fail(
                    child(item_path, "type"),
                    f"mount type {describe(kind)} is not 'volume', 'bind' or 'tmpfs'",
                )
            target = item.get("target")
            if not isinstance(target, str) or not target.startswith("/"):
                raise _fail(
                    child(item_path, "target"), f"mount target {describe(target)} must be an absolute path"
                )
            source = item.get("source")
            if kind == "bind":
                warnings.append(f"{item_path}: bind mounts are not supported and ignored")
            elif kind == "volume" and source is not None:
                _declared_volume(
                    _string(source, child(item_path, "source")).strip(), child(item_path, "source"), scope
                )
            elif kind == "tmpfs" and source is not None:
                raise _fail(child(item_path, "source"), "a tmpfs mount has no source")
            continue
        text = _string(item, item_path)
        parts = text.split(":")
        if len(parts) == 1:
            target, source, mode = parts[0], None, None
        elif len(parts) <= 3:
            source, target = parts[0].strip(), parts[1].strip()
            mode = parts[2].strip() if len(parts) == 3 else None
        else:
            raise _fail(item_path, f"{describe(text)} is not 'source:target[:mode]'")
        if not target.startswith("/"):
            raise _fail(item_path, f"mount target {describe(target)} must be an absolute path")
        if mode:
            for option in mode.split(","):
                if option not in _MOUNT_MODES:
                    raise _fail(item_path, f"invalid mount mode {describe(option)}")
        if source is None:
            continue
        if source.startswith("/") or source.startswith(".") or source.startswith("~"):
            warnings.append(f"{item_path}: bind mounts are not supported and ignored")
            continue
        _declared_volume(source, item_path, scope)
    return warnings


def _tmpfs(value: Any, path: str, scope: ReleaseScope) -> None:
    for item, item_path in _list(value, path):
        target, _, options = _string(item, item_path).partition(":")
        if not target.startswith("/"):
            raise _fail(item_path, f"tmpfs path {describe(target)} must be absolute")
        for option in filter(None, options.split(",")):
            key, _, val = option.partition("=")
            if key == "size":
                _size(val, item_path)
            elif key == "mode":
                if not re.fullmatch(r"[0-7]{1,4}", val):
                    raise _fail(item_path, f"tmpfs mode {describe(val)} must be octal (e.g. 1777)")
            elif key in ("uid", "gid", "nr_inodes", "nr_blocks"):
                if not val.isdigit():
                    raise _fail(item_path, f"tmpfs {key} {describe(val)} must be a number")
            elif key not in (
                "ro",
                "rw",
                "exec",
                "noexec",
                "suid",
                "nosuid",
                "dev",
                "nodev",
                "sync",
                "async",
                "atime",
                "noatime",
                "diratime",
                "nodiratime",
                "relatime",
                "norelatime",
                "strictatime",
                "nostrictatime",
                "mpol",
                "tmpcopyup",
            ):
                raise _fail(item_path, f"invalid tmpfs option {describe(option)}")


# --------------------------------------------------------------------------- resources
_ULIMITS = (
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
)


def _ulimits(value: Any, path: str, scope: ReleaseScope) -> None:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected an object, got {json_type(value)}")
    for name, limit in value.items():
        item_path = child(path, str(name))
        if name not in _ULIMITS:
            raise _fail(item_path, f"unknown ulimit {describe(name)}{suggest(str(name), list(_ULIMITS))}")
        if isinstance(limit, Mapping):
            for key in limit:
                if key not in ("soft", "hard"):
                    raise _fail(child(item_path, str(key)), "expected only 'soft' and 'hard'")
            for key in ("soft", "hard"):
                if key not in limit:
                    raise _fail(child(item_path, key), "is required")
            soft = _integer(limit["soft"], child(item_path, "soft"), -1)
            hard = _integer(limit["hard"], child(item_path, "hard"), -1)
            if hard != -1 and (soft == -1 or soft > hard):
                raise _fail(item_path, f"soft limit {soft} is above hard limit {hard}")
        else:
            _integer(limit, item_path, -1)


def _cpus(value: Any, path: str, scope: ReleaseScope) -> None:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number != number or number in (float("inf"), float("-inf")):
        raise _fail(path, f"expected a number of CPUs such as 0.5, got {describe(value)}")
    if number < 0 or (number > 0 and round(number * 1e9) < 1e7) or number > scope.cpus:
        raise _fail(
            path, f"{describe(value)} is out of range 0.01-{scope.cpus} (the device has {scope.cpus} CPUs)"
        )


def _cpuset(value: Any, path: str, scope: ReleaseScope) -> None:
    text = _scalar(value, path)
    if text == "":
        return
    if not re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", text):
        raise _fail(path, f"{describe(text)} is not a CPU list such as '0-1,3'")
    for part in text.split(","):
        start, _, end = part.partition("-")
        if end and int(end) < int(start):
            raise _fail(path, f"CPU range {part} ends before it starts")
        if int(end or start) >= scope.cpus:
            raise _fail(
                path, f"CPU {int(end or start)} is not available (the device has CPUs 0-{scope.cpus - 1})"
            )


def _cpu_quota(value: Any, path: str, scope: ReleaseScope) -> None:
    number = _integer(value, path, -1)
    if 0 < number < 1000:
        raise _fail(path, f"{number} is below the engine's minimum CPU quota of 1000 (1 ms)")


_SYSCTL_IPC = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)


def _sysctls(value: Any, path: str, scope: ReleaseScope) -> None:
    if isinstance(value, Mapping):
        pairs = [(str(k), v, child(path, str(k))) for k, v in value.items()]
        for _, item, item_path in pairs:
            if item is not None:
                _scalar(item, item_path)
    else:
        pairs = []
        for item, item_path in _list(value, path, string_ok=False):
            key, found, _ = _string(item, item_path).partition("=")
            if not found:
                raise _fail(item_path, f"{describe(item)} is not 'name=value'")
            pairs.append((key, None, item_path))
    for key, _, item_path in pairs:
        if key.startswith("net."):
            if scope.network_mode == "host":
                raise _fail(item_path, f"sysctl {describe(key)} cannot be set with network_mode: host")
        elif key not in _SYSCTL_IPC and not key.startswith("fs.mqueue."):
            raise _fail(
                item_path,
                f"sysctl {describe(key)} is not namespaced: only net.*, fs.mqueue.* and "
                "the IPC kernel.msg*/sem/shm* sysctls can be set for a container",
            )


_SECURITY_KEYS = ("label", "apparmor", "seccomp", "no-new-privileges", "systempaths", "writable-cgroups")


def _security_opt(value: Any, path: str, scope: ReleaseScope) -> list[str]:
    warnings = []
    for item, item_path in _list(value, path):
        text = _string(item, item_path)
        key, val = (re.split(r"[=:]", text, maxsplit=1) + [""])[:2]
        if key not in _SECURITY_KEYS:
            raise _fail(
                item_path, f"unknown security option {describe(key)}{suggest(key, list(_SECURITY_KEYS))}"
            )
        if key == "seccomp" and val not in ("unconfined", "builtin") and not val.startswith("{"):
            raise _fail(item_path, "seccomp takes 'unconfined', 'builtin' or a JSON profile, not a file path")
        if key == "label":
            warnings.append(f"{item_path}: SELinux label options are ignored (balenaOS has no SELinux)")
    return warnings


def _group_add(value: Any, path: str, scope: ReleaseScope) -> None:
    for item, item_path in _list(value, path):
        _scalar(item, item_path)


def _working_dir(value: Any, path: str, scope: ReleaseScope) -> None:
    text = _string(value, path)
    if text and not text.startswith("/"):
        raise _fail(path, f"working directory {describe(text)} must be an absolute path")


def _healthcheck(value: Any, path: str, scope: ReleaseScope) -> list[str]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected an object, got {json_type(value)}")
    warnings = []
    known = ["test", "interval", "timeout", "start_period", "retries", "disable"]
    for key, item in value.items():
        key_path = child(path, str(key))
        snake = _snake(str(key))
        if snake == "test":
            if isinstance(item, str):
                continue
            items = _list(item, key_path, string_ok=False)
            for word, word_path in items:
                _string(word, word_path)
            if items and items[0][0] not in ("NONE", "CMD", "CMD-SHELL"):
                raise _fail(
                    child(key_path, 0), f"{describe(items[0][0])} is not 'NONE', 'CMD' or 'CMD-SHELL'"
                )
        elif snake in ("interval", "timeout", "start_period"):
            _duration(item, key_path, min_ms=1)
        elif snake == "retries":
            _integer(item, key_path, 0)
        elif snake == "disable":
            _boolean(item, key_path, scope)
        else:
            warnings.append(f"unknown key {str(key)!r} in {path} ignored{suggest(snake, known)}")
    return warnings


def dependencies(composition: Mapping[str, Any]) -> list[str]:
    """The services a (valid) composition waits for: depends_on and network_mode service:<name>."""
    depends = composition.get("depends_on", composition.get("dependsOn")) or []
    names = [str(name) for name in depends]
    mode = composition.get("network_mode", composition.get("networkMode"))
    match = re.fullmatch(r"service:\s*(.*)", mode.strip()) if isinstance(mode, str) else None
    return names + ([match[1]] if match else [])


def _depends_on(value: Any, path: str, scope: ReleaseScope) -> None:
    if isinstance(value, Mapping):
        items = [(name, child(path, str(name))) for name in value]
    else:
        items = _list(value, path, string_ok=False)
    for name, item_path in items:
        text = _string(name, item_path)
        if text not in scope.services:
            raise _fail(item_path, f"service {describe(text)} is not a service of this release")
        if text == scope.service:
            raise _fail(item_path, "a service cannot depend on itself")


def _storage_opt(value: Any, path: str, scope: ReleaseScope) -> list[str]:
    return [f"{path}: not supported and ignored"]


# Docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest], where the
# path is lower-case components separated by `/`; the engine refuses anything else before pulling.
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE_RE = re.compile(
    rf"(?:(?:{_DOMAIN}|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def image_reference(value: Any, path: str) -> None:
    """An image reference the engine can pull (``registry:5000/repo/name:tag@sha256:...``)."""
    text = _string(value, path)
    if not _REFERENCE_RE.fullmatch(text):
        raise _fail(
            path,
            f"invalid image reference {describe(text)}: expected [registry[:port]/]name[:tag]"
            "[@digest], the name in lower case",
        )


def _image(value: Any, path: str, scope: ReleaseScope) -> None:
    image_reference(value, path)


# ----------------------------------------------------------------------------------- table
#: camelCase key (as the reference reads it) -> check. Every SUPPORTED_KEY has one, plus dependsOn.
RULES: Final[dict[str, Check]] = {
    "capAdd": _caps, "capDrop": _caps, "command": _command, "entrypoint": _command,
    "cgroupParent": _any_string, "devices": _devices, "dns": _dns, "dnsOpt": _scalars,
    "dnsSearch": _scalars, "tmpfs": _tmpfs, "environment": _environment, "labels": _labels,
    "extraHosts": _extra_hosts, "groupAdd": _group_add, "healthcheck": _healthcheck, "image": _image,
    "init": _boolean, "running": _boolean, "networkMode": _network_mode, "networks": _networks,
    "pid": _mode_rule(("", "host"), "pid mode"), "pidsLimit": _int_rule(-1, None), "ports": _ports,
    "securityOpt": _security_opt, "stopGracePeriod": _stop_grace, "stopSignal": _stop_signal,
    "storageOpt": _storage_opt, "sysctls": _sysctls, "ulimits": _ulimits,
    "usernsMode": _mode_rule(("", "host"), "userns mode"), "volumes": _volumes, "restart": _restart,
    "cpuShares": _int_rule(0, None), "cpuQuota": _cpu_quota, "cpus": _cpus, "cpuset": _cpuset,
    "domainname": _any_string, "hostname": _hostname,
    "ipc": _mode_rule(("", "private", "shareable", "none", "host"), "ipc mode"), "macAddress": _mac,
    "memLimit": _memory, "memReservation": _memory, "shmSize": _shm_size,
    "oomKillDisable": _boolean, "oomScoreAdj": _int_rule(-1000, 1000), "privileged": _boolean,
    "readOnly": _boolean, "user": _any_string, "workingDir": _working_dir,
    "tty": _boolean, "dependsOn": _depends_on,
}  # fmt: skip
assert set(RULES) == SUPPORTED_KEYS | {"dependsOn"}, set(RULES) ^ (SUPPORTED_KEYS | {"dependsOn"})

#: Compose keys the supervisor knows but does not apply (a warning says so, without a "did you mean").
UNSUPPORTED_KEYS: Final = frozenset(
    """build container_name expose links external_links logging deploy env_file configs secrets
    profiles platform scale extends stdin_open volumes_from mem_swappiness memswap_limit cpu_period
    cpu_rt_runtime cpu_rt_period blkio_config device_cgroup_rules isolation runtime pull_policy
    cpu_count cpu_percent kernel_memory attach annotations gpus develop post_start pre_stop uts
    credential_spec cgroup userns stop_grace_period_ms x-balena""".split()  # noqa: SIM905 (a table reads better as words)
)
#: The user-facing (snake_case) spelling of each supported key, for "did you mean".
KNOWN_NAMES: Final = sorted(_snake(k) for k in RULES)


def _unknown_key(key: str, path: str) -> str:
    snake = _snake(camel_case(key)) if camel_case(key) else key
    if snake in UNSUPPORTED_KEYS or key.startswith("x-"):
        return f"key {key!r} in {path} is not supported by the supervisor and ignored"
    return f"unknown key {key!r} in {path} ignored{suggest(key, KNOWN_NAMES)}"


def check_service(composition: Mapping[str, Any], path: str, scope: ReleaseScope) -> list[str]:
    """Check one service's composition; returns warnings, raises ValidationError at the first refusal.

    ``path`` is where the user wrote the composition's keys (``services.web`` for a v2 body,
    ``apps.<uuid>.releases.<commit>.services.web.composition`` for a v3 target).
    """
    warnings: list[str] = []
    mode = composition.get("network_mode", composition.get("networkMode"))
    scope = _with_mode(scope, mode)
    for key, value in composition.items():
        rule = RULES.get(camel_case(key))
        if rule is None:
            warnings.append(_unknown_key(key, path))
            continue
        if value is None:
            continue  # an unset field: the reference's default
        warnings += rule(value, child(path, key), scope) or []
    for key in ("mem_limit", "memLimit"):
        reservation = composition.get("mem_reservation", composition.get("memReservation"))
        if composition.get(key) is not None and reservation is not None:
            limit, floor = _size(composition[key], child(path, key)), _size(reservation, path)
            if limit and floor > limit:
                raise _fail(
                    child(path, key),
                    f"{describe(composition[key])} is below mem_reservation {describe(reservation)}",
                )
    _check_network_namespace(composition, path, scope.network_mode)
    if scope.network_mode == "host" and composition.get("ports"):
        warnings.append(
            f"{child(path, 'ports')}: not published with network_mode: host (the service "
            "listens on the host's ports directly)"
        )
    quota = composition.get("cpu_quota", composition.get("cpuQuota"))
    cpus = composition.get("cpus")
    if cpus not in (None, 0, "0") and quota not in (None, 0, "0"):
        raise _fail(child(path, "cpus"), "cpus and cpu_quota cannot both be set")
    return warnings


# What the engine refuses next to a network mode that is not the service's own namespace
# ("conflicting options: ... and the network mode"), and what a shared namespace cannot join.
_NOT_WITH_HOST = ("networks", "mac_address")
_NOT_WITH_SERVICE = (*_NOT_WITH_HOST, "ports", "hostname", "dns", "dns_search", "dns_opt", "extra_hosts")


def _check_network_namespace(composition: Mapping[str, Any], path: str, mode: str) -> None:
    if mode.startswith("service:"):
        conflicting = _NOT_WITH_SERVICE
    elif mode in ("host", "none"):
        conflicting = _NOT_WITH_HOST
    else:
        return
    for key, value in composition.items():
        if value and _snake(camel_case(key)) in conflicting:
            raise _fail(
                child(path, key),
                f"cannot be set with network_mode {mode!r}: the service shares that network namespace",
            )


def _with_mode(scope: ReleaseScope, mode: Any) -> ReleaseScope:
    return replace(scope, network_mode=mode.strip() if isinstance(mode, str) else "")


# ------------------------------------------------------------------ volume and network configs
_NETWORK_KEYS = (
    "driver",
    "driver_opts",
    "ipam",
    "enable_ipv6",
    "internal",
    "labels",
    "config_only",
    "attachable",
    "external",
    "name",
)
_NETWORK_DRIVERS = ("bridge", "macvlan", "ipvlan")


def _string_map(value: Any, path: str) -> None:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected an object, got {json_type(value)}")
    for key, item in value.items():
        if item is not None:
            _scalar(item, child(path, str(key)))


def _ignored_key(key: str, path: str, known: tuple[str, ...], unsupported: tuple[str, ...]) -> str | None:
    """The warning for a key of a volume/network definition that is not applied, else None."""
    if key not in known:
        return f"unknown key {key!r} in {path} ignored{suggest(key, list(known))}"
    if key in unsupported:
        return f"key {key!r} in {path} is not supported by the supervisor and ignored"
    return None


def check_network_config(config: Mapping[str, Any], path: str) -> list[str]:
    """A release's network definition: what `docker network create` would refuse."""
    warnings: list[str] = []
    for key, value in config.items():
        key_path = child(path, key)
        ignored = _ignored_key(key, path, _NETWORK_KEYS, ("external", "name", "attachable"))
        if ignored:
            warnings.append(ignored)
        elif value is None:
            continue
        elif key == "driver":
            _one_of(value, key_path, _NETWORK_DRIVERS, "network driver")
        elif key in ("driver_opts", "labels"):
            if key == "labels" and isinstance(value, list | tuple):
                env_pairs(value, key_path, what="label")
            else:
                _string_map(value, key_path)
        elif key in ("enable_ipv6", "internal", "config_only"):
            _boolean(value, key_path, ReleaseScope())
        elif key == "ipam":
            warnings += _ipam(value, key_path)
    return warnings


def _ipam(value: Any, path: str) -> list[str]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected an object, got {json_type(value)}")
    warnings = []
    for key, item in value.items():
        key_path = child(path, key)
        if key == "driver":
            _one_of(item, key_path, ("default",), "IPAM driver")
        elif key == "options":
            _string_map(item, key_path)
        elif key == "config":
            for pool, pool_path in _list(item, key_path, string_ok=False):
                _pool(pool, pool_path)
                if not pool.get("subnet") or not pool.get("gateway"):
                    warnings.append(
                        f"{pool_path}: IPAM config entries must have both a subnet and gateway "
                        "defined; your network might not work properly otherwise"
                    )
        else:
            warnings.append(
                f"unknown key {key!r} in {path} ignored{suggest(key, ['driver', 'config', 'options'])}"
            )
    return warnings


def _pool(pool: Any, path: str) -> None:
    if not isinstance(pool, Mapping):
        raise _fail(path, f"expected an object, got {json_type(pool)}")
    subnet = None
    for key in pool:
        if key not in ("subnet", "gateway", "ip_range", "aux_addresses"):
            raise _fail(
                child(path, str(key)),
                f"unknown IPAM key{suggest(str(key), ['subnet', 'gateway', 'ip_range', 'aux_addresses'])}",
            )
    for key in ("subnet", "gateway", "ip_range"):
        if pool.get(key) is not None:
            _string(pool[key], child(path, key))
    if pool.get("subnet"):
        text = _string(pool["subnet"], child(path, "subnet"))
        try:
            subnet = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise _fail(
                child(path, "subnet"), f"{describe(text)} is not a subnet such as 172.20.0.0/16"
            ) from None
    if pool.get("ip_range"):
        text = _string(pool["ip_range"], child(path, "ip_range"))
        try:
            ip_range = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise _fail(child(path, "ip_range"), f"{describe(text)} is not a subnet") from None
        if subnet is not None and not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
            raise _fail(child(path, "ip_range"), f"{text} is not inside the subnet {subnet}")
    addresses = []
    if pool.get("gateway"):
        addresses.append((pool["gateway"], child(path, "gateway")))
    aux = pool.get("aux_addresses")
    if aux is not None:
        if not isinstance(aux, Mapping):
            raise _fail(child(path, "aux_addresses"), f"expected an object, got {json_type(aux)}")
        addresses += [(v, child(child(path, "aux_addresses"), str(k))) for k, v in aux.items()]
    for address, address_path in addresses:
        ip = _ip(_string(address, address_path), address_path)
        if subnet is not None and ip not in subnet:
            raise _fail(address_path, f"{ip} is not inside the subnet {subnet}")


_VOLUME_KEYS = ("driver", "driver_opts", "labels", "external", "name")


def check_volume_config(config: Mapping[str, Any], path: str) -> list[str]:
    """A release's volume definition: the local driver and string options/labels."""
    warnings: list[str] = []
    for key, value in config.items():
        key_path = child(path, key)
        ignored = _ignored_key(key, path, _VOLUME_KEYS, ("external", "name"))
        if ignored:
            warnings.append(ignored)
        elif value is None:
            continue
        elif key == "driver":
            _one_of(value, key_path, ("local",), "volume driver")
        elif key == "labels" and isinstance(value, list | tuple):
            env_pairs(value, key_path, what="label")
        else:
            _string_map(value, key_path)
    return warnings


__all__ += ["CAPABILITIES", "ENV_BUDGET", "KNOWN_NAMES", "UNSUPPORTED_KEYS", "published_ports"]

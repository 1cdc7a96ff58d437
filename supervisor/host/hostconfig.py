"""Host configuration behind ``/v1/device/host-config``: hostname and the redsocks proxy (spec §6).

The pure part validates a PATCH body, parses and renders ``redsocks.conf`` and merges a patch over
the current proxy. :class:`HostConfig` is the edge: it reads and writes the boot-partition files under
the root prefix (``/mnt/boot/system-proxy/{redsocks.conf,no_proxy}``, atomically) and the hostname
through two callables (hostnamed and config.json: ``runtime.py``); a changed proxy calls
``on_proxy_change`` (the §6.3 unit restarts, ``services.py``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..atomic import write_atomic
from ..paths import Paths

log = logging.getLogger(__name__)

PROXY_TYPES = ("socks4", "socks5", "http-connect", "http-relay")
DEFAULT_DNS = "8.8.8.8:53"
_DNS = re.compile(r"^.+:[0-9]+$", re.DOTALL)
_SHORT_STRING_MAX = 255
_BLOCK = r"{name}\s*\{{(.*?)\}}(?=\s|$)"
_LINE_SPLIT = re.compile(r";?\n")

BASE_BLOCK = (
    "base {\n\tlog_debug = off;\n\tlog_info = on;\n\tlog = stderr;\n\tdaemon = off;\n"
    "\tredirector = iptables;\n}\n"
)


#: systemd's ``hostname_is_valid`` (what hostnamed accepts): HOST_NAME_MAX, LDH labels between single dots.
HOSTNAME_MAX = 64
_HOSTNAME = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def valid_hostname(name: str) -> bool:
    return len(name) <= HOSTNAME_MAX and _HOSTNAME.fullmatch(name) is not None


class HostConfigError(ValueError):
    """A PATCH body that cannot be applied; the message is the 400 body."""


# ------------------------------------------------------------------------------ validation
@dataclass(frozen=True)
class HostConfigPatch:
    """A validated PATCH: ``hostname``/``proxy`` are None when absent (``""``/``{}`` are values)."""

    hostname: str | None = None
    proxy: dict[str, Any] | None = None
    #: ``noProxy`` of the proxy input; ``has_no_proxy`` says whether it was given at all.
    no_proxy: list[str] | None = None
    has_no_proxy: bool = False


def _fail(reason: str) -> HostConfigError:
    return HostConfigError(f"Could not parse host config input to a valid format:\n{reason}")


def _check_dns(value: Any) -> None:
    if isinstance(value, bool):
        return
    if not isinstance(value, str) or len(value) > _SHORT_STRING_MAX or not _DNS.match(value):
        raise _fail(f"network.proxy.dns must be a boolean or 'ADDRESS:PORT', got {value!r}")


def _check_port(value: Any) -> int:
    if isinstance(value, bool):
        raise _fail(f"network.proxy.port must be a non-negative integer, got {value!r}")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise _fail(f"network.proxy.port must be a non-negative integer, got {value!r}")


def _strict_proxy(proxy: Mapping[str, Any]) -> dict[str, Any]:
    """The strict ``HostConfiguration`` proxy type; raises HostConfigError naming the field."""
    out: dict[str, Any] = {}
    for key, value in proxy.items():
        if key == "type":
            if value not in PROXY_TYPES:
                raise _fail(f"network.proxy.type must be one of {', '.join(PROXY_TYPES)}, got {value!r}")
        elif key == "port":
            value = _check_port(value)
        elif key in ("ip", "login", "password"):
            if not isinstance(value, str):
                raise _fail(f"network.proxy.{key} must be a string")
        elif key == "dns":
            _check_dns(value)
        elif key == "noProxy":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _fail("network.proxy.noProxy must be an array of strings")
        else:
            raise _fail(f"network.proxy has an unknown field {key!r}")
        out[key] = value
    return out


def _legacy_proxy(proxy: Mapping[str, Any]) -> dict[str, Any]:
    """The reference's ``LegacyHostConfiguration`` fallback: any proxy fields, ``dns`` still checked.

    Values must at least be scalars so that they can be written as ``key = value;`` lines."""
    for key, value in proxy.items():
        if key == "dns":
            _check_dns(value)
        elif key == "noProxy":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _fail("network.proxy.noProxy must be an array of strings")
        elif not isinstance(value, str | int | float | bool) or "\n" in str(value):
            raise _fail(f"network.proxy.{key} must be a single-line string or number")
    return dict(proxy)


def parse_patch(body: Any) -> HostConfigPatch:
    """Validate a PATCH body ``{network: {hostname?, proxy?}, force?}`` (spec §6.1)."""
    if not isinstance(body, Mapping):
        raise _fail("the body must be a JSON object")
    network = body.get("network")
    if network is None:
        log.warning("Key 'network' must exist in PATCH body")
        raise _fail("key 'network' must exist in the body")
    if not isinstance(network, Mapping):
        raise _fail("network must be an object")
    hostname = network.get("hostname")
    if "hostname" in network and not isinstance(hostname, str):
        raise _fail("network.hostname must be a string")
    if hostname and not valid_hostname(hostname):
        # Checked here, before anything changes: hostnamed refuses these (the reference writes them to
        # config.json, where balenaOS's hostname service then fails on them).
        raise _fail(f"network.hostname must be a host name (letters, digits and '-', dot-separated "
                    f"labels, at most {HOSTNAME_MAX} characters), got {hostname!r}")
    proxy = network.get("proxy")
    if "proxy" in network and not isinstance(proxy, Mapping):
        raise _fail("network.proxy must be an object")
    if proxy is not None:
        try:
            proxy = _strict_proxy(proxy)
        except HostConfigError:
            log.warning("Malformed host config detected, things may not behave as expected")
            proxy = _legacy_proxy(proxy)
    no_proxy = None
    has_no_proxy = proxy is not None and "noProxy" in proxy
    if proxy is not None:
        no_proxy = proxy.pop("noProxy", None)
    return HostConfigPatch(hostname=hostname, proxy=proxy, no_proxy=no_proxy, has_no_proxy=has_no_proxy)


# --------------------------------------------------------------------------- redsocks.conf
def _block(name: str, text: str) -> dict[str, str] | None:
    match = re.search(_BLOCK.format(name=name), text, re.DOTALL)
    if match is None:
        return None
    fields: dict[str, str] = {}
    for line in _LINE_SPLIT.split(match.group(1)):
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            if line.strip():
                log.warning("Ignoring malformed redsocks.conf line in block %s", name)
            continue
        fields[key] = value
    return fields


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def parse_redsocks(text: str) -> dict[str, Any]:
    """The proxy fields of a ``redsocks.conf`` in file order (``dns`` from its dnsu2t block)."""
    conf: dict[str, Any] = {}
    redsocks = _block("redsocks", text) or {}
    for key, value in redsocks.items():
        if key in ("local_ip", "local_port"):
            continue
        if key in ("login", "password"):
            conf[key] = _unquote(value)
        elif key == "port":
            conf[key] = int(value) if value.isdigit() else value
        else:
            conf[key] = value
    dnsu2t = _block("dnsu2t", text)
    if dnsu2t and dnsu2t.get("remote_ip") and (dnsu2t.get("remote_port") or "").isdigit():
        conf["dns"] = f"{dnsu2t['remote_ip']}:{dnsu2t['remote_port']}"
    return conf


def valid_proxy(conf: Mapping[str, Any]) -> bool:
    """Whether a parsed proxy has the shape GET may report (a type, an ip and a numeric port)."""
    return (
        conf.get("type") in PROXY_TYPES
        and isinstance(conf.get("ip"), str)
        and isinstance(conf.get("port"), int)
        and not isinstance(conf.get("port"), bool)
        and conf["port"] >= 0
    )


def _value(key: str, value: Any) -> str:
    if key in ("login", "password"):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_redsocks(conf: Mapping[str, Any]) -> str:
    """``redsocks.conf`` for a proxy (spec §6.2): base, redsocks (merged key order, then the fixed
    local address) and a dnsu2t block when ``dns`` is true or ``ADDRESS:PORT``."""
    lines = [f"\t{k} = {_value(k, v)};\n" for k, v in conf.items() if k not in ("dns", "noProxy")]
    local = "\tlocal_ip = 127.0.0.1;\n\tlocal_port = 12345;\n"
    blocks = [BASE_BLOCK, "redsocks {\n" + "".join(lines) + local + "}\n"]
    dns = conf.get("dns")
    if dns is True:
        dns = DEFAULT_DNS
    if isinstance(dns, str) and dns:
        ip, _, port = dns.rpartition(":")
        blocks.append(
            f"dnsu2t {{\n\tremote_ip = {ip};\n\tremote_port = {port};\n"
            "\tlocal_ip = 127.0.0.1;\n\tlocal_port = 53;\n}\n"
        )
    return "\n".join(blocks)


def merge_proxy(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The patch's fields over the current ones; an empty patch clears the proxy (spec §6.1)."""
    if not patch:
        return {}
    merged = dict(current)
    merged.update(patch)
    if merged.get("dns") is False:
        del merged["dns"]
    return merged


# -------------------------------------------------------------------------------- the edge
class HostConfig:
    """Reads and writes the host config of one device root.

    ``read_hostname``/``write_hostname`` read and set the device's hostname (hostnamed, with the
    reference's files as fallback and record); ``on_proxy_change`` restarts the proxy units (§6.3)
    after the files changed.
    """

    def __init__(
        self,
        paths: Paths,
        *,
        read_hostname: Callable[[], str],
        write_hostname: Callable[[str], None],
        on_proxy_change: Callable[[], None] | None = None,
    ) -> None:
        self.proxy_dir = paths.boot / "system-proxy"
        self._read_hostname = read_hostname
        self._write_hostname = write_hostname
        self._on_proxy_change = on_proxy_change or (lambda: log.info("Proxy configuration changed"))

    @property
    def redsocks_path(self):  # type: ignore[no-untyped-def]
        return self.proxy_dir / "redsocks.conf"

    @property
    def no_proxy_path(self):  # type: ignore[no-untyped-def]
        return self.proxy_dir / "no_proxy"

    def _read(self, path) -> str | None:  # type: ignore[no-untyped-def]
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def current_proxy(self) -> dict[str, Any]:
        """The stored proxy fields, without ``noProxy`` ({} when there is no redsocks.conf)."""
        text = self._read(self.redsocks_path)
        return {} if text is None else parse_redsocks(text)

    def no_proxy(self) -> list[str] | None:
        text = self._read(self.no_proxy_path)
        return None if text is None else [line for line in text.split("\n") if line.strip()]

    def get(self) -> dict[str, Any]:
        """``{network: {hostname, proxy?}}`` as GET /v1/device/host-config answers."""
        network: dict[str, Any] = {"hostname": self._read_hostname().strip()}
        text = self._read(self.redsocks_path)
        if text is not None:
            conf = parse_redsocks(text)
            proxy: dict[str, Any] = {}
            if valid_proxy(conf):
                proxy = {k: conf[k] for k in ("type", "ip", "port", "login", "password", "dns") if k in conf}
            no_proxy = self.no_proxy()
            if no_proxy:
                proxy["noProxy"] = no_proxy
            network["proxy"] = proxy
        return {"network": network}

    def patch(self, change: HostConfigPatch) -> None:
        """Apply a validated PATCH: hostname first, then the proxy files."""
        if change.hostname is not None:
            self._write_hostname(change.hostname)
        if change.proxy is None:
            return
        merged = merge_proxy(self.current_proxy(), change.proxy)
        effective = {k: v for k, v in merged.items() if k != "dns"}
        if effective and not valid_proxy({**effective, "port": _port_or_none(effective.get("port"))}):
            # The reference writes such a file and GET then reports {}; refuse instead (docs/API.md).
            raise HostConfigError(
                "Could not parse host config input to a valid format:\n"
                "network.proxy needs a type (one of " + ", ".join(PROXY_TYPES) + "), an ip and a port "
                "(in the request or already configured)"
            )
        self.proxy_dir.mkdir(parents=True, exist_ok=True)
        changed = False
        if change.has_no_proxy:
            if change.no_proxy:
                changed |= write_atomic(self.no_proxy_path, "\n".join(change.no_proxy))
            elif self.no_proxy_path.exists():
                self.no_proxy_path.unlink()
                changed = True
        if effective:
            changed |= write_atomic(self.redsocks_path, render_redsocks(merged))
        elif not change.has_no_proxy and self.redsocks_path.exists():
            # A patch of noProxy alone leaves the proxy itself alone.
            self.redsocks_path.unlink()
            changed = True
        if changed:
            self._on_proxy_change()


def _port_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None

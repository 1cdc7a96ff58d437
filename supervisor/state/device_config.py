"""Device config variables (spec §5.3, §5.4): the table, name normalisation, the steps that bring the
device to the target ``config`` section, and the current values every subsystem reads at use time.

The target ``config`` arrives with ``BALENA_``/``RESIN_``/unprefixed names; the stored form
(``deviceConfig.targetValues``) has the prefix stripped and only the names something acts on.

:data:`VARIABLES` is the table: one row per supervisor variable with its store key, type, default,
whether it needs a reboot and where its current value lives (SQLite ``config`` table, or
config.json). Everything else here reads the table:

* :func:`supervisor_steps` (pure) compares current and target by type (``checkTruthy``/``checkInt``
  equality, exact strings). A valid target that differs is the change; an invalid one falls back to
  the default (with the reference's warning) when the current value is not the default already.
* :class:`DeviceConfig` is the store: typed properties (``poll_interval_ms``, ``delta_settings``,
  ``lock_override``, ``logging_enabled``, ...) read the current value at each call, so a change
  takes effect at its next use without a restart; :meth:`DeviceConfig.steps` plans the config steps
  (supervisor variables, then the VPN, then the boot config, §5.4) and :meth:`DeviceConfig.execute`
  performs them with the reference's system messages (§8.5).

Order and crash safety: a change that needs a reboot is planned as ``setRebootBreadcrumb`` alone
first; only once the breadcrumb is down does the next round write the change itself. A kill at
any point therefore leaves either no breadcrumb and nothing written, or the breadcrumb and (after
the restart) the change written, then one reboot once the apply settles and no update lock is held.

Deliberate differences from the reference, for a device that must not spin or brick:

* A rate-limited VPN step is left out of the plan (the reference turns it into a ``noop``, which
  keeps the apply loop busy for up to an hour); it is tried again at the first apply after the
  next successful one.
* Local target configs are validated before they are stored (:func:`validate_target_config`): an
  invalid value or a blacklisted boot key is a 400 naming the variable, not a later fallback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from ..bootconfig import BlacklistedConfigError, BootConfigError, is_boot_var
from ..config import check_int, check_truthy, to_bool

if TYPE_CHECKING:
    from ..bootconfig import BootConfig
    from ..config import Config
    from ..delta.fetch import DeltaSettings

log = logging.getLogger(__name__)

Kind = Literal["int", "bool", "str"]


@dataclass(frozen=True)
class ConfigVar:
    """One row of the §5.3 table."""

    env: str  # name without prefix
    key: str  # config store key
    kind: Kind
    default: str
    reboot: bool = False
    #: Where the current value lives: the SQLite config table, or config.json (written through the
    #: atomic writer; kept in SQLite on a device without config.json).
    where: Literal["db", "json"] = "db"


VARIABLES: tuple[ConfigVar, ...] = (
    ConfigVar("SUPERVISOR_POLL_INTERVAL", "appUpdatePollInterval", "int", "900000", where="json"),
    ConfigVar("SUPERVISOR_INSTANT_UPDATE_TRIGGER", "instantUpdates", "bool", "true"),
    ConfigVar("SUPERVISOR_LOCAL_MODE", "localMode", "bool", "false"),
    ConfigVar("SUPERVISOR_CONNECTIVITY_CHECK", "connectivityCheckEnabled", "bool", "true"),
    ConfigVar("SUPERVISOR_LOG_CONTROL", "loggingEnabled", "bool", "true"),
    ConfigVar("SUPERVISOR_API_REQUEST_TIMEOUT", "apiRequestTimeout", "int", "59000"),
    ConfigVar("SUPERVISOR_DELTA", "delta", "bool", "false"),
    ConfigVar("SUPERVISOR_DELTA_REQUEST_TIMEOUT", "deltaRequestTimeout", "int", "59000"),
    ConfigVar("SUPERVISOR_DELTA_APPLY_TIMEOUT", "deltaApplyTimeout", "int", "0"),
    ConfigVar("SUPERVISOR_DELTA_RETRY_COUNT", "deltaRetryCount", "int", "30"),
    ConfigVar("SUPERVISOR_DELTA_RETRY_INTERVAL", "deltaRetryInterval", "int", "10000"),
    ConfigVar("SUPERVISOR_DELTA_VERSION", "deltaVersion", "int", "2"),
    ConfigVar("SUPERVISOR_OVERRIDE_LOCK", "lockOverride", "bool", "false"),
    ConfigVar("SUPERVISOR_PERSISTENT_LOGGING", "persistentLogging", "bool", "false", reboot=True,
              where="json"),
    ConfigVar("HOST_FIREWALL_MODE", "firewallMode", "str", "off"),
    ConfigVar("HOST_DISCOVERABILITY", "hostDiscoverability", "bool", "true"),
    ConfigVar("SUPERVISOR_HARDWARE_METRICS", "hardwareMetrics", "bool", "true"),
)
BY_ENV: dict[str, ConfigVar] = {var.env: var for var in VARIABLES}
VPN = "SUPERVISOR_VPN_CONTROL"
#: ``getDefaults()``: the table plus the VPN (§5.3).
DEFAULTS: dict[str, str] = {**{var.env: var.default for var in VARIABLES}, VPN: "true"}
#: The reference's rate limit of ``setVPNEnabled`` (§5.4 step 2).
VPN_RATE_LIMIT_S = 3600.0
REBOOT_BREADCRUMB = "reboot-after-apply"
#: Test hook: ``SUPERVISOR_TEST_CRASH_AT=<point>`` makes the process SIGKILL itself at that point of
#: a config apply (``breadcrumb-set``, ``boot-written``), to prove the order is crash safe.
CRASH_ENV = "SUPERVISOR_TEST_CRASH_AT"

_KNOWN = set(DEFAULTS) | {"OVERRIDE_LOCK"}
_PREFIX_RANK = {"BALENA_": 2, "RESIN_": 1, "": 0}


# ------------------------------------------------------------------------------ names, defaults
def format_config_keys(config: Mapping[str, str]) -> dict[str, str]:
    """Strip prefixes (BALENA_ beats RESIN_ beats none) and keep only names that are acted on."""
    chosen: dict[str, tuple[int, str, str]] = {}
    for key, value in config.items():
        prefix = next((p for p in ("BALENA_", "RESIN_") if key.startswith(p)), "")
        name = key[len(prefix):]
        rank = _PREFIX_RANK[prefix]
        if name not in chosen or rank > chosen[name][0]:
            chosen[name] = (rank, value, key)
    result = {
        name: value for name, (_rank, value, _key) in chosen.items()
        if name in _KNOWN or is_boot_var(name)
    }
    if "OVERRIDE_LOCK" in result:  # the legacy name (§2.5.3)
        result.setdefault("SUPERVISOR_OVERRIDE_LOCK", result["OVERRIDE_LOCK"])
        del result["OVERRIDE_LOCK"]
    return result


def original_names(config: Mapping[str, str]) -> dict[str, str]:
    """Formatted name -> the name as the user wrote it (the winning spelling), for error messages."""
    chosen: dict[str, tuple[int, str]] = {}
    for key in config:
        prefix = next((p for p in ("BALENA_", "RESIN_") if key.startswith(p)), "")
        name, rank = key[len(prefix):], _PREFIX_RANK[prefix]
        if name not in chosen or rank > chosen[name][0]:
            chosen[name] = (rank, key)
    names = {name: key for name, (_rank, key) in chosen.items()}
    if "OVERRIDE_LOCK" in names:
        names.setdefault("SUPERVISOR_OVERRIDE_LOCK", names["OVERRIDE_LOCK"])
    return names


def with_defaults(target: Mapping[str, str], *, unmanaged: bool, initial: bool = False) -> dict[str, str]:
    """The target config as ``getTarget`` reads it (§5.3): defaults filled in, local mode on when
    unmanaged and not named, the VPN on when not named or on the initial apply."""
    result = {**DEFAULTS, **target}
    if unmanaged and "SUPERVISOR_LOCAL_MODE" not in target:
        result["SUPERVISOR_LOCAL_MODE"] = "true"
    if initial or not result.get(VPN):
        result[VPN] = "true"
    return result


# ------------------------------------------------------------------------------ typed values
def is_valid(var: ConfigVar, value: Any) -> bool:
    """Whether ``value`` decodes as the variable's type (PermissiveNumber/PermissiveBoolean)."""
    if var.kind == "int":
        return check_int(value) is not None
    if var.kind == "bool":
        return to_bool(value) is not None
    return isinstance(value, str)


def same(var: ConfigVar, current: Any, target: Any) -> bool:
    """Typed equality: ``checkTruthy`` for booleans, ``checkInt`` for integers, exact strings."""
    if var.kind == "bool":
        return check_truthy(current) == check_truthy(target)
    if var.kind == "int":
        return check_int(current) == check_int(target)
    return current == target


def canonical(var: ConfigVar, value: str) -> str:
    """The stored text of a valid value: ``true``/``false``, a plain integer, or the string."""
    if var.kind == "bool":
        return "true" if check_truthy(value) else "false"
    if var.kind == "int":
        return str(check_int(value))
    return value


def problem(var: ConfigVar, value: Any) -> str | None:
    """What is wrong with ``value`` for ``var`` (None when valid), for the local API's 400."""
    if is_valid(var, value):
        return None
    expected = {"int": "an integer", "bool": "a boolean (true/false/1/0/on/off)", "str": "a string"}
    return f"must be {expected[var.kind]}, got {json.dumps(value)}"


# ------------------------------------------------------------------------------ steps
def _pairs(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(values.items())


@dataclass(frozen=True)
class ChangeConfig:
    """Store supervisor variables: ``target`` by store key, ``human`` by env name (§5.4)."""

    target: tuple[tuple[str, str], ...]
    human: tuple[tuple[str, str], ...]
    action: ClassVar[str] = "changeConfig"


@dataclass(frozen=True)
class SetRebootBreadcrumb:
    """Touch ``/tmp/balena-supervisor/reboot-after-apply`` before a change that needs a reboot."""

    target: tuple[tuple[str, str], ...]
    action: ClassVar[str] = "setRebootBreadcrumb"


@dataclass(frozen=True)
class SetVpnEnabled:
    enabled: bool
    action: ClassVar[str] = "setVPNEnabled"


@dataclass(frozen=True)
class SetBootConfig:
    """Write the boot config of every matching backend from the full target (env form)."""

    target: tuple[tuple[str, str], ...]
    action: ClassVar[str] = "setBootConfig"


ConfigStep = ChangeConfig | SetRebootBreadcrumb | SetVpnEnabled | SetBootConfig
CONFIG_STEPS: tuple[type, ...] = (ChangeConfig, SetRebootBreadcrumb, SetVpnEnabled, SetBootConfig)


def supervisor_steps(
    current: Mapping[str, str], target: Mapping[str, str], *, reboot_scheduled: bool,
    warn: Callable[[str], None] = lambda _m: None,
) -> list[ConfigStep]:
    """§5.4 step 1 (pure): the changes of the table's variables, breadcrumb first when needed.

    ``target`` has its defaults filled in; ``warn`` receives the invalid-value warnings."""
    changes: dict[str, str] = {}
    human: dict[str, str] = {}
    reboot: dict[str, str] = {}
    for var in VARIABLES:
        cur, tgt = current.get(var.env, ""), target.get(var.env, var.default)
        if is_valid(var, tgt):
            if same(var, cur, tgt):
                continue
            value = canonical(var, tgt)
        else:
            if same(var, cur, var.default):
                continue
            warn(f"Warning: Ignoring invalid device configuration value for {var.env}, value: "
                 f"{json.dumps(tgt)}. Falling back to default ({var.default})")
            value = var.default
        changes[var.key], human[var.env] = value, value
        if var.reboot:
            reboot[var.env] = value
    if not changes:
        return []
    if reboot and not reboot_scheduled:
        return [SetRebootBreadcrumb(_pairs(reboot))]
    return [ChangeConfig(_pairs(changes), _pairs(human))]


def vpn_step(current: Mapping[str, str], target: Mapping[str, str], *, managed: bool) -> SetVpnEnabled | None:
    """§5.4 step 2 (pure, before the rate limit)."""
    wanted = target.get(VPN, "")
    if not managed or not wanted:
        return None
    if check_truthy(wanted) == check_truthy(current.get(VPN, "")):
        return None
    return SetVpnEnabled(check_truthy(wanted))


def crash_point(name: str) -> None:
    """SIGKILL this process here when the test hook names this point (never set on a device)."""
    if os.environ.get(CRASH_ENV) == name:
        log.warning("Test hook %s=%s: killing the process", CRASH_ENV, name)
        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------------------ the VPN edge
class VpnControl(Protocol):
    """``openvpn.service`` (the host backend starts/stops it over D-Bus)."""

    def enabled(self) -> bool: ...

    def set_enabled(self, enabled: bool) -> None: ...


class RecordedVpn:
    """Until the host backend controls openvpn.service: remembers the wanted state (on, as a
    balenaOS device boots) and logs each change."""

    def __init__(self) -> None:
        self._enabled = True

    def enabled(self) -> bool:
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        log.warning("VPN %s requested; no host integration for openvpn.service yet",
                    "start" if enabled else "stop")
        self._enabled = enabled


# ------------------------------------------------------------------------------ the store
class DeviceConfig:
    """The device's config variables and boot config: current values, steps and their execution.

    ``target_config`` returns the stored (formatted) target config; ``boot_time`` is the epoch of
    the last boot (None: unknown, every breadcrumb counts); ``system_log`` receives the reference's
    system messages (§8.5)."""

    def __init__(
        self,
        config: Config,
        boot: BootConfig,
        *,
        runtime_dir: Path,
        target_config: Callable[[], Mapping[str, str]],
        boot_time: float | None,
        vpn: VpnControl | None = None,
        system_log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.boot = boot
        self.breadcrumb = runtime_dir / REBOOT_BREADCRUMB
        self._target_config = target_config
        self.boot_time = boot_time
        self.vpn: VpnControl = vpn or RecordedVpn()
        self._system_log = system_log or (lambda message: log.info("%s", message))
        self._clock = clock
        self._lock = threading.Lock()
        self._vpn_attempt: float | None = None
        self._initial = True  # until the first successful apply (the VPN is forced on, §5.3)

    # ------------------------------------------------------------------ current values
    def raw(self, var: ConfigVar, stored: Mapping[str, str] | None = None) -> str:
        """The current value as ``getCurrent`` renders it (``''`` when unset and no default);
        ``stored`` is the SQLite config table when the caller has read it already."""
        value: Any = None
        if var.where == "json" and self.config.json.exists:
            value = self.config.json.get(var.key)
        elif stored is not None:
            value = stored.get(var.key)
        else:
            value = self.config.db.get_config(var.key)
        if value is None:  # never set: the default (also for firewallMode, so '' is never reported)
            return var.default
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def value(self, env: str) -> str:
        """The current value of a table variable, falling back to the default when unusable."""
        var = BY_ENV[env]
        raw = self.raw(var)
        return raw if is_valid(var, raw) else var.default

    def current(self) -> dict[str, str]:
        """``getCurrent`` (§5.3): every table variable, the VPN, and the boot config in env form."""
        stored = {row["key"]: row["value"] for row in self.config.db.query("SELECT key, value FROM config")}
        values = {var.env: self.raw(var, stored) for var in VARIABLES}
        values[VPN] = "true" if self.vpn.enabled() else "false"
        values.update(self.boot.current_env())
        return values

    def target(self) -> dict[str, str]:
        return with_defaults(self._target_config(), unmanaged=self.config.unmanaged, initial=self._initial)

    # typed views other subsystems read at use time
    def _int(self, env: str) -> int:
        return check_int(self.value(env)) or 0

    def _bool(self, env: str) -> bool:
        return check_truthy(self.value(env))

    @property
    def poll_interval_ms(self) -> int:
        return self._int("SUPERVISOR_POLL_INTERVAL") or int(BY_ENV["SUPERVISOR_POLL_INTERVAL"].default)

    @property
    def instant_updates(self) -> bool:
        return self._bool("SUPERVISOR_INSTANT_UPDATE_TRIGGER")

    @property
    def connectivity_check(self) -> bool:
        return self._bool("SUPERVISOR_CONNECTIVITY_CHECK")

    @property
    def logging_enabled(self) -> bool:
        return self._bool("SUPERVISOR_LOG_CONTROL")

    @property
    def api_request_timeout_ms(self) -> int:
        return self._int("SUPERVISOR_API_REQUEST_TIMEOUT")

    @property
    def lock_override(self) -> bool:
        return self._bool("SUPERVISOR_OVERRIDE_LOCK")

    @property
    def persistent_logging(self) -> bool:
        return self._bool("SUPERVISOR_PERSISTENT_LOGGING")

    @property
    def firewall_mode(self) -> str:
        return self.raw(BY_ENV["HOST_FIREWALL_MODE"])

    @property
    def host_discoverability(self) -> bool:
        return self._bool("HOST_DISCOVERABILITY")

    @property
    def hardware_metrics(self) -> bool:
        return self._bool("SUPERVISOR_HARDWARE_METRICS")

    @property
    def vpn_enabled(self) -> bool:
        return self.vpn.enabled()

    def delta_settings(self) -> DeltaSettings:
        from ..delta.fetch import DeltaSettings

        values = {var.env: self.value(var.env) for var in VARIABLES if var.env.startswith("SUPERVISOR_DELTA")}
        return DeltaSettings.from_config(values, self.config.json.get("deltaEndpoint"))

    # ------------------------------------------------------------------ reboot breadcrumb
    def reboot_scheduled(self) -> bool:
        """The breadcrumb exists and is newer than the last boot (§5.6)."""
        try:
            mtime = self.breadcrumb.stat().st_mtime
        except OSError:
            return False
        return self.boot_time is None or mtime > self.boot_time

    # ------------------------------------------------------------------ planning
    def steps(self) -> list[ConfigStep]:
        """The config steps of this round (§5.4); empty when the config has settled.

        Raises :class:`BlacklistedConfigError` (logged as a system message) for a boot key the
        device's backends must not change."""
        current, target = self.current(), self.target()
        steps: list[ConfigStep] = list(supervisor_steps(
            current, target, reboot_scheduled=self.reboot_scheduled(), warn=self._system_log,
        ))
        vpn = vpn_step(current, target, managed=not self.config.unmanaged)
        if vpn is not None and self._vpn_allowed():
            steps.append(vpn)
        if steps:
            return steps
        return self._boot_steps(target)

    def _vpn_allowed(self) -> bool:
        now = self._clock()
        with self._lock:
            last = self._vpn_attempt
            if last is not None and now - last < VPN_RATE_LIMIT_S:
                log.debug("VPN change rate-limited (last attempt %.0fs ago)", now - last)
                return False
            self._vpn_attempt = now
            return True

    def reset_rate_limits(self) -> None:
        """After a successful apply (§5.4 step 2); also ends the initial apply."""
        with self._lock:
            self._vpn_attempt = None
            self._initial = False

    def _boot_steps(self, target: Mapping[str, str]) -> list[ConfigStep]:
        boot_target = {k: v for k, v in target.items() if is_boot_var(k)}
        try:
            changes = self.boot.changes(boot_target)
        except BlacklistedConfigError as err:
            self._system_log(str(err))
            raise
        if not changes:
            return []
        if any(change.reboot for change in changes) and not self.reboot_scheduled():
            changed = {k: v for change in changes for k, v in change.backend.to_env(change.target).items()}
            return [SetRebootBreadcrumb(_pairs(changed))]
        return [SetBootConfig(_pairs(boot_target))]

    # ------------------------------------------------------------------ execution
    def execute(self, step: ConfigStep) -> None:
        if isinstance(step, ChangeConfig):
            self._change_config(step)
        elif isinstance(step, SetRebootBreadcrumb):
            self._set_breadcrumb(dict(step.target))
        elif isinstance(step, SetVpnEnabled):
            self.vpn.set_enabled(step.enabled)
        elif isinstance(step, SetBootConfig):
            self._set_boot_config(dict(step.target))
        else:  # pragma: no cover - the planner makes no other kind
            raise TypeError(f"not a config step: {step!r}")

    def _set_breadcrumb(self, target: Mapping[str, str]) -> None:
        self.breadcrumb.parent.mkdir(parents=True, exist_ok=True)
        self.breadcrumb.touch()
        os.utime(self.breadcrumb)  # mtime = now even if the file was there
        self._system_log(f"Reboot has been scheduled to apply changes: {json.dumps(dict(target))}")
        crash_point("breadcrumb-set")

    def _change_config(self, step: ChangeConfig) -> None:
        human = json.dumps(dict(step.human))
        self._system_log(f"Applying configuration change {human}")
        try:
            by_key = {var.key: var for var in VARIABLES}
            db_values: dict[str, Any] = {}
            json_values: dict[str, Any] = {}
            for key, text in step.target:
                var = by_key[key]
                value: Any = text
                if var.kind == "bool":
                    value = check_truthy(text)
                elif var.kind == "int":
                    value = check_int(text)
                if var.where == "json" and self.config.json.exists:
                    json_values[key] = value
                else:
                    db_values[key] = value
            if json_values:
                self.config.json.set(**json_values)
            if db_values:
                self.config.set_db(**db_values)
        except Exception as err:
            self._system_log(f"Error applying configuration change: {err}")
            raise
        self._system_log(f"Applied configuration change {human}")

    def _set_boot_config(self, target: Mapping[str, str]) -> None:
        text = json.dumps(dict(target))
        self._system_log(f"Applying boot config: {text}")
        try:
            written = self.boot.apply(target)
        except (BootConfigError, OSError) as err:
            self._system_log(f"Error setting boot config: {err}")
            raise
        crash_point("boot-written")
        log.info("Boot config written: %s", ", ".join(written) or "nothing changed")
        self._system_log(f"Applied boot config: {text}")

    # ------------------------------------------------------------------ first run
    def initial_target(self) -> dict[str, str]:
        """§5.4.5: the current config, boot config included, to save as the first target."""
        return self.current()


def validate_target_config(
    config: Mapping[str, str], *, boot: BootConfig | None,
) -> list[tuple[str, str]]:
    """The problems of a target ``config`` section, as ``(name as written, message)`` (empty: fine).

    For the local target-state API (the validation layer calls it before anything is stored):
    each supervisor variable must decode as its type, and the boot config must not change a key
    the device's backends refuse (``Attempt to change blacklisted config value <key>``)."""
    formatted = format_config_keys(config)
    names = original_names(config)
    problems: list[tuple[str, str]] = []
    for name, value in formatted.items():
        var = BY_ENV.get(name)
        message = problem(var, value) if var is not None else None
        if message is not None:
            problems.append((names.get(name, name), message))
    if boot is not None:
        target = {k: v for k, v in formatted.items() if is_boot_var(k)}
        try:
            boot.changes(target)
        except BlacklistedConfigError as err:
            problems.append((names.get(err.env_name, err.env_name), str(err)))
        except BootConfigError as err:
            problems.append(("config", str(err)))
    return problems

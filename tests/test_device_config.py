"""Device config variables (spec §5.3, §5.4): every table row's valid, invalid and default path, name
normalisation, the VPN rules and rate limit, the reboot breadcrumb order, the first-run save, and a
change of each supervisor variable observed where it is used (an in-process :class:`Supervisor`
whose config steps are run directly; the process-level tests are in test_device_config_apply.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from supervisor.bootconfig import BlacklistedConfigError
from supervisor.runtime import Settings, Supervisor
from supervisor.state.device_config import (
    BY_ENV,
    DEFAULTS,
    VARIABLES,
    VPN,
    VPN_RATE_LIMIT_S,
    ChangeConfig,
    ConfigVar,
    SetBootConfig,
    SetRebootBreadcrumb,
    SetVpnEnabled,
    format_config_keys,
    supervisor_steps,
    validate_target_config,
    with_defaults,
)
from supervisor.state.locks import LockRegistry, UpdatesLockedError, is_supervisor_lock
from tests.fixtures.power import RecordingPower

DATA = Path(__file__).parent / "data" / "bootconfig"
MANAGED = {"uuid": "e" * 32, "apiEndpoint": "https://api.example", "deviceApiKey": "d" * 32}


def alternative(var: ConfigVar) -> str:
    """A valid value other than the default."""
    if var.kind == "bool":
        return "false" if var.default == "true" else "true"
    if var.kind == "int":
        return "12345"
    return "on"


INVALID = {"int": "12abc", "bool": "maybe"}


# ------------------------------------------------------------------------------ the table
def test_the_table_is_the_reference_one() -> None:
    assert DEFAULTS["SUPERVISOR_POLL_INTERVAL"] == "900000"  # not the docs' 600000 (§15)
    assert DEFAULTS["SUPERVISOR_DELTA_VERSION"] == "2"  # not the docs' 3
    assert DEFAULTS["SUPERVISOR_DELTA_REQUEST_TIMEOUT"] == "59000"
    assert DEFAULTS[VPN] == "true"
    assert [v.env for v in VARIABLES if v.reboot] == ["SUPERVISOR_PERSISTENT_LOGGING"]
    assert {v.env for v in VARIABLES if v.where == "json"} == {
        "SUPERVISOR_POLL_INTERVAL", "SUPERVISOR_PERSISTENT_LOGGING"}


@pytest.mark.parametrize("var", VARIABLES, ids=lambda v: v.env)
def test_row_valid_value_becomes_the_change(var: ConfigVar) -> None:
    current = dict(DEFAULTS)
    target = {**DEFAULTS, var.env: alternative(var)}
    steps = supervisor_steps(current, target, reboot_scheduled=True)
    assert steps == [ChangeConfig(((var.key, alternative(var)),), ((var.env, alternative(var)),))]
    if var.reboot:  # a reboot variable sets the breadcrumb first, alone
        assert supervisor_steps(current, target, reboot_scheduled=False) == [
            SetRebootBreadcrumb(((var.env, alternative(var)),))]


@pytest.mark.parametrize("var", [v for v in VARIABLES if v.kind != "str"], ids=lambda v: v.env)
def test_row_invalid_value_falls_back_to_the_default_with_a_warning(var: ConfigVar) -> None:
    warnings: list[str] = []
    current = {**DEFAULTS, var.env: alternative(var)}
    target = {**DEFAULTS, var.env: INVALID[var.kind]}
    steps = supervisor_steps(current, target, reboot_scheduled=True, warn=warnings.append)
    assert steps == [ChangeConfig(((var.key, var.default),), ((var.env, var.default),))]
    assert warnings == [
        f'Warning: Ignoring invalid device configuration value for {var.env}, value: '
        f'"{INVALID[var.kind]}". Falling back to default ({var.default})'
    ]
    # already at the default: nothing to do and nothing to say
    warnings.clear()
    assert supervisor_steps(dict(DEFAULTS), target, reboot_scheduled=True, warn=warnings.append) == []
    assert warnings == []


@pytest.mark.parametrize("var", VARIABLES, ids=lambda v: v.env)
def test_row_missing_target_means_the_default(var: ConfigVar) -> None:
    current = {**DEFAULTS, var.env: alternative(var)}
    target = with_defaults({}, unmanaged=False)
    assert supervisor_steps(current, target, reboot_scheduled=True) == [
        ChangeConfig(((var.key, var.default),), ((var.env, var.default),))]


@pytest.mark.parametrize(("env", "current", "target"), [
    ("SUPERVISOR_DELTA", "true", "1"),
    ("SUPERVISOR_DELTA", "false", "off"),
    ("SUPERVISOR_POLL_INTERVAL", "60000", "60000.0"),
    ("SUPERVISOR_POLL_INTERVAL", "60000", " 60000"),
])
def test_values_compare_by_type(env: str, current: str, target: str) -> None:
    assert supervisor_steps({**DEFAULTS, env: current}, {**DEFAULTS, env: target},
                            reboot_scheduled=True) == []


def test_changes_are_stored_canonically_in_one_step() -> None:
    target = {**DEFAULTS, "SUPERVISOR_DELTA": "1", "SUPERVISOR_POLL_INTERVAL": "60000.0"}
    (step,) = supervisor_steps(dict(DEFAULTS), target, reboot_scheduled=True)
    assert dict(step.target) == {"appUpdatePollInterval": "60000", "delta": "true"}
    assert dict(step.human) == {"SUPERVISOR_POLL_INTERVAL": "60000", "SUPERVISOR_DELTA": "true"}


def test_name_normalisation_prefers_balena_then_resin_then_bare() -> None:
    raw = {
        "SUPERVISOR_DELTA": "0", "RESIN_SUPERVISOR_DELTA": "1", "BALENA_SUPERVISOR_DELTA": "true",
        "RESIN_SUPERVISOR_POLL_INTERVAL": "1000", "SUPERVISOR_POLL_INTERVAL": "2000",
        "RESIN_OVERRIDE_LOCK": "1", "BALENA_HOST_CONFIG_gpu_mem": "16", "HOST_EXTLINUX_isolcpus": "1",
        "RESIN_HOST_SPLASH_IMAGE": "x", "HOST_ODMDATA_configuration": "2", "HOST_CONFIGFS_ssdt": "a",
        "JUNK": "x", "BALENA_APP_VAR": "y", "SUPERVISOR_VPN_CONTROL": "false",
    }
    assert format_config_keys(raw) == {
        "SUPERVISOR_DELTA": "true", "SUPERVISOR_POLL_INTERVAL": "1000", "SUPERVISOR_OVERRIDE_LOCK": "1",
        "HOST_CONFIG_gpu_mem": "16", "HOST_EXTLINUX_isolcpus": "1", "HOST_SPLASH_IMAGE": "x",
        "HOST_ODMDATA_configuration": "2", "HOST_CONFIGFS_ssdt": "a", "SUPERVISOR_VPN_CONTROL": "false",
    }


def test_target_defaults_local_mode_and_vpn() -> None:
    assert with_defaults({}, unmanaged=True)["SUPERVISOR_LOCAL_MODE"] == "true"
    named = with_defaults({"SUPERVISOR_LOCAL_MODE": "false"}, unmanaged=True)
    assert named["SUPERVISOR_LOCAL_MODE"] == "false"
    assert with_defaults({}, unmanaged=False)["SUPERVISOR_LOCAL_MODE"] == "false"
    assert with_defaults({VPN: ""}, unmanaged=False)[VPN] == "true"
    assert with_defaults({VPN: "false"}, unmanaged=False)[VPN] == "false"
    assert with_defaults({VPN: "false"}, unmanaged=False, initial=True)[VPN] == "true"


def test_validation_of_a_local_config_section_names_the_variable(tmp_path: Path) -> None:
    sup = pi_device(tmp_path)
    boot = sup.device_config.boot
    assert validate_target_config({"RESIN_SUPERVISOR_POLL_INTERVAL": "60000"}, boot=boot) == []
    assert validate_target_config({"RESIN_SUPERVISOR_POLL_INTERVAL": "soon"}, boot=boot) == [
        ("RESIN_SUPERVISOR_POLL_INTERVAL", 'must be an integer, got "soon"')]
    assert validate_target_config({"BALENA_HOST_CONFIG_kernel": "k.img"}, boot=boot) == [
        ("BALENA_HOST_CONFIG_kernel", "Attempt to change blacklisted config value kernel")]


# ------------------------------------------------------------------------------ in process
def pi_device(tmp_path: Path, *, managed: bool = False, config_txt: str = "config-compact.txt") -> Supervisor:
    root = tmp_path / "root"
    boot = root / "mnt/boot"
    boot.mkdir(parents=True)
    (boot / "device-type.json").write_text(json.dumps({"slug": "raspberrypi4-64", "arch": "aarch64"}))
    shutil.copy(DATA / config_txt, boot / "config.txt")
    if managed:
        (boot / "config.json").write_text(json.dumps(MANAGED))
    # no host setup: the VPN is the recording stand-in, never a bus (tests/test_host_dbus.py has that)
    sup = Supervisor(Settings(root=str(root), port=0, host_setup=False))
    sup.power = RecordingPower()  # records the reboot the config asks for; never reaches logind
    sup._save_initial_config()
    return sup


def run_config(sup: Supervisor, rounds: int = 5) -> list[str]:
    """Plan and run config steps until they settle, as the loop does; the actions run."""
    done: list[str] = []
    for _ in range(rounds):
        steps = sup.device_config.steps()
        if not steps:
            return done
        for step in steps:
            sup.device_config.execute(step)
            done.append(step.action)
    raise AssertionError(f"config did not settle: {done}")


def set_target(sup: Supervisor, **config: str) -> None:
    sup.targets.set_target_config({**sup.targets.target_config(), **config})


@pytest.fixture
def pi(tmp_path: Path):
    sup = pi_device(tmp_path, managed=True)
    yield sup
    sup.config.db.close()


def test_first_run_saves_the_current_config_with_the_boot_config(pi: Supervisor) -> None:
    saved = pi.targets.target_config()
    assert saved["HOST_CONFIG_gpu_mem"] == "128"
    assert saved["HOST_CONFIG_dtoverlay"].startswith('"vc4-kms-v3d","gpio-ir,gpio_pin=17"')
    assert saved["SUPERVISOR_POLL_INTERVAL"] == "900000"
    before = (pi.paths.boot / "config.txt").read_bytes()
    assert run_config(pi) == []  # the saved target is the device: nothing to do
    assert (pi.paths.boot / "config.txt").read_bytes() == before  # comments and all
    pi._save_initial_config()  # only once
    assert pi.targets.target_config() == saved


def test_boot_config_change_sets_the_breadcrumb_first_then_writes(pi: Supervisor) -> None:
    run_config(pi)
    set_target(pi, HOST_CONFIG_gpu_mem="256")
    (first,) = pi.device_config.steps()
    assert isinstance(first, SetRebootBreadcrumb) and ("HOST_CONFIG_gpu_mem", "256") in first.target
    pi.device_config.execute(first)
    assert pi.device_config.reboot_scheduled()
    (second,) = pi.device_config.steps()
    assert isinstance(second, SetBootConfig)
    pi.device_config.execute(second)
    assert "gpu_mem=256\n" in (pi.paths.boot / "config.txt").read_text()
    assert pi.device_config.steps() == []
    assert pi._plan_context(False).reboot_breadcrumb  # the planner now appends the reboot


def test_a_blacklisted_boot_change_fails_the_round_and_writes_nothing(pi: Supervisor) -> None:
    run_config(pi)
    before = (pi.paths.boot / "config.txt").read_bytes()
    sub = pi.logs.subscribe()
    set_target(pi, HOST_CONFIG_kernel="kernel8.img", HOST_CONFIG_gpu_mem="16")
    with pytest.raises(BlacklistedConfigError):
        pi.device_config.steps()
    assert sub.get(1)["message"] == "Attempt to change blacklisted config value kernel"
    assert (pi.paths.boot / "config.txt").read_bytes() == before
    assert not pi.device_config.reboot_scheduled()


def test_supervisor_variables_go_before_the_boot_config(pi: Supervisor) -> None:
    run_config(pi)
    set_target(pi, HOST_CONFIG_gpu_mem="16", SUPERVISOR_DELTA="1")
    assert [s.action for s in pi.device_config.steps()] == ["changeConfig"]
    assert run_config(pi) == ["changeConfig", "setRebootBreadcrumb", "setBootConfig"]


# ---- each variable observed where it is used
def test_poll_interval_is_what_the_loop_reads_next(pi: Supervisor) -> None:
    assert pi.reconciler.poll_interval() == 900.0
    set_target(pi, SUPERVISOR_POLL_INTERVAL="60000")
    run_config(pi)
    assert pi.reconciler.poll_interval() == 60.0 and pi.device_config.poll_interval_ms == 60000
    assert json.loads(pi.paths.config_json.read_text())["appUpdatePollInterval"] == 60000


def test_delta_settings_are_read_at_each_fetch(pi: Supervisor) -> None:
    assert not pi._delta_settings().enabled and not pi._plan_context(False).delta
    set_target(pi, SUPERVISOR_DELTA="1", SUPERVISOR_DELTA_VERSION="3", SUPERVISOR_DELTA_RETRY_INTERVAL="250")
    run_config(pi)
    settings = pi._delta_settings()
    assert settings.enabled and settings.version == 3 and settings.retry_interval_s == 0.25
    assert pi._plan_context(False).delta
    assert pi._delta_fetcher(type("Client", (), {"api": None})()) is not None


def test_local_mode_switches_whose_target_is_followed(pi: Supervisor) -> None:
    assert pi.target_source == MANAGED["apiEndpoint"]
    set_target(pi, SUPERVISOR_LOCAL_MODE="1")
    run_config(pi)
    assert pi.config.local_mode and pi.target_source == "local"


def test_override_lock_is_read_at_the_next_lock_take(pi: Supervisor, tmp_path: Path) -> None:
    locks = LockRegistry(pi.lock_root)
    user_lock = pi.paths.service_locks / "5/main/updates.lock"
    user_lock.parent.mkdir(parents=True)
    user_lock.write_text("")
    with pytest.raises(UpdatesLockedError):
        locks.take(5, ["main"], force=pi.lock_override())
    # the stored target alone does not override (the temporary read of the target is gone) ...
    set_target(pi, SUPERVISOR_OVERRIDE_LOCK="1")
    assert not pi.lock_override()
    run_config(pi)  # ... the applied config does
    locks.take(5, ["main"], force=pi.lock_override())
    assert is_supervisor_lock(user_lock)  # the user's lock was deleted, the supervisor's taken
    locks.release(5)


def test_log_control_decides_whether_system_messages_reach_the_log_stream(pi: Supervisor) -> None:
    sub = pi.logs.subscribe()
    pi.system_message("one")
    assert sub.get(1)["message"] == "one"
    set_target(pi, SUPERVISOR_LOG_CONTROL="false")
    run_config(pi)
    pi.system_message("two")
    seen = []
    while (message := sub.get(0.2)) is not None:
        seen.append(message["message"])
    assert seen == ['Applying configuration change {"SUPERVISOR_LOG_CONTROL": "false"}']
    assert not pi.device_config.logging_enabled


def test_persistent_logging_goes_to_config_json_after_the_breadcrumb(pi: Supervisor) -> None:
    run_config(pi)
    set_target(pi, SUPERVISOR_PERSISTENT_LOGGING="true")
    assert run_config(pi) == ["setRebootBreadcrumb", "changeConfig"]
    assert json.loads(pi.paths.config_json.read_text())["persistentLogging"] is True
    assert pi.device_config.reboot_scheduled() and pi.device_config.persistent_logging


@pytest.mark.parametrize(("env", "prop", "value", "expected"), [
    ("SUPERVISOR_HARDWARE_METRICS", "hardware_metrics", "false", False),
    ("SUPERVISOR_CONNECTIVITY_CHECK", "connectivity_check", "false", False),
    ("SUPERVISOR_INSTANT_UPDATE_TRIGGER", "instant_updates", "0", False),
    ("SUPERVISOR_API_REQUEST_TIMEOUT", "api_request_timeout_ms", "30000", 30000),
    ("HOST_FIREWALL_MODE", "firewall_mode", "on", "on"),
    ("HOST_DISCOVERABILITY", "host_discoverability", "off", False),
])
def test_other_variables_are_in_the_store_others_read(pi: Supervisor, env, prop, value, expected) -> None:
    set_target(pi, **{env: value})
    run_config(pi)
    assert getattr(pi.device_config, prop) == expected
    stored = pi.config.db.get_config(BY_ENV[env].key)
    assert stored == (value if BY_ENV[env].kind != "bool" else "false")


# ---- the VPN
def test_vpn_rules_and_the_one_hour_rate_limit(pi: Supervisor) -> None:
    now = [1000.0]
    dc = pi.device_config
    dc._clock = lambda: now[0]
    run_config(pi)
    set_target(pi, SUPERVISOR_VPN_CONTROL="false")
    assert dc.steps() == []  # the initial apply forces the VPN on, and it is on
    dc.reset_rate_limits()  # a successful apply ends the initial one
    assert dc.steps() == [SetVpnEnabled(False)]  # attempted (and not executed: it stays on)
    now[0] += 60
    assert dc.steps() == []  # rate-limited: left out, so the apply can settle
    now[0] += VPN_RATE_LIMIT_S
    assert dc.steps() == [SetVpnEnabled(False)]
    dc.reset_rate_limits()  # any successful apply resets the limit
    (step,) = dc.steps()
    dc.execute(step)
    assert not dc.vpn_enabled and dc.current()[VPN] == "false"
    dc.reset_rate_limits()
    assert dc.steps() == []


def test_vpn_is_never_touched_when_unmanaged(tmp_path: Path) -> None:
    sup = pi_device(tmp_path)
    sup.device_config.reset_rate_limits()
    set_target(sup, SUPERVISOR_VPN_CONTROL="false")
    assert not any(isinstance(s, SetVpnEnabled) for s in sup.device_config.steps())


def test_unmanaged_device_stores_local_mode_and_an_explicit_false_converges(tmp_path: Path) -> None:
    sup = pi_device(tmp_path)
    assert sup.device_config.current()["SUPERVISOR_LOCAL_MODE"] == "true"
    set_target(sup, SUPERVISOR_LOCAL_MODE="false")
    assert run_config(sup) == ["changeConfig"]  # stored, and then settled (no loop)
    assert sup.config.local_mode  # an unmanaged device stays in local mode


def test_the_config_reboot_honours_the_hup_guard_and_is_asked_once(pi: Supervisor) -> None:
    hup = pi.paths.state_partition / "rollback-health-breadcrumb"
    hup.parent.mkdir(parents=True)
    hup.write_text("")
    with pytest.raises(UpdatesLockedError, match="Waiting for Host OS update to finish"):
        pi._reboot_to_apply()
    assert pi.power.requests == []
    hup.unlink()
    pi._reboot_to_apply()
    pi._reboot_to_apply()
    assert [r.action for r in pi.power.requests] == ["reboot"]

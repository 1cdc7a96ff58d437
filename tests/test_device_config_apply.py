"""Device config applied by real supervisor processes on a Raspberry Pi-like root (spec §5.4-5.6):
the local target-state API with a ``config`` section, the reboot under update locks, a simulated
reboot, and ``kill -9`` at each point of a boot-config apply.

The reboot goes to logind on a private system bus (tests/fixtures/fakehostd.py), which records the
call and then fails it so the process stays up: counting its ``Reboot`` calls counts the reboots the
device was asked for.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from supervisor.bootconfig.configtxt import ConfigTxt
from tests.fixtures.dbus import HOST_STAYS_UP
from tests.fixtures.device import SupervisorProcess, wait_for
from tests.test_reconcile import (  # noqa: F401 - app_owner is a fixture used here
    SETTLED,
    app_owner,
    fake_host,
    publish,
    start_local,
)
from tests.test_update_strategies import Lab

pytestmark = pytest.mark.docker

DATA = Path(__file__).parent / "data" / "bootconfig"
CRASH_ENV = "SUPERVISOR_TEST_CRASH_AT"


def pi_root(root: Path) -> Path:
    """A Raspberry Pi 4 root with the compact config.txt on its boot partition."""
    fake_host(root)
    boot = root / "mnt/boot"
    boot.mkdir(parents=True, exist_ok=True)
    (boot / "device-type.json").write_text(json.dumps({"slug": "raspberrypi4-64", "arch": "aarch64"}))
    shutil.copy(DATA / "config-compact.txt", boot / "config.txt")
    return root


def config_txt(root: Path) -> dict[str, Any]:
    return ConfigTxt(root / "mnt/boot").read()


def current_config(sup: SupervisorProcess) -> dict[str, str]:
    return sup.get("/v2/local/target-state").json()["state"]["local"]["config"]


def breadcrumb(root: Path) -> Path:
    return root / "tmp/balena-supervisor/reboot-after-apply"


def no_temp_files(root: Path) -> bool:
    return not list((root / "mnt/boot").glob(".*.tmp"))


@pytest.fixture
def pi(device_root: Path, app_owner, start_supervisor, host_bus) -> Any:  # noqa: F811
    """``pi(**kw)`` starts a supervisor on the Pi root; ``pi.reboots()`` counts logind's Reboot calls."""
    pi_root(device_root)
    app_id, _owner = app_owner
    bus, fake = host_bus
    fake.configure(login=HOST_STAYS_UP)
    fake.forget()

    def start(**kw: Any) -> SupervisorProcess:
        env = {**bus.env, **kw.pop("env", {})}
        return start_local(start_supervisor, device_root, [app_id], env=env, **kw)

    start.reboots = lambda: sum(call["member"] == "Reboot" for call in fake.calls())  # type: ignore[attr-defined]
    return start


# ------------------------------------------------------------------------------ API + first run
def test_first_run_keeps_config_txt_and_reports_it_as_the_target(pi, device_root: Path) -> None:
    before = (device_root / "mnt/boot/config.txt").read_bytes()
    sup = pi()
    config = current_config(sup)
    assert config["HOST_CONFIG_gpu_mem"] == "128"
    assert config["HOST_CONFIG_dtparam"] == '"i2c_arm=on","spi=on","audio=on"'
    assert config["HOST_CONFIG_hdmi_force_hotplug:1"] == "0"
    # an empty app target without a config section applies and leaves config.txt alone
    offset = len(sup.output())
    assert sup.post("/v2/local/target-state", json={"local": {"name": "pi", "apps": {}}}).status_code == 200
    wait_for(lambda: SETTLED in sup.output()[offset:], "the apply", sup)
    assert (device_root / "mnt/boot/config.txt").read_bytes() == before
    assert current_config(sup)["HOST_CONFIG_gpu_mem"] == "128"


def test_a_refused_config_section_changes_nothing(pi, device_root: Path) -> None:
    sup = pi()
    config = current_config(sup)
    for name, value, message in (
        ("BALENA_HOST_CONFIG_initramfs", "other.gz",
         "config.BALENA_HOST_CONFIG_initramfs: Attempt to change blacklisted config value initramfs"),
        ("RESIN_SUPERVISOR_POLL_INTERVAL", "often",
         'config.RESIN_SUPERVISOR_POLL_INTERVAL: must be an integer, got "often"'),
    ):
        body = {"local": {"name": "pi", "config": {**config, name: value}, "apps": {}}}
        response = sup.post("/v2/local/target-state", json=body)
        assert response.status_code == 400, response.text
        assert message in response.json()["message"]
    assert current_config(sup) == config


def test_config_variables_apply_before_apps_with_the_reference_messages(pi, device_root: Path) -> None:
    sup = pi()
    config = {**current_config(sup), "RESIN_SUPERVISOR_POLL_INTERVAL": "60000", "SUPERVISOR_DELTA": "1"}
    offset = len(sup.output())
    assert sup.post("/v2/local/target-state",
                    json={"local": {"name": "pi", "config": config, "apps": {}}}).status_code == 200
    wait_for(lambda: SETTLED in sup.output()[offset:], "the apply", sup)
    log = sup.output()[offset:]
    change = '{"SUPERVISOR_POLL_INTERVAL": "60000", "SUPERVISOR_DELTA": "true"}'
    assert f"Applying configuration change {change}" in log
    assert f"Applied configuration change {change}" in log
    assert "Applying boot config" not in log and pi.reboots() == 0
    assert not (device_root / "mnt/boot/config.json").exists()  # not invented on an unmanaged device
    db = device_root / "mnt/data/resin-data/balena-supervisor/database.sqlite"
    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute(
            "SELECT key, value FROM config WHERE key IN ('appUpdatePollInterval', 'delta')"))
    assert stored == {"appUpdatePollInterval": "60000", "delta": "true"}


# ------------------------------------------------------------------------------ reboot under locks
def test_boot_change_waits_for_the_update_lock_then_reboots_once(
    pi, device_root: Path, docker_client, make_image, registry, app_owner  # noqa: F811
) -> None:
    app_id, owner = app_owner
    sup = pi()
    lab = Lab(sup=sup, client=docker_client, app_id=app_id,
              images={"main": publish(docker_client, make_image, registry, owner, "main")})
    lab.config = current_config(sup)
    lab.apply()
    lab.exec("main", "touch", "/tmp/balena/updates.lock")  # the app holds its update lock

    lab.config = {**lab.config, "HOST_CONFIG_gpu_mem": "256"}
    offset = lab.apply(settle=False)
    wait_for(lambda: "Updates are locked" in sup.output()[offset:], "the locked reboot", sup)
    log = sup.output()[offset:]
    assert 'Reboot has been scheduled to apply changes: {"HOST_CONFIG_' in log
    assert log.index("Reboot has been scheduled") < log.index("Applying boot config: {")
    assert "Applied boot config: {" in log
    assert config_txt(device_root)["gpu_mem"] == "256" and breadcrumb(device_root).exists()
    assert pi.reboots() == 0  # waits: the lock is held

    lab.exec("main", "rm", "/tmp/balena/updates.lock")
    wait_for(lambda: pi.reboots() >= 1, "the reboot once the lock is released", sup, timeout=120)
    offset = len(sup.output())
    assert sup.post("/v1/update", json={}).status_code == 204
    wait_for(lambda: SETTLED in sup.output()[offset:], "another apply", sup)
    assert pi.reboots() == 1

    # the reboot: /tmp is empty again and the supervisor starts afresh
    sup.stop(signal.SIGKILL)
    shutil.rmtree(device_root / "tmp/balena-supervisor")
    after = pi()
    offset = len(after.output())
    assert after.post("/v1/update", json={}).status_code == 204
    wait_for(lambda: SETTLED in after.output()[offset:], "the apply after the reboot", after)
    assert pi.reboots() == 1 and not breadcrumb(device_root).exists()
    assert config_txt(device_root)["gpu_mem"] == "256"


# ------------------------------------------------------------------------------ kill -9
@pytest.mark.parametrize("point", ["breadcrumb-set", "boot-written"])
def test_kill_9_during_a_boot_config_apply(pi, device_root: Path, point: str) -> None:
    sup = pi(env={CRASH_ENV: point})
    expected = {**config_txt(device_root), "gpu_mem": "16", "dtoverlay": ["vc4-kms-v3d", "i2c-rtc,ds3231"]}
    config = {**current_config(sup), "HOST_CONFIG_gpu_mem": "16",
              "HOST_CONFIG_dtoverlay": '"vc4-kms-v3d","i2c-rtc,ds3231"'}
    assert sup.post("/v2/local/target-state",
                    json={"local": {"name": "pi", "config": config, "apps": {}}}).status_code == 200
    wait_for(lambda: sup.proc.poll() is not None, "the process to be killed", sup)
    assert sup.proc.returncode == -signal.SIGKILL
    assert breadcrumb(device_root).exists() and no_temp_files(device_root)
    if point == "breadcrumb-set":
        assert config_txt(device_root)["gpu_mem"] == "128"  # not written yet
    else:
        assert config_txt(device_root) == expected  # whole, never torn
    assert pi.reboots() == 0

    sup.stop(signal.SIGKILL)
    after = pi()  # the stored target is applied again at start
    wait_for(lambda: pi.reboots() >= 1, "the reboot after the restart", after, timeout=120)
    assert config_txt(device_root) == expected and no_temp_files(device_root)
    rewritten = "Applying boot config" in after.output()
    assert rewritten == (point == "breadcrumb-set")  # written once in all
    offset = len(after.output())
    assert after.post("/v1/update", json={}).status_code == 204
    wait_for(lambda: SETTLED in after.output()[offset:], "another apply", after)
    assert pi.reboots() == 1

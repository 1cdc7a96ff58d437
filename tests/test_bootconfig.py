"""Boot-config backends (spec §5.5): golden round trips on realistic files (tests/data/bootconfig),
which backend matches which device, the blacklist, and atomic, skipped-when-unchanged writes.

The fixture files are written from the formats' public documentation: a commented Raspberry Pi
config.txt with every documented option group, a compact one with per-port ``hdmi_force_hotplug``
and overlays with parameters, an L4T ``extlinux.conf`` with ``${cbootargs}``, an ``extra_uEnv.txt``,
a config.json of a Jetson Orin with power/fan keys and a small PNG.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from supervisor.bootconfig import BlacklistedConfigError, BootConfig, BootConfigError, required_change
from supervisor.bootconfig.configtxt import ConfigTxt
from supervisor.bootconfig.extlinux import Extlinux, ExtLinuxEnvError
from supervisor.bootconfig.extra_uenv import ExtraUEnv
from supervisor.bootconfig.odmdata import BOOT0_SIZE, MODE_BYTES, OFFSETS, Odmdata
from supervisor.bootconfig.powerfan import PowerFan
from supervisor.bootconfig.splash import DEFAULT_NAME, SplashImage
from supervisor.config import ConfigJson

DATA = Path(__file__).parent / "data" / "bootconfig"


def boot_dir(tmp_path: Path, *files: str, **renamed: str) -> Path:
    """A boot partition holding copies of the named fixtures (``renamed``: target name -> fixture)."""
    boot = tmp_path / "mnt/boot"
    boot.mkdir(parents=True)
    for name in files:
        shutil.copy(DATA / name, boot / name)
    for target, source in renamed.items():
        dest = boot / target.replace("__", "/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / source, dest)
    return boot


def device(tmp_path: Path, boot: Path, device_type: str, os_version: str | None = None) -> BootConfig:
    return BootConfig(boot, tmp_path, ConfigJson(boot / "config.json"), device_type, os_version)


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ config.txt
FULL_OPTIONS = {
    "disable_overscan": "1", "avoid_warnings": "1", "hdmi_force_hotplug": "1", "gpu_mem": "64",
    "gpu_mem_256": "64", "gpu_mem_512": "128", "gpu_mem_1024": "256", "enable_uart": "1",
    "disable_splash": "1", "initramfs": "initramf.gz followkernel", "gpio": ["17=op,dh", "22-24=ip,pu"],
    "max_framebuffers": "2",
    "dtoverlay": ["vc4-kms-v3d,cma-384", "i2c-rtc,ds3231,wakeup-source",
                  "gpio-shutdown,gpio_pin=3,active_low=1,gpio_pull=up"],
    "dtparam": ["audio=on", "i2c_arm=on", "i2c_arm_baudrate=400000", "spi=on"],
}


def test_full_commented_config_txt_parses_to_its_active_lines(caplog) -> None:
    text = (DATA / "config-full.txt").read_text()
    assert len(text) > 25_000 and text.count("\n#") > 500  # the commented default-image class
    assert ConfigTxt(DATA).parse(text) == FULL_OPTIONS
    # Section headers are not key=value: warned about and ignored, as the reference does.
    assert "Could not parse config.txt entry: [pi4]. Ignoring." in caplog.text


def test_full_config_txt_is_left_byte_for_byte_while_the_target_equals_it(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path, **{"config.txt": "config-full.txt"})
    before = (boot / "config.txt").read_bytes()
    dev = device(tmp_path, boot, "raspberrypi4-64")
    current = dev.current_env()
    assert dev.changes(current) == []
    assert dev.apply(current) == []
    assert (boot / "config.txt").read_bytes() == before  # comments kept while nothing changes


FULL_WITH_GPU_MEM_128 = """\
disable_overscan=1
avoid_warnings=1
hdmi_force_hotplug=1
gpu_mem=128
gpu_mem_256=64
gpu_mem_512=128
gpu_mem_1024=256
enable_uart=1
disable_splash=1
initramfs initramf.gz followkernel
gpio=17=op,dh
gpio=22-24=ip,pu
max_framebuffers=2
dtparam=audio=on
dtparam=i2c_arm=on
dtparam=i2c_arm_baudrate=400000
dtparam=spi=on
dtoverlay=vc4-kms-v3d
dtparam=cma-384
dtoverlay=i2c-rtc
dtparam=ds3231
dtparam=wakeup-source
dtoverlay=gpio-shutdown
dtparam=gpio_pin=3
dtparam=active_low=1
dtparam=gpio_pull=up
"""


def test_a_change_rewrites_config_txt_whole_and_drops_comments_as_the_reference(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path, **{"config.txt": "config-full.txt"})
    dev = device(tmp_path, boot, "raspberrypi4-64")
    target = {**dev.current_env(), "HOST_CONFIG_gpu_mem": "128"}
    (change,) = dev.changes(target)
    assert change.reboot
    assert dev.apply(target) == ["config.txt"]
    assert (boot / "config.txt").read_text() == FULL_WITH_GPU_MEM_128
    assert ConfigTxt(boot).read() == {**FULL_OPTIONS, "gpu_mem": "128"}
    assert dev.changes(target) == [] and no_temp_files(boot)


COMPACT_OPTIONS = {
    "hdmi_force_hotplug": "1", "hdmi_force_hotplug:0": "1", "hdmi_force_hotplug:1": "0",
    "hdmi_group": "2", "hdmi_mode": "82", "disable_splash": "1", "gpu_mem": "128",
    "initramfs": "initramf.gz followkernel",
    "dtoverlay": ["vc4-kms-v3d", "gpio-ir,gpio_pin=17", "i2c-rtc,ds3231,wakeup-source",
                  "pwm-2chan,pin=18,func=2,pin2=19"],
    # base params are global wherever they are: audio=on came after the i2c-rtc overlay
    "dtparam": ["i2c_arm=on", "spi=on", "audio=on"],
}

COMPACT_RENDERED = """\
hdmi_force_hotplug=1
hdmi_force_hotplug:0=1
hdmi_force_hotplug:1=1
hdmi_group=2
hdmi_mode=82
disable_splash=1
gpu_mem=128
initramfs initramf.gz followkernel
dtparam=i2c_arm=on
dtparam=spi=on
dtparam=audio=on
dtoverlay=vc4-kms-v3d
dtoverlay=gpio-ir
dtparam=gpio_pin=17
dtoverlay=i2c-rtc
dtparam=ds3231
dtparam=wakeup-source
dtoverlay=pwm-2chan
dtparam=pin=18
dtparam=func=2
dtparam=pin2=19
"""


def test_compact_config_txt_round_trip_with_hotplug_variants_and_overlay_params(tmp_path: Path) -> None:
    backend = ConfigTxt(DATA)
    text = (DATA / "config-compact.txt").read_text()
    assert backend.parse(text) == COMPACT_OPTIONS
    env = backend.to_env(backend.parse(text))
    assert env["HOST_CONFIG_dtparam"] == '"i2c_arm=on","spi=on","audio=on"'
    assert env["HOST_CONFIG_hdmi_force_hotplug:1"] == "0"
    # env -> options -> file -> options is the identity
    assert backend.to_options(env) == COMPACT_OPTIONS
    rendered = backend.render({**COMPACT_OPTIONS, "hdmi_force_hotplug:1": "1"}, text)
    assert rendered == COMPACT_RENDERED
    assert backend.parse(rendered) == {**COMPACT_OPTIONS, "hdmi_force_hotplug:1": "1"}


@pytest.mark.parametrize(("text", "expected"), [
    # a dtparam before any overlay is global; each comma-separated param is kept once (the reference
    # pushes the whole line once per base param)
    ("dtparam=i2c_arm=on,spi=on\n", {"dtparam": ["i2c_arm=on", "spi=on"]}),
    ("dtparam=foo=1\ndtoverlay=x\ndtparam=bar,audio=off\n", {"dtparam": ["foo=1", "audio=off"],
                                                           "dtoverlay": ["x,bar"]}),
    # the params of an empty `dtoverlay=` context are global
    ("dtoverlay=a\ndtoverlay=\ndtparam=p\n", {"dtoverlay": ["a"], "dtparam": ["p"]}),
    ("  # indented comment\n\ngpu_mem=16\ngpu_mem=32\n", {"gpu_mem": "32"}),  # the last one wins
    ("device_tree_param=a\ndevice_tree_param=b\n", {"device_tree_param": ["a", "b"]}),
])
def test_config_txt_dtparam_and_scalar_rules(text: str, expected: dict) -> None:
    assert ConfigTxt(DATA).parse(text) == expected


@pytest.mark.parametrize(("value", "parsed"), [
    ('"i2c_arm=on","spi=on"', ["i2c_arm=on", "spi=on"]),
    ("vc4-kms-v3d", ["vc4-kms-v3d"]),
    ('"a,b=1"', ["a,b=1"]),
])
def test_config_txt_array_values_in_env_form(value: str, parsed: list[str]) -> None:
    assert ConfigTxt(DATA).to_options({"HOST_CONFIG_dtoverlay": value}) == {"dtoverlay": parsed}


def test_power_fan_names_are_not_config_txt_keys() -> None:
    backend = ConfigTxt(DATA)
    assert not backend.is_boot_var("HOST_CONFIG_power_mode")
    assert backend.to_options({"HOST_CONFIG_fan_profile": "quiet", "HOST_CONFIG_gpu_mem": "16"}) == {
        "gpu_mem": "16"}


def test_a_forbidden_key_change_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path, **{"config.txt": "config-compact.txt"})
    before = (boot / "config.txt").read_bytes()
    dev = device(tmp_path, boot, "raspberrypi3")
    for key, value in (("initramfs", "other.gz"), ("kernel", "kernel7.img")):
        target = {**dev.current_env(), "HOST_CONFIG_gpu_mem": "256", f"HOST_CONFIG_{key}": value}
        message = f"^Attempt to change blacklisted config value {key}$"
        with pytest.raises(BlacklistedConfigError, match=message):
            dev.apply(target)
    assert (boot / "config.txt").read_bytes() == before


def test_a_forbidden_key_the_target_does_not_name_keeps_its_line(tmp_path: Path) -> None:
    """Deliberate difference: the reference's full rewrite would drop ``initramfs``."""
    boot = boot_dir(tmp_path, **{"config.txt": "config-compact.txt"})
    dev = device(tmp_path, boot, "raspberrypi3")
    assert dev.apply({"HOST_CONFIG_gpu_mem": "16"}) == ["config.txt"]
    assert (boot / "config.txt").read_text() == "gpu_mem=16\ninitramfs initramf.gz followkernel\n"


def test_fincm3_always_gets_the_balena_fin_overlay(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path, **{"config.txt": "config-compact.txt"})
    dev = device(tmp_path, boot, "fincm3")
    dev.apply({"HOST_CONFIG_gpu_mem": "16", "HOST_CONFIG_dtoverlay": '"i2c-rtc,ds3231"'})
    assert ConfigTxt(boot).read()["dtoverlay"] == ["i2c-rtc,ds3231", "balena-fin"]


# ------------------------------------------------------------------------------ which backend
@pytest.mark.parametrize(("device_type", "version", "names"), [
    ("raspberrypi4-64", None, ["config.txt", "splash"]),
    ("raspberry-pi", None, ["config.txt", "splash"]),
    ("fincm3", None, ["config.txt", "splash"]),
    ("revpi-connect-4", None, ["config.txt", "splash"]),
    ("jetson-tx2", "2.45.1+rev3", ["extlinux", "extra_uEnv.txt", "ODMDATA", "splash"]),
    ("jetson-tx2", "2.47.0", ["extra_uEnv.txt", "ODMDATA", "splash"]),
    ("jetson-tx2", None, ["extra_uEnv.txt", "ODMDATA", "splash"]),
    ("jetson-nano", "2.31.0", ["extlinux", "extra_uEnv.txt", "splash"]),
    ("jetson-agx-orin-devkit", "5.1.20", ["extra_uEnv.txt", "splash", "power/fan"]),
    ("jetson-orin-nx-xavier-nx-devkit", "5.1.20", ["extra_uEnv.txt", "splash", "power/fan"]),
    ("imx8mm-var-dart", "5.0.0", ["extra_uEnv.txt", "splash"]),
    ("iot-gate-imx8plus", "5.0.0", ["extra_uEnv.txt", "splash"]),
    ("intel-nuc", "5.0.0", ["splash"]),
])
def test_backends_match_device_type_and_os_version(tmp_path: Path, device_type, version, names) -> None:
    boot = boot_dir(tmp_path, "extra_uEnv.txt")
    assert [b.name for b in device(tmp_path, boot, device_type, version).backends] == names


def test_extra_uenv_only_when_its_file_exists(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path)
    assert "extra_uEnv.txt" not in [b.name for b in device(tmp_path, boot, "jetson-tx2", "5.0.0").backends]


# ------------------------------------------------------------------------------ extlinux
EXTLINUX_RENDERED = """\
TIMEOUT 30
DEFAULT primary
MENU TITLE L4T boot options
LABEL primary
MENU LABEL primary kernel
LINUX /boot/Image
FDT /boot/tegra186-custom.dtb
APPEND ${cbootargs} root=/dev/mmcblk0p1 rw rootwait rootfstype=ext4 console=ttyS0,115200n8 isolcpus=3,4
"""


def test_extlinux_round_trip(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path, **{"extlinux__extlinux.conf": "extlinux.conf"})
    dev = device(tmp_path, boot, "jetson-tx2", "2.45.1")
    assert dev.current_env() == {
        "HOST_EXTLINUX_isolcpus": "2",
        "HOST_EXTLINUX_fdt": "/boot/tegra186-quill-p3310-1000-c03-00-base.dtb",
        # ODMDATA has no device here: nothing read; splash has no image
    }
    target = {"HOST_EXTLINUX_isolcpus": "3,4", "HOST_EXTLINUX_fdt": "/boot/tegra186-custom.dtb"}
    assert dev.apply(target) == ["extlinux"]
    # comments and blank lines are dropped by the rewrite, as the reference's serialiser does
    assert (boot / "extlinux/extlinux.conf").read_text() == EXTLINUX_RENDERED
    assert dev.changes(target) == []


def test_extlinux_absent_fdt_keeps_the_fdt_and_a_bare_isolcpus(tmp_path: Path) -> None:
    backend = Extlinux(DATA)
    text = (DATA / "extlinux.conf").read_text()
    rendered = backend.render({"isolcpus": ""}, text)
    assert "FDT /boot/tegra186-quill-p3310-1000-c03-00-base.dtb\n" in rendered
    assert rendered.splitlines()[-1].endswith("console=ttyS0,115200n8 isolcpus")
    # nothing to do when the target leaves fdt out: the FDT directive stays as it is
    assert required_change(backend, "jetson-tx2", text, {"HOST_EXTLINUX_isolcpus": "2"}) is None


def test_extlinux_errors(tmp_path: Path) -> None:
    backend = Extlinux(tmp_path)
    with pytest.raises(ExtLinuxEnvError, match="Could not find extlinux file. Device is possibly bricked"):
        backend.read()
    with pytest.raises(BootConfigError, match="Unable to parse invalid value: isolcpus=3=2"):
        backend.parse("DEFAULT a\nLABEL a\nAPPEND isolcpus=3=2\n")
    with pytest.raises(BootConfigError, match="default entry"):
        backend.parse("LABEL a\nAPPEND x\n")
    text = (DATA / "extlinux.conf").read_text()
    with pytest.raises(BlacklistedConfigError, match="blacklisted config value rootwait"):
        required_change(backend, "jetson-tx2", text, {"HOST_EXTLINUX_rootwait": "1"})


# ------------------------------------------------------------------------------ extra_uEnv
def test_extra_uenv_round_trip_keeps_unmanaged_lines(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path, "extra_uEnv.txt")
    dev = device(tmp_path, boot, "jetson-xavier-nx-devkit-tx2-nx", "5.0.0")
    assert dev.current_env() == {"HOST_EXTLINUX_fdt": "tegra194-p3668-all-p3509-0000.dtb",
                                 "HOST_EXTLINUX_isolcpus": "1,2"}
    assert dev.apply({"HOST_EXTLINUX_fdt": "custom.dtb", "HOST_EXTLINUX_isolcpus": "3"}) == ["extra_uEnv.txt"]
    assert (boot / "extra_uEnv.txt").read_text() == (
        "# Read by u-boot after the board environment (balenaOS, Jetson Orin/Xavier NX and newer)\n"
        "bootdelay=0\n"
        "custom_fdt_file=custom.dtb\n"
        "extra_os_cmdline=quiet isolcpus=3\n"
    )
    # the managed keys go when the target leaves them out; the rest stays
    dev.apply({})
    assert (boot / "extra_uEnv.txt").read_text() == (
        "# Read by u-boot after the board environment (balenaOS, Jetson Orin/Xavier NX and newer)\n"
        "bootdelay=0\nextra_os_cmdline=quiet\n"
    )
    with pytest.raises(BlacklistedConfigError, match="value rootwait"):
        dev.apply({"HOST_EXTLINUX_rootwait": ""})


# ------------------------------------------------------------------------------ ODMDATA
def odm_image(root: Path, mode: int) -> Path:
    """A boot0 image of the TX2's size: random-ish content, the mode byte at its three offsets."""
    dev = root / "dev/mmcblk0boot0"
    dev.parent.mkdir(parents=True, exist_ok=True)
    content = bytearray(hashlib.shake_256(b"boot0").digest(BOOT0_SIZE))
    for offset in OFFSETS:
        content[offset] = MODE_BYTES[mode - 1]
    dev.write_bytes(bytes(content))
    return dev


def without_offsets(data: bytes) -> bytes:
    out = bytearray(data)
    for offset in OFFSETS:
        out[offset] = 0
    return bytes(out)


@pytest.mark.parametrize("mode", range(1, 7))
def test_odmdata_reads_and_writes_each_mode(tmp_path: Path, mode: int) -> None:
    image = odm_image(tmp_path, mode)
    force_ro = tmp_path / "sys/block/mmcblk0boot0/force_ro"
    force_ro.parent.mkdir(parents=True)
    force_ro.write_text("1")
    before = image.read_bytes()
    dev = device(tmp_path, boot_dir(tmp_path), "jetson-tx2", "5.0.0")
    assert dev.current_env() == {"HOST_ODMDATA_configuration": str(mode)}
    other = mode % 6 + 1
    assert dev.apply({"HOST_ODMDATA_configuration": str(other)}) == ["ODMDATA"]
    after = image.read_bytes()
    assert len(after) == BOOT0_SIZE and without_offsets(after) == without_offsets(before)
    assert [after[o] for o in OFFSETS] == [MODE_BYTES[other - 1]] * 3
    assert force_ro.read_text() == "1"  # read-only again
    # leaving the mode out of the target changes nothing (the special case of §5.4)
    assert dev.changes({}) == []


def test_odmdata_ignores_invalid_values_and_unequal_copies(tmp_path: Path) -> None:
    image = odm_image(tmp_path, 2)
    backend = Odmdata(tmp_path / "mnt/boot", tmp_path)
    for value in ("0", "7", "two"):
        assert backend.write({"configuration": value}) is False
    assert backend.read() == {"configuration": "2"}
    data = bytearray(image.read_bytes())
    data[OFFSETS[1]] = MODE_BYTES[4]  # a torn write: the copies differ
    image.write_bytes(bytes(data))
    assert backend.read() == {}
    assert backend.write({"configuration": "2"}) is True and backend.read() == {"configuration": "2"}


def test_odmdata_is_never_touched_on_other_device_types(tmp_path: Path) -> None:
    image = odm_image(tmp_path, 1)
    before = image.read_bytes()
    dev = device(tmp_path, boot_dir(tmp_path), "jetson-agx-orin-devkit", "5.0.0")
    dev.apply({"HOST_ODMDATA_configuration": "3"})
    assert image.read_bytes() == before


# ------------------------------------------------------------------------------ power / fan
def test_power_fan_in_config_json(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path, **{"config.json": "config-orin.json"})
    original = json.loads((boot / "config.json").read_text())
    dev = device(tmp_path, boot, "jetson-agx-orin-devkit", "5.1.20")
    assert dev.current_env() == {"HOST_CONFIG_power_mode": "mid", "HOST_CONFIG_fan_profile": "quiet"}

    (fan,) = dev.changes({"HOST_CONFIG_power_mode": "mid", "HOST_CONFIG_fan_profile": "cool"})
    assert not fan.reboot  # only a power mode change needs a reboot
    (power,) = dev.changes({"HOST_CONFIG_power_mode": "high", "HOST_CONFIG_fan_profile": "quiet"})
    assert power.reboot

    dev.apply({"HOST_CONFIG_fan_profile": "cool"})  # no power mode: os.power goes
    written = json.loads((boot / "config.json").read_text())
    assert written["os"] == {"fan": {"profile": "cool"}, "kernel": {"extraFirmwareVol": "extra-firmware"},
                             "network": original["os"]["network"]}
    assert {k: v for k, v in written.items() if k != "os"} == {k: v for k, v in original.items() if k != "os"}
    assert dev.changes({"HOST_CONFIG_fan_profile": "cool"}) == []


# ------------------------------------------------------------------------------ splash
def test_splash_image_default_and_current(tmp_path: Path, caplog) -> None:
    boot = boot_dir(tmp_path, **{"splash__balena-logo.png": "splash.png"})
    os_logo = (DATA / "splash.png").read_bytes()
    dev = device(tmp_path, boot, "raspberrypi4-64")
    dev.initialise()
    assert (boot / "splash" / DEFAULT_NAME).read_bytes() == os_logo
    assert dev.current_env() == {}  # the image is the default

    new_png = os_logo[:16] + (33).to_bytes(4, "big") + os_logo[20:]  # another PNG (IHDR width 33)
    uri = "data:image/png;charset=binary;base64," + base64.b64encode(new_png).decode()
    assert dev.apply({"HOST_SPLASH_image": uri}) == ["splash"]
    assert (boot / "splash/balena-logo.png").read_bytes() == new_png
    current = "data:image/png;base64," + base64.b64encode(new_png).decode()
    assert dev.current_env() == {"HOST_SPLASH_image": current}
    # bare base64 is PNG too, and the name's suffix is matched case-insensitively
    assert dev.changes({"HOST_SPLASH_IMAGE": base64.b64encode(new_png).decode()}) == []

    not_png = base64.b64encode(b"GIF89a not a png").decode()
    assert dev.apply({"HOST_SPLASH_image": not_png}) == []
    assert "Splash image is not a PNG" in caplog.text
    assert (boot / "splash/balena-logo.png").read_bytes() == new_png

    assert dev.apply({}) == ["splash"]  # an empty target puts the default back
    assert (boot / "splash/balena-logo.png").read_bytes() == os_logo
    dev.initialise()  # the default is kept once, never overwritten
    assert (boot / "splash" / DEFAULT_NAME).read_bytes() == os_logo


def test_splash_uses_the_legacy_resin_logo_when_that_is_the_one_present(tmp_path: Path) -> None:
    boot = boot_dir(tmp_path, **{"splash__resin-logo.png": "splash.png"})
    assert SplashImage(boot).path == boot / "splash/resin-logo.png"


# ------------------------------------------------------------------------------ writes
def test_writes_are_atomic_and_skipped_when_unchanged(tmp_path: Path, monkeypatch) -> None:
    boot = boot_dir(tmp_path, **{"config.txt": "config-compact.txt"})
    dev = device(tmp_path, boot, "raspberrypi4-64")
    calls: list[str] = []
    import supervisor.atomic as atomic

    real_replace = atomic.os.replace

    def replace(src, dst):  # the new content arrives by a rename within the boot directory
        calls.append(f"{Path(src).parent == Path(dst).parent}")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    target = {"HOST_CONFIG_gpu_mem": "16"}
    assert dev.apply(target) == ["config.txt"]
    mtime = (boot / "config.txt").stat().st_mtime_ns
    assert dev.apply(target) == []
    assert (boot / "config.txt").stat().st_mtime_ns == mtime
    assert calls == ["True"] and no_temp_files(boot)


def test_power_fan_reboot_rule_is_only_power_mode() -> None:
    backend = PowerFan(DATA, None)  # type: ignore[arg-type]
    assert backend.requires_reboot({"power_mode": "a"}, {"power_mode": "b"})
    assert not backend.requires_reboot({"power_mode": "a", "fan_profile": "x"}, {"power_mode": "a"})
    assert ExtraUEnv(DATA).requires_reboot({}, {})

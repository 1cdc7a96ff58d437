"""The supervisor as a user runs it: start-up, config.json errors, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.device import REPO, wait_for, write_config_json


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_options() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("--root", "--port", "--data-dir", "--led", "--blink-seconds"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"uuid": "abc",', "invalid JSON at line 1 column"),
        ("[1, 2]", "must be a JSON object"),
        ('{"listenPort": "http"}', "key 'listenPort' must be an integer"),
        ('{"listenPort": 99999}', "key 'listenPort' must be a TCP port"),
        ('{"apiEndpoint": 42}', "key 'apiEndpoint' must be a string"),
        ('{"developmentMode": "maybe"}', "key 'developmentMode' must be a boolean"),
    ],
)
def test_malformed_config_json_is_one_line_and_exit_2(
    device_root: Path, content: str, problem: str
) -> None:
    path = write_config_json(device_root, content)
    result = run_cli("--root", str(device_root), "--port", "0")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and problem in lines[0]
    assert "Traceback" not in result.stderr
    assert path.read_text() == content  # never rewritten


def test_config_json_uuid_is_generated_and_unknown_keys_kept(device_root: Path, start_supervisor) -> None:
    path = write_config_json(device_root, {"deviceType": "raspberrypi4-64", "vpnPort": 443})
    sup = start_supervisor(device_root)
    sup.stop()
    data = json.loads(path.read_text())
    assert len(data["uuid"]) == 32 and int(data["uuid"], 16) >= 0
    assert data["vpnPort"] == 443 and data["deviceType"] == "raspberrypi4-64"
    assert "deviceApiKey" not in data  # unmanaged: no device API key (spec §0.2)


def test_managed_device_gets_a_device_api_key(device_root: Path, start_supervisor) -> None:
    path = write_config_json(device_root, {"uuid": "a" * 32, "apiEndpoint": "https://api.example"})
    sup = start_supervisor(device_root)
    sup.stop()
    data = json.loads(path.read_text())
    assert data["uuid"] == "a" * 32
    assert len(data["deviceApiKey"]) == 32


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_exits_0_and_says_so_last(device_root: Path, start_supervisor, sig: int) -> None:
    sup = start_supervisor(device_root)
    assert sup.get("/ping").text == "OK"
    code = sup.stop(sig)  # SIGKILLed (code -9) when not stopped within 10 s
    assert code == 0, sup.output()
    assert sup.output().rstrip("\n").splitlines()[-1].endswith("Supervisor stopped")


def test_stop_during_a_blink_is_still_prompt(device_root: Path, start_supervisor, tmp_path: Path) -> None:
    led = tmp_path / "brightness"
    led.write_text("0")
    sup = start_supervisor(device_root, "--led", f"file:{led}")
    assert sup.post("/v1/blink").status_code == 200
    wait_for(lambda: led.read_text() == "1", "the blink to start", sup)
    assert sup.stop() == 0  # within 10 s (else SIGKILLed), though the blink lasts 15 s
    assert led.read_text() == "0"


def test_listen_port_comes_from_config_json(device_root: Path, tmp_path: Path) -> None:
    from tests.fixtures.device import free_port

    port = free_port()
    write_config_json(device_root, {"listenPort": port})
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "--root", str(device_root),
                             "--host", "127.0.0.1", "--led", "none"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import requests

        deadline = time.monotonic() + 15
        while True:
            try:
                assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).text == "OK"
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "not listening on config.json listenPort"
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_plain_run_uses_the_user_data_dir(tmp_path: Path) -> None:
    """The README's ``python -m supervisor``: no root, no config.json -> unmanaged, data in XDG dir."""
    import requests

    from tests.fixtures.device import free_port

    port = free_port()
    env = {**__import__("os").environ, "XDG_DATA_HOME": str(tmp_path / "xdg"),
           "SUPERVISOR_LISTEN_PORT": str(port), "SUPERVISOR_LISTEN_HOST": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "supervisor"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/v2/version", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.05)
        assert response.status_code == 200  # unmanaged: no key needed
        assert (tmp_path / "xdg/pysupervisor/database.sqlite").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0

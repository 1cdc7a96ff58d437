"""A new user's first hour (issue #11), each over real HTTP against a real supervisor process: bodies
that are not JSON, request logging levels, endpoints of the older API docs, a port already in use,
``python -m supervisor api-key``, a dev board's device type from fake ``/proc`` and ``/sys`` trees,
an identify LED on a machine without GPIO, and an API that is ready when ``/ping`` says so."""

from __future__ import annotations

import random
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from supervisor.devicetype import ARCHES, GENERIC, PI_MODELS, balena_arch, detect, pi_slug
from supervisor.paths import Paths
from tests.fixtures.device import (
    MANAGED,
    REPO,
    SupervisorProcess,
    global_api_key,
    wait_for,
    write_config_json,
)


def _db_config(root: Path, key: str) -> str | None:
    db = root / "mnt/data/resin-data/balena-supervisor/database.sqlite"
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------- invalid JSON
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v2/local/target-state"),
    ("POST", "/v1/update"),
    ("PATCH", "/v2/device/tags"),
    ("POST", "/v2/applications/1/restart-service"),
])
def test_a_body_that_is_not_json_is_400_with_the_parsers_position(unmanaged: SupervisorProcess,
                                                                   method: str, path: str) -> None:
    response = requests.request(method, unmanaged.url + path, data='{"local": {"name" "x"}}',
                                headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.json() == {"status": "failed",
                               "message": "Invalid JSON body: Expecting ':' delimiter at line 1 column 19"}


def test_the_issues_example_message(unmanaged: SupervisorProcess) -> None:
    response = unmanaged.post("/v2/local/target-state", data='{"local": {"a": 1 "b": 2}}',
                              headers={"Content-Type": "application/json"})
    assert response.json()["message"] == "Invalid JSON body: Expecting ',' delimiter at line 1 column 19"
    response = unmanaged.post("/v2/local/target-state", data=b'{"a": "\xff"}',
                              headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["message"].startswith("Invalid JSON body: ")


# ------------------------------------------------------------------------- request logging
def _api_lines(sup: SupervisorProcess) -> list[str]:
    return [line for line in sup.output().splitlines() if "supervisor.api:" in line]


def test_requests_at_debug_client_errors_at_info_server_errors_at_error(
        device_root: Path, start_supervisor) -> None:
    sup = start_supervisor(device_root)  # no engine: /v2/state/status is a real 503
    for _ in range(5):
        assert sup.get("/v2/version").status_code == 200
    assert sup.get("/v2/nowhere").status_code == 404
    assert sup.get("/v2/state/status").status_code == 503
    wait_for(lambda: any("/v2/state/status" in line for line in _api_lines(sup)), "the 503's log line", sup)
    lines = _api_lines(sup)
    assert not any("/v2/version" in line for line in lines), lines  # DEBUG: not at the default level
    (not_found,) = [line for line in lines if "/v2/nowhere" in line]
    assert "[INFO]" in not_found and "404" in not_found and "Cannot GET /v2/nowhere" in not_found
    (down,) = [line for line in lines if "/v2/state/status" in line]
    assert "[ERROR]" in down and "503" in down and "Docker engine unavailable" in down
    assert "Supervisor API listening on port" in sup.output()  # lifecycle stays at INFO


def test_debug_level_logs_every_request_without_its_query(device_root: Path, start_supervisor) -> None:
    sup = start_supervisor(device_root, "--log-level", "debug")
    assert sup.get("/v2/version", params={"apikey": "secret0123"}).status_code == 200
    wait_for(lambda: any("GET /v2/version 200" in line for line in _api_lines(sup)), "the debug line", sup)
    assert "secret0123" not in sup.output()


# ------------------------------------------------------------------- older API docs' endpoints
def test_tcp_ping_turns_the_connectivity_check_on_and_off(unmanaged: SupervisorProcess) -> None:
    response = requests.delete(unmanaged.url + "/v1/tcp-ping", timeout=10)
    assert (response.status_code, response.content) == (204, b"")
    assert _db_config(unmanaged.root, "connectivityCheckEnabled") == "false"
    response = unmanaged.post("/v1/tcp-ping")
    assert (response.status_code, response.content) == (204, b"")
    assert _db_config(unmanaged.root, "connectivityCheckEnabled") == "true"


def test_tcp_ping_needs_a_key_on_a_managed_device(managed: SupervisorProcess) -> None:
    assert managed.post("/v1/tcp-ping").status_code == 401
    assert _db_config(managed.root, "connectivityCheckEnabled") is None
    response = managed.post("/v1/tcp-ping", headers={"Authorization": f"Bearer {managed.key}"})
    assert response.status_code == 204


@pytest.mark.parametrize("path", ["/v1/spawn-tty", "/v1/despawn-tty"])
def test_spawn_tty_is_gone_and_names_the_replacement(unmanaged: SupervisorProcess, path: str) -> None:
    response = unmanaged.post(path)
    assert response.status_code == 410
    body = response.json()
    assert body["status"] == "failed"
    assert "22222" in body["message"] and "balena ssh" in body["message"]


# ------------------------------------------------------------------------------ start-up
def test_a_port_in_use_is_one_line_and_exit_2(device_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--root", str(device_root), "--host", "127.0.0.1", "--port", str(port),
                         "--led", "none")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(rf"\bport {port} is already in use\b", lines[0]), lines


def test_api_key_prints_the_global_key(device_root: Path, start_supervisor, tmp_path: Path) -> None:
    write_config_json(device_root, MANAGED)
    sup = start_supervisor(device_root)
    result = run_cli("api-key", "--root", str(device_root))
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key == global_api_key(device_root)
    assert sup.get("/v2/version", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert sup.get("/v2/version").status_code == 401

    empty = tmp_path / "elsewhere"
    result = run_cli("api-key", "--root", str(empty))
    assert result.returncode == 1 and result.stdout == ""
    assert "no database at" in result.stderr and "Traceback" not in result.stderr
    assert not (empty / "mnt").exists()  # nothing created where there was nothing


# ------------------------------------------------------------------------ a dev board's type
@pytest.mark.parametrize(("model", "machine", "bits", "arch", "slug"), [
    ("Raspberry Pi 4 Model B Rev 1.4", "aarch64", 64, "aarch64", "raspberrypi4-64"),
    ("Raspberry Pi 3 Model B Plus Rev 1.3", "aarch64", 64, "aarch64", "raspberrypi3-64"),
    ("Raspberry Pi 3 Model B Rev 1.2", "armv7l", 32, "armv7hf", "raspberrypi3"),
    ("Raspberry Pi 3 Model B Rev 1.2", "aarch64", 32, "armv7hf", "raspberrypi3"),  # 32-bit userland
    ("Raspberry Pi 5 Model B Rev 1.0", "aarch64", 64, "aarch64", "raspberrypi5"),
    ("Raspberry Pi 400 Rev 1.0", "aarch64", 64, "aarch64", "raspberrypi400-64"),
    ("Raspberry Pi Compute Module 4 Rev 1.0", "aarch64", 64, "aarch64", "raspberrypicm4-ioboard"),
    ("Raspberry Pi Zero 2 W Rev 1.0", "aarch64", 64, "aarch64", "raspberrypi0-2w-64"),
    ("Raspberry Pi 2 Model B Rev 1.1", "armv7l", 32, "armv7hf", "raspberry-pi2"),
    ("Raspberry Pi Zero W Rev 1.1", "armv6l", 32, "rpi", "raspberry-pi"),
    ("NVIDIA Jetson Nano Developer Kit", "aarch64", 64, "aarch64", "generic-aarch64"),
])
def test_detect_from_the_device_tree(tmp_path: Path, model: str, machine: str, bits: int, arch: str,
                                     slug: str) -> None:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(model.encode() + b"\0")
    found = detect(Paths.create(tmp_path, tmp_path / "data"), machine, bits)
    assert (found.arch, found.slug) == (arch, slug)


def test_detect_tables_are_consistent() -> None:
    assert balena_arch("x86_64", 64) == "amd64" and balena_arch("i686", 32) == "i386"
    assert balena_arch("riscv64", 64) == "unknown"
    assert all(arch in GENERIC for arch in set(ARCHES.values()))
    for prefix, slug64, slug32 in PI_MODELS:  # no entry is shadowed by an earlier, shorter one
        assert pi_slug(prefix + " Rev 1.0", "aarch64") == slug64
        assert pi_slug(prefix + " Rev 1.0", "armv7hf") == slug32


def _fake_board(root: Path, files: dict[str, str]) -> None:
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


@pytest.mark.parametrize(("files", "slug"), [
    ({"/proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\0"}, "raspberrypi4-64"),
    ({"/proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\0"}, "raspberrypi5"),
    ({"/sys/class/dmi/id/sys_vendor": "Intel(R) Client Systems\n",
      "/sys/class/dmi/id/product_name": "NUC8i5BEH\n"}, None),
    ({}, None),
])
def test_device_info_without_device_type_json(device_root: Path, start_supervisor,
                                              files: dict[str, str], slug: str | None) -> None:
    """``None``: what this (test) machine is, by the documented DMI rule or fallback."""
    _fake_board(device_root, files)
    sup = start_supervisor(device_root)
    response = sup.get("/v2/local/device-info")
    assert response.status_code == 200, response.text
    arch = balena_arch()
    expected = slug or ("generic-amd64" if arch == "amd64" else GENERIC[arch])
    assert response.json() == {"status": "success", "info": {"arch": arch, "deviceType": expected}}


def test_device_type_json_wins(device_root: Path, start_supervisor) -> None:
    _fake_board(device_root, {"/proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\0",
                              "/mnt/boot/device-type.json": '{"slug": "fincm3", "arch": "armv7hf"}'})
    sup = start_supervisor(device_root)
    assert sup.get("/v2/local/device-info").json()["info"] == {"arch": "armv7hf", "deviceType": "fincm3"}


# ------------------------------------------------------------------------ LED without GPIO
def test_gpio_led_without_a_gpio_chip_says_how_to_get_one(device_root: Path, start_supervisor) -> None:
    if list(Path("/dev").glob("gpiochip*")):
        pytest.skip("this machine has a GPIO chip")
    sup = start_supervisor(device_root, "--led", "gpio:17")
    lines = [line for line in sup.output().splitlines() if "gpio:17" in line and "[WARNING]" in line]
    assert len(lines) == 1, sup.output()
    assert "no GPIO chip" in lines[0] and "pip install 'pysupervisor[gpio]'" in lines[0]
    assert "Unable to load any default pin factory" not in sup.output()
    assert sup.post("/v1/blink").status_code == 200  # and it keeps running without an LED
    assert sup.get("/v1/healthy").status_code == 200


# --------------------------------------------------------------------------- API readiness
def test_engine_endpoints_answer_as_soon_as_ping_does(device_root: Path, start_supervisor,
                                                      docker_client) -> None:
    """Three starts: the first request after ``/ping`` answers reads the engine, never the 503
    ``Docker engine not connected yet``."""
    app_id = random.randint(10**8, 2 * 10**8)
    for attempt in range(3):
        root = device_root.parent / f"start{attempt}"
        (root / "mnt/boot").mkdir(parents=True)
        sup = start_supervisor(root, "--apps", str(app_id), "--no-host-setup", engine=True, wait=False)
        sup.wait_ready()
        for path in ("/v2/state/status", "/v1/device", "/v2/applications/state"):
            response = sup.get(path)
            assert response.status_code == 200, (attempt, path, response.text)
        sup.stop()


def test_an_engine_that_is_down_is_still_503(device_root: Path, start_supervisor) -> None:
    sup = start_supervisor(device_root)
    started = time.monotonic()
    response = sup.get("/v2/state/status")
    assert response.status_code == 503
    assert response.json()["message"].startswith("Docker engine unavailable:")
    assert time.monotonic() - started < 8

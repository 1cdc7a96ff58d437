"""The layer's balena-supervisor.service under a real systemd.

``systemd-analyze verify`` checks the unit against stubs of the balenaOS units it needs. Then a
Debian rootfs (tests/fixtures/native.py) boots systemd as PID 1 in a container on the host engine,
with the wheel installed and the host engine's socket bound at balenaOS's path; the layer's unit
files are installed where the recipe puts them and the unit is enabled and started.

systemd in a container on this engine: ``--privileged`` is refused (the engine's bounding set lacks
CAP_SYS_RESOURCE, so runc cannot "apply caps"); CAP_SYS_ADMIN, no seccomp filter and a private cgroup
namespace are enough: systemd 252 then tracks its units in the (writable) cgroup2 hierarchy under the
container's own cgroup, while the v1 hierarchies stay read-only.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest
import requests

from tests.fixtures.device import wait_for
from tests.fixtures.docker import TEST_LABEL

pytestmark = pytest.mark.docker

LAYER = Path(__file__).resolve().parents[1] / "yocto/meta-pysupervisor"
FILES = LAYER / "recipes-supervisor/pysupervisor/files"
UNIT = "balena-supervisor.service"
#: The recipe's WatchdogSec is 180 s; the test's drop-in shortens it to keep the run short.
TEST_WATCHDOG_S = 10
#: os-config waits at most 90 s for the unit to stop (balenaos-integration.md §2.11).
OS_STOP_LIMIT_S = 90
HANG_FILE = "/run/pysupervisor-hang-now"

#: balenaOS units the supervisor unit needs, stubbed as what they are on a device: oneshot services
#: (resin-data and balena-data-reset run before sysinit, DefaultDependencies=no; §2.3). The engine
#: itself is the host's, bound in: balena.service only has to be active.
OS_UNITS = {
    "resin-data.service": "mkdir -p /mnt/data/resin-data",
    "balena-data-reset.service": None,
    "balena-device-uuid.service": None,
    "os-config-devicekey.service": None,
    "bind-etc-balena-supervisor.service": "mkdir -p /etc/balena-supervisor",
    "extract-balena-ca.service": None,
    "balena.service": None,
}
EARLY = {"resin-data.service", "balena-data-reset.service"}


def _stub(name: str, command: str | None) -> str:
    early = "DefaultDependencies=no\n" if name in EARLY else ""
    run = f"/bin/sh -c '{command}'" if command else "/bin/true"
    return (f"[Unit]\nDescription=test stub of balenaOS {name}\n{early}"
            f"[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={run}\n")


def _layer_units() -> dict[str, bytes]:
    """The unit files as the recipe installs them (name on the device -> content)."""
    return {
        UNIT: (FILES / UNIT).read_bytes(),
        "resin\\x2ddata.mount": (FILES / "resin-data.mount").read_bytes(),
    }


def test_unit_passes_systemd_analyze_verify(tmp_path: Path):
    for name, command in OS_UNITS.items():
        (tmp_path / name).write_text(_stub(name, command))
    for name, content in _layer_units().items():
        (tmp_path / name).write_bytes(content)
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: run .ci/setup (package systemd)"
    proc = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / UNIT)],
                          env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 on many warnings (an unknown Type= is only "ignoring"): any output is a failure.
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Machine:
    """The container whose PID 1 is systemd."""

    def __init__(self, container) -> None:
        self.container = container

    def sh(self, command: str, check: bool = True) -> str:
        rc, out = self.container.exec_run(["sh", "-c", command])
        text = out.decode(errors="replace")
        if check:
            assert rc == 0, f"{command!r} exited {rc}:\n{text}"
        return text.strip()

    def show(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines())

    def journal(self) -> list[dict]:
        out = self.sh("journalctl -o json --no-pager _SYSTEMD_UNIT=balena-supervisor.service + "
                      "UNIT=balena-supervisor.service")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def journal_text(self) -> str:
        return self.sh(f"journalctl -u {UNIT} --no-pager | grep -v 'supervisor.api: GET' | tail -60",
                       check=False)


def _first(entries: list[dict], text: str) -> float:
    """When (epoch seconds) the first entry whose message contains ``text`` was written: the
    supervisor's own log timestamp (UTC, as the container runs), else the sender's time systemd
    records, never the time journald got round to reading it (late on a loaded machine)."""
    entry = next(e for e in entries if text in str(e.get("MESSAGE", "")))
    stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", str(entry["MESSAGE"]))
    if stamp:
        when = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        return when.timestamp() + int(stamp[2]) / 1000
    return int(entry.get("_SOURCE_REALTIME_TIMESTAMP") or entry["__REALTIME_TIMESTAMP"]) / 1e6


@pytest.fixture
def machine(docker_client: docker.DockerClient, docker_cleanup, systemd_rootfs_image: str,
            wheelhouse: Path) -> Machine:
    name = f"pysupervisor-systemd-{uuid.uuid4().hex[:12]}"
    # A network of its own: the container's address is reachable from here, whatever state the
    # engine's default bridge is in (other test sessions on this engine create and remove links).
    network = docker_client.networks.create(name, driver="bridge", labels={TEST_LABEL: "1"})
    docker_cleanup.append(network)
    container = docker_client.containers.create(
        systemd_rootfs_image, name=name, network=name, labels={TEST_LABEL: "1"},
        cap_add=["SYS_ADMIN"], security_opt=["seccomp=unconfined"], cgroupns="private",
        tmpfs={"/run": "", "/run/lock": "", "/tmp": ""},
        stop_signal="SIGRTMIN+3",  # systemd's "halt" signal
        volumes={
            "/var/run/docker.sock": {"bind": "/var/run/balena-engine.sock", "mode": "rw"},
            str(wheelhouse): {"bind": "/wheels", "mode": "ro"},
        },
    )
    docker_cleanup.append(container)  # before start: a container that fails to start is removed too
    container.start()
    m = Machine(container)
    wait_for(lambda: m.sh("systemctl is-system-running", check=False) in ("running", "degraded"),
             "systemd in the container to finish booting", timeout=120,
             context=lambda: m.sh("systemctl is-system-running; systemctl --failed", check=False))
    return m


def test_unit_under_systemd_as_pid1(machine: Machine):
    m = machine
    assert m.sh("readlink /proc/1/exe") == "/usr/lib/systemd/systemd"
    m.sh("python3 -m pip install -q --no-index --find-links /wheels --break-system-packages "
         "--root-user-action=ignore pysupervisor")
    # The layer's files where the recipe installs them; stubs and the test drop-in in /etc.
    m.container.put_archive("/lib/systemd/system", _tar(_layer_units()))
    m.container.put_archive("/usr/lib/tmpfiles.d", _tar(
        {"pysupervisor.conf": (FILES / "tmpfiles-pysupervisor.conf").read_bytes()}))
    app_id = int(uuid.uuid4().int % 900_000_000) + 100_000_000  # scoped: touches no one's apps
    dropin = (f"[Service]\nWatchdogSec={TEST_WATCHDOG_S}\nRestartSec=1\n"
              f"Environment=SUPERVISOR_APPS={app_id} SUPERVISOR_HOST_SETUP=false "
              f"SUPERVISOR_TEST_HANG_FILE={HANG_FILE} TZ=UTC\n")
    m.container.put_archive("/etc/systemd/system", _tar({
        **{name: _stub(name, cmd).encode() for name, cmd in OS_UNITS.items()},
        f"{UNIT}.d/test.conf": dropin.encode(),
    }))
    m.sh("systemd-tmpfiles --create /usr/lib/tmpfiles.d/pysupervisor.conf && test -d /tmp/balena-supervisor "
         "&& test \"$(readlink /tmp/resin-supervisor)\" = /tmp/balena-supervisor")
    m.sh("systemctl daemon-reload && systemctl enable --now balena-supervisor.service")

    # Type=notify: "active" only once READY=1 came; our STATUS= line came with it.
    assert m.sh(f"systemctl is-active {UNIT}", check=False) == "active", m.journal_text()
    assert m.sh("systemctl is-enabled resin-supervisor.service", check=False) in ("enabled", "alias")
    props = m.show("StatusText", "MainPID", "NRestarts", "WatchdogUSec", "Type")
    assert props["StatusText"] == "API listening on port 48484", m.journal_text()
    assert (props["Type"], props["WatchdogUSec"]) == ("notify", f"{TEST_WATCHDOG_S}s")
    first_pid = props["MainPID"]
    networks = m.container.client.api.inspect_container(m.container.id)["NetworkSettings"]["Networks"]
    (ip,) = [net["IPAddress"] for net in networks.values()]
    url = f"http://{ip}:48484"
    assert requests.get(f"{url}/ping", timeout=10).text == "OK"
    # Native paths (balenaos-integration.md §3.1): the database on the data partition behind the
    # /resin-data bind the layer's mount unit makes.
    m.sh("findmnt /resin-data && test -f /resin-data/balena-supervisor/database.sqlite")
    # The watchdog is being fed: its timestamp moves.
    first_ping = m.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]
    wait_for(lambda: m.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"] != first_ping,
             "a WATCHDOG=1 ping", timeout=30)

    # Hang a subsystem (the test hook): health fails, pings stop, systemd kills and restarts it.
    m.sh(f"touch {HANG_FILE}")
    wait_for(lambda: m.show("NRestarts")["NRestarts"] == "1", "the watchdog restart", timeout=120,
             context=m.journal_text)
    entries = m.journal()
    unhealthy = _first(entries, "Unhealthy, not pinging the systemd watchdog")
    fired = _first(entries, "Watchdog timeout")
    # Killed within WatchdogSec of the health check failing (the last ping came before that).
    assert 0 < fired - unhealthy <= TEST_WATCHDOG_S, m.journal_text()
    assert any("Failed with result 'watchdog'" in str(e.get("MESSAGE")) for e in entries)
    wait_for(lambda: m.sh(f"systemctl is-active {UNIT}", check=False) == "active",
             "the restarted supervisor to be ready", timeout=60, context=m.journal_text)
    assert m.show("MainPID")["MainPID"] != first_pid
    assert requests.get(f"{url}/v1/healthy", timeout=10).status_code == 200

    # A clean stop, well within the time os-config gives it.
    started = time.monotonic()
    m.sh(f"systemctl stop {UNIT}")
    took = time.monotonic() - started
    props = m.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1",
                     "ExecMainStatus": "0"}, m.journal_text()  # CLD_EXITED with status 0
    assert took < OS_STOP_LIMIT_S
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/ping", timeout=5)

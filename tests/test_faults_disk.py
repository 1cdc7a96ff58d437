"""A full data partition (issue #17): the supervisor's data directory on a small tmpfs, mounted in a
private mount namespace of the supervisor process (``unshare -m``), filled by the test through
``/proc/<pid>/root``. A write the API needs is refused with a clear 503 and one log line, nothing
stored is corrupted, the running app keeps running, and everything works again once space returns."""

from __future__ import annotations

import contextlib
import errno
import random
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest

from tests.fixtures.device import SupervisorProcess, wait_for
from tests.test_apply_errors import _service, _target
from tests.test_reconcile import OWNER_LABEL, SETTLED, remove_app

pytestmark = pytest.mark.docker

DATA = "mnt/data"
DB = "mnt/data/resin-data/balena-supervisor/database.sqlite"


def on_tmpfs(start_supervisor, root: Path, app_id: int, size: str = "8m") -> SupervisorProcess:
    """A supervisor whose ``/mnt/data`` is a tmpfs of ``size`` that only it (and /proc/<pid>/root) sees."""
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to give the supervisor a small data partition")
    (root / DATA).mkdir(parents=True, exist_ok=True)
    prefix = ("unshare", "-m", "--propagation", "private", "sh", "-c",
              f'mount -t tmpfs -o size={size} tmpfs "$1" && shift && exec "$@"', "sh", str(root / DATA))
    return start_supervisor(root, "--apps", str(app_id), "--no-host-setup", engine=True, prefix=prefix)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; the bytes written."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
                break
        # The last few blocks: a write of one byte at a time until nothing more fits.
        with contextlib.suppress(OSError):
            while fh.write(b"\0"):
                written += 1
    return written


def test_a_full_disk_refuses_writes_keeps_apps_and_recovers(start_supervisor, device_root: Path, make_image,
                                                            docker_client, tmp_path: Path) -> None:
    app_id, owner = random.randint(10**6, 10**9), uuid.uuid4().hex
    image = f"pysupervisor-test/diskfull-{uuid.uuid4().hex[:10]}:latest"
    make_image(image, labels={OWNER_LABEL: owner})
    first = _target(app_id, {"main": _service("main", image, 101, environment={"RELEASE": "1"})})
    second = _target(app_id, {"main": _service("main", image, 101, environment={"RELEASE": "2"})})
    api = docker_client.api
    try:
        sup = on_tmpfs(start_supervisor, device_root, app_id)
        inside = Path(f"/proc/{sup.proc.pid}/root")
        assert sup.post("/v2/local/target-state", json=first).status_code == 200
        wait_for(lambda: SETTLED in sup.output(), "the first apply", sup)
        (running,) = api.containers(filters={"label": f"io.balena.app-id={app_id}"})
        stored = sup.get("/v2/local/target-state").json()

        filler = inside / str(device_root / DATA).lstrip("/") / "filler"
        assert fill(filler) > 0
        refused = sup.post("/v2/local/target-state", json=second)
        assert refused.status_code == 503, refused.text
        assert refused.json() == {"status": "failed", "message": "No space left on the device: the change "
                                  "was not stored; free some space and try again"}
        lines = [line for line in sup.output().splitlines() if "no space left on the data partition" in line]
        assert len(lines) == 1 and "Traceback" not in sup.output()
        # Nothing stored changed, reads still work, and the app was not touched.
        assert sup.get("/v2/local/target-state").json() == stored
        assert sup.get("/v2/state/status").status_code == 200
        (still,) = api.containers(filters={"label": f"io.balena.app-id={app_id}"})
        assert still["Id"] == running["Id"] and still["State"] == "running"
        # SQLite resolves /proc/<pid>/root to the host's /: check a copy of the file and its WAL.
        db = inside / str(device_root / DB).lstrip("/")
        copy = tmp_path / "copy.sqlite"
        for suffix in ("", "-wal"):
            if Path(f"{db}{suffix}").exists():
                shutil.copyfile(f"{db}{suffix}", f"{copy}{suffix}")
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            (target_set,) = conn.execute("SELECT value FROM config WHERE key = 'targetStateSet'").fetchone()
            assert target_set == "true"

        filler.unlink()  # space is back: the same request now works, and is applied
        accepted = sup.post("/v2/local/target-state", json=second)
        assert accepted.status_code == 200, accepted.text
        wait_for(lambda: sup.output().count(SETTLED) >= 2, "the apply after space came back", sup)
        (updated,) = api.containers(filters={"label": f"io.balena.app-id={app_id}"})
        assert "RELEASE=2" in api.inspect_container(updated["Id"])["Config"]["Env"]
        assert sup.get("/v1/healthy").status_code == 200
    finally:
        remove_app(docker_client, app_id, owner)

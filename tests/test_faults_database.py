"""A damaged database (issue #17, balena-supervisor#2196 where the reference crash-loops): garbage or a
truncated ``database.sqlite`` under a device running an app on the real engine. The supervisor starts,
says in one log line what it found, keeps the damaged file aside, starts a new database (new API keys),
and never stops the running app; the same target posted again adopts the running container."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import uuid
from pathlib import Path

import pytest

from supervisor.db import Database, DatabaseDamaged
from tests.cloud_helpers import env as cloud_env
from tests.fixtures.device import wait_for
from tests.test_apply_errors import _apply, _service, _target
from tests.test_cloud_e2e import cloud_fleet  # noqa: F401 - the fixture
from tests.test_reconcile import OWNER_LABEL, SETTLED, remove_app, start_local

DB = "mnt/data/resin-data/balena-supervisor/database.sqlite"


def global_key(root: Path) -> str:
    with contextlib.closing(sqlite3.connect(root / DB)) as conn:  # closed: the supervisor's close is the last
        return conn.execute("SELECT key FROM apiSecret WHERE appId = 0").fetchone()[0]


def damage(path: Path, how: str) -> bytes:
    """Damage the database file the way a power cut or a bad SD card does; its new bytes."""
    if how == "garbage":
        data = os.urandom(path.stat().st_size)
    elif how == "truncated":  # the header and part of the schema page survive
        data = path.read_bytes()[:5000]
    else:  # "empty": a file whose content never reached the card
        data = b""
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_damaged_database_refused_without_recover_and_set_aside_with_it(tmp_path: Path, how: str) -> None:
    path = tmp_path / "database.sqlite"
    db = Database(path)
    db.set_config({"name": "before"})
    db.close()
    data = damage(path, how)
    with pytest.raises(DatabaseDamaged):
        Database(path)
    assert path.read_bytes() == data  # refusing touched nothing
    db = Database(path, recover=True)
    assert db.recovered is not None
    problem, kept = db.recovered
    assert kept.read_bytes() == data and kept.name.startswith("database.sqlite.damaged-")
    assert db.get_config("name") is None and db.schema_version >= 1
    db.set_config({"name": "after"})
    db.close()
    again = Database(path)  # the new database is a good one
    assert again.get_config("name") == "after" and again.recovered is None


@pytest.mark.docker
@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_database_never_stops_the_running_app(start_supervisor, device_root: Path, make_image,
                                                        docker_client, how: str) -> None:
    app_id, owner = random.randint(10**6, 10**9), uuid.uuid4().hex
    image = f"pysupervisor-test/dbfault-{uuid.uuid4().hex[:10]}:latest"
    make_image(image, labels={OWNER_LABEL: owner})
    target = _target(app_id, {"main": _service("main", image, 101)})
    api = docker_client.api
    try:
        sup = start_local(start_supervisor, device_root, [app_id])
        _apply(sup, target)
        wait_for(lambda: SETTLED in sup.output(), "the first apply", sup)
        (before,) = api.containers(filters={"label": f"io.balena.app-id={app_id}"})
        old_key = global_key(device_root)
        assert sup.stop() == 0
        # A clean stop checkpoints the WAL into the file: what is damaged now is all there is.
        assert sorted(os.listdir((device_root / DB).parent)) == ["database.sqlite"]
        data = damage(device_root / DB, how)

        again = start_local(start_supervisor, device_root, [app_id])
        # The API answers and the engine side works (a read of the engine through the API).
        wait_for(lambda: again.get("/v2/state/status").status_code == 200, "the engine read", again)
        lines = [line for line in again.output().splitlines() if "was damaged" in line]
        assert len(lines) == 1, again.output()
        assert "database.sqlite.damaged-" in lines[0] and "API keys were regenerated" in lines[0]
        # The device uuid (no config.json here) comes back from the container's env: a new one would
        # change BALENA_DEVICE_UUID and recreate the container below.
        assert "name and uuid read back from the running containers" in lines[0]
        kept = [p for p in (device_root / DB).parent.iterdir() if ".damaged-" in p.name]
        assert len(kept) == 1 and kept[0].read_bytes() == data
        assert global_key(device_root) != old_key

        # The running app was not touched by the recovery...
        (after,) = api.containers(filters={"label": f"io.balena.app-id={app_id}"})
        assert after["Id"] == before["Id"] and after["State"] == "running"
        # ...and the same target posted again adopts it (no recreate, no second container).
        _apply(again, target)
        wait_for(lambda: again.output().count(SETTLED) >= 1, "the apply after recovery", again)
        (adopted,) = api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"})
        assert adopted["Id"] == before["Id"] and adopted["State"] == "running"
        assert api.inspect_container(adopted["Id"])["State"]["StartedAt"] == \
            api.inspect_container(before["Id"])["State"]["StartedAt"]
    finally:
        remove_app(docker_client, app_id, owner)


@pytest.mark.docker
def test_a_managed_device_gets_its_target_back_from_the_cloud(request, start_supervisor) -> None:
    """The target comes back from the (fake) balena API; the running release is adopted, not restarted."""
    from tests.cloud_helpers import config_json

    fl = request.getfixturevalue("cloud_fleet")  # tests/test_cloud_e2e.py
    release = fl.release()
    sup = fl.start(start_supervisor)
    wait_for(lambda: fl.runs(release["commit"], ("main", "db")), "the release running and reported", sup,
             timeout=120, context=fl.containers)
    before = fl.containers()
    old_key = global_key(fl.root)
    assert sup.stop() == 0
    data = damage(fl.root / DB, "garbage")

    again = start_supervisor(fl.root, "--apps", str(fl.app_id), "--no-host-setup", engine=True,
                             env=cloud_env())
    wait_for(lambda: "Finished applying target state" in again.output(), "the cloud's target applied", again,
             timeout=120)
    (line,) = [line for line in again.output().splitlines() if "was damaged" in line]
    assert "the target comes back from the cloud" in line
    kept = [p for p in (fl.root / DB).parent.iterdir() if ".damaged-" in p.name]
    assert len(kept) == 1 and kept[0].read_bytes() == data
    assert global_key(fl.root) != old_key
    assert config_json(fl.root)["uuid"] == fl.uuid  # config.json is untouched by the recovery
    wait_for(lambda: fl.runs(release["commit"], ("main", "db")), "the release reported again", again,
             timeout=120, context=fl.containers)
    assert fl.containers() == before  # the same containers: adopted, never stopped

"""A write-heavy loop over the supervisor's persistent writes, for tests/test_faults_power.py.

``python -m tests.faults_writer ROOT``: forever, for n = the stored n + 1, 2, ...: config.json through
:class:`supervisor.config.ConfigJson`, a database transaction (config table and a target-sized app
row), the state report cache and a host-config file through :func:`supervisor.atomic.write_atomic`,
and update lock files taken and released through :class:`supervisor.state.locks.LockRegistry`. Each
file's content is a pure function of n (:func:`payload`), so a reader can tell a whole version from a
torn one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from supervisor.atomic import write_atomic
from supervisor.config import ConfigJson
from supervisor.db import Database
from supervisor.state.locks import LockRegistry

APP_ID = 4242


def payload(n: int) -> str:
    """A few KB that differ in every byte position from one n to the next (a torn mix is visible)."""
    return f"{n:08d}" * 512


def paths(root: Path) -> dict[str, Path]:
    return {"config": root / "mnt/boot/config.json", "db": root / "data/database.sqlite",
            "cache": root / "tmp/balena-supervisor/state-report-cache",
            "hostconf": root / "mnt/boot/redsocks.conf"}


def main(root: Path) -> None:
    p = paths(root)
    db = Database(p["db"])
    config = ConfigJson(p["config"])
    locks = LockRegistry(str(root))
    locks.clean_leftovers()  # as the supervisor does at start: a kill may have left its lock files
    rows = db.query("SELECT value FROM config WHERE key = 'n'")
    n = int(rows[0]["value"]) if rows else 0
    print("writing", flush=True)  # the test kills from here on
    while True:
        n += 1
        config.set(uuid=f"{n:032x}", hostname=payload(n)[:60], note=payload(n))
        with db.transaction() as conn:
            conn.execute("INSERT INTO config (key, value) VALUES ('n', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(n),))
            conn.execute("INSERT INTO app (appId, uuid, source, services) VALUES (?, 'app', 'local', ?) "
                         "ON CONFLICT(uuid) DO UPDATE SET services = excluded.services",
                         (APP_ID, json.dumps({"n": n, "blob": payload(n)})))
        write_atomic(p["cache"], json.dumps({"n": n, "report": payload(n)}))
        write_atomic(p["hostconf"], payload(n))
        locks.take(APP_ID, ["main", "worker"])
        locks.release(APP_ID)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

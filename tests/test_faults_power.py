"""Killed in the middle of writing (issue #17): a process doing nothing but the supervisor's
persistent writes (tests/faults_writer.py: config.json, the database, the state report cache, a
host-config file, update lock files) is SIGKILLed at 50 random points. After each kill every file
parses and holds one whole version (old or new, never a mix), the database passes its integrity check,
and nothing goes back: no file holds an older version than it did after the previous kill. Update lock
files left by a kill are the next start's business (``LockRegistry.clean_leftovers``, covered by
tests/test_faults_kill.py).

A SIGKILL leaves the page cache to the kernel, so this proves the write *order* (temp file, rename:
``supervisor/atomic.py``; SQLite's WAL) rather than the fsyncs a real power cut needs; those are in
place (atomic.py fsyncs the file and the directory; SQLite runs with ``synchronous=FULL``).
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.faults_writer import APP_ID, paths, payload
from tests.fixtures.device import REPO

RUNS = 50


def check(root: Path) -> dict[str, int]:
    """Every file whole; the version (n) each holds."""
    p = paths(root)
    versions: dict[str, int] = {}
    with contextlib.closing(sqlite3.connect(p["db"])) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        row = conn.execute("SELECT value FROM config WHERE key = 'n'").fetchone()
        n = int(row[0]) if row else 0
        if n:
            (services,) = conn.execute("SELECT services FROM app WHERE appId = ?", (APP_ID,)).fetchone()
            assert json.loads(services) == {"n": n, "blob": payload(n)}  # one transaction, whole
    if p["config"].exists():
        config = json.loads(p["config"].read_text())
        m = int(config["uuid"], 16)
        assert config["note"] == payload(m) and config["hostname"] == payload(m)[:60]
        assert m in (n, n + 1), (m, n)  # written just before the database's transaction
        versions["config"] = m
    for name in ("cache", "hostconf"):
        if p[name].exists():
            text = p[name].read_text()
            value = json.loads(text)["n"] if name == "cache" else int(text[:8])
            assert text == (json.dumps({"n": value, "report": payload(value)}) if name == "cache"
                            else payload(value))
            # Written after the transaction; a kill may skip a version (the next run goes on from n).
            assert value <= n, (name, value, n)
            versions[name] = value
    versions["db"] = n
    torn = [f for f in root.rglob(".*.tmp")]
    # A kill between mkstemp and rename leaves a temp file next to the target: never read, and
    # harmless; the target itself is whole (checked above). Likewise a lock file's temp file (it is
    # linked to the lock's name whole, or not at all), removed by the next start's clean-up.
    assert all(f.parent in (p["config"].parent, p["cache"].parent) or "updates.lock." in f.name
               for f in torn), torn
    return versions


def test_writes_killed_at_random_points_leave_whole_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "mnt/boot").mkdir(parents=True)
    rng = random.Random(1717)
    previous: dict[str, int] = {}
    for _ in range(RUNS):
        proc = subprocess.Popen([sys.executable, "-m", "tests.faults_writer", str(root)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"writing\n", proc.stderr
        time.sleep(rng.random() * 0.5)  # a random point of the writes
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        versions = check(root)
        lost = {name: (previous[name], v) for name, v in versions.items() if v < previous.get(name, 0)}
        assert not lost, f"a file went back to an older version: {lost}"
        previous = versions
    assert previous.get("db", 0) > RUNS, "the writer never got going: nothing was tested"

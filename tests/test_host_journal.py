"""Persistent logging on a host that is not balenaOS (supervisor/host/journal.py): a journald drop-in,
checked with systemd's own config reader (``systemd-analyze cat-config --root``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor.host.journal import DROP_IN, apply_persistent_logging
from supervisor.paths import Paths
from tests.fixtures.device import write_config_json

ANALYZE = shutil.which("systemd-analyze")


def _journald_conf(root: Path) -> str:
    """journald's configuration as systemd merges it for ``root``."""
    assert ANALYZE, "systemd-analyze is missing: run .ci/setup"
    result = subprocess.run([ANALYZE, "cat-config", "systemd/journald.conf", f"--root={root}"],
                            capture_output=True, text=True, timeout=30)
    return result.stdout


def test_drop_in_written_and_removed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    paths = Paths.create(str(root), None)
    assert apply_persistent_logging(paths, True) == "written"
    assert apply_persistent_logging(paths, True) is None  # unchanged: not rewritten
    merged = _journald_conf(root)
    assert f"# {root}{DROP_IN}" in merged and "Storage=persistent" in merged
    assert apply_persistent_logging(paths, False) == "removed"
    assert "Storage=persistent" not in _journald_conf(root)
    assert apply_persistent_logging(paths, False) is None


def test_balena_os_is_left_to_its_boot_mechanism(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    paths = Paths.create(str(root), None)
    paths.os_release.parent.mkdir(parents=True, exist_ok=True)
    paths.os_release.write_text('ID="balena-os"\nMETA_BALENA_VERSION="5.3.0"\n')
    assert apply_persistent_logging(paths, True) is None
    assert not (root / DROP_IN.lstrip("/")).exists()


@pytest.mark.parametrize("value", [True, False])
def test_supervisor_applies_the_config_json_value(tmp_path: Path, value: bool) -> None:
    """SUPERVISOR_PERSISTENT_LOGGING lands in config.json ``persistentLogging`` (the reference's
    step, tests/test_device_config.py); the host side follows that value."""
    from supervisor.runtime import Settings, Supervisor

    root = tmp_path / "root"
    write_config_json(root, {"uuid": "e" * 32, "persistentLogging": value})
    sup = Supervisor(Settings(root=str(root), port=0, host="127.0.0.1", led="none"))
    try:
        sup._apply_journal_storage()
        assert (root / DROP_IN.lstrip("/")).exists() is value
        assert json.loads((root / "mnt/boot/config.json").read_text())["persistentLogging"] is value
    finally:
        sup.config.db.close()

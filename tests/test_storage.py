"""Storage: atomic writes, the SQLite schema, config.json handling, API keys."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from supervisor.apikeys import ApiKeys, KeyNotFoundError, key_from_request
from supervisor.atomic import write_atomic
from supervisor.config import Config, ConfigError, ConfigJson, check_int, check_truthy
from supervisor.db import MIGRATIONS, Database


def test_write_atomic_replaces_and_skips_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    assert write_atomic(target, "one") is True
    inode = target.stat().st_ino
    assert write_atomic(target, "one") is False
    assert target.stat().st_ino == inode  # not rewritten
    assert write_atomic(target, b"two") is True
    assert target.read_text() == "two"
    assert target.stat().st_ino != inode  # a new file renamed over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp files left


def test_write_atomic_rename_failure_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()  # renaming a file over a directory fails
    with pytest.raises(OSError):
        write_atomic(target, "x")
    assert [p.name for p in tmp_path.iterdir()] == ["occupied"]


def test_schema_is_versioned_and_migrated_once(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    assert db.schema_version == len(MIGRATIONS)
    db.set_config({"name": "dev"})
    db.close()
    again = Database(tmp_path / "db.sqlite")
    assert again.get_config("name") == "dev"
    tables = {row["name"] for row in again.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"config", "deviceConfig", "app", "image", "apiSecret", "currentCommit",
            "engineSnapshot", "logsChannelSecret"} <= tables
    assert again.query("PRAGMA journal_mode")[0][0] == "wal"


def test_database_from_the_future_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer than this supervisor"):
        Database(path)


def test_set_config_skips_unchanged_values(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    db.set_config({"a": "1"})
    before = db._conn.total_changes
    db.set_config({"a": "1"})
    assert db._conn.total_changes == before
    db.set_config({"a": None})
    assert db.get_config("a") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(5, 5), ("42", 42), ("42.0", 42), ("-3", -3), ("4.5", None), ("abc", None), (True, None),
     (None, None), (7.0, 7)],
)
def test_check_int(value, expected) -> None:
    assert check_int(value) == expected


def test_check_truthy() -> None:
    assert all(check_truthy(v) for v in (True, 1, "1", "true", "ON", "True"))
    assert not any(check_truthy(v) for v in (False, 0, "0", "off", "yes", None))


def test_config_json_writes_compact_and_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"uuid": "u", "vpnPort": 443}, indent=2))
    cfg = ConfigJson(path)
    assert cfg.set(uuid="u") is False  # unchanged: the file keeps its formatting
    assert "\n" in path.read_text()
    assert cfg.set(hostname="dev") is True
    assert path.read_text() == '{"uuid":"u","vpnPort":443,"hostname":"dev"}'
    with pytest.raises(ConfigError, match="'listenPort' must be an integer"):
        cfg.set(listenPort="x")
    assert json.loads(path.read_text())["hostname"] == "dev"


def test_uuid_without_config_json_goes_to_the_database(tmp_path: Path) -> None:
    config = Config(ConfigJson(tmp_path / "missing.json"), Database(tmp_path / "db.sqlite"))
    config.initialise()
    assert len(config.uuid) == 32
    assert not (tmp_path / "missing.json").exists()
    assert config.unmanaged and config.local_mode


def test_scoped_keys(tmp_path: Path) -> None:
    keys = ApiKeys(Database(tmp_path / "db.sqlite"))
    global_key = keys.global_key()
    assert keys.global_key() == global_key
    scoped = keys.scoped_key(7, "main")
    assert keys.scoped_key(7, "main") == scoped and scoped != global_key
    info = keys.lookup(scoped)
    assert info is not None and not info.is_global
    assert info.allows_app(7) and not info.allows_app(8)
    assert keys.lookup(global_key).allows_app(8)
    new = keys.regenerate(scoped)
    assert keys.lookup(scoped) is None
    assert keys.lookup(new).service_name == "main"
    with pytest.raises(KeyNotFoundError):
        keys.regenerate("f" * 32)


def test_key_from_request() -> None:
    assert key_from_request({"apikey": "q"}, {"Authorization": "Bearer h"}) == "q"
    assert key_from_request({}, {"Authorization": "APIKEY abc_123"}) == "abc_123"
    assert key_from_request({}, {"Authorization": "Bearer a b"}) is None
    assert key_from_request({}, {"Authorization": "Bearer é"}) is None  # \w is ASCII-only


def test_a_target_received_from_a_source_is_recorded_with_it(tmp_path: Path) -> None:
    """The flag a managed device waits for (issue #10 §5): set in the target's own transaction."""
    from supervisor.state.store import TargetStore
    from supervisor.state.target import from_v2_local

    store = TargetStore(Database(tmp_path / "db.sqlite"))
    cloud = "https://api.example"
    assert not store.received(cloud) and not store.received("local")
    store.set_target(from_v2_local({"local": {"name": "d", "config": {}, "apps": {}}}, current_name="d"),
                     "local")
    assert store.received("local") and not store.received(cloud)  # a local target is no cloud's
    store.set_target(from_v2_local({"local": {"name": "d", "config": {}, "apps": {}}}, current_name="d"),
                     cloud)
    assert store.received(cloud)  # an empty target counts: it is what the cloud asked for
    assert json.loads(store.db.get_config("targetReceivedFrom") or "[]") == [cloud, "local"]
    assert store.db.get_config("cloudTargetReceived") is None  # the one flag, not two


def test_the_old_cloud_target_received_flag_is_read_once_into_the_list(tmp_path: Path) -> None:
    """A database from before ``targetReceivedFrom`` held the cloud's target in ``cloudTargetReceived``
    (with no app rows when the cloud's target was empty): read for the cloud source, then deleted."""
    from supervisor.state.store import TargetStore

    db = Database(tmp_path / "db.sqlite")
    db.set_config({"cloudTargetReceived": "true"})
    store = TargetStore(db)
    cloud = "https://api.example"
    assert not store.received("local") and db.get_config("cloudTargetReceived") == "true"
    assert store.received(cloud)
    assert db.get_config("cloudTargetReceived") is None
    assert json.loads(db.get_config("targetReceivedFrom") or "[]") == [cloud]
    assert store.received(cloud)  # from the list now
    db.set_config({"cloudTargetReceived": "false"})
    assert not store.received("https://other.example") and db.get_config("cloudTargetReceived") is None

"""Update locks (spec §4) on a real file system: lock files, ownership, leftovers, ``with_lock`` and
the per-app process lock shared by the state engine and API actions. Also the planner's strategy
rules that only concern locks and images. No Docker here: test_update_strategies.py and
test_service_actions.py run the same rules against the engine."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from supervisor.state.executor import LockRegistry as ReExported
from supervisor.state.executor import UpdatesLockedError as ReExportedError
from supervisor.state.locks import (
    LOCK_MARKER,
    SUPERVISOR_LOCK_UID,
    LockRegistry,
    UpdatesLockedError,
    is_supervisor_lock,
)
from supervisor.state.planner import PlanContext, plan, strategy_of
from supervisor.state.steps import Fetch, Kill, RemoveImage, TakeLock
from tests.test_planner import LOCKED, app, current_app, image, of, old, state, svc, targets

APP = 1234
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def registry(tmp_path: Path) -> LockRegistry:
    return LockRegistry(str(tmp_path), engine_max_wait_ms=100)


def lock_dir(reg: LockRegistry, service: str, app_id: int = APP) -> Path:
    return reg.base / str(app_id) / service


def user_lock(reg: LockRegistry, service: str, name: str = "updates.lock", app_id: int = APP) -> Path:
    """What ``lockfile /tmp/balena/updates.lock`` inside the service's container leaves on the host."""
    directory = lock_dir(reg, service, app_id)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.touch()
    return path


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------ the engine's take
def test_names_stay_importable_from_the_executor() -> None:
    assert ReExported is LockRegistry and ReExportedError is UpdatesLockedError


def test_take_creates_both_files_as_the_supervisor_and_release_removes_them(registry) -> None:
    registry.take(APP, ["main", "worker"])
    for service in ("main", "worker"):
        directory = lock_dir(registry, service)
        assert names(directory) == ["resin-updates.lock", "updates.lock"]
        assert directory.stat().st_mode & 0o7777 == 0o1777  # nobody may create files there
        for path in directory.iterdir():
            assert is_supervisor_lock(path)
            assert path.read_bytes() == LOCK_MARKER
            if AS_ROOT:
                assert path.stat().st_uid == SUPERVISOR_LOCK_UID
    assert registry.held() == {APP}
    assert registry.leftovers() == frozenset()  # held, so not a leftover
    registry.release(APP)
    assert names(lock_dir(registry, "main")) == [] and names(lock_dir(registry, "worker")) == []
    assert registry.held() == frozenset()


def test_a_user_lock_blocks_the_take_all_or_nothing(registry) -> None:
    user_lock(registry, "worker", "resin-updates.lock")
    with pytest.raises(UpdatesLockedError, match=r"^Lockfile exists for \{ appId: 1234, service: worker \}$"):
        registry.take(APP, ["main", "worker"])
    assert names(lock_dir(registry, "main")) == []  # what the failed take created is gone again
    assert names(lock_dir(registry, "worker")) == ["resin-updates.lock"]  # the user's stays
    assert registry.held() == frozenset()
    # The failed take let go of the app's process lock: once the user lets go, an action gets it at once.
    (lock_dir(registry, "worker") / "resin-updates.lock").unlink()
    with registry.with_lock([APP], max_wait_ms=1):
        assert names(lock_dir(registry, "worker")) == ["resin-updates.lock", "updates.lock"]


def test_a_directory_named_like_a_lock_is_a_user_lock(registry) -> None:
    (lock_dir(registry, "main") / "updates.lock").mkdir(parents=True)
    with pytest.raises(UpdatesLockedError):
        registry.take(APP, ["main"])
    registry.take(APP, ["main"], force=True)
    assert (lock_dir(registry, "main") / "updates.lock").is_file()


def test_force_deletes_the_users_lock_and_takes_it(registry, caplog) -> None:
    caplog.set_level(logging.WARNING)
    user = user_lock(registry, "main")
    registry.take(APP, ["main"], force=True)
    assert is_supervisor_lock(user)  # the same path, now the supervisor's
    registry.release(APP)
    assert names(lock_dir(registry, "main")) == []  # the user's lock is gone for good (§4.3)
    assert "Overriding the update lock of service main of app 1234" in caplog.text


def test_takes_across_rounds_add_services_and_keep_what_is_held(registry) -> None:
    registry.take(APP, ["main"])
    registry.take(APP, ["main", "worker"])  # a later round asks for more: no "Lockfile exists"
    assert names(lock_dir(registry, "worker")) == ["resin-updates.lock", "updates.lock"]
    user_lock(registry, "extra")
    with pytest.raises(UpdatesLockedError):
        registry.take(APP, ["extra"])
    assert registry.held() == {APP}  # the earlier locks of the apply are still held
    assert names(lock_dir(registry, "main")) == ["resin-updates.lock", "updates.lock"]
    registry.release(APP)
    assert names(lock_dir(registry, "main")) == []


# ------------------------------------------------------------------------------ leftovers
def _leftover(reg: LockRegistry, service: str, app_id: int = APP) -> Path:
    """A lock file a dead supervisor (this one, or the reference) left behind."""
    directory = lock_dir(reg, service, app_id)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "updates.lock"
    path.write_bytes(LOCK_MARKER)
    if AS_ROOT:
        os.chown(path, SUPERVISOR_LOCK_UID, SUPERVISOR_LOCK_UID)
    return path


@pytest.mark.skipif(not AS_ROOT, reason="chown to 65534 needs root; the marker test covers non-root")
def test_a_reference_supervisors_lock_is_recognised_by_its_owner(registry) -> None:
    directory = lock_dir(registry, "main")
    directory.mkdir(parents=True)
    path = directory / "resin-updates.lock"
    path.touch()  # `lockfile` writes nothing: only the owner says whose it is
    os.chown(path, SUPERVISOR_LOCK_UID, SUPERVISOR_LOCK_UID)
    assert is_supervisor_lock(path)
    assert registry.leftovers() == {APP}


def test_leftovers_are_found_and_cleaned_at_start_user_locks_are_not(registry) -> None:
    leftover = _leftover(registry, "main")
    nested = lock_dir(registry, "worker") / "deeper"
    nested.mkdir(parents=True)
    (nested / "resin-updates.lock").write_bytes(LOCK_MARKER)
    if AS_ROOT:
        os.chown(nested / "resin-updates.lock", SUPERVISOR_LOCK_UID, SUPERVISOR_LOCK_UID)
    user = user_lock(registry, "worker")
    other_app = _leftover(registry, "main", app_id=99)
    assert registry.leftovers() == {APP, 99}

    assert registry.clean_leftovers(apps=frozenset({str(APP)})) == 2  # scoped to the managed apps
    assert not leftover.exists() and not (nested / "resin-updates.lock").exists()
    assert user.exists()  # never the user's
    assert other_app.exists()  # not this supervisor's app
    assert registry.leftovers() == {99}
    assert registry.clean_leftovers() == 1
    assert registry.leftovers() == frozenset()


def test_symlinked_directories_are_not_followed(registry, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "updates.lock").write_bytes(LOCK_MARKER)
    if AS_ROOT:
        os.chown(elsewhere / "updates.lock", SUPERVISOR_LOCK_UID, SUPERVISOR_LOCK_UID)
    registry.base.joinpath(str(APP)).mkdir(parents=True)
    registry.base.joinpath(str(APP), "linked").symlink_to(elsewhere)
    assert registry.leftovers() == frozenset()
    assert registry.clean_leftovers() == 0
    assert (elsewhere / "updates.lock").exists()


def test_release_cleans_leftovers_of_the_app(registry) -> None:
    leftover = _leftover(registry, "old-service")
    registry.take(APP, ["main"])
    registry.release(APP)
    assert not leftover.exists()


def test_without_root_the_marker_says_whose_a_lock_is(registry, monkeypatch) -> None:
    """A non-root supervisor cannot chown to 65534: its files carry the marker and its own uid; a
    user's file of the same uid without the marker is never taken for one, and release keeps it.
    (As root, the test plays uid 4242: the process's view of its uid is all the module reads.)"""
    real_chown = os.chown
    uid = 4242 if AS_ROOT else os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    if AS_ROOT:
        monkeypatch.setattr(os, "chown", lambda *_a: pytest.fail("chown without root"))
    registry.take(APP, ["main"])
    ours = lock_dir(registry, "main") / "updates.lock"
    user = user_lock(registry, "main", "user.updates.lock")
    user.write_bytes(b"pid 42\n")
    if AS_ROOT:  # what files created by uid 4242 look like
        real_chown(ours, uid, uid)
        real_chown(user, uid, uid)
    assert ours.read_bytes() == LOCK_MARKER and ours.stat().st_uid == uid != SUPERVISOR_LOCK_UID
    assert is_supervisor_lock(ours)
    assert not is_supervisor_lock(user)
    registry.release(APP)
    assert names(lock_dir(registry, "main")) == ["user.updates.lock"]


# ------------------------------------------------------------------------------ with_lock (API)
def test_with_lock_locks_every_service_directory_and_releases_after(registry) -> None:
    for service in ("main", "worker"):
        lock_dir(registry, service).mkdir(parents=True)
    registry.base.joinpath(str(APP), "not-a-service").symlink_to(lock_dir(registry, "main"))
    with registry.with_lock([APP]):
        assert names(lock_dir(registry, "main")) == ["resin-updates.lock", "updates.lock"]
        assert names(lock_dir(registry, "worker")) == ["resin-updates.lock", "updates.lock"]
        assert registry.held() == frozenset()  # the engine's view: it holds nothing
        assert registry.leftovers() == frozenset()  # and these are not leftovers of anyone
    assert names(lock_dir(registry, "main")) == [] and names(lock_dir(registry, "worker")) == []


def test_with_lock_skips_apps_without_a_directory(registry) -> None:
    ran = []
    with registry.with_lock([APP, 77]):
        ran.append(True)
    assert ran and not registry.base.exists()


def test_with_lock_refuses_before_the_block_when_a_service_is_locked(registry) -> None:
    lock_dir(registry, "main").mkdir(parents=True)
    user_lock(registry, "worker")
    ran = []
    locked = pytest.raises(UpdatesLockedError, match=r"^Lockfile exists for \{ appId: 1234, service: worker")
    with locked, registry.with_lock([APP]):
        ran.append(True)
    assert ran == []
    assert names(lock_dir(registry, "main")) == []
    assert names(lock_dir(registry, "worker")) == ["updates.lock"]


def test_with_lock_force_removes_the_users_lock(registry) -> None:
    user_lock(registry, "worker", "resin-updates.lock")
    with registry.with_lock([APP], force=True):
        assert is_supervisor_lock(lock_dir(registry, "worker") / "resin-updates.lock")
    assert names(lock_dir(registry, "worker")) == []


def test_with_lock_releases_when_the_block_fails(registry) -> None:
    lock_dir(registry, "main").mkdir(parents=True)
    with pytest.raises(RuntimeError), registry.with_lock([APP]):
        raise RuntimeError("the action failed")
    assert names(lock_dir(registry, "main")) == []
    registry.take(APP, ["main"])  # nothing still holds the app


def test_an_action_waits_for_the_engine_then_gives_up(registry) -> None:
    registry.take(APP, ["main"])
    started = time.monotonic()
    busy = pytest.raises(
        UpdatesLockedError, match="^Locks for app 1234 are being held by another supervisor operation$"
    )
    with busy, registry.with_lock([APP], max_wait_ms=300):
        pass
    assert 0.25 < time.monotonic() - started < 3
    assert names(lock_dir(registry, "main")) == ["resin-updates.lock", "updates.lock"]  # untouched


def test_an_action_gets_the_app_as_soon_as_the_engine_releases_it(registry) -> None:
    registry.take(APP, ["main"])
    threading.Timer(0.2, registry.release, args=(APP,)).start()
    with registry.with_lock([APP], max_wait_ms=5000):
        assert names(lock_dir(registry, "main")) == ["resin-updates.lock", "updates.lock"]


def test_the_engine_cannot_take_an_app_an_action_holds(registry) -> None:
    lock_dir(registry, "main").mkdir(parents=True)
    inside, done = threading.Event(), threading.Event()

    def action() -> None:
        with registry.with_lock([APP]):
            inside.set()
            done.wait(5)

    worker = threading.Thread(target=action)
    worker.start()
    try:
        assert inside.wait(5)
        with pytest.raises(UpdatesLockedError, match="being held by another supervisor operation"):
            registry.take(APP, ["main"])
        registry.release(APP)  # a releaseLock meanwhile must not delete the action's files
        assert names(lock_dir(registry, "main")) == ["resin-updates.lock", "updates.lock"]
    finally:
        done.set()
        worker.join(5)
    registry.take(APP, ["main"])
    assert registry.held() == {APP}


# ------------------------------------------------------------------------------ planner rules
def _strategy(name: str) -> dict[str, str]:
    return {"io.balena.update.strategy": name}


def test_an_unknown_strategy_is_the_default_with_one_warning(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="supervisor.state.planner")
    current = old(labels=_strategy("handover-please"))
    target = svc(labels=_strategy("handover-please"))
    for _ in range(5):  # five planning rounds
        steps = plan(state(current_app(current)), targets(app(target)))
        assert of(Fetch, steps)  # download-then-kill: fetch, no kill
        assert strategy_of(target) == "download-then-kill"
    warnings = [r for r in caplog.records if "Unknown update strategy" in r.getMessage()]
    assert len(warnings) == 1
    assert "'handover-please'" in warnings[0].getMessage()


def test_delete_then_download_removes_the_old_image_first_even_in_local_mode() -> None:
    """Once the old container is gone, its image goes before the new one is fetched (§3.6); local
    mode keeps images otherwise, but this label asks for the space (docs/API.md)."""
    stale = old(labels=_strategy("delete-then-download"))
    target = svc(labels=_strategy("delete-then-download"))
    current = state(current_app(), images=[image(stale)], **LOCKED)  # the old container was killed
    for ctx in (PlanContext(), PlanContext(local_mode=True)):
        steps = plan(current, targets(app(target)), ctx)
        assert [type(s) for s in steps] == [RemoveImage], ctx
        assert steps[0].image.name == image(stale).name
    # kill-then-download keeps it in local mode (a delta source elsewhere), and fetches.
    stale = old(labels=_strategy("kill-then-download"))
    target = svc(labels=_strategy("kill-then-download"))
    current = state(current_app(), images=[image(stale)], **LOCKED)
    steps = plan(current, targets(app(target)), PlanContext(local_mode=True))
    assert of(RemoveImage, steps) == [] and of(Fetch, steps)


def test_downloads_are_not_blocked_by_locks_and_kills_wait_for_them() -> None:
    """download-then-kill asks for the lock only once every image is there; fetching needs none."""
    main, worker = old("main"), old("worker", service_id=11)
    new_main, new_worker = svc("main"), svc("worker", service_id=11)
    current = state(current_app(main, worker), images=[image(main), image(worker), image(new_main)])
    steps = plan(current, targets(app(new_main, new_worker)))
    assert of(TakeLock, steps) == [] and of(Kill, steps) == []
    assert [s.service_name for s in of(Fetch, steps)] == ["worker"]


def test_unused_images_are_removed_while_the_app_waits_for_its_lock() -> None:
    """The image stage needs no lock: a user holding the lock cannot make the disk fill up with the
    images of releases that never got installed."""
    main = old("main")
    skipped = svc("main", commit="skippedcommit", release_id=5)  # a release the lock held back
    target = svc("main")
    current = state(current_app(main), images=[image(main), image(skipped), image(target)])
    steps = plan(current, targets(app(target)))
    assert [type(s) for s in steps] == [RemoveImage]
    assert steps[0].image.name == image(skipped).name
    # Once it is gone, the app asks for its lock (and keeps asking while the user holds it).
    current = state(current_app(main), images=[image(main), image(target)])
    assert of(TakeLock, plan(current, targets(app(target))))

"""The reconcile loop's timing and bookkeeping with a fake engine: triggers, settling, backoff,
cancel, engine reconnects and the health rule. No Docker here; test_reconcile.py runs it for real."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from supervisor.state.current import Image
from supervisor.state.executor import StepError, StepResult, UpdatesLockedError
from supervisor.state.locks import LockRegistry
from supervisor.state.planner import PlanContext
from supervisor.state.reconcile import Engine, Reconciler, pretty_ms
from supervisor.state.steps import Fetch, Kill, Noop, Reboot, Start, Step, TakeLock


def fetch(name: str = "img") -> Fetch:
    return Fetch(Image(name, 1, "u", 1, "main", 1, 1, "c"), "main")


@dataclass
class FakeImages:
    busy: frozenset[str] = frozenset()

    def downloading(self) -> frozenset[str]:
        return self.busy


@dataclass
class FakeDevice:
    """Plans come from ``plans`` (one per round, then empty); ``fail`` decides a step's fate."""

    plans: list[list[Step]] = field(default_factory=list)
    fail: Callable[[Step], BaseException | None] = lambda _step: None
    batches: list[tuple[float, list[Step]]] = field(default_factory=list)
    forces: list[bool] = field(default_factory=list)
    connect_failures: int = 0
    connects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    abort: threading.Event = field(default_factory=threading.Event)  # as Executor.abort
    locks: LockRegistry | None = None  # takeLock steps take these when set

    def connect(self) -> Engine:
        self.connects += 1
        if self.connects <= self.connect_failures:
            raise ConnectionError("no engine here")
        return Engine(client=None, images=FakeImages(), executor=self, reader=self)  # type: ignore[arg-type]

    def read(self, apps: Any = None, uuids: Any = None) -> object:
        return object()

    def plan(self, _current: object, _target: object, ctx: PlanContext) -> list[Step]:
        self.forces.append(ctx.force)
        with self.lock:
            return self.plans.pop(0) if self.plans else []

    def execute_batch(self, steps: list[Step]) -> list[StepResult]:
        self.batches.append((time.monotonic(), list(steps)))
        results = []
        for step in steps:
            if isinstance(step, TakeLock) and self.locks is not None:
                self.locks.take(step.app_id, step.services, force=step.force)
            cause = self.fail(step)
            if cause is None:
                results.append(StepResult(step))
            else:
                error = StepError(step, str(cause))
                error.__cause__ = cause
                results.append(StepResult(step, error))
        return results


def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.fixture
def make_loop() -> Iterator[Callable[..., tuple[Reconciler, FakeDevice]]]:
    loops: list[Reconciler] = []

    def make(device: FakeDevice | None = None, **kw: Any) -> tuple[Reconciler, FakeDevice]:
        device = device or FakeDevice()
        options: dict[str, Any] = {
            "poll_interval": lambda: 60.0, "noop_delay": 0.05,
            "backoff_base": 0.02, "connect_retry_max": 0.05, **kw,
        }
        loop = Reconciler(
            device.connect, lambda _engine: {}, lambda force: PlanContext(force=force),
            planner=device.plan, **options,
        )
        loops.append(loop)
        return loop, device

    yield make
    for loop in loops:
        assert loop.stop(timeout=30.0)


def test_applies_batches_until_the_plan_is_empty(make_loop, caplog) -> None:
    caplog.set_level("INFO")
    lock = TakeLock(1, ("main",))
    plans = [[fetch()], [Noop()], [lock], [lock], [fetch()]]
    loop, device = make_loop(FakeDevice(plans=list(plans)), backoff_base=1.25, noop_delay=2.5)
    loop.start()
    time.sleep(0.1)
    assert device.batches == []  # nothing happens without a trigger
    loop.trigger()
    assert loop.status().applying
    wait_until(lambda: not loop.status().applying)
    assert [steps for _, steps in device.batches] == plans
    t1, t2, t3, t4, t5 = (t for t, _ in device.batches)
    # Delays of 2.5 s against "at once" (under 2 s): a loaded machine's scheduling (a thread
    # descheduled for a second) cannot blur them.
    assert t2 - t1 < 2.0  # a batch that did something: the next plan at once, no pause
    assert t3 - t2 >= 2.5  # only noops: wait for what they wait on
    assert t4 - t3 < 2.0
    assert t5 - t4 >= 2.5  # the same batch twice in a row: a backoff (2 x 1.25 s), as for a failure
    status = loop.status()
    assert not (status.update_pending or status.update_downloaded or status.update_failed)
    # The status flips before the line is logged: wait for the line.
    wait_until(lambda: "Finished applying target state" in caplog.text)
    assert "Applying target state" in caplog.text


def test_update_flags_while_applying(make_loop) -> None:
    gate = threading.Event()
    device = FakeDevice(plans=[[fetch()], [TakeLock(1, ("main",))]])
    device.fail = lambda step: None if gate.wait(5) else RuntimeError("gate")
    loop, _ = make_loop(device)
    loop.start()
    loop.trigger()
    wait_until(lambda: loop.status().update_pending)
    assert not loop.status().update_downloaded
    gate.set()
    wait_until(lambda: len(device.batches) == 2)
    wait_until(lambda: not loop.status().applying)
    assert not loop.status().update_pending


def test_failures_back_off_exponentially_up_to_the_poll_interval(make_loop, caplog) -> None:
    caplog.set_level("INFO")
    device = FakeDevice(plans=[[fetch()] for _ in range(50)])
    device.fail = lambda _s: RuntimeError("registry says no")
    loop, _ = make_loop(device, poll_interval=lambda: 0.2)
    loop.start()
    loop.trigger()
    wait_until(lambda: len(device.batches) >= 6)
    times = [t for t, _ in device.batches[:6]]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # 2^n x 20 ms: 40, 80, 160 ms, then capped at the poll interval (200 ms)
    for gap, expected in zip(gaps, [0.04, 0.08, 0.16, 0.2, 0.2], strict=True):
        # The upper bound catches a delay of seconds (a wrong base or cap); its 1.5 s of slack, a
        # loop thread descheduled for a second on a loaded machine.
        assert expected * 0.9 <= gap <= expected + 1.5, gaps
    status = loop.status()
    assert status.applying and status.update_failed and status.failed_updates >= 5
    assert "registry says no" in (status.last_error or "")
    assert "Failed to apply state transition steps." in status.last_error
    assert 'Steps:["fetch"]' in status.last_error
    assert "Scheduling another update attempt in 40ms due to failure" in caplog.text
    assert "Scheduling another update attempt in 80ms due to failure" in caplog.text


def test_locked_failures_say_so(make_loop, caplog) -> None:
    caplog.set_level("INFO")
    device = FakeDevice(
        plans=[[TakeLock(1, ("main",))]] * 3,
        fail=lambda _s: UpdatesLockedError("Lockfile exists for { appId: 1, service: main }"),
    )
    loop, _ = make_loop(device, backoff_base=0.5)
    loop.start()
    loop.trigger()
    wait_until(lambda: "Updates are locked" in caplog.text)
    assert "Updates are locked, retrying in 1s. Reason: " in caplog.text
    assert "Lockfile exists" in caplog.text


def test_a_cancel_trigger_ends_the_backoff_and_resets_it(make_loop) -> None:
    failing = {"on": True}
    device = FakeDevice(plans=[[fetch(f"img{i}")] for i in range(3)])
    device.fail = lambda _s: RuntimeError("broken target") if failing["on"] else None
    loop, _ = make_loop(device, backoff_base=30.0)  # the first backoff would be a minute
    loop.start()
    loop.trigger()
    wait_until(lambda: loop.status().failed_updates == 1)
    failing["on"] = False
    started = time.monotonic()
    loop.trigger(cancel=True, force=True)
    wait_until(lambda: not loop.status().applying)
    assert time.monotonic() - started < 10  # the backoff was a minute
    assert len(device.batches) == 3
    assert loop.status().failed_updates == 0 and not loop.status().update_failed
    assert device.forces[-1] is True  # force reaches the plan context of the new run


def test_a_plain_trigger_waits_for_the_running_apply_then_runs_again(make_loop) -> None:
    gate = threading.Event()
    device = FakeDevice(plans=[[fetch()]])
    device.fail = lambda _s: None if gate.wait(30) else RuntimeError("gate")
    loop, _ = make_loop(device)
    loop.start()
    loop.trigger()
    wait_until(lambda: device.batches)
    loop.trigger()  # queued: the running batch is never interrupted
    gate.set()
    wait_until(lambda: len(device.forces) >= 3)  # the first run's two plans, then the queued run's
    wait_until(lambda: not loop.status().applying)
    assert device.forces == [False, False, False] and len(device.batches) == 1


def test_a_forced_trigger_reaches_the_next_round_of_the_running_apply(make_loop) -> None:
    gate = threading.Event()
    device = FakeDevice(plans=[[fetch()], [fetch("b")]])
    device.fail = lambda _s: None if gate.wait(30) else RuntimeError("gate")
    loop, _ = make_loop(device)
    loop.start()
    loop.trigger()
    wait_until(lambda: device.batches)
    loop.trigger(force=True)  # the running batch is never interrupted, but the next round is forced
    gate.set()
    wait_until(lambda: len(device.forces) >= 3)
    wait_until(lambda: not loop.status().applying)
    assert device.forces[:3] == [False, True, True]


def test_an_unreachable_engine_is_retried_and_reported(make_loop, caplog) -> None:
    caplog.set_level("INFO")
    loop, device = make_loop(FakeDevice(connect_failures=3, plans=[[fetch()]]))
    loop.trigger()
    loop.start()
    wait_until(lambda: "Docker engine reachable again" in caplog.text)  # logged once connected
    assert device.connects == 4
    assert caplog.text.count("Docker engine unavailable: no engine here") == 1  # once, not per retry
    wait_until(lambda: not loop.status().applying)
    assert loop.status().engine_error is None and len(device.batches) == 1


def test_engine_errors_while_reading_count_as_failures(make_loop) -> None:
    device = FakeDevice()
    calls = {"n": 0}

    def read(apps: Any = None, uuids: Any = None) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("engine went away")
        return object()

    device.read = read  # type: ignore[method-assign]
    loop, _ = make_loop(device)
    loop.start()
    loop.trigger()
    wait_until(lambda: calls["n"] >= 2 and not loop.status().applying)
    assert loop.status().failed_updates == 0  # reset by the success


def test_health_rule_when_managed(make_loop) -> None:
    device = FakeDevice(plans=[[fetch()] for _ in range(100)], fail=lambda _s: RuntimeError("no"))
    loop, _ = make_loop(device, poll_interval=lambda: 0.05, managed=lambda: True)
    loop.start()
    assert loop.health() == (True, "ok")  # idle: nothing to settle
    loop.trigger()
    wait_until(lambda: not loop.health()[0])
    ok, reason = loop.health()
    assert not ok and "has not settled" in reason


def test_unmanaged_devices_stay_healthy_while_failing(make_loop) -> None:
    device = FakeDevice(plans=[[fetch()] for _ in range(100)], fail=lambda _s: RuntimeError("no"))
    loop, _ = make_loop(device, poll_interval=lambda: 0.05)
    loop.start()
    loop.trigger()
    wait_until(lambda: loop.status().failed_updates >= 3)
    assert loop.health() == (True, "ok")


def test_stop_interrupts_any_wait(make_loop) -> None:
    device = FakeDevice(plans=[[fetch()]], fail=lambda _s: RuntimeError("no"))
    loop, _ = make_loop(device, backoff_base=60.0)
    loop.start()
    loop.trigger()
    wait_until(lambda: loop.status().failed_updates == 1)
    started = time.monotonic()
    assert loop.stop(timeout=30.0)
    assert time.monotonic() - started < 10  # the backoff was a minute


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.2, "200ms"), (1.0, "1s"), (4.5, "4s"), (120, "2m"), (7200, "2h")]
)
def test_pretty_ms(seconds: float, text: str) -> None:
    assert pretty_ms(seconds) == text


def test_cli_scopes_the_engine(monkeypatch) -> None:
    from supervisor.cli import build_parser

    monkeypatch.delenv("SUPERVISOR_APPS", raising=False)
    monkeypatch.delenv("SUPERVISOR_HOST_SETUP", raising=False)
    args = build_parser().parse_args([])
    assert (args.apps, args.host_setup) == (None, True)
    args = build_parser().parse_args(["--apps", "12,34", "--no-host-setup"])
    assert (args.apps, args.host_setup) == ((12, 34), False)
    monkeypatch.setenv("SUPERVISOR_APPS", "7")
    monkeypatch.setenv("SUPERVISOR_HOST_SETUP", "false")
    args = build_parser().parse_args([])
    assert (args.apps, args.host_setup) == ((7,), False)
    for bad in ("x", "0", ","):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--apps", bad])


def test_a_long_step_is_not_a_stuck_thread_and_stop_aborts_a_download(make_loop) -> None:
    device = FakeDevice(plans=[[fetch()]])
    device.fail = lambda _s: RuntimeError("the download was aborted") if device.abort.wait(30) else None
    loop, _ = make_loop(device)
    # The loop beats every 0.1 s while the batch runs: 1.5 s without a beat is a stuck thread, not
    # a loop thread descheduled for a second on a loaded machine.
    loop.stuck_after = 1.5
    loop.start()
    loop.trigger()
    wait_until(lambda: device.batches)
    time.sleep(3.0)  # well past stuck_after while the "pull" runs
    assert loop.health() == (True, "ok")
    started = time.monotonic()
    assert loop.stop(timeout=10.0)
    assert time.monotonic() - started < 5  # the download was aborted, not waited for


def test_a_bug_while_planning_is_logged_with_its_traceback_and_retried(make_loop, caplog) -> None:
    device = FakeDevice()
    calls = {"n": 0}

    def plan(*_args: Any) -> list[Step]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("oops")
        return []

    device.plan = plan  # type: ignore[method-assign]
    loop, _ = make_loop(device)
    loop.start()
    loop.trigger()
    wait_until(lambda: calls["n"] >= 2 and not loop.status().applying)
    assert "Traceback" in caplog.text and "KeyError: 'oops'" in caplog.text


def _supervisor(root: Any) -> Any:
    from supervisor.runtime import Settings, Supervisor
    from tests.fixtures.device import free_port

    return Supervisor(Settings(root=str(root), port=free_port(), host="127.0.0.1", led="none",
                               host_setup=False))  # never the machine's firewall


def test_extra_firmware_is_recorded_in_config_json_only_when_there_is_one(device_root) -> None:
    from tests.fixtures.device import write_config_json

    sup = _supervisor(device_root)
    try:
        assert sup._extra_firmware_volume() is None
        sup._set_extra_firmware_volume("extra-firmware")
        assert sup._extra_firmware_volume() == "extra-firmware"
        assert not (device_root / "mnt/boot/config.json").exists()  # never invented
    finally:
        sup.stop()
    write_config_json(device_root, {"uuid": "a" * 32, "os": {"sshKeys": ["k"]}})
    sup = _supervisor(device_root)
    try:
        sup._set_extra_firmware_volume("extra-firmware")
        import json

        saved = json.loads((device_root / "mnt/boot/config.json").read_text())
        assert saved["os"] == {"sshKeys": ["k"], "kernel": {"extraFirmwareVol": "extra-firmware"}}
        assert sup._extra_firmware_volume() == "extra-firmware"
    finally:
        sup.stop()


def test_plan_context_from_config(device_root) -> None:
    sup = _supervisor(device_root)
    try:
        ctx = sup._plan_context(False)
        assert (ctx.force, ctx.local_mode, ctx.images_kept, ctx.volumes_kept) == (False, True, True, True)
        assert sup._plan_context(True).force
        sup.config.set_db(lockOverride=True)
        assert sup._plan_context(False).force
        assert sup.lock_root == str(device_root.resolve())
    finally:
        sup.stop()


def test_a_reboot_step_ends_the_apply_instead_of_asking_again(make_loop, caplog) -> None:
    caplog.set_level("INFO")
    device = FakeDevice(plans=[[Reboot()] for _ in range(10)])
    loop, _ = make_loop(device)
    loop.start()
    loop.trigger()
    wait_until(lambda: not loop.status().applying)
    time.sleep(0.2)  # a window in which nothing more may happen
    assert [steps for _, steps in device.batches] == [[Reboot()]]
    assert "Reboot requested to apply the target state" in caplog.text


def test_a_refused_reboot_is_retried_with_backoff(make_loop) -> None:
    device = FakeDevice(plans=[[Reboot()] for _ in range(3)])
    device.fail = lambda _s: UpdatesLockedError("Updates are locked") if len(device.batches) < 3 else None
    loop, _ = make_loop(device, backoff_base=0.5)  # waits long against a loaded scheduler's jitter
    loop.start()
    loop.trigger()
    wait_until(lambda: len(device.batches) == 3 and not loop.status().applying)
    (t1, _), (t2, _), (t3, _) = device.batches
    assert t2 - t1 >= 0.9 and t3 - t2 >= 1.8  # 2 x backoff_base, then doubled


# ------------------------------------------------------------------ issue #10: brakes, locks, holds, stops
def test_a_batch_that_changes_nothing_backs_off_like_a_failed_one(make_loop) -> None:
    """A step that "succeeds" without effect (the engine answered 404) plans the same batch again:
    it must not spin (it did every 200 ms, forever)."""
    device = FakeDevice(plans=[[fetch()] for _ in range(50)])
    loop, _ = make_loop(device, poll_interval=lambda: 0.2)
    loop.start()
    loop.trigger()
    wait_until(lambda: len(device.batches) >= 5)
    times = [t for t, _ in device.batches[:5]]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    for gap, expected in zip(gaps, [0, 0.04, 0.08, 0.16], strict=True):  # 2^n x 20 ms after a repeat
        assert gap >= expected * 0.9, gaps
    assert "The same steps again" in (loop.status().last_error or "")


def test_no_lock_is_held_while_the_apply_backs_off(make_loop, tmp_path) -> None:
    registry = LockRegistry(str(tmp_path))
    device = FakeDevice(plans=[[TakeLock(1, ("main",))]] + [[fetch()] for _ in range(5)], locks=registry)
    device.fail = lambda step: RuntimeError("start failed") if isinstance(step, Fetch) else None
    loop, _ = make_loop(device, backoff_base=30.0, locks=registry)  # a minute of backoff
    loop.start()
    loop.trigger()
    wait_until(lambda: loop.status().failed_updates == 1)
    wait_until(lambda: registry.held() == frozenset())  # let go before the minute of backoff
    started = time.monotonic()
    with registry.with_lock([1], max_wait_ms=10000, services={1: ["main"]}):
        pass  # an API action gets the app at once
    assert time.monotonic() - started < 5  # not the 10 s a held lock costs


def test_a_forced_trigger_ends_the_backoff(make_loop) -> None:
    device = FakeDevice(plans=[[fetch()] for _ in range(3)], fail=lambda _s: RuntimeError("locked"))
    loop, _ = make_loop(device, backoff_base=30.0)
    loop.start()
    loop.trigger()
    wait_until(lambda: loop.status().failed_updates == 1)
    device.fail = lambda _s: None
    started = time.monotonic()
    loop.trigger(force=True)
    wait_until(lambda: len(device.batches) >= 2)
    assert time.monotonic() - started < 5 and device.forces[1] is True


def test_a_held_apply_changes_nothing_and_says_so_once(make_loop, caplog) -> None:
    caplog.set_level("INFO")
    reason = {"now": "no target received from the cloud yet"}
    device = FakeDevice(plans=[[fetch()]])
    loop, _ = make_loop(device, hold_reason=lambda: reason["now"])
    loop.start()
    for _ in range(3):
        loop.trigger()
        wait_until(lambda: not loop.status().applying)
    assert device.forces == [] and device.batches == []  # not even planned
    assert loop.status().held_back == reason["now"]
    assert caplog.text.count("Not applying anything: no target received") == 1
    reason["now"] = None
    loop.trigger()
    wait_until(lambda: device.batches and not loop.status().applying)
    assert loop.status().held_back is None


@dataclass(frozen=True)
class Svc:
    app_id: int
    service_name: str
    status: str | None = "Running"


def test_a_stop_during_a_kill_starts_the_service_again_before_the_thread_ends(make_loop, caplog) -> None:
    caplog.set_level("INFO")
    in_kill, go = threading.Event(), threading.Event()
    main = Svc(1, "main")
    device = FakeDevice(plans=[[Kill(main)], [Start(main)], [Kill(Svc(1, "other"))]])

    def fail(step: Step) -> None:
        if isinstance(step, Kill):
            in_kill.set()
            go.wait(30)

    device.fail = fail  # type: ignore[assignment]
    loop, _ = make_loop(device)
    loop.start()
    loop.trigger()
    assert in_kill.wait(30)
    stopper = threading.Thread(target=loop.stop, kwargs={"timeout": 30.0})
    stopper.start()
    wait_until(lambda: loop.stopping)
    go.set()
    stopper.join(30)
    assert not stopper.is_alive() and not loop._thread.is_alive()  # type: ignore[union-attr]
    assert [steps for _, steps in device.batches] == [[Kill(main)], [Start(main)]]  # no new kill
    assert "Stopping: starting main again first" in caplog.text


def test_a_stop_finishes_only_what_brings_killed_services_back(make_loop) -> None:
    main, other = Svc(1, "main"), Svc(1, "other")
    gate = threading.Event()
    other_fetch = Fetch(Image("img2", 1, "u", 2, "other", 2, 1, "c"), "other")
    device = FakeDevice(plans=[[Kill(main)], [Kill(other), Start(main), other_fetch]])
    device.fail = lambda step: None if not isinstance(step, Kill) or gate.wait(30) else None
    loop, _ = make_loop(device)
    loop.start()
    loop.trigger()
    wait_until(lambda: device.batches)
    stopper = threading.Thread(target=loop.stop, kwargs={"timeout": 30.0})
    stopper.start()
    wait_until(lambda: loop.stopping)
    gate.set()
    stopper.join(30)
    assert [steps for _, steps in device.batches] == [[Kill(main)], [Start(main)]]


def test_an_app_that_progresses_keeps_its_lock_while_another_apps_step_fails(make_loop, tmp_path) -> None:
    """Letting go of every lock at each failure would undo app 2's takeLock every round, so its
    kill (the next round) would never come while app 1's image fails: a livelock."""
    registry = LockRegistry(str(tmp_path))
    device = FakeDevice(plans=[[TakeLock(2, ("solo",)), fetch()] for _ in range(3)], locks=registry)
    device.fail = lambda step: RuntimeError("no such image") if isinstance(step, Fetch) else None
    loop, _ = make_loop(device, backoff_base=30.0, locks=registry)
    loop.start()
    loop.trigger()
    wait_until(lambda: loop.status().failed_updates == 1)
    assert registry.held() == frozenset({2})  # app 1 (the fetch's) holds nothing, app 2 keeps its lock


def test_a_held_loop_starts_no_batch_until_released(make_loop) -> None:
    """The device is about to reboot (supervisor/host/power.py): triggers wait; a failed reboot
    releases the loop and the waiting apply runs."""
    device = FakeDevice(plans=[[fetch()]])
    loop, _ = make_loop(device)
    loop.start()
    loop.require_engine()  # the loop connects at its first need (issue #17)
    assert device.connects == 1
    loop.hold()
    loop.trigger()
    time.sleep(0.5)  # long enough for a batch to have started, were the loop free
    assert device.batches == [] and device.forces == []
    loop.release()
    wait_until(lambda: len(device.batches) == 1 and not loop.status().applying)

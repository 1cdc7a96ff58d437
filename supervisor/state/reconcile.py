"""The reconcile loop (spec §3.1): read the engine, plan against the stored target, run the batch,
and repeat until the planner has nothing left.

One thread, ``state-engine``, does all applying, so two applies never race. Everything else only
*asks* for an apply (:meth:`Reconciler.trigger`) and reads :meth:`Reconciler.status`.

Timing, as the reference's ``applyTarget`` with one change: 1 s when a batch was only ``noop``
(waiting for something), ``min(2^n x 500 ms, poll interval)`` after the n-th failed batch in a row,
but a batch that did something is followed *at once* by the next plan. The reference always waits
200 ms, which leaves a six-batch update idle for over a second; a batch identical to the one
before it backs off as a failed one does (see "No loop without a brake" below). A failed step
never stops the rest of its batch (``execute_batch``), and the next round plans again from what the
engine now holds.

Decisions where the reference gives no exact answer:

* **Cancel means "at the next step boundary".** A trigger with ``cancel`` (a new target) ends any
  wait or backoff at once and resets the failure count, but never interrupts a step: a half-done
  step (a pull, a kill) would leave the engine in a state the planner then has to untangle.
* **The engine unreachable** (no socket, engine down): the thread keeps retrying, 1 s doubling to
  30 s, logging each new error once, and the API answers 503 for what needs the engine. The
  subsystem stays healthy, because restarting the supervisor does not bring the engine back; but
  in managed mode the reference's rule holds: an apply not settled (fetch time excluded) after
  twice the poll interval makes ``/v1/healthy`` fail, so a device that cannot apply its target for
  that long gets restarted by its healthcheck. Unmanaged devices are always healthy (§10.6).
* A new *local* target triggers with cancel too (the reference queues it): a user fixing a broken
  target should not wait out the backoff the broken one built up. A forced trigger
  (``POST /v1/update {"force": true}``) ends the backoff the same way, and its ``force`` reaches the
  very next round's ``takeLock`` (which deletes the users' lock files).

**No loop without a brake** (issue #10 §3): a round that does not change the device backs off
exactly like a failed one: a failed step, and a batch equal to the one before it (a step the engine
answers 404, or that succeeds without effect, plans the same batch again). Only ``noop`` batches
(waiting for a download or a hand-over) keep their fixed 1 s. So a stuck or idle supervisor costs
the engine a few calls per second at most, and fewer as the backoff grows.

**No lock held while waiting** (§4): before each backoff wait the loop releases every update lock
it holds (files and the per-app process lock), so API actions are never stuck behind a failing
apply; the next round takes them again.

**A stop leaves services running** (§6): a stop never abandons a batch (a half-done kill would
leave a service removed until the next start); downloads in it are aborted, so it ends soon. A
service this run killed and has not started again (a kill and its start are separate rounds) is
started before the thread ends: the loop plans again and runs only the steps that bring such
services back (fetch, create, start), never a new kill, for at most ``stop_grace`` seconds.

**Holding back** (§5): while ``hold_reason()`` names a reason (a managed device that has not received a target
from its cloud yet), an apply changes nothing at all; the reason is logged once and reported
(:attr:`ApplyStatus.held_back`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from supervisor.state.errors import ServiceErrors
from supervisor.state.planner import PlanContext, TargetApps, plan
from supervisor.state.steps import (
    CreateNetwork,
    CreateVolume,
    Fetch,
    Kill,
    Noop,
    Reboot,
    RemoveVolume,
    SaveImage,
    Start,
    Step,
    describe,
)
from supervisor.subsystem import Subsystem

if TYPE_CHECKING:
    import docker

    from supervisor.metrics import Metrics
    from supervisor.state.engine import EngineReader
    from supervisor.state.executor import Executor, StepResult
    from supervisor.state.images import ImageManager
    from supervisor.state.locks import LockRegistry

log = logging.getLogger(__name__)

__all__ = ["ApplyStatus", "Engine", "EngineUnavailableError", "Reconciler", "pretty_ms"]

NOOP_DELAY_S: Final = 1.0
BACKOFF_BASE_S: Final = 0.5
CONNECT_RETRY_MAX_S: Final = 30.0
#: How long a stop may spend bringing back services the apply killed: with the batch it finishes,
#: within the unit's TimeoutStopSec=60 (yocto/.../balena-supervisor.service).
STOP_GRACE_S: Final = 40.0
#: How long an API request that needs the engine waits for the first connection attempt (issue #11:
#: the API answers /ping before the state engine's thread has connected).
FIRST_CONNECT_WAIT_S: Final = 5.0


class EngineUnavailableError(Exception):
    """The Docker engine has not been reached (yet); the message says why."""


@dataclass(frozen=True)
class Engine:
    """The engine-facing parts of the state engine; they share one client and lock registry."""

    client: docker.DockerClient
    images: ImageManager
    executor: Executor
    reader: EngineReader


@dataclass(frozen=True)
class ApplyStatus:
    """What the API reports about applying (the reference's volatile ``update_*`` fields)."""

    applying: bool = False
    update_pending: bool = False
    update_downloaded: bool = False
    update_failed: bool = False
    failed_updates: int = 0
    last_error: str | None = None
    engine_error: str | None = None
    #: Why applying is held back (nothing is changed meanwhile), e.g. no target from the cloud yet.
    held_back: str | None = None


def pretty_ms(seconds: float) -> str:
    """``prettyMs(ms, {compact: true})``: the largest whole unit, e.g. ``500ms``, ``4s``, ``2m``."""
    ms = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


class Reconciler(Subsystem):
    """Applies the stored target whenever asked, until the device matches it.

    ``connect`` builds the :class:`Engine` (called in the thread, retried until it works);
    ``target`` builds the planner's target apps (every round: image ids change as images arrive);
    ``context(force)`` the round's :class:`PlanContext`; ``apps`` limits which apps (uuids or app
    ids as strings) are read from the engine and applied, None for all; ``poll_interval`` (seconds)
    caps the backoff; ``managed`` selects the health rule; ``planner`` is :func:`plan` but for tests.
    ``locks`` is the registry whose holds are let go before each backoff wait; ``hold_reason()`` a reason
    to change nothing (None: apply); ``stop_grace`` bounds what a stop spends on killed services.
    """

    name = "state-engine"

    def __init__(
        self,
        connect: Callable[[], Engine],
        target: Callable[[Engine], TargetApps],
        context: Callable[[bool], PlanContext],
        *,
        poll_interval: Callable[[], float],
        managed: Callable[[], bool] = lambda: False,
        apps: Collection[str] | None = None,
        noop_delay: float = NOOP_DELAY_S,
        backoff_base: float = BACKOFF_BASE_S,
        connect_retry_max: float = CONNECT_RETRY_MAX_S,
        planner: Callable[[Any, TargetApps, PlanContext], list[Step]] = plan,
        metrics: Metrics | None = None,
        locks: LockRegistry | None = None,
        hold_reason: Callable[[], str | None] = lambda: None,
        stop_grace: float = STOP_GRACE_S,
        system_log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self._connect_engine = connect
        self._build_target = target
        self._context = context
        self.poll_interval = poll_interval
        self.managed = managed
        self.apps = apps
        self.noop_delay = noop_delay
        self.backoff_base = backoff_base
        self.connect_retry_max = connect_retry_max
        self._planner = planner
        self.metrics = metrics
        self.locks = locks
        self._hold_reason = hold_reason
        self.stop_grace = stop_grace
        #: Receives the system log messages of the loop (``Updates are locked, retrying in ...``, §8.5).
        self.system_log = system_log
        #: The last failed step of each service, for the API (state/errors.py, issue #11).
        self.errors = ServiceErrors()

        self._cond = threading.Condition()
        self._engine: Engine | None = None
        self._first_attempt = threading.Event()  # set once the first connection attempt has ended
        self._engine_wanted = False  # an API request asked for the engine (guarded by _cond)
        # Guarded by _cond: the trigger queue (one slot) and what the API reads.
        self._pending = False
        self._cancel = False
        self._force = False
        self._status = ApplyStatus()
        self._applying_since: float | None = None
        self._fetch_seconds = 0.0
        # What the last batch did, by its steps' descriptions (compose objects compare by identity,
        # and a new read makes new ones). Only the loop's thread uses these three.
        self._last_batch: list[str] = []
        self._reboot_requested = False
        #: (app id, service name) of services this run killed while running and has not started again.
        self._open: set[tuple[int, str]] = set()
        # Apps whose update locks the backoff after this round lets go of (empty: no backoff).
        self._stuck_apps: set[int | None] = set()
        self._target_apps: frozenset[int] = frozenset()  # app ids of the last planned target
        self._held = False  # guarded by _cond: no new batch while the device goes down

    # ------------------------------------------------------------------ requests (any thread)
    def trigger(self, *, force: bool = False, cancel: bool = False) -> None:
        """Ask for an apply. ``cancel`` (a new target) ends waits and backoff at the next step
        boundary; ``force`` overrides update locks from the next round on, and ends them too."""
        with self._cond:
            self._pending = True
            self._force = self._force or force
            if cancel or force:
                self._cancel = True
            if self._applying_since is None:
                self._applying_since = time.monotonic()
                self._fetch_seconds = 0.0
            self._status = _replace(self._status, applying=True)
            self._cond.notify_all()

    def hold(self) -> None:
        """Start no new batch until :meth:`release` (the device is about to reboot, §1.4); a batch
        that is running finishes, and triggers that come meanwhile wait."""
        with self._cond:
            self._held = True
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    @property
    def engine(self) -> Engine | None:
        """The connected engine, or None while it is unreachable."""
        return self._engine

    def require_engine(self) -> Engine:
        """The connected engine; :class:`EngineUnavailableError` while there is none. The loop
        connects at the first need (this, or a trigger); until that first attempt has ended (at most
        ``FIRST_CONNECT_WAIT_S``) this waits for it: an engine that is up must not read as "not
        connected" in the moment after the API starts."""
        engine = self._engine
        if engine is None and not self._engine_wanted:
            with self._cond:
                self._engine_wanted = True
                self._cond.notify_all()
        if engine is None and self._first_attempt.wait(FIRST_CONNECT_WAIT_S):
            engine = self._engine
        if engine is None:
            raise EngineUnavailableError(self.status().engine_error or "Docker engine not connected yet")
        return engine

    def status(self) -> ApplyStatus:
        with self._cond:
            return self._status

    def on_stop(self) -> None:
        engine = self._engine
        abort = getattr(getattr(engine, "executor", None), "abort", None)
        if abort is not None and not self._open:
            abort.set()  # downloads end now; the batch they are in then ends with them
        with self._cond:
            self._cond.notify_all()

    def health(self) -> tuple[bool, str]:
        ok, reason = super().health()
        if not ok or not self.managed():
            return ok, reason
        with self._cond:
            since, fetching = self._applying_since, self._fetch_seconds
        engine = self._engine
        if since is None or (engine is not None and engine.images.downloading()):
            return True, "ok"
        unsettled = time.monotonic() - since - fetching
        limit = 2 * self.poll_interval()
        if unsettled > limit:
            return False, f"{self.name} has not settled the target for {unsettled:.0f}s (limit {limit:.0f}s)"
        return True, "ok"

    # ------------------------------------------------------------------ the thread
    def run(self) -> None:
        connect_delay = 1.0
        while not self.stopping:
            if self._engine is None:
                # Lazily: the Docker SDK (with requests and urllib3) is ~7 MB of a small device's RAM, and
                # a device with nothing to apply that nobody asks about never needs it (issue #17).
                if self.wait_on(self._cond, lambda: self._pending or self._engine_wanted):
                    return
                if self._try_connect():
                    connect_delay = 1.0
                else:
                    if self.wait_on(self._cond, None, connect_delay):
                        return
                    connect_delay = min(connect_delay * 2, self.connect_retry_max)
                    continue
            if self.wait_on(self._cond, lambda: self._pending and not self._held):
                return
            engine = self._engine
            assert engine is not None
            self._apply(engine)

    def _try_connect(self) -> bool:
        try:
            engine = self._connect_engine()
        except Exception as err:  # any failure means "no engine yet"
            message = f"Docker engine unavailable: {err}"
            if self.status().engine_error != message:
                log.error("%s (will keep retrying)", message)
            self._update(engine_error=message)
            self._first_attempt.set()
            return False
        self._engine = engine
        self._first_attempt.set()
        if self.status().engine_error is not None:
            log.info("Docker engine reachable again")
        self._update(engine_error=None)
        return True

    def _apply(self, engine: Engine) -> None:
        """One triggered apply: batches until the plan is empty (or a stop)."""
        with self._cond:
            self._pending, self._cancel = False, False
            force, self._force = self._force, False
        if self._held_back():
            return
        log.info("Applying target state")
        self._last_batch, self._reboot_requested = [], False
        while not self.stopping:
            with self._cond:
                if self._held:  # the apply resumes (from a fresh read) once released
                    self._pending = True
                    return
                if self._cancel:  # a new target or a force: a fresh read, no backoff left
                    self._pending, self._cancel = False, False
                    self._status = _replace(self._status, failed_updates=0)
                    self._last_batch = []
                force, self._force = force or self._force, False
            self._stuck_apps = set()
            if self._held_back():  # e.g. a config step just switched the target's source
                return
            try:
                round_started = time.monotonic()
                steps = self._plan(engine, force)
                if not steps:
                    self._open.clear()  # nothing left to start: a killed service left the target
                    self._round_done(round_started)
                    self._settled()
                    return  # a trigger that came in meanwhile makes run() apply again at once
                if self.stopping:
                    break  # no new batch once asked to stop
                delay = self._run_batch(engine, steps)
                self._round_done(round_started)
                if self._reboot_requested:
                    # The device goes down now; planning again would only ask for it again.
                    log.info("Reboot requested to apply the target state")
                    self._settled()
                    return
            except Exception as err:  # the engine or the stored target could not be read
                # An engine outage is expected and says all in one line; anything else is a bug.
                log.log(logging.DEBUG if _is_engine_error(err) else logging.ERROR, "Apply round failed",
                        exc_info=True)
                delay = self._failed(f"Could not apply the target: {err}", locked=False, apps={None})
            if self._stuck_apps:
                self._let_go(self._stuck_apps)
            if self.wait_on(self._cond, lambda: self._cancel, delay):
                break
        self._finish(engine, force)

    def _held_back(self) -> bool:
        """Whether applying is held back now (logged once per reason, reported in the status)."""
        reason = self._hold_reason()
        with self._cond:
            before = self._status.held_back
            self._status = _replace(self._status, held_back=reason)
        if reason is None:
            if before is not None:
                log.info("No longer holding back: applying the target state")
            return False
        if reason != before:
            log.warning("Not applying anything: %s", reason)
        self._settled(quiet=True)
        return True

    def _round_done(self, started: float) -> None:
        if self.metrics is not None:
            self.metrics.round_done(time.monotonic() - started)

    def _plan(self, engine: Engine, force: bool) -> list[Step]:
        target = {
            uuid: app for uuid, app in self._build_target(engine).items() if self.manages(app.app_id, uuid)
        }
        self._target_apps = frozenset(app.app_id for app in target.values())
        current = engine.reader.read(apps=self.apps, uuids={app.app_id: uuid for uuid, app in target.items()})
        return self._planner(current, target, self._context(force))

    def manages(self, app_id: int, app_uuid: str | None = None) -> bool:
        """Whether an app is in this loop's scope (``apps``)."""
        if self.apps is None or str(app_id) in self.apps:
            return True
        return app_uuid is not None and app_uuid in self.apps

    def _run_batch(self, engine: Engine, steps: Sequence[Step]) -> float:
        """Run one batch; the delay before the next round."""
        self._update(update_pending=True)
        log.debug("Executing steps: %s", ", ".join(describe(s) for s in steps))
        for step in steps:
            if isinstance(step, RemoveVolume):  # data goes: always say why
                volume = step.current
                why = ("the target no longer has the app" if volume.app_id not in self._target_apps
                       else "the app's target release no longer has it, or changed its config")
                log.warning("Removing volume %s of app %s: %s", volume.name, volume.app_id, why)
        started = time.monotonic()
        results = self._execute(engine, steps)
        failures = [r for r in results if not r.ok]
        failed = (self._failed(_failure_message(failures), locked=all(_locked(r) for r in failures),
                               apps={_app_of(r.step) for r in failures}) if failures else None)
        # After the status: a client that sees a service's error also sees the failed update.
        self.errors.note(results)
        if self.metrics is not None:
            for result in results:
                self.metrics.inc("steps", 1, result.step.action, "ok" if result.ok else "failed")
        self._track(results)
        if any(isinstance(s, Fetch) for s in steps):
            with self._cond:
                self._fetch_seconds += time.monotonic() - started
        if any(r.ok and isinstance(r.step, Fetch) for r in results):
            self._update(update_downloaded=True)
        self._reboot_requested = any(r.ok and isinstance(r.step, Reboot) for r in results)
        if failed is not None:
            self._last_batch = []  # its retry doing something is no repeat of a batch without effect
            return failed
        if all(isinstance(s, Noop) for s in steps):
            return self.noop_delay
        batch = [describe(s) for s in steps]
        repeated, self._last_batch = batch == self._last_batch, batch
        if repeated:  # it changed nothing the planner can see: a brake, as for a failure
            return self._failed(
                "The same steps again: the last batch did not change the device. Steps:["
                + ",".join(f'"{describe(s)}"' for s in steps) + "]",
                locked=False, apps={_app_of(s) for s in steps},
            )
        return 0.0

    def _execute(self, engine: Engine, steps: Sequence[Step]) -> list[StepResult]:
        """Run the batch in a helper thread and beat while it runs: a pull may take many
        minutes, and a thread that is only waiting for it is not stuck (the apply-duration rule
        in :meth:`health` is what catches a step that never ends). A stop waits for the batch
        (downloads in it are aborted by :meth:`on_stop`): a kill is never left half done."""
        outcome: list[list[StepResult]] = []
        failure: list[BaseException] = []

        def batch() -> None:
            try:
                outcome.append(engine.executor.execute_batch(steps))
            except BaseException as err:  # noqa: BLE001 - re-raised in the loop's thread
                failure.append(err)

        worker = threading.Thread(target=batch, name=f"{self.name}-batch", daemon=True)
        worker.start()
        # Join first: most batches take milliseconds, and the loop goes on the moment they end.
        while worker.join(0.1) is None and worker.is_alive():
            self.beat()
        if failure:
            raise failure[0]
        return outcome[0]

    def _track(self, results: Sequence[StepResult]) -> None:
        """Which services this run killed while they ran, and has not started again."""
        for result in results:
            step = result.step
            if not result.ok:
                continue
            if isinstance(step, Kill) and step.current.status == "Running":
                self._open.add((step.current.app_id, step.current.service_name))
            elif isinstance(step, Start):
                self._open.discard((step.target.app_id, step.target.service_name))

    def _finish(self, engine: Engine, force: bool) -> None:
        """Asked to stop: start again what this run killed, running only steps that serve that
        (never a kill), for at most ``stop_grace`` seconds."""
        if not self._open:
            return
        names = ", ".join(sorted(name for _, name in self._open))
        log.info("Stopping: starting %s again first (killed by the update in progress)", names)
        abort = getattr(engine.executor, "abort", None)
        if abort is not None:
            abort.clear()  # a fetch may be what a killed service needs (kill-then-download)
        deadline = time.monotonic() + self.stop_grace
        while self._open and time.monotonic() < deadline:
            try:
                steps = [s for s in self._plan(engine, force) if _brings_back(s, self._open)]
            except Exception:
                log.exception("Could not plan the services' start while stopping")
                break
            if not steps:
                break
            if all(isinstance(s, Noop) for s in steps):
                time.sleep(min(self.noop_delay, max(0.0, deadline - time.monotonic())))
                continue
            log.debug("Executing steps while stopping: %s", ", ".join(describe(s) for s in steps))
            self._track(self._execute(engine, steps))
        if self._open:
            log.warning("Stopped with %s not running again", ", ".join(sorted(n for _, n in self._open)))

    def _let_go(self, apps: set[int | None]) -> None:
        """Before a backoff wait, release the update locks of the apps whose steps failed or
        changed nothing (``None`` in ``apps``: every app) (§4): API actions on those apps must
        not wait behind an apply that keeps failing. Apps that progressed keep theirs: their
        next step (a kill after a ``takeLock``) comes in the next round, which must find them."""
        if self.locks is None:
            return
        for app_id in sorted(self.locks.held()):
            if None in apps or app_id in apps:
                self.locks.release(app_id)

    def _failed(self, message: str, *, locked: bool, apps: set[int | None]) -> float:
        """Count a failed round and log it; the backoff before the next."""
        self._stuck_apps = set(apps)
        with self._cond:
            count = self._status.failed_updates + 1
            self._status = _replace(
                self._status, failed_updates=count, update_failed=True, last_error=message
            )
        delay = min(2**count * self.backoff_base, self.poll_interval())
        if locked:
            text = f"Updates are locked, retrying in {pretty_ms(delay)}. Reason: {message}"
            if self.system_log is not None:
                self.system_log(text)
            else:
                log.info("%s", text)
        else:
            log.error(
                "Scheduling another update attempt in %dms due to failure: %s", round(delay * 1000), message
            )
        return delay

    def _settled(self, *, quiet: bool = False) -> None:
        """The plan came back empty (or applying is held). A trigger since the plan's read may mean
        a newer target: then this is not "applied" yet, and the next run decides."""
        with self._cond:
            if self._pending:
                return
            self._status = _replace(
                self._status,
                applying=False,
                update_pending=False,
                update_downloaded=False,
                update_failed=False,
                failed_updates=0,
                last_error=None,
            )
            self._applying_since = None
        self.errors.clear()
        if not quiet:
            log.info("Finished applying target state")

    # ------------------------------------------------------------------ helpers
    def _update(self, **changes: Any) -> None:
        with self._cond:
            self._status = _replace(self._status, **changes)


def _replace(status: ApplyStatus, **changes: Any) -> ApplyStatus:
    return replace(status, **changes)


def _is_engine_error(err: BaseException) -> bool:
    """The engine (or the connection to it) failed, as opposed to a bug here."""
    module = type(err).__module__
    return isinstance(err, OSError) or module.startswith(("docker.", "requests.", "urllib3."))


def _brings_back(step: Step, services: set[tuple[int, str]]) -> bool:
    """A step that helps start one of ``services`` again: its fetch, its start, its app's network
    or volume creation, and waits."""
    if isinstance(step, Noop):
        return True
    if isinstance(step, Start):
        return (step.target.app_id, step.target.service_name) in services
    if isinstance(step, Fetch):
        return (step.image.app_id, step.service_name) in services
    if isinstance(step, SaveImage):
        return (step.image.app_id, step.image.service_name) in services
    if isinstance(step, CreateNetwork | CreateVolume):
        return any(app_id == step.target.app_id for app_id, _ in services)
    return False


def _app_of(step: Step) -> int | None:
    """The app a step works on (None: the device as a whole, e.g. ``cleanup`` or ``reboot``)."""
    app_id = getattr(step, "app_id", None)
    if app_id is None:
        for attr in ("image", "current", "target"):
            app_id = getattr(getattr(step, attr, None), "app_id", None)
            if app_id is not None:
                break
    return app_id if isinstance(app_id, int) else None


def _locked(result: StepResult) -> bool:
    return result.error is not None and result.error.locked


def _failure_message(failures: Sequence[StepResult]) -> str:
    """The reference's ``Failed to apply state transition steps. <msg> Steps:[...]``."""
    reasons = "; ".join(str(r.error) for r in failures)
    actions = ",".join(f'"{r.step.action}"' for r in failures)
    return f"Failed to apply state transition steps. {reasons} Steps:[{actions}]"

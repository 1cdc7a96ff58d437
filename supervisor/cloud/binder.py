"""The cloud binder (spec §10): the managed device's link to the balena API.

Thread ``cloud``, in the reference's start order (§10.2): provision -> pin (preloaded
``pinDevice``) -> initial config report -> start reporting (``cloud-report``), tags
(``cloud-tags``) and the connectivity check (``cloud-connectivity``) -> ready for updates -> poll
the target. All of it shares one :class:`ApiClient` and the one :class:`Backoff` rule.

Target polling (§10.3, cloud-api.md §2.5): ``GET /device/v3/<uuid>/state`` with the server's weak
ETag echoed verbatim in ``If-None-Match``, every ``appUpdatePollInterval`` + up to 60 s of jitter
(read at every wait, so a config change applies to the next wait), ``min(poll, 15 s x 2^n)``
after the n-th failure. A 304 only counts when an ETag is cached (an unknown device also gets a
304, without ETag); it emits a cached body that was never emitted, and re-applies when
``POST /v1/update`` asked. A new target is validated, then stored (one transaction), then applied
with ``cancel`` (the running apply stops at its next step boundary); a refused one is logged as
``Could not move to new release: ...`` and nothing is stored or applied.

The API's request threads only read what this keeps (:meth:`health`, ``tags``); they never wait
on a cloud call of their own.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Config
from ..state.admission import HostConflict
from ..state.device_config import DEFAULTS, format_config_keys
from ..state.target import TargetDevice, TargetStateError
from ..subsystem import Subsystem
from .backoff import Backoff
from .client import ApiClient, CloudRequestError
from .connectivity import ConnectivityMonitor
from .provision import ProvisionError, needs_provisioning, provision
from .report import StateReporter
from .tags import TagService, TagStore
from .target import validate_cloud_target
from .timing import Timing

if TYPE_CHECKING:
    from ..state.hostview import HostView

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP_RETRY_MS = 30_000
REJECTED_PREFIX = "Could not move to new release: "


class DeviceSide(Protocol):
    """What the binder needs from the rest of the supervisor (``bench_fleet.py`` stubs it)."""

    def store_target(self, device: TargetDevice) -> None:
        """Store a validated cloud target (one transaction) as the cloud source's target."""

    def apply(self, *, force: bool, cancel: bool) -> None:
        """Have the stored target applied (``cancel``: at the next step boundary)."""

    def host_view(self) -> HostView | None:
        """What admission checks a target against besides itself (state/hostview.py), or None."""

    def report_state(self) -> dict[str, Any]:
        """The device fields and ``apps`` of the state report, metrics excluded (§2.3)."""

    def metrics(self) -> dict[str, Any]:
        """System metrics for the report (all None when disabled)."""

    def current_config(self) -> Mapping[str, str]:
        """The device's current config variables, names without prefix (§5.3)."""

    def facts(self) -> dict[str, Any]:
        """device_type, supervisor_version, os_version, os_variant, mac_address for registration."""

    def local_mode(self) -> bool: ...

    def connectivity_check_enabled(self) -> bool: ...


class CloudBinder(Subsystem):
    name = "cloud"

    def __init__(
        self,
        config: Config,
        device: DeviceSide,
        *,
        timing: Timing,
        report_cache: Path,
        vpn_status: Path,
        user_agent: str,
        request_timeout_s: Callable[[], float] = lambda: 59.0,
    ) -> None:
        super().__init__()
        self.config = config
        self.device = device
        self.timing = timing
        self.client = ApiClient(lambda: config.api_endpoint, request_timeout_s, user_agent)
        key = self.device_key
        uuid = lambda: config.uuid  # noqa: E731
        self.reporter = StateReporter(
            self.client,
            uuid=uuid,
            key=key,
            current=device.report_state,
            metrics=device.metrics,
            poll_interval_s=self.poll_interval_s,
            timing=timing,
            cache_path=report_cache,
        )
        self.tag_store = TagStore(config)
        self.tags = TagService(
            self.client,
            self.tag_store,
            uuid=uuid,
            key=key,
            device_id=lambda: config.json.get("deviceId"),
            poll_interval_s=self.poll_interval_s,
            timing=timing,
        )
        self.connectivity = ConnectivityMonitor(
            lambda: config.api_endpoint, device.connectivity_check_enabled, vpn_status, timing
        )
        self._children: list[Subsystem] = []
        self._cond = threading.Condition()
        self._poll_requested = False
        self._force = False
        self._etag: str | None = None
        self._cached: Any = None
        self._emitted = False
        self._host_conflict = False  # the last target was refused for the device's present state
        self._was_local: bool | None = None
        self._last_error: str | None = None
        self.poll_backoff = Backoff(lambda: self.timing.backoff_min, self.poll_interval_s)
        #: The reference starts this clock at process start (§10.6).
        self.last_successful_fetch = time.monotonic()
        self.ready_for_updates = False
        self.target_error: str | None = None
        self.polls = 0
        self.applies = 0

    # ------------------------------------------------------------------ values read each time
    def poll_interval_s(self) -> float:
        """``appUpdatePollInterval`` (scaled); read at every wait, never captured."""
        return self.timing.ms(self.config.poll_interval_ms)

    def device_key(self) -> str | None:
        return self.config.json.get("deviceApiKey")

    def _bootstrap_delay_s(self) -> float:
        return self.timing.ms(self.config.json.get("bootstrapRetryDelay") or DEFAULT_BOOTSTRAP_RETRY_MS)

    # ------------------------------------------------------------------ requests (any thread)
    def poll_now(self, *, force: bool) -> bool:
        """``POST /v1/update``: poll at once, carrying ``force`` into the apply. False before the
        binder is ready for updates (the caller then re-applies what is stored)."""
        if not self.ready_for_updates:
            return False
        with self._cond:
            self._poll_requested = True
            self._force = self._force or force
            self._cond.notify_all()
        return True

    def health(self) -> tuple[bool, str]:
        """§10.6: the thread, its helpers, a successful fetch within 2x the poll interval, and the
        connectivity check (when enabled)."""
        ok, reason = super().health()
        if not ok:
            return ok, reason
        for child in self._children:
            ok, reason = child.health()
            if not ok:
                return ok, reason
        age = time.monotonic() - self.last_successful_fetch
        limit = 2 * self.poll_interval_s()
        if age > limit:
            return False, f"cloud: no successful target fetch for {age:.0f}s (limit {limit:.0f}s)"
        if self.device.connectivity_check_enabled() and not self.connectivity.connected:
            return False, "cloud: the API host is not reachable (connectivity check)"
        return True, "ok"

    def on_stop(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float = 2.0) -> bool:
        stopped = super().stop(timeout)
        for child in reversed(self._children):
            stopped = child.stop(timeout) and stopped
        self.client.close()
        return stopped

    # ------------------------------------------------------------------ the thread
    def _log_error_once(self, message: str) -> None:
        if message != self._last_error:
            log.error("%s", message)
            self._last_error = message

    def run(self) -> None:
        if not self._retry("provision", self._provision) or not self._retry("pin", self._pin):
            return
        if not self._retry("initial config report", self._initial_config_report):
            return
        for child in (self.reporter, self.tags, self.connectivity):
            child.start()
            self._children.append(child)
        self.ready_for_updates = True
        self._poll_loop()

    def _retry(self, what: str, step: Callable[[], None]) -> bool:
        """Run ``step`` until it succeeds, about ``bootstrapRetryDelay`` apart; False when stopping."""
        retry = Backoff(self._bootstrap_delay_s, self._bootstrap_delay_s)
        while not self.stopping:
            try:
                step()
                self._last_error = None
                return True
            except (ProvisionError, CloudRequestError) as exc:
                self._log_error_once(
                    f"Could not {what}: {exc}; retrying about every {self._bootstrap_delay_s():.1f}s"
                )
            if self.wait(retry.next()):
                return False
        return False

    def _provision(self) -> None:
        if needs_provisioning(self.config):
            provision(self.client, self.config, self.device.facts())

    def _fetch(self, *, use_etag: bool) -> tuple[int, Any]:
        """GET the target: (status, parsed body or None); a 304 without a cached ETag is an error."""
        headers = {"If-None-Match": self._etag} if use_etag and self._etag else {}
        response = self.client.request(
            "GET",
            f"/device/v3/{self.config.uuid}/state",
            key=self.device_key(),
            ok=(200, 304),
            headers=headers,
        )
        self.polls += 1
        if response.status_code == 304:
            if not headers:
                raise CloudRequestError(
                    "The balena API answered 304 without a cached target (unknown device?)", status=304
                )
            return 304, None
        try:
            body = json.loads(response.content)
        except ValueError:
            raise CloudRequestError("The balena API answered the target state with malformed JSON") from None
        self._etag, self._cached, self._emitted = response.headers.get("ETag"), body, False
        return 200, body

    def _pin(self) -> None:
        """§10.2 pinning: a preloaded ``pinDevice`` {app, commit} pins the device to that release."""
        pin = self.config.get_db("pinDevice")
        if not isinstance(pin, dict):
            return
        app, commit = pin.get("app"), pin.get("commit")
        response = self.client.request(
            "GET",
            "/v7/release",
            key=self.device_key(),
            params={
                "$filter": f"belongs_to__application eq {int(app)} and commit eq '{commit}' "
                "and status eq 'success'",
                "$select": "id",
            },
        )
        rows = response.json().get("d") or []
        if not rows:
            log.warning("Cannot pin device to release. Release no longer exists. Skipping.")
        else:
            self._fetch(use_etag=False)
            self.client.request(
                "PATCH",
                f"/v7/device({int(self.config.json.get('deviceId'))})",
                key=self.device_key(),
                json={"is_pinned_on__release": rows[0]["id"]},
            )
            log.info("Device pinned to release %s", commit)
        self.config.set_db(pinDevice=None)

    def _initial_config_report(self) -> None:
        """§10.2: current config the target does not define (and that is not the default) becomes
        device config variables; ``initialDeviceName`` becomes the device name."""
        endpoint = self.config.api_endpoint
        if self.config.get_db("initialConfigReported") == endpoint:
            return
        _, body = self._fetch(use_etag=False)
        device = body.get(self.config.uuid) if isinstance(body, dict) else None
        raw = device.get("config") if isinstance(device, dict) else None
        target = format_config_keys(raw if isinstance(raw, dict) else {})
        device_id = int(self.config.json.get("deviceId"))
        for key, value in sorted(self.device.current_config().items()):
            if key in target:
                continue
            value = {"SUPERVISOR_LOCAL_MODE": "false", "SUPERVISOR_VPN_CONTROL": "true"}.get(key, value)
            if value == DEFAULTS.get(key):
                continue
            try:
                self.client.request(
                    "POST",
                    "/v7/device_config_variable",
                    key=self.device_key(),
                    ok=(201,),
                    json={"value": value, "device": device_id, "name": f"RESIN_{key}"},
                )
            except CloudRequestError as exc:
                if exc.status != 409:  # 409: reported by an earlier, interrupted run
                    raise
        name = self.config.json.get("initialDeviceName")
        if name:
            try:
                self.client.request(
                    "PATCH", f"/v7/device({device_id})", key=self.device_key(), json={"device_name": name}
                )
            except CloudRequestError:
                log.warning("Unable to report initial device name to API")
        self.config.set_db(initialConfigReported=endpoint)

    def _poll_loop(self) -> None:
        instant = bool(self.config.get_db("instantUpdates"))
        next_at = time.monotonic() if instant else time.monotonic() + self._interval_with_jitter()
        while True:
            remaining = max(0.0, next_at - time.monotonic())
            if self.wait_on(self._cond, lambda: self._poll_requested, min(remaining, self.timing.idle_check)):
                return
            self._watch_local_mode()
            with self._cond:
                requested = self._poll_requested
                if not requested and time.monotonic() < next_at:
                    continue
                force, self._poll_requested, self._force = self._force, False, False
            ok = self.poll_once(from_api=requested, force=force)
            if ok:
                self.poll_backoff.reset()
                next_at = time.monotonic() + self._interval_with_jitter()
            else:
                next_at = time.monotonic() + self.poll_backoff.next()

    def _interval_with_jitter(self) -> float:
        return self.poll_interval_s() + random.random() * self.timing.poll_jitter

    def poll_once(self, *, from_api: bool = False, force: bool = False) -> bool:
        """One target poll; True when it succeeded (the health clock restarts)."""
        try:
            status, body = self._fetch(use_etag=True)
        except CloudRequestError as exc:
            self._log_error_once(f"Failed to get target state: {exc}")
            return False
        self._last_error = None
        self.last_successful_fetch = time.monotonic()
        if status == 200 or not self._emitted or self._host_conflict:
            # A target refused for what the device held (a port, a subnet) is tried again.
            self._emit(self._cached, force=force)
        elif from_api:
            self._apply(force=force)
        return True

    def _emit(self, body: Any, *, force: bool) -> None:
        self._emitted = True
        try:
            target = validate_cloud_target(body, self.config.uuid, host=self.device.host_view())
        except TargetStateError as exc:
            self._host_conflict = isinstance(exc, HostConflict)
            message = str(exc)
            if message != self.target_error:
                for i, line in enumerate(message.splitlines() or [message]):
                    log.error("%s%s", REJECTED_PREFIX if i == 0 else "", line)
            self.target_error = message
            return
        self.target_error = None
        self._host_conflict = False
        self.device.store_target(target)
        self.reporter.changed()
        if self.device.local_mode():
            log.info("Local mode is on: the cloud target is stored, not applied")
            return
        self._apply(force=force)

    def _apply(self, *, force: bool) -> None:
        self.applies += 1
        self.device.apply(force=force, cancel=True)

    def _watch_local_mode(self) -> None:
        """§11.1: leaving local mode applies the cloud target again; either way the report changes
        (local mode reports no apps)."""
        now = self.device.local_mode()
        if self._was_local is not None and now != self._was_local:
            log.info(
                "Local mode %s",
                "enabled: cloud targets are no longer applied"
                if now
                else "disabled: applying the cloud target",
            )
            self.reporter.changed()
            if not now and self._emitted and self.target_error is None:
                self._apply(force=False)
        self._was_local = now

"""The running supervisor: builds every layer from settings and owns their start/stop order.

Layers (docs/ARCHITECTURE.md): storage (paths, config, SQLite) -> subsystems (each its own thread)
-> the API server on top. Nothing here is global, so tests can run several supervisors at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .apikeys import ApiKeys
from .compose.validation import check_truthy
from .config import Config, ConfigJson
from .db import Database
from .host import HostFacts
from .metrics import Metrics
from .paths import Paths
from .sdnotify import ServiceNotifier, hang_hooks
from .state.admission import WarningLog, validate_local
from .state.contexts import TargetBuilder
from .state.device_config import CONFIG_STEPS, DeviceConfig, validate_target_config, with_defaults
from .state.locks import LockRegistry
from .state.planner import PlanContext
from .state.reconcile import Engine, Reconciler
from .state.report import Observation
from .state.store import LOCAL_SOURCE, TargetStore
from .state.target import TargetStateError, thaw
from .subsystem import Subsystem

if TYPE_CHECKING:
    from flask import Flask

    from .cloud import CloudBinder
    from .delta.fetch import DeltaFetcher, DeltaSettings
    from .logs.cloud import CloudLogStream, StreamTarget
    from .state.hostview import HostView

log = logging.getLogger("supervisor")

DEFAULT_BLINK_SECONDS = 15.0


@dataclass(frozen=True)
class Settings:
    """What the command line and environment decide; everything else comes from config files."""

    root: str | None = None
    data_dir: str | None = None
    port: int | None = None
    host: str = "0.0.0.0"
    led: str | None = None
    blink_seconds: float = DEFAULT_BLINK_SECONDS
    api_threads: int = 8
    #: Open streams (``/v2/local/logs``, ``/v2/journal-logs``) allowed at once; each holds a thread of
    #: its own on top of ``api_threads``, started when it opens (supervisor/api/streams.py).
    api_streams: int = 32
    #: Only these app ids are managed (None: every supervised app on the engine). For development
    #: machines and tests that share an engine with containers that are not this supervisor's.
    apps: tuple[int, ...] | None = None
    #: Set the host up as a balenaOS device needs: the supervisor0 network and extra-firmware volume,
    #: the firewall, avahi and openvpn from the config variables (supervisor/host/).
    host_setup: bool = True
    #: The engine socket's host path, bound into services labelled io.balena.features.balena-socket
    #: (None: from the environment, :func:`default_docker_socket`).
    docker_socket: str | None = None


def default_docker_socket() -> str:
    """``DOCKER_SOCKET`` as balenaOS passes it (balenaos-integration.md §2.9, the reference's
    ``constants.dockerSocket``), else the unix path of ``DOCKER_HOST``, else ``/var/run/docker.sock``."""
    socket = os.environ.get("DOCKER_SOCKET")
    if socket:
        return socket
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://") and len(host) > len("unix://"):
        return host[len("unix://"):]
    return "/var/run/docker.sock"


def default_led_spec(paths: Paths) -> str:
    """The reference reads ``LED_FILE`` (default the first kernel LED) and falls back to no LED."""
    led_file = os.environ.get("LED_FILE")
    if led_file:
        return f"file:{led_file}"
    kernel_led = paths.host("/sys/class/leds/led0/brightness")
    return f"file:{kernel_led}" if kernel_led.exists() else "none"


class Supervisor:
    """One device supervisor. Raises ``ConfigError`` (one-line message) for unusable config."""

    def __init__(self, settings: Settings) -> None:
        from hw.led import make_led

        from .api.server import ApiServer, LazyApp
        from .blink import Blinker
        from .host.netlink import NetworkFacts
        from .host.power import LogindBackend, Power
        from .host.services import HostServices

        self.settings = settings
        self._logging_cache: tuple[float, bool] | None = None
        # Counted by every layer, rendered only when scraped (GET /metrics, supervisor/metrics.py).
        self.metrics = Metrics({"open_streams": ("Open log/journal streams", lambda: self.streams.open)})
        self.paths = Paths.create(settings.root, settings.data_dir)
        self.managed_apps = None if settings.apps is None else frozenset(str(a) for a in settings.apps)
        self.config = Config(ConfigJson(self.paths.config_json), Database(self.paths.database, recover=True))
        if self.config.db.recovered is not None:
            self._recover_facts()
        self.config.initialise()
        self.api_keys = ApiKeys(self.config.db)
        self.api_keys.global_key()
        self.targets = TargetStore(self.config.db)
        # The port is taken first: a port in use is then the one line the CLI prints (issue #11).
        self.api = LazyApp(self, self._create_api)  # the Flask app comes with the first request needing it
        port = settings.port if settings.port is not None else self.config.listen_port
        # api_threads workers; each open stream adds one while it is open (supervisor/api/streams.py).
        self.server = ApiServer(self.api, settings.host, port, threads=settings.api_threads)
        self.host = HostFacts.read(self.paths)
        if self.config.unmanaged:
            log.info("Starting up in unmanaged mode, activating local mode")
            self.config.set_db(localMode=True)  # as the reference: the stored value says so too

        led = make_led(settings.led or default_led_spec(self.paths))
        self.blinker = Blinker(led, duration=settings.blink_seconds)

        self._init_device_endpoints()

        # Host paths under the root prefix: "" on a device, so locks are /tmp/balena-supervisor/...
        self.lock_root = str(self.paths.root).rstrip("/")
        # ONE lock registry per supervisor: the state engine and the API actions share it (§4).
        self.locks = LockRegistry(self.lock_root, on_wait=self._lock_waited)
        # The host over D-Bus, iptables and netlink (supervisor/host/): each piece works alone.
        self.host_services = HostServices(listen_port=lambda: self.server.port,
                                          host_network_services=self._host_network_services)
        self.network = NetworkFacts()
        self._host_config_lock = threading.Lock()
        self.power = Power(LogindBackend(self.host_services.login), hold=self._hold_work,
                           release=self._release_work)
        self.target_builder = TargetBuilder(
            self.config, self.targets, self.api_keys, self.host,
            source=lambda: self.target_source, lock_root=self.lock_root, listen_port=self.server.port,
            supervisor_network=settings.host_setup,
            docker_socket=settings.docker_socket or default_docker_socket(),
        )
        self._target_warnings = WarningLog(log)  # each admitted target's warnings, logged once
        self._extra_firmware_unsaved: str | None = None
        self.device_config = self._init_device_config()
        self._reboot_asked = False
        self.reconciler = Reconciler(
            self._connect_engine,
            lambda engine: self.target_builder.build(engine.images),
            self._plan_context,
            poll_interval=lambda: self.device_config.poll_interval_ms / 1000,
            managed=lambda: not self.config.unmanaged,
            apps=self.managed_apps,
            planner=self._plan,
            metrics=self.metrics,
            locks=self.locks,
            hold_reason=self.hold_reason,
            system_log=self.system_message,
        )
        self.locks.system_log = self.system_message
        self._init_log_pipeline()
        self.subsystems: list[Subsystem] = [self.blinker, self.network, self.reconciler, *hang_hooks()]
        if self.log_monitor is not None:
            self.subsystems.append(self.log_monitor)
        # Unmanaged devices never open a connection to a cloud: no binder at all (§11.1).
        self.binder: CloudBinder | None = None
        self.cloud_logs: CloudLogStream | None = None
        if not self.config.unmanaged:
            self.binder = self._make_binder()
            self.subsystems.append(self.binder)
            # Started first, stopped last: the other subsystems' last lines still go out (§8.3).
            self.cloud_logs = self._make_cloud_logs()
            self.subsystems.insert(0, self.cloud_logs)
            self.logs.add_backend(self.cloud_logs)
        # systemd Type=notify + WatchdogSec (supervisor/sdnotify.py): a no-op outside systemd.
        self.systemd = ServiceNotifier(self.health)

    def _create_api(self) -> Flask:
        from .api import create_app

        return create_app(self)

    @property
    def app(self) -> Flask:
        """The API's Flask app (built now if no request needed it yet)."""
        return self.api.flask

    def _init_device_config(self) -> DeviceConfig:
        """Config variables and the boot-config backends of this device type (spec §5.3-5.5)."""
        from .bootconfig import BootConfig
        from .host import read_os_release
        from .host.services import HostVpn

        meta_version = read_os_release(self.paths.os_release).get("META_BALENA_VERSION")
        boot = BootConfig(self.paths.boot, self.paths.root, self.config.json, self.host.device_type,
                          meta_version)
        return DeviceConfig(
            self.config, boot, runtime_dir=self.paths.runtime_dir,
            target_config=self.targets.target_config, boot_time=self.host.boot_time,
            vpn=HostVpn(self.host_services) if self.settings.host_setup else None,
            system_log=self.system_message,
        )

    def system_message(self, message: str, fields: Mapping[str, Any] | None = None) -> None:
        """A system log line (spec §8.5): logged, and published to the log pipeline unless
        ``SUPERVISOR_LOG_CONTROL`` turned logging off. With ``fields`` (a service, image, network,
        volume, error), ``message`` is the event's human name and the text is composed as §8.2."""
        from .logs.system import compose, system_message

        text, is_error = compose(message, fields) if fields is not None else (message, False)
        log.log(logging.WARNING if is_error else logging.INFO, "%s", text)
        if self._logging_enabled(fresh=True):
            self.logs.publish(system_message(text, is_error=is_error))

    def _logging_enabled(self, fresh: bool = False) -> bool:
        """``SUPERVISOR_LOG_CONTROL`` (§8.1), read from the database at most once a second (unless
        ``fresh``): the engine log source asks for every batch."""
        now = time.monotonic()
        cached = self._logging_cache
        if fresh or cached is None or now - cached[0] >= 1.0:
            cached = self._logging_cache = (now, self.device_config.logging_enabled)
        return cached[1]

    def _publish_logs(self, messages: list[dict[str, Any]], delivered: Any = None) -> None:
        """A batch of container lines (the engine log source): to the hub, or, with logging off,
        nowhere (delivered all the same: turning logging on again does not replay the past)."""
        if self._logging_enabled():
            self.logs.publish_many(messages, delivered)
        elif delivered is not None:
            delivered()

    def _init_log_pipeline(self) -> None:
        """The log monitor and the engine log source (supervisor/logs/, spec §8.1); positions in the
        runtime directory (tmpfs on a device: they live as long as the journal there does)."""
        from .host.journal import is_balena_os
        from .logs.docker_source import DockerLogSource
        from .logs.engine_http import EngineAddress
        from .logs.monitor import LazySource, LogMonitor
        from .logs.positions import PositionStore

        self.engine_logs: DockerLogSource | None = None
        self.journald_logs: LazySource | None = None
        self.log_monitor: LogMonitor | None = None
        try:
            address = EngineAddress.from_env()
        except ValueError as err:
            log.warning("Container logs are not collected: %s", err)
            return
        sink = os.environ.get("SUPERVISOR_TEST_LOG_SINK")
        if sink:  # a test hook: every message, acknowledged, into a file (supervisor/logs/sink.py)
            from .logs.sink import FileSink

            self.logs.add_backend(FileSink(sink))
        positions = PositionStore(self.paths.runtime_dir / "log-positions.json")
        self.engine_logs = DockerLogSource(self._publish_logs, engine=address, positions=positions,
                                           room=self.logs.wait_for_room)
        # The journald driver's source (§8.1): one journalctl, spawned only for a container that logs
        # with the journald driver, or at start on balenaOS (the host units' rows are system lines).
        # It resumes from its stored position (what the last run delivered), else from this start.
        started_ms = int(time.time() * 1000)

        def journald() -> Any:
            from .logs.journald import POSITION_FILE, JournaldLogSource

            return JournaldLogSource(self._publish_logs, since_ms=started_ms, room=self.logs.wait_for_room,
                                     position_path=self.paths.runtime_dir / POSITION_FILE)

        self.journald_logs = LazySource(journald, eager=is_balena_os(self.paths))
        self.log_monitor = LogMonitor(address, {"engine": self.engine_logs, "journald": self.journald_logs},
                                      managed_apps=self.managed_apps,
                                      system_log=self.system_message, on_containers=positions.retain,
                                      image_name=self._image_name)

    def _image_name(self, docker_image_id: str) -> str | None:
        """The name a service's image was fetched as (the image table), for system messages."""
        rows = self.config.db.query("SELECT name FROM image WHERE dockerImageId = ? LIMIT 1",
                                    (docker_image_id,))
        return rows[0][0] if rows else None

    def _save_initial_config(self) -> None:
        """Spec §5.4.5: the first start stores the current config, boot config included, as the
        target, so an empty target config never wipes config.txt before it is reported."""
        if self.config.get_db("initialConfigSaved"):
            return
        self.device_config.boot.initialise()
        current = self.device_config.initial_target()
        self.targets.set_target_config(current, initial_saved=True)
        log.info("Saved the current device config as the target (%d values)", len(current))

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._save_initial_config()
        target_set = bool(self.config.get_db("targetStateSet"))
        preloaded = False
        # After a database recovery the device was running: apps.json is not its state any more.
        if self.config.db.recovered is None and (not self.config.provisioned or not target_set):
            preloaded = self._load_preloaded_apps()
        # No orphaned locks: a previous run's supervisor lock files go before the first apply.
        self.locks.clean_leftovers(self.managed_apps)
        if target_set or preloaded or self.hold_reason():
            # Resume the last run, apply what was preloaded, or say (once) why nothing is applied.
            self.reconciler.trigger()
        self.system_message("Supervisor starting")
        if self.engine_logs is not None:
            self.engine_logs.start()
        if self.journald_logs is not None:
            self.journald_logs.start()
        for subsystem in self.subsystems:
            subsystem.start()
        self.server.start()
        if not self.settings.host_setup:
            log.info("Host setup is off: the firewall, discoverability and the VPN are left alone")
        self.apply_host_config()
        log.info("Supervisor started (uuid %s, %s)", self.config.uuid,
                 "unmanaged" if self.config.unmanaged else "managed")
        self.systemd.ready(f"API listening on port {self.server.port}")

    def _recover_facts(self) -> None:
        """After a database recovery (issue #17): one line saying what was found and what comes back
        how. The device uuid (when config.json has none) and name come back from the running
        containers; nothing is applied until a target arrives, so the apps keep running."""
        from .recovery import facts_from_containers

        recovered = self.config.db.recovered
        assert recovered is not None
        facts = facts_from_containers(self.managed_apps)
        if self.config.json.get("uuid"):
            facts.pop("uuid", None)
        if facts:
            self.config.set_db(**facts)
        problem, kept = recovered
        source = ("the target comes back from the cloud" if not self.config.unmanaged
                  else "running apps are left as they are until the next target")
        log.error("Database %s was damaged (%s): kept it as %s and started a new one; %s, API keys "
                  "were regenerated%s", self.paths.database, problem, kept.name, source,
                  f", {' and '.join(sorted(facts))} read back from the running containers" if facts else "")

    def _load_preloaded_apps(self) -> bool:
        """Spec §0.2 ``loadInitialState``: a first start takes its target from ``apps.json``."""
        from .state.preload import load_apps_json

        try:
            return load_apps_json(
                self.paths.apps_json, store=self.targets, source=self.target_source,
                current_name=self.config.get_db("name"),
                set_pin=lambda pin: self.config.set_db(pinDevice=pin),
            )
        except Exception:  # a broken preload must not keep the API down
            log.exception("Could not preload apps from %s", self.paths.apps_json)
            return False

    def stop(self) -> bool:
        """Stop accepting requests first, then the subsystems (each thread joined: the state
        engine first finishes what it is in, see state/reconcile.py), then close storage.
        False when a thread did not end in time (storage is then left open for it)."""
        self.systemd.stopping()
        self.server.stop()
        # An action that killed services (a restart, a purge) starts them again before we go on.
        if not self.locks.wait_for_actions(timeout=self.reconciler.stop_grace):
            log.warning("An API action still holds its update locks")
        self.logs.close()
        stopped = True
        for subsystem in reversed(self.subsystems):
            timeout = self.reconciler.stop_grace + 30 if subsystem is self.reconciler else 10.0
            if not subsystem.stop(timeout=timeout):
                log.warning("%s did not stop in time", subsystem.name)
                stopped = False
        if self.engine_logs is not None:
            self.engine_logs.stop()  # after the monitor: its last positions are written
        if self.journald_logs is not None:
            self.journald_logs.stop()
        if not stopped:
            return False
        engine = self.reconciler.engine
        if engine is not None:
            engine.client.close()
        self.host_services.close()
        self.config.db.close()
        return True

    def hold_reason(self) -> str | None:
        """Why the state engine must change nothing now (issue #10 §5): a managed device applies
        only a target its cloud sent (``TargetStore.received``); until then what runs (a local-mode
        app, say) stays as it is: containers, images, networks and volumes with their data. A
        ``localMode`` stored by an unmanaged start does not count: the local target's defaults
        would turn local mode off and the empty cloud target then remove everything."""
        if self.config.unmanaged:
            return None
        source = self.config.api_endpoint
        if self.targets.received(source):
            return None
        return (f"no target received from the cloud ({source}) yet: every app, image, network and "
                "volume on the device is kept as it is until the first target arrives")

    # what the API reports -----------------------------------------------------------------------
    def observe(self) -> Observation:
        """Containers, images and commits of the managed apps, read now (for the API)."""
        from .state.engine import current_commits
        from .state.images import DOWNLOADED
        from .state.report import device_images

        engine = self.reconciler.require_engine()
        manages = self.reconciler.manages
        services = engine.reader.services(apps=self.managed_apps)
        present = {entry["Id"] for entry in engine.client.api.images()}
        # Apps the device has: in the target, or with containers (a removed app's kept images and
        # stored commit are not reported: issue #11).
        target = {app.id: app.release.commit if app.release is not None else None
                  for app in self.targets.get_target(self.target_source).apps.values()}
        images = device_images(
            (img for img in engine.images.status()
             if manages(img["appId"], img["appUuid"])
             and (img["status"] != DOWNLOADED or img["dockerImageId"] in present)),
            services, target,
        )
        apps = set(target) | {svc.app_id for svc in services}
        commits = {app: c for app, c in current_commits(self.config.db).items()
                   if app in apps and manages(app)}
        return Observation(services=services, images=images, commits=commits,
                           errors=self.reconciler.errors.snapshot())

    def volatile_state(self) -> dict[str, Any]:
        """The device fields the reference keeps in memory (``currentVolatile``)."""
        from . import __version__

        status = self.reconciler.status()
        return {
            "api_port": self.server.port,
            "ip_address": self.network.ip_address,
            "os_version": self.host.os_version,
            "mac_address": self.network.mac_address,
            "supervisor_version": __version__,
            "update_pending": status.update_pending,
            "update_failed": status.update_failed,
            "update_downloaded": status.update_downloaded,
        }

    # the state engine's edges --------------------------------------------------------------------
    def _connect_engine(self) -> Engine:
        """The Docker client from the environment (DOCKER_HOST, ...) and the parts that use it."""
        from .state.engine import DEFAULT_SUPERVISOR_NETWORK, EngineReader, engine_client
        from .state.executor import Executor
        from .state.images import ImageManager, config_registry_auth

        client = engine_client()
        db = self.config.db
        images = ImageManager(
            client, db, auth=config_registry_auth(self.config),
            max_backoff_s=self.config.poll_interval_ms / 1000,
            # Dangling images belong to no app: a supervisor scoped to some apps leaves them alone.
            cleanup_filter=None if self.managed_apps is None else (lambda _entry: False),
            delta=lambda: self._delta_fetcher(client),
            on_bytes=self.metrics.inc,
        )
        locks = self.locks
        host_setup = self.settings.host_setup
        executor = Executor(
            client, db, images, locks=locks, lock_root=self.lock_root,
            device_name=lambda: self.config.get_db("name"), device_type=self.host.device_type,
            on_extra_firmware=self._set_extra_firmware_volume, boot_time=self.host.boot_time,
        )
        reader = EngineReader(
            client, db, images, locks=locks,
            supervisor_network=DEFAULT_SUPERVISOR_NETWORK if host_setup else None,
            extra_firmware=self._extra_firmware_volume if host_setup else None,
            volatile=executor.volatile_status,
        )
        executor.on_change = reader.invalidate
        executor.reboot = self._reboot_to_apply
        executor.system_log = self.system_message
        images.system_log = self.system_message
        for kind in CONFIG_STEPS:
            executor.add_handler(kind, self.device_config.execute)
        return Engine(client=client, images=images, executor=executor, reader=reader)

    def _lock_waited(self, seconds: float) -> None:
        self.metrics.inc("lock_waits")
        self.metrics.inc("lock_wait_seconds", seconds)

    def _reboot_to_apply(self) -> None:
        """The state engine's ``reboot`` step: as ``POST /v1/reboot`` without ``force``, so a
        user's update lock or a host OS update in progress holds it back (and the loop retries)."""
        from .state import actions

        if self._reboot_asked:  # the device is going down: asking again would only repeat it
            log.info("Reboot already requested")
            return
        if self.settings.host_setup:  # journald reads its storage setting when it starts
            self._apply_journal_storage()
        actions.shutdown(self, reboot=True)
        self._reboot_asked = True

    def _plan(self, current: Any, target: Any, ctx: PlanContext) -> list[Any]:
        """Config steps first (spec §3.1 step 4): app steps only once the config has settled."""
        from .state.planner import plan

        config_steps = self.device_config.steps()
        if config_steps:
            return config_steps
        steps = plan(current, target, ctx)
        if not steps:
            self.device_config.reset_rate_limits()  # a successful apply (§5.4 step 2)
        return steps

    # the host side (supervisor/host/) ------------------------------------------------------------
    def _hold_work(self) -> None:
        """The device goes down: no new state-engine batch, no new API connection (§1.4)."""
        self.reconciler.hold()
        self.server.pause()

    def _release_work(self) -> None:
        """logind refused: serve and apply again."""
        self.server.resume()
        self.reconciler.release()

    def vpn_connected(self) -> bool:
        """The VPN is up: openvpn's status file ``active`` exists (§13.4). The connectivity check is
        bypassed meanwhile (§10.7)."""
        return (self.paths.vpn_status / "active").exists()

    def _host_network_services(self) -> bool:
        """Whether a target service uses ``network_mode: host`` (firewall mode ``auto``, §13.1)."""
        target = self.targets.get_target(self.target_source)
        return any(
            (svc.composition.get("network_mode") or svc.composition.get("networkMode")) == "host"
            for app in target.apps.values() for svc in app.services.values()
        )

    def host_config_values(self) -> dict[str, str]:
        """The target config, defaults filled in: what the host side applies."""
        return with_defaults(self.targets.target_config(), unmanaged=self.config.unmanaged)

    def apply_host_config(self) -> threading.Thread | None:
        """Firewall, discoverability, VPN and journald's storage from the current config, in the background (a
        slow bus or iptables never delays the API); at start and after every new target. Nothing
        with host setup off."""
        if not self.settings.host_setup:
            return None

        def apply() -> None:
            # The config is read under the lock: whichever thread runs last applies the newest.
            with self._host_config_lock:
                try:
                    self.host_services.apply_config(self.host_config_values(),
                                                    local_mode=self.config.local_mode,
                                                    managed=not self.config.unmanaged)
                except Exception:  # never fatal: the rest of the supervisor runs without it
                    log.exception("Could not apply the host configuration")
                self._apply_journal_storage()

        thread = threading.Thread(target=apply, name="host-config", daemon=True)
        thread.start()
        return thread

    def _apply_journal_storage(self) -> None:
        """``SUPERVISOR_PERSISTENT_LOGGING`` as applied (config.json ``persistentLogging``) on a host
        that is not balenaOS: a journald drop-in (supervisor/host/journal.py)."""
        from .host.journal import apply_persistent_logging

        try:
            apply_persistent_logging(self.paths, self.device_config.persistent_logging)
        except OSError as err:
            log.warning("Could not configure journald's storage: %s", err)

    def _extra_firmware_volume(self) -> str | None:
        """config.json ``os.kernel.extraFirmwareVol`` (spec §3.2 stage 2)."""
        if not self.config.json.exists:
            return self._extra_firmware_unsaved
        os_section = self.config.json.get("os") or {}
        kernel = os_section.get("kernel") if isinstance(os_section, Mapping) else None
        value = kernel.get("extraFirmwareVol") if isinstance(kernel, Mapping) else None
        return value if isinstance(value, str) else None

    def _set_extra_firmware_volume(self, volume: str) -> None:
        if not self.config.json.exists:  # no config.json to record it in: do not invent one
            self._extra_firmware_unsaved = volume
            return
        os_section: dict[str, Any] = dict(self.config.json.get("os") or {})
        kernel = dict(os_section.get("kernel") or {})
        kernel["extraFirmwareVol"] = volume
        os_section["kernel"] = kernel
        self.config.json.set(os=os_section)

    def _delta_settings(self) -> DeltaSettings:
        """``SUPERVISOR_DELTA*`` as the device applied them, read at each fetch (§5.2-5.3)."""
        return self.device_config.delta_settings()

    def _delta_fetcher(self, client: Any) -> DeltaFetcher | None:
        """A delta fetcher for the current settings, or None when deltas are off (docs/DELTAS.md)."""
        settings = self._delta_settings()
        if not settings.enabled:
            return None
        from .delta.fetch import DeltaFetcher, device_delta_token

        token = device_delta_token(
            lambda: self.config.api_endpoint, lambda: self.config.uuid,
            lambda: self.config.json.get("deviceApiKey") or self.config.json.get("apiKey"),
            request_timeout_s=settings.request_timeout_s,
        )
        return DeltaFetcher(client.api, settings, self.paths.data_dir / "deltas", token=token)

    def _plan_context(self, force: bool) -> PlanContext:
        return PlanContext(
            force=force or self.lock_override(),
            local_mode=self.config.local_mode,
            delta=self._delta_settings().enabled,
            reboot_breadcrumb=self.device_config.reboot_scheduled(),
            boot_time=self.host.boot_time,
        )

    def lock_override(self) -> bool:
        """``SUPERVISOR_OVERRIDE_LOCK`` (§4.3): the device's current config, read at each lock take."""
        return self.device_config.lock_override

    # device endpoints (issue #5) -----------------------------------------------------------------
    def _init_device_endpoints(self) -> None:
        """The parts behind host-config, tags, logs and streams (supervisor/host/hostconfig.py, cloud/tags.py,
        logs/hub.py, api/streams.py); each edge is a replaceable object for the later host/cloud work."""
        from .api.streams import StreamSlots
        from .cloud import TagStore
        from .host.hostconfig import HostConfig
        from .logs.hub import LogHub

        self.logs = LogHub(metrics=self.metrics)
        self.streams = StreamSlots(
            self.settings.api_streams,
            on_change=lambda open_streams: self.server.set_threads(self.settings.api_threads + open_streams),
        )
        self.tag_store = TagStore(self.config)
        self.host_config = HostConfig(
            self.paths, read_hostname=self._read_hostname, write_hostname=self._write_hostname,
            on_proxy_change=lambda: self.host_services.restart_proxy_units(),
        )

    def _read_hostname(self) -> str:
        """hostnamed's static hostname, else the host's ``/etc/hostname`` (spec §6.1)."""

        def from_file() -> str:
            try:
                return self.paths.host("/etc/hostname").read_text(encoding="utf-8").strip()
            except OSError:
                return ""

        return self.host_services.hostname(from_file) or ""

    def _write_hostname(self, hostname: str) -> None:
        """hostnamed's ``SetStaticHostname`` (a refusal raises before anything changed), then
        config.json ``hostname``, which balenaOS applies too (spec §6.1); "" is the uuid's first 7."""
        name = hostname or self.config.uuid[:7]
        self.host_services.set_hostname(name)
        self.config.json.set(hostname=name)

    def current_app_ids(self) -> list[int]:
        """The managed apps on the device now (the engine's view; the target's without an engine)."""
        from .state.reconcile import EngineUnavailableError

        try:
            return sorted({svc.app_id for svc in self.observe().services})
        except EngineUnavailableError:
            apps = self.targets.get_target(self.target_source).apps
            return sorted(a.id for a in apps.values() if self.reconciler.manages(a.id))

    # what the API calls ------------------------------------------------------------------------
    def health(self) -> list[tuple[bool, str]]:
        checks = [subsystem.health() for subsystem in self.subsystems]
        checks.append((self.server.alive(), "api"))
        engine = self.reconciler.engine
        if engine is not None:  # connected once: an engine gone since is an outage (issue #17)
            checks.append(self._engine_reachable(engine.client))
        return checks

    @staticmethod
    def _engine_reachable(client: Any, timeout_s: float = 3.0) -> tuple[bool, str]:
        """``GET /_ping`` with a short timeout: the healthcheck must answer even when the engine hangs.
        (The SDK's ``ping()`` has no timeout of its own but the client's, 60 s.)"""
        api = client.api
        try:
            response = api._get(api._url("/_ping"), timeout=timeout_s)
            response.raise_for_status()
        except Exception as err:  # refused, missing socket, timeout, 5xx: all "unreachable"
            return False, f"Docker engine unreachable: {err}"
        return True, "ok"

    def blink(self) -> None:
        self.blinker.blink()

    def regenerate_api_key(self, presented: str) -> str:
        new_key = self.api_keys.regenerate(presented)
        log.info("API key regenerated")  # never the key itself
        return new_key

    @property
    def target_source(self) -> str:
        """Whose target the engine follows: local mode's, or the cloud's (keyed by apiEndpoint)."""
        return LOCAL_SOURCE if self.config.local_mode else self.config.api_endpoint

    def set_local_target(self, body: Any) -> list[str]:
        """POST /v2/local/target-state: admit the whole v2 body (state/admission.py: refused with
        TargetStateError before anything changes), store it in one transaction, then have it applied
        (the stored target is what a restart resumes from). Returns the admission's warnings."""
        name = self.config.get_db("name")
        device, warnings = validate_local(body, current_name=name, host=self.host_view())
        local = body.get("local") if isinstance(body, dict) else None
        if isinstance(local, dict) and local.get("config") is None:
            # No config section: keep the device's target config (the reference wipes it, and
            # with it config.txt). A config section is checked before anything is stored.
            device = dataclasses.replace(device, config=self.targets.target_config())
        else:
            problems = validate_target_config(device.config, boot=self.device_config.boot)
            if problems:
                name, message = problems[0]
                raise TargetStateError(f"Invalid target state: config.{name}: {message}",
                                       path=f"local.config.{name}", rule="config")
        self.targets.set_target(device, LOCAL_SOURCE)
        log.info("Local target state set (%d apps)", len(device.apps))
        self._target_warnings(warnings)
        self.reconciler.trigger(force=check_truthy(body.get("force")), cancel=True)
        self.apply_host_config()
        return warnings

    def host_view(self) -> HostView:
        """What admission checks a target against besides the target itself (state/hostview.py):
        device paths under the host root, and the engine's networks and ports outside the target
        (read only if the target needs them, within 3 s once the engine is connected)."""
        from .state.hostview import HostView

        return HostView(self.paths, self._engine_api, apps=self.managed_apps)

    def _engine_api(self) -> Any:
        """The engine's API client, connecting at this first need (at most FIRST_CONNECT_WAIT_S);
        None while the engine is unreachable."""
        from .state.reconcile import EngineUnavailableError

        try:
            return self.reconciler.require_engine().client.api
        except EngineUnavailableError:
            return None

    def update(self, *, force: bool, cancel: bool) -> None:
        """POST /v1/update: a managed device polls the cloud now, ``force`` carried into the apply
        (§10.3); otherwise, or before the binder is ready, the stored target is applied again."""
        if self.binder is not None and not self.config.local_mode and self.binder.poll_now(force=force):
            return
        self.reconciler.trigger(force=force, cancel=cancel)

    def want_tags(self, tags: Mapping[str, str]) -> None:
        """PATCH /v2/device/tags: stored, and reported by the binder when there is one."""
        if self.binder is not None:
            self.binder.tags.want(tags)
        else:
            self.tag_store.want(tags)

    # the cloud binder (supervisor/cloud/) ---------------------------------------------------------
    def _user_agent(self) -> str:
        """``Supervisor/<version> (Linux; <os>; <variant>)`` (§9.7), for every request to the cloud."""
        from . import __version__

        variant = self.host.os_variant or ("dev" if self.config.json.get("developmentMode") else "prod")
        return f"Supervisor/{__version__} (Linux; {self.host.os_version or 'unknown'}; {variant})"

    def _make_binder(self) -> CloudBinder:
        from .cloud import CloudBinder, Timing

        return CloudBinder(
            self.config, CloudDeviceSide(self), timing=Timing.from_env(),
            report_cache=self.paths.runtime_dir / "state-report-cache", vpn_status=self.paths.vpn_status,
            user_agent=self._user_agent(), request_timeout_s=self._api_request_timeout_s,
        )

    def _make_cloud_logs(self) -> CloudLogStream:
        from .logs.cloud import CloudLogStream, StreamSettings

        return CloudLogStream(self._log_stream_target, user_agent=self._user_agent(),
                              settings=StreamSettings.from_env(), metrics=self.metrics)

    def _log_stream_target(self) -> StreamTarget | str:
        """Where the cloud log stream goes now (§8.3), asked by its thread (at most 10 times a second):
        off in
        local mode or with ``SUPERVISOR_LOG_CONTROL`` false (leaving local mode turns it back on),
        held until the device is provisioned, else
        ``<logsEndpoint|apiEndpoint>/device/v2/<uuid>/log-stream``."""
        from .logs.cloud import OFF, WAIT, StreamTarget

        config = self.config
        if config.unmanaged or config.local_mode or not self.device_config.logging_enabled:
            return OFF
        key = config.json.get("deviceApiKey")
        if not config.provisioned or not key:
            return WAIT
        endpoint = (config.json.get("logsEndpoint") or config.api_endpoint).rstrip("/")
        return StreamTarget(f"{endpoint}/device/v2/{config.uuid}/log-stream", key)

    def _api_request_timeout_s(self) -> float:
        """``SUPERVISOR_API_REQUEST_TIMEOUT`` (ms, default 59000) as applied, read at every request."""
        return (self.device_config.api_request_timeout_ms or 59000) / 1000

    def local_target_view(self) -> dict:
        """GET /v2/local/target-state: the target as the engine sees it (spec §1.4)."""
        device = self.targets.get_target(self.target_source)
        apps = {}
        for app in device.apps.values():
            release = app.release
            volumes = release.volumes.items() if release else ()
            networks = release.networks.items() if release else ()
            services = [
                {"serviceName": name, "serviceId": svc.id, "imageId": svc.image_id, "appId": app.id,
                 "appUuid": app.uuid, "releaseId": release.id, "commit": release.commit,
                 **{k: v for k, v in svc.to_v3().items() if k not in ("id", "image_id")}}
                for name, svc in (release.services.items() if release else ())
            ]
            apps[str(app.id)] = {
                "appId": app.id, "appUuid": app.uuid, "appName": app.name,
                "commit": release.commit if release else None,
                "releaseId": release.id if release else None,
                "source": self.target_source, "isHost": app.is_host,
                "services": services,
                "volumes": [{"name": n, "config": thaw(c)} for n, c in volumes],
                "networks": [{"name": n, "config": thaw(c)} for n, c in networks],
            }
        config = with_defaults(self.targets.target_config(), unmanaged=self.config.unmanaged)
        return {"local": {"name": device.name, "config": config, "apps": apps}}


class CloudDeviceSide:
    """The supervisor as the cloud binder sees it (supervisor/cloud/binder.py ``DeviceSide``)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self._undervolted: tuple[float, bool] | None = None

    def store_target(self, device: Any) -> None:
        sup = self.sup
        sup.targets.set_target(device, sup.config.api_endpoint)  # marks the endpoint as received
        log.info("New target state received from the cloud (%d apps)", len(device.apps))

    def apply(self, *, force: bool, cancel: bool) -> None:
        self.sup.reconciler.trigger(force=force, cancel=cancel)

    def host_view(self) -> HostView:
        return self.sup.host_view()

    def local_mode(self) -> bool:
        return self.sup.config.local_mode

    def connectivity_check_enabled(self) -> bool:
        """``connectivityCheckEnabled`` as stored (config apply of ``SUPERVISOR_CONNECTIVITY_CHECK``,
        ``/v1/tcp-ping``), default true."""
        return self.sup.device_config.connectivity_check

    def current_config(self) -> dict[str, str]:
        """What the device runs with now (§5.3 ``getCurrent``), boot config included: the initial
        config report sends it (§10.2)."""
        return self.sup.device_config.current()

    def facts(self) -> dict[str, Any]:
        from . import __version__

        host = self.sup.host
        return {"device_type": host.device_type, "supervisor_version": __version__,
                "os_version": host.os_version, "os_variant": host.os_variant,
                "mac_address": self.sup.network.mac_address}

    def metrics(self) -> dict[str, Any]:
        """§13.6 metrics, or all None with ``SUPERVISOR_HARDWARE_METRICS=false``; the under-voltage
        check (a dmesg run) at most every 300 s."""
        import time

        from .cloud.metrics import disabled_metrics, is_undervolted, system_metrics

        sup = self.sup
        if not sup.device_config.hardware_metrics:
            values = disabled_metrics()
        else:
            values = system_metrics(sup.paths.root, sup.paths.data_dir)
        now = time.monotonic()
        if self._undervolted is None or now - self._undervolted[0] > 300:
            self._undervolted = (now, is_undervolted())
        values["is_undervolted"] = self._undervolted[1]
        return values

    def report_state(self) -> dict[str, Any]:
        """§2.3 device fields and apps (local mode: no ``apps``, no ``logs_channel``)."""
        from .state import report
        from .state.reconcile import EngineUnavailableError

        sup = self.sup
        volatile = sup.volatile_state()
        variant = sup.host.os_variant or ("dev" if sup.config.json.get("developmentMode") else "prod")
        state: dict[str, Any] = {
            "status": "Idle", "api_port": volatile["api_port"], "api_secret": sup.api_keys.global_key(),
            "os_version": volatile["os_version"], "os_variant": variant,
            "supervisor_version": volatile["supervisor_version"], "provisioning_progress": None,
            "provisioning_state": "", "ip_address": volatile.get("ip_address") or "",
        }
        if volatile.get("mac_address"):
            state["mac_address"] = volatile["mac_address"]
        if sup.config.local_mode:
            return state
        state["logs_channel"] = None
        target = sup.targets.get_target(sup.config.api_endpoint)
        try:
            observation = sup.observe()
        except EngineUnavailableError:
            return state  # no engine: apps are not known now, the last reported ones stand
        apps = report.app_states(observation, target)
        state["apps"] = {uuid: app for uuid, app in apps.items() if uuid in target.apps}
        return state

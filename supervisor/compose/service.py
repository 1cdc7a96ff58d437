"""A service: one container's worth of configuration, from a target or read back from the engine.

Both directions produce the same normalised `config` (camelCase keys, plain JSON-able values), so the
planner can compare a running container with its target without caring which supervisor created it.
The field modules (ports, mounts, endpoints, healthcheck, ...) each own one field; this module only
assembles them, applies the defaults of the reference, and implements its comparison rules.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import (
    devices,
    endpoints,
    environment,
    features,
    fields,
    healthcheck,
    labels,
    mounts,
    ports,
    ulimits,
)
from .casing import camel_case_composition, split_supported
from .command import as_argv
from .errors import ComposeError
from .naming import container_name as _container_name
from .naming import lock_dir_for, parse_container_name
from .units import DEFAULT_STOP_GRACE_PERIOD, duration_seconds, parse_size
from .validation import check_int, js_truthy

log = logging.getLogger(__name__)

__all__ = ["Service", "ServiceContext", "parse_container_name"]

# Never part of the plain comparison: compared separately, not reported by the engine, or not config.
_OMIT_FIELDS = frozenset({"networks", "running", "containerId", "cpus", "networkMode", "hostname"})
# Compared as unordered lists ("ulimitsArray" is named by the reference but never set: kept for parity).
UNORDERED_ARRAY_FIELDS = (
    "volumes",
    "devices",
    "capAdd",
    "capDrop",
    "dnsOpt",
    "tmpfs",
    "extraHosts",
    "ulimitsArray",
    "groupAdd",
    "securityOpt",
)
ORDERED_ARRAY_FIELDS = ("dns", "dnsSearch")
_ARRAY_FIELDS = frozenset(UNORDERED_ARRAY_FIELDS + ORDERED_ARRAY_FIELDS)


@dataclass(frozen=True)
class ServiceContext:
    """Everything from outside the target that shapes a service.

    `hostname` is the device hostname, given to `network_mode: host` services without their own.
    `host_paths` says which of /lib/modules and /lib/firmware exist on the host. `image_info` is the
    engine's inspect of the target image when it is present (its defaults fill the config).
    `lock_dir` pins the update-lock directory of one service; normally leave it empty and set
    `lock_root` (the prefix of the host's `/tmp/balena-supervisor`, "" on a device): each service
    then gets `<lock_root>/tmp/balena-supervisor/services/<appId>/<serviceName>`.
    """

    app_id: int
    app_uuid: str
    app_name: str
    release_id: int
    commit: str
    device_uuid: str
    device_type: str
    device_arch: str
    device_name: str
    os_version: str
    listen_port: int = 48484
    api_endpoint: str = ""
    device_api_key: str = ""
    scoped_api_key: str | None = None
    supervisor_host: str = "10.114.104.1"
    supervisor_network: bool = True  # False: no supervisor0 (--no-host-setup), see compose/features.py
    hostname: str = ""
    docker_socket: str = "/var/run/docker.sock"
    lock_dir: str = ""
    host_paths: frozenset[str] = frozenset()
    image_info: dict | None = None
    lock_root: str = ""
    board_rev: str | None = None  # os-release BALENA_BOARD_REV, for the host-os.board-rev feature

    def service_lock_dir(self, service_name: str) -> str:
        """The host directory bound at /tmp/balena and /tmp/resin for this service."""
        return self.lock_dir or lock_dir_for(self.app_id, service_name, self.lock_root)


def _image_config(image_info: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((image_info or {}).get("Config") or {})


def _str_or(value: Any, default: str) -> str:
    return default if value is None else str(value)


def _non_zero_int(value: Any) -> int:
    """`checkInt` that also drops 0, as the reference does for cpuShares/cpuQuota/oomScoreAdj."""
    return check_int(value) or 0


def _nano_cpus(value: Any) -> int:
    if value is None:
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or math.isinf(number):
        log.warning("config.cpus value cannot be parsed. Ignoring.\n  Value:%s", value)
        return 0
    return math.floor(number * 1e9 + 0.5)


def _working_dir(value: str) -> str:
    return value[:-1] if len(value) > 1 and value.endswith("/") else value


def _canonical_list(items: Any) -> list[str]:
    return sorted(mounts.canonical(i) for i in items or [])


@dataclass(eq=False)
class Service:
    """One service of an app: identity plus the normalised container `config`."""

    app_id: int
    app_uuid: str | None
    service_name: str
    service_id: int
    image_id: int
    release_id: int
    commit: str | None
    config: dict[str, Any]
    container_id: str | None = None
    status: str | None = None
    created_at: str | None = None
    image_name: str | None = None
    depends_on: list[str] | None = None
    docker_image_id: str | None = None
    exit_error_message: str | None = None
    #: A container the engine keeps restarting (``State.Restarting``; issue #11): ``RestartCount``,
    #: the last ``ExitCode`` and ``FinishedAt`` (engine timestamp), for the API's ``error`` field.
    restart_count: int = 0
    exit_code: int | None = None
    finished_at: str | None = None
    ignored_fields: tuple[str, ...] = field(default=())

    # ---------------------------------------------------------------- building

    @classmethod
    def from_target(cls, svc: Mapping[str, Any], ctx: ServiceContext) -> Service:
        """Normalise one target service (v3 wire shape plus `serviceName`) for this device."""
        service_name = str(svc["serviceName"])
        service_id = check_int(svc.get("id", svc.get("serviceId")))
        image_id = check_int(svc.get("image_id", svc.get("imageId")))
        if service_id is None or image_id is None:
            raise ComposeError(f"Service {service_name} has a malformed id or image_id")
        image_info = ctx.image_info
        image_cfg = _image_config(image_info)

        composition = camel_case_composition(svc.get("composition") or {})
        depends = composition.pop("dependsOn", None)
        depends_on: list[str] | None = None
        if isinstance(depends, Mapping):
            depends_on = [str(k) for k in depends]
        elif isinstance(depends, list | tuple):
            depends_on = [str(d) for d in depends]
        running = svc.get("running")
        merged = {
            "image": svc.get("image"),
            "running": True if running is None else running,
            **composition,
            # The top-level labels and environment win over the composition's.
            "labels": {
                **environment.as_dict(composition.get("labels")),
                **environment.as_dict(svc.get("labels")),
            },
            "environment": {
                **environment.as_dict(composition.get("environment")),
                **environment.as_dict(svc.get("environment")),
            },
        }
        raw, ignored = split_supported(merged)
        if ignored:  # the user was told when the target was admitted (state/admission.py)
            log.debug("Ignoring unsupported or unknown compose fields: %s", ", ".join(ignored))

        networks, network_mode, mode_dependency = endpoints.from_compose(
            raw.get("networks"), raw.get("networkMode"), ctx.app_uuid, service_name
        )
        if mode_dependency is not None:
            depends_on = [*(depends_on or []), mode_dependency]

        env = environment.extend(
            raw["environment"],
            environment.injected(
                app_id=ctx.app_id,
                app_uuid=ctx.app_uuid,
                app_name=ctx.app_name,
                service_name=service_name,
                device_uuid=ctx.device_uuid,
                device_type=ctx.device_type,
                device_arch=ctx.device_arch,
                os_version=ctx.os_version,
            ),
            image_cfg.get("Env"),
        )
        service_labels = labels.extend(
            raw["labels"],
            app_id=ctx.app_id,
            app_uuid=ctx.app_uuid,
            service_id=service_id,
            service_name=service_name,
            image_labels=image_cfg.get("Labels"),
        )

        hostname = _str_or(raw.get("hostname"), "")
        if network_mode == "host" and not hostname:
            hostname = ctx.hostname

        command = as_argv(raw.get("command"))
        if command is None:
            command = as_argv(image_cfg.get("Cmd")) or []
        entrypoint = as_argv(raw.get("entrypoint"))
        if entrypoint is None:
            entrypoint = as_argv(image_cfg.get("Entrypoint")) or []

        volumes = mounts.union(
            (image_cfg.get("Volumes") or {}).keys(),
            mounts.sanitise(raw.get("volumes"), ctx.app_id),
            mounts.lock_binds(ctx.service_lock_dir(service_name)),
        )

        stop_grace = raw.get("stopGracePeriod")
        config: dict[str, Any] = {
            "image": (image_info or {}).get("Id") or raw.get("image"),
            "running": True if raw.get("running") is None else js_truthy(raw["running"]),
            "command": command,
            "entrypoint": entrypoint,
            "environment": env,
            "labels": service_labels,
            "networks": networks,
            "networkMode": network_mode,
            "hostname": hostname,
            "portMaps": ports.from_compose(raw.get("ports") or []),
            "volumes": volumes,
            "tmpfs": fields.string_list(raw.get("tmpfs")),
            "devices": [devices.parse_device(d) for d in raw.get("devices") or []],
            "deviceRequests": [],
            "capAdd": fields.string_list(raw.get("capAdd")),
            "capDrop": fields.string_list(raw.get("capDrop")),
            "dns": fields.string_list(raw.get("dns")),
            "dnsOpt": fields.string_list(raw.get("dnsOpt")),
            "dnsSearch": fields.string_list(raw.get("dnsSearch")),
            "extraHosts": fields.extra_hosts(raw.get("extraHosts")),
            "groupAdd": fields.string_list(raw.get("groupAdd")),
            "securityOpt": fields.security_opt(raw.get("securityOpt"), warn=True),
            "sysctls": fields.sysctls(raw.get("sysctls")),
            "ulimits": ulimits.from_compose(raw.get("ulimits")),
            "healthcheck": healthcheck.resolve(raw.get("healthcheck"), image_info),
            "restart": fields.restart_policy(raw.get("restart")),
            "stopSignal": _str_or(raw.get("stopSignal"), "") or image_cfg.get("StopSignal") or "SIGTERM",
            "stopGracePeriod": DEFAULT_STOP_GRACE_PERIOD
            if stop_grace is None
            else duration_seconds(stop_grace),
            "workingDir": _working_dir(_str_or(raw.get("workingDir"), image_cfg.get("WorkingDir") or "")),
            "user": _str_or(raw.get("user"), image_cfg.get("User") or ""),
            "memLimit": parse_size(raw.get("memLimit"), "0"),
            "memReservation": parse_size(raw.get("memReservation"), "0"),
            "shmSize": parse_size(raw.get("shmSize"), "64m"),
            "cpuShares": _non_zero_int(raw.get("cpuShares")),
            "cpuQuota": _non_zero_int(raw.get("cpuQuota")),
            "oomScoreAdj": _non_zero_int(raw.get("oomScoreAdj")),
            "cpus": _nano_cpus(raw.get("cpus")),
            "cpuset": _str_or(raw.get("cpuset"), ""),
            "cgroupParent": _str_or(raw.get("cgroupParent"), ""),
            "domainname": _str_or(raw.get("domainname"), ""),
            "ipc": _str_or(raw.get("ipc"), "shareable"),
            "macAddress": _str_or(raw.get("macAddress"), ""),
            "pid": _str_or(raw.get("pid"), ""),
            "pidsLimit": check_int(raw.get("pidsLimit")) or 0,
            "usernsMode": _str_or(raw.get("usernsMode"), ""),
            "oomKillDisable": js_truthy(raw.get("oomKillDisable")),
            "readOnly": js_truthy(raw.get("readOnly")),
            "privileged": js_truthy(raw.get("privileged")),
            "tty": True if raw.get("tty") is None else js_truthy(raw.get("tty")),
        }
        if raw.get("init") is not None:
            config["init"] = js_truthy(raw["init"])

        features.apply(
            config,
            features.FeatureInputs(
                listen_port=ctx.listen_port,
                api_endpoint=ctx.api_endpoint,
                device_api_key=ctx.device_api_key,
                scoped_api_key=ctx.scoped_api_key,
                supervisor_host=ctx.supervisor_host,
                supervisor_network=ctx.supervisor_network,
                docker_socket=ctx.docker_socket,
                host_paths=ctx.host_paths,
                board_rev=ctx.board_rev,
            ),
        )

        return cls(
            app_id=ctx.app_id,
            app_uuid=ctx.app_uuid,
            service_name=service_name,
            service_id=service_id,
            image_id=image_id,
            release_id=ctx.release_id,
            commit=ctx.commit,
            config=config,
            image_name=None if svc.get("image") is None else str(svc["image"]),
            depends_on=depends_on,
            docker_image_id=(image_info or {}).get("Id"),
            ignored_fields=tuple(ignored),
        )

    @classmethod
    def from_container(cls, inspect: Mapping[str, Any]) -> Service:
        """Read a supervised container back from the engine's inspect JSON."""
        state = inspect.get("State") or {}
        host = inspect.get("HostConfig") or {}
        cfg = inspect.get("Config") or {}
        container_id = str(inspect.get("Id") or "")

        if state.get("Restarting"):  # Running is true too: a crash loop is not "Running" (issue #11)
            status = "Restarting"
        elif state.get("Running"):
            status = "Running"
        elif state.get("Status") == "created":
            status = "Installed"
        elif state.get("Status") == "dead":
            status = "Dead"
        else:
            status = state.get("Status")

        hostname = cfg.get("Hostname") or ""
        if len(hostname) == 12 and container_id.startswith(hostname):
            hostname = ""  # the engine's default, i.e. no hostname was asked for

        stop_timeout = cfg.get("StopTimeout")
        config: dict[str, Any] = {
            "image": cfg.get("Image"),
            "running": bool(state.get("Running")),
            "command": list(cfg.get("Cmd") or []),
            "entrypoint": list(cfg.get("Entrypoint") or []),
            "environment": environment.without_device_name(environment.from_array(cfg.get("Env"))),
            "labels": labels.normalise(cfg.get("Labels")),
            "networks": endpoints.from_docker(
                (inspect.get("NetworkSettings") or {}).get("Networks"), container_id
            ),
            "networkMode": host.get("NetworkMode") or "",
            "hostname": hostname,
            "portMaps": ports.from_docker(host.get("PortBindings")),
            "volumes": mounts.from_docker(inspect),
            "tmpfs": fields.tmpfs_from_docker(host.get("Tmpfs")),
            "devices": [devices.from_docker(d) for d in host.get("Devices") or []],
            "deviceRequests": [devices.request_from_docker(r) for r in host.get("DeviceRequests") or []],
            "capAdd": list(host.get("CapAdd") or []),
            "capDrop": list(host.get("CapDrop") or []),
            "dns": list(host.get("Dns") or []),
            "dnsOpt": list(host.get("DnsOptions") or []),
            "dnsSearch": list(host.get("DnsSearch") or []),
            "extraHosts": list(host.get("ExtraHosts") or []),
            "groupAdd": list(host.get("GroupAdd") or []),
            "securityOpt": fields.security_opt(host.get("SecurityOpt")),
            "sysctls": dict(host.get("Sysctls") or {}),
            "ulimits": ulimits.from_docker(host.get("Ulimits")),
            "healthcheck": healthcheck.from_docker(cfg.get("Healthcheck")),
            "restart": fields.restart_from_docker(host.get("RestartPolicy")),
            "stopSignal": cfg.get("StopSignal") or "SIGTERM",
            "stopGracePeriod": DEFAULT_STOP_GRACE_PERIOD if stop_timeout is None else stop_timeout,
            "workingDir": cfg.get("WorkingDir") or "",
            "user": cfg.get("User") or "",
            "memLimit": host.get("Memory") or 0,
            "memReservation": host.get("MemoryReservation") or 0,
            "shmSize": host.get("ShmSize") or 0,
            "cpuShares": host.get("CpuShares") or 0,
            "cpuQuota": host.get("CpuQuota") or 0,
            "oomScoreAdj": host.get("OomScoreAdj") or 0,
            "cpus": 0,  # NanoCpus is not reported back reliably; never compared
            "cpuset": host.get("CpusetCpus") or "",
            "cgroupParent": host.get("CgroupParent") or "",
            "domainname": cfg.get("Domainname") or "",
            "ipc": host.get("IpcMode") or "",
            "macAddress": cfg.get("MacAddress") or "",
            "pid": host.get("PidMode") or "",
            "pidsLimit": host.get("PidsLimit") or 0,
            "usernsMode": host.get("UsernsMode") or "",
            "oomKillDisable": bool(host.get("OomKillDisable")),
            "readOnly": bool(host.get("ReadonlyRootfs")),
            "privileged": bool(host.get("Privileged")),
            "tty": bool(cfg.get("Tty")),
        }
        if host.get("Init") is not None:
            config["init"] = bool(host["Init"])

        app_id = check_int(config["labels"].get("io.balena.app-id"))
        if app_id is None:
            raise ComposeError(f"Found a service with no appId: {inspect.get('Name')}")
        service_id = check_int(config["labels"].get("io.balena.service-id"))
        if service_id is None:
            raise ComposeError("Attempt to build Service class from container with malformed labels")
        service_name = config["labels"].get("io.balena.service-name", "")
        parsed = parse_container_name(str(inspect.get("Name") or ""), service_name)
        if parsed is None:
            raise ComposeError(
                f"Expected supervised container to have name '{service_name or '<serviceName>'}"
                f"_<imageId>_<releaseId>_<commit>', got: {inspect.get('Name')}"
            )
        image_id, release_id, commit = parsed
        return cls(
            app_id=app_id,
            app_uuid=config["labels"].get("io.balena.app-uuid"),
            service_name=service_name,
            service_id=service_id,
            image_id=image_id,
            release_id=release_id,
            commit=commit,
            config=config,
            container_id=container_id,
            status=status,
            created_at=inspect.get("Created"),
            docker_image_id=cfg.get("Image"),
            exit_error_message=state.get("Error"),
            restart_count=int(inspect.get("RestartCount") or 0),
            exit_code=state.get("ExitCode"),
            finished_at=state.get("FinishedAt"),
        )

    # ---------------------------------------------------------------- engine

    def container_name(self) -> str:
        """`<serviceName>_<imageId>_<releaseId>_<commit>`."""
        return _container_name(self.service_name, self.image_id, self.release_id, self.commit)

    def create_body(
        self, *, device_name: str, container_ids: Mapping[str, str] | None = None
    ) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
        """The POST /containers/create body, and the extra networks to connect after create.

        `container_ids` maps service names to container ids, for `network_mode: service:<name>`.
        """
        if "\n" in device_name:
            raise ComposeError("The device name must not contain a newline")
        config = self.config
        binds, long_mounts, anonymous = mounts.to_docker(config["volumes"])
        exposed, bindings = ports.to_docker(config["portMaps"])
        network_mode = config["networkMode"]
        match = endpoints.SERVICE_MODE_RE.search(network_mode)
        if match is not None:
            container_id = (container_ids or {}).get(match[1])
            if not container_id:
                raise ComposeError(f"No container for network_mode: 'service: {match[1]}'")
            network_mode = f"container:{container_id}"
        main = {
            name: endpoints.to_endpoint_config(entry)
            for name, entry in config["networks"].items()
            if name == config["networkMode"]
        }
        env = {name: device_name for name in environment.DEVICE_NAME_VARS}
        env.update(config["environment"])

        host_config: dict[str, Any] = {
            "CapAdd": list(config["capAdd"]),
            "CapDrop": list(config["capDrop"]),
            "Binds": binds,
            "Mounts": long_mounts,
            "CgroupParent": config["cgroupParent"],
            "Devices": [dict(d) for d in config["devices"]],
            "DeviceRequests": [dict(r) for r in config["deviceRequests"]],
            "Dns": list(config["dns"]),
            "DnsOptions": list(config["dnsOpt"]),
            "DnsSearch": list(config["dnsSearch"]),
            "PortBindings": bindings,
            "ExtraHosts": list(config["extraHosts"]),
            "GroupAdd": list(config["groupAdd"]),
            "NetworkMode": network_mode,
            "PidMode": config["pid"],
            "PidsLimit": config["pidsLimit"],
            "SecurityOpt": list(config["securityOpt"]),
            "Sysctls": dict(config["sysctls"]),
            "Ulimits": ulimits.to_docker(config["ulimits"]),
            "RestartPolicy": fields.restart_to_docker(config["restart"]),
            "CpuShares": config["cpuShares"],
            "CpuQuota": config["cpuQuota"],
            "CpusetCpus": config["cpuset"],
            "Memory": config["memLimit"],
            "MemoryReservation": config["memReservation"],
            "OomKillDisable": config["oomKillDisable"],
            "OomScoreAdj": config["oomScoreAdj"],
            "Privileged": config["privileged"],
            "ReadonlyRootfs": config["readOnly"],
            "ShmSize": config["shmSize"],
            "Tmpfs": fields.tmpfs_to_docker(config["tmpfs"]),
            "UsernsMode": config["usernsMode"],
            "NanoCpus": config["cpus"],
            "IpcMode": config["ipc"],
        }
        if "init" in config:
            host_config["Init"] = config["init"]
        body: dict[str, Any] = {
            "Tty": config["tty"],
            "Cmd": list(config["command"]),
            "Volumes": anonymous,
            "Entrypoint": list(config["entrypoint"]),
            "Env": environment.to_array(env),
            "ExposedPorts": exposed,
            "Image": config["image"],
            "Labels": dict(config["labels"]),
            "NetworkingConfig": {"EndpointsConfig": main},
            "StopSignal": config["stopSignal"],
            "Domainname": config["domainname"],
            "Hostname": config["hostname"],
            "MacAddress": config["macAddress"],
            "User": config["user"],
            "WorkingDir": config["workingDir"],
            "Healthcheck": healthcheck.to_docker(config["healthcheck"]),
            "StopTimeout": config["stopGracePeriod"],
            "HostConfig": host_config,
        }
        return body, self.extra_networks()

    def extra_networks(self) -> list[tuple[str, dict[str, Any]]]:
        """Networks other than the main one, as (name, EndpointSettings) to connect after create."""
        return [
            (name, endpoints.to_endpoint_config(entry))
            for name, entry in self.config["networks"].items()
            if name != self.config["networkMode"]
        ]

    # ---------------------------------------------------------------- comparison

    def _plain(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in _OMIT_FIELDS and k not in _ARRAY_FIELDS}

    def _different_arrays(self, target: Service) -> list[str]:
        different = [
            name
            for name in UNORDERED_ARRAY_FIELDS
            if _canonical_list(self.config.get(name)) != _canonical_list(target.config.get(name))
        ]
        different += [
            name
            for name in ORDERED_ARRAY_FIELDS
            if list(self.config.get(name) or []) != list(target.config.get(name) or [])
        ]
        return different

    def _same_network_mode(self, target: Service, container_ids: Mapping[str, str]) -> bool:
        return endpoints.same_network_mode(
            self.config.get("networkMode") or "",
            target.config.get("networkMode") or "",
            self.config.get("hostname", ""),
            target.config.get("hostname", ""),
            container_ids,
        )

    def is_equal_config(self, target: Service, container_ids: Mapping[str, str] | None = None) -> bool:
        """Whether this (current) container already has the target's configuration (§3.10)."""
        ids = container_ids or {}
        same_networks = endpoints.same_networks(
            self.config.get("networks") or {}, target.config.get("networks") or {}
        )
        same_plain = self._plain() == target._plain()
        different_arrays = self._different_arrays(target)
        same_mode = self._same_network_mode(target, ids)
        equal = same_networks and same_plain and not different_arrays and same_mode
        if not equal and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "Replacing container for service %s because of config changes: %s",
                self.service_name,
                self.config_diff(target, ids),
            )
        return equal

    def is_equal_except_running(
        self, target: Service, container_ids: Mapping[str, str] | None = None
    ) -> bool:
        """Same config and same commit (a commit-only change is a rename, not a recreate)."""
        return self.is_equal_config(target, container_ids) and self.commit == target.commit

    def is_equal(self, target: Service, container_ids: Mapping[str, str] | None = None) -> bool:
        """Same config, same commit and same running state."""
        return self.is_equal_except_running(target, container_ids) and self.config.get(
            "running"
        ) == target.config.get("running")

    def config_diff(self, target: Service, container_ids: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What differs, as `{field: {"current": ..., "target": ...}}`; env values read "hidden"."""
        diff: dict[str, Any] = {}
        current_plain, target_plain = self._plain(), target._plain()
        for key in sorted(set(current_plain) | set(target_plain)):
            a, b = current_plain.get(key), target_plain.get(key)
            if a == b:
                continue
            if key == "environment":
                a, b = a or {}, b or {}
                changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                diff[key] = {
                    "current": {k: "hidden" for k in changed if k in a},
                    "target": {k: "hidden" for k in changed if k in b},
                }
            else:
                diff[key] = {"current": a, "target": b}
        for key in self._different_arrays(target):
            diff[key] = {"current": self.config.get(key), "target": target.config.get(key)}
        if not endpoints.same_networks(
            self.config.get("networks") or {}, target.config.get("networks") or {}
        ):
            diff["networks"] = {
                "current": self.config.get("networks"),
                "target": target.config.get("networks"),
            }
        if not self._same_network_mode(target, container_ids or {}):
            for key in ("networkMode", "hostname"):
                if self.config.get(key) != target.config.get(key):
                    diff[key] = {"current": self.config.get(key), "target": target.config.get(key)}
            diff.setdefault(
                "networkMode",
                {"current": self.config.get("networkMode"), "target": target.config.get("networkMode")},
            )
        return diff

    # ---------------------------------------------------------------- queries

    def has_network(self, name: str) -> bool:
        """Joins the app network `name` (engine name by app uuid, or by app id for old containers)."""
        networks = self.config.get("networks") or {}
        return f"{self.app_uuid}_{name}" in networks or f"{self.app_id}_{name}" in networks

    def has_network_mode(self, name: str) -> bool:
        """Uses the app network `name` as its network mode."""
        mode = self.config.get("networkMode")
        return mode in (f"{self.app_uuid}_{name}", f"{self.app_id}_{name}")

    def has_volume(self, name: str) -> bool:
        """Mounts the app volume `name`."""
        wanted = f"{self.app_id}_{name}"
        return any(mounts.named_source(v) == wanted for v in self.config.get("volumes") or [])

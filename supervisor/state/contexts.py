"""What the device contributes to each target service (:class:`ServiceContext`), and the target apps.

The planner compares target services with containers, so a target service must be built with the
same device facts, lock directories and image defaults the container got when it was created. This
module is the one place those facts are gathered; the reconcile loop calls :meth:`TargetBuilder.build`
every round, because a target service names its image by engine id once the image is present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from supervisor.compose import ServiceContext
from supervisor.compose.validation import check_truthy
from supervisor.state.planner import SUPERVISOR_API_LABEL, TargetApps, target_apps
from supervisor.state.target import TargetApp, TargetService

if TYPE_CHECKING:
    from supervisor.apikeys import ApiKeys
    from supervisor.config import Config
    from supervisor.host import HostFacts
    from supervisor.state.images import ImageManager
    from supervisor.state.store import TargetStore

__all__ = ["TargetBuilder", "app_context", "device_context", "placeholder_device"]


def device_context(**facts: Any) -> ServiceContext:
    """The device's part of every service's context (the app's fields left blank): one per build,
    made a service's by :func:`app_context`. Keywords are ServiceContext's device fields."""
    return ServiceContext(app_id=0, app_uuid="", app_name="", release_id=0, commit="", **facts)


def placeholder_device(device_name: str) -> ServiceContext:
    """Facts that shape a container body but not whether the engine can create it (admission)."""
    return device_context(device_uuid="0" * 32, device_type="generic", device_arch="amd64",
                          device_name=device_name, os_version="", hostname="device")


def app_context(
    device: ServiceContext,
    app: TargetApp,
    *,
    scoped_api_key: str | None = None,
    image_info: dict[str, Any] | None = None,
) -> ServiceContext:
    """The context of a service of ``app``'s release on ``device``: the one way one is made."""
    release = app.release
    assert release is not None  # only services of a release are built
    return replace(device, app_id=app.id, app_uuid=app.uuid, app_name=app.name, release_id=release.id,
                   commit=release.commit, scoped_api_key=scoped_api_key, image_info=image_info)


class TargetBuilder:
    """Builds the planner's target apps from the stored target of the active source.

    ``source`` says whose target the engine follows (``'local'`` or the apiEndpoint) at each call;
    ``listen_port`` is the port services reach the supervisor API on; ``supervisor_network`` False
    (``--no-host-setup``) has them reach it through the host's address instead of supervisor0;
    ``docker_socket`` is the engine socket's host path, bound into services that ask for it.
    """

    def __init__(
        self,
        config: Config,
        store: TargetStore,
        api_keys: ApiKeys,
        host: HostFacts,
        *,
        source: Callable[[], str],
        lock_root: str,
        listen_port: int,
        supervisor_network: bool = True,
        docker_socket: str = "/var/run/docker.sock",
    ) -> None:
        self.config = config
        self.store = store
        self.api_keys = api_keys
        self.host = host
        self.source = source
        self.lock_root = lock_root
        self.listen_port = listen_port
        self.supervisor_network = supervisor_network
        self.docker_socket = docker_socket

    def build(self, images: ImageManager) -> TargetApps:
        """The target apps as compose objects, image defaults read from the engine."""
        device = self.store.get_target(self.source())
        return target_apps(device, self.context_for(images))

    def device(self) -> ServiceContext:
        """The device's facts as they are now (read once per build)."""
        config, host = self.config, self.host
        device_uuid = config.uuid
        return device_context(
            device_uuid=device_uuid,
            device_type=host.device_type,
            device_arch=host.device_arch,
            device_name=config.get_db("name"),
            os_version=host.os_version or "",
            hostname=host.hostname or config.json.get("hostname") or device_uuid[:7],
            listen_port=self.listen_port,
            api_endpoint=config.api_endpoint,
            device_api_key=config.json.get("deviceApiKey") or "",
            host_paths=host.host_paths,
            lock_root=self.lock_root,
            board_rev=host.board_rev,
            supervisor_network=self.supervisor_network,
            docker_socket=self.docker_socket,
        )

    def context_for(self, images: ImageManager) -> Callable[[TargetApp, TargetService], ServiceContext]:
        device = self.device()

        def context(app: TargetApp, svc: TargetService) -> ServiceContext:
            # Only services that asked for the supervisor API get a key (spec §1.2 scoped keys).
            wants_api = check_truthy(svc.labels.get(SUPERVISOR_API_LABEL))
            return app_context(
                device,
                app,
                scoped_api_key=self.api_keys.scoped_key(app.id, svc.name) if wants_api else None,
                image_info=images.image_info(svc.image),
            )

        return context

"""What the device contributes to each target service (:class:`ServiceContext`), and the target apps.

The planner compares target services with containers, so a target service must be built with the
same device facts, lock directories and image defaults the container got when it was created. This
module is the one place those facts are gathered; the reconcile loop calls :meth:`TargetBuilder.build`
every round, because a target service names its image by engine id once the image is present.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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

__all__ = ["TargetBuilder"]


class TargetBuilder:
    """Builds the planner's target apps from the stored target of the active source.

    ``source`` says whose target the engine follows (``'local'`` or the apiEndpoint) at each call;
    ``listen_port`` is the port services reach the supervisor API on; ``supervisor_network`` False
    (``--no-host-setup``) has them reach it through the host's address instead of supervisor0.
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
    ) -> None:
        self.config = config
        self.store = store
        self.api_keys = api_keys
        self.host = host
        self.source = source
        self.lock_root = lock_root
        self.listen_port = listen_port
        self.supervisor_network = supervisor_network

    def build(self, images: ImageManager) -> TargetApps:
        """The target apps as compose objects, image defaults read from the engine."""
        device = self.store.get_target(self.source())
        return target_apps(device, self.context_for(images))

    def context_for(self, images: ImageManager) -> Callable[[TargetApp, TargetService], ServiceContext]:
        config, host = self.config, self.host
        device_uuid = config.uuid
        device_name = config.get_db("name")
        hostname = host.hostname or config.json.get("hostname") or device_uuid[:7]

        def context(app: TargetApp, svc: TargetService) -> ServiceContext:
            release = app.release
            assert release is not None  # target_apps only asks for services of a release
            # Only services that asked for the supervisor API get a key (spec §1.2 scoped keys).
            wants_api = check_truthy(svc.labels.get(SUPERVISOR_API_LABEL))
            return ServiceContext(
                app_id=app.id,
                app_uuid=app.uuid,
                app_name=app.name,
                release_id=release.id,
                commit=release.commit,
                device_uuid=device_uuid,
                device_type=host.device_type,
                device_arch=host.device_arch,
                device_name=device_name,
                os_version=host.os_version or "",
                listen_port=self.listen_port,
                api_endpoint=config.api_endpoint,
                device_api_key=config.json.get("deviceApiKey") or "",
                scoped_api_key=self.api_keys.scoped_key(app.id, svc.name) if wants_api else None,
                hostname=hostname,
                host_paths=host.host_paths,
                image_info=images.image_info(svc.image),
                lock_root=self.lock_root,
                board_rev=host.board_rev,
                supervisor_network=self.supervisor_network,
            )

        return context

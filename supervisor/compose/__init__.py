"""The compose layer: service, network and volume configs, shaped as the reference supervisor does.

Pure: nothing here talks to the engine. Targets and engine inspect JSON go in; normalised configs,
create bodies and comparisons come out. A container created by either supervisor from the same
target must compare equal, so the reference's behaviour is kept, quirks included (e.g. a `$` inside
single quotes in a string `command` keeps its backslash). It differs only where the reference can
never reach a stable state or sends something the engine ignores:

* `restart: no` is sent as `no` (the reference sends an empty name); both read back as `no`.
* `network_mode: container:<x>` falls back to the default network (the reference ends up on
  `<appUuid>_undefined`).
* Long-syntax volumes accept `read_only`, and keep only options of their own type that are set
  (the reference keeps options the engine never reports back, so it never compares equal).
* `link_local_ips` is read back from the engine's `LinkLocalIPs`; network aux addresses are sent and
  read as `AuxiliaryAddresses` (the reference uses names the engine does not know).
* Port maps fold per host and protocol, so the same range on tcp and udp compares equal.
* `StopTimeout: 0` reads back as 0; a compose healthcheck without `test` keeps the image's test;
  `tmpfs` entries with options (`/run:size=1m`) are split for the engine and joined back.
* `storage_opt` is accepted and dropped; `depends_on` in dict form gives its keys; `environment` and
  `labels` may be `K=V` lists; a malformed `${}` in a command is kept as text instead of failing.
"""

from .errors import ComposeError, InvalidNameError, InvalidPortDefinition
from .naming import lock_dir_for, network_name, volume_name
from .network import Network
from .service import Service, ServiceContext, parse_container_name
from .volume import Volume

__all__ = [
    "ComposeError",
    "InvalidNameError",
    "InvalidPortDefinition",
    "Network",
    "Service",
    "ServiceContext",
    "Volume",
    "lock_dir_for",
    "network_name",
    "parse_container_name",
    "volume_name",
]

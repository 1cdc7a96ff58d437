"""The one place a cloud target is validated before it is stored (issue "Never lose an app").

The admission gate (``state/admission.py``, the same one local targets and ``apps.json`` pass): the
structural parse, what the engine or the kernel would refuse, and every container body built. Raises
:class:`TargetStateError` whose ``path`` is the field in the cloud's document
(``<deviceUuid>.apps.<appUuid>.releases.<commit>.services.<name>.composition.ports[0]``); nothing is
stored when it raises. Unknown keys are ignored, one warning each in the log; the binder calls this
only for a new target body (a 304 is not re-validated), so a key is not warned about on every poll.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..state.admission import validate
from ..state.target import TargetDevice

if TYPE_CHECKING:
    from ..state.hostview import HostView

log = logging.getLogger(__name__)


def validate_cloud_target(body: Any, uuid: str, *, host: HostView | None = None) -> TargetDevice:
    """The v3 target of this device (``{<uuid>: {name, config, apps}}``), admitted; with ``host``,
    also against what the device holds outside it (HostConflict)."""
    target, warnings = validate(body, uuid, host=host)
    for warning in warnings:
        log.warning("Cloud target: %s", warning)
    return target

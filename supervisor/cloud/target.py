"""The one place a cloud target is validated before it is stored (issue "Never lose an app").

Until the validation layer (branch ``validate``) lands this is the target model's own parse; the
merge replaces the call below and nothing else. Raises :class:`TargetStateError` whose message
names the field as the cloud wrote it; nothing is stored when it raises.
"""

from __future__ import annotations

from typing import Any

from ..state.target import TargetDevice, parse_target_state


def validate_cloud_target(body: Any, uuid: str) -> TargetDevice:
    """The v3 target of this device (``{<uuid>: {name, config, apps}}``), validated."""
    return parse_target_state(body, uuid)

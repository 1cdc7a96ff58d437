"""Access to the supervisor behind the current request (no module globals: see create_app)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    from ..runtime import Supervisor


def supervisor() -> Supervisor:
    return current_app.extensions["supervisor"]

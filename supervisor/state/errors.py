"""Why a service is not where the target wants it: the last failed step of each service (issue #11).

The reconcile loop hands every batch's results to :meth:`ServiceErrors.note`; the API reads
:meth:`ServiceErrors.snapshot` through the report (supervisor/state/report.py), which adds the
``error: {message, since, retries}`` field to the affected services. A step that acts on a whole app
(``takeLock``, a network or volume of the app) is an app-wide error (service name None): every service of
the app carries it. An error goes when a step for the same service (or app) succeeds, or when the target
has been applied.

A fetch refused because the image is still in its download backoff is not a new attempt: the message of
the real failure (``manifest unknown``, ...) stays, and ``retries`` counts attempts that reached the
registry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from supervisor.state.steps import Fetch, RemoveImage, SaveImage, Step, TakeLock

if TYPE_CHECKING:
    from supervisor.state.current import Image
    from supervisor.state.executor import StepResult

__all__ = ["ServiceError", "ServiceErrors", "Key", "step_keys"]

#: (app id, service name); service name None for an error of the whole app.
Key = tuple[int, str | None]


@dataclass(frozen=True)
class ServiceError:
    """``since``: epoch seconds of the first failure in a row; ``retries``: failed attempts in a row
    (1 after the first); ``image``: the image a failed fetch was for (reported in the images list)."""

    message: str
    since: float
    retries: int
    action: str
    image: Image | None = None


def step_keys(step: Step) -> list[Key]:
    """The services (or apps) a step acts on."""
    if isinstance(step, Fetch):
        return [(step.image.app_id, step.service_name)]
    if isinstance(step, SaveImage | RemoveImage):
        return [(step.image.app_id, step.image.service_name)]
    if isinstance(step, TakeLock):
        return [(step.app_id, name) for name in step.services] or [(step.app_id, None)]
    subject: Any = getattr(step, "target", None) or getattr(step, "current", None)
    app_id = getattr(subject, "app_id", None)
    if not isinstance(app_id, int):
        return []
    return [(app_id, getattr(subject, "service_name", None))]


def _backoff(result: StepResult) -> bool:
    from supervisor.state.images import ImageDownloadBackoffError

    error = result.error
    return error is not None and isinstance(error.__cause__, ImageDownloadBackoffError)


class ServiceErrors:
    """The per-service errors of the current apply; safe to read from any thread."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._errors: dict[Key, ServiceError] = {}

    def note(self, results: Iterable[StepResult]) -> None:
        """Record a batch's outcome: failures add or count up, successes clear their services."""
        now = self._clock()
        with self._lock:
            for result in results:
                for key in step_keys(result.step):
                    error = result.error
                    if error is None:
                        self._errors.pop(key, None)
                        continue
                    old = self._errors.get(key)
                    if old is not None and _backoff(result):
                        continue  # not an attempt: keep the real failure's message
                    image = result.step.image if isinstance(result.step, Fetch) else None
                    self._errors[key] = (
                        ServiceError(error.reason, now, 1, error.action, image) if old is None else
                        replace(old, message=error.reason, retries=old.retries + 1, action=error.action,
                                image=image or old.image)
                    )

    def clear(self) -> None:
        with self._lock:
            self._errors.clear()

    def snapshot(self) -> Mapping[Key, ServiceError]:
        with self._lock:
            return dict(self._errors)

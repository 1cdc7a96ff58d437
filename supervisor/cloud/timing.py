"""Every interval of the cloud binder in one place (spec §10), in seconds.

Production uses the reference's values. ``PYSUPERVISOR_CLOUD_TIME_SCALE`` (a factor, default 1)
scales all of them, the poll interval read from config included, so tests and ``bench_fleet.py``
can run a ten-minute outage in seconds without changing what a device does; request timeouts and
a server's ``Retry-After`` are never scaled (they are about the network and the server, not us).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

TIME_SCALE_ENV = "PYSUPERVISOR_CLOUD_TIME_SCALE"


@dataclass(frozen=True)
class Timing:
    scale: float = 1.0
    #: §10.3: ``pollInterval = appUpdatePollInterval + random() x 60 s``.
    poll_jitter: float = 60.0
    #: §10.3/§10.4/§10.5: every retry starts at 15 s and doubles up to the poll interval.
    backoff_min: float = 15.0
    #: §10.4: at most one state report every 10 s ...
    report_min_interval: float = 10.0
    #: ... and a metrics-only report at most every 300 s.
    metrics_interval: float = 300.0
    #: §10.5: at most one tags report every 10 s.
    tags_min_interval: float = 10.0
    #: §10.7: the TCP connectivity check runs every 10 s.
    connectivity_interval: float = 10.0
    #: A fetched tag list is fresh this long for ``GET /v2/device/tags``.
    tags_fresh: float = 10.0
    #: How often the binder looks at local mode while it waits (real seconds, never scaled: it is
    #: about responsiveness, and a fleet of scaled binders must not spin).
    idle_check: float = 1.0

    @classmethod
    def from_env(cls) -> Timing:
        raw = os.environ.get(TIME_SCALE_ENV)
        try:
            scale = float(raw) if raw else 1.0
        except ValueError:
            raise SystemExit(f"supervisor: {TIME_SCALE_ENV} must be a number, got {raw!r}") from None
        return cls().scaled(scale) if scale != 1.0 else cls()

    def scaled(self, factor: float) -> Timing:
        if factor <= 0:
            raise ValueError("time scale must be positive")
        values = {
            f.name: getattr(self, f.name) * factor
            for f in fields(self)
            if f.name not in ("scale", "idle_check")
        }
        return replace(self, scale=self.scale * factor, **values)

    def ms(self, milliseconds: float) -> float:
        """A configured interval in ms (poll interval, bootstrap delay) as scaled seconds."""
        return milliseconds / 1000 * self.scale

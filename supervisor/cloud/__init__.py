"""The cloud binder and everything a managed device says to the balena API (spec §10).

``binder.py`` is the subsystem; ``client.py`` the shared HTTP session, ``backoff.py`` the retry
rule, ``provision.py`` registration and key exchange, ``report.py`` state reports with
``metrics.py``, ``tags.py`` the tag reporter and tag list, ``connectivity.py`` the TCP check,
``timing.py`` every interval, ``target.py`` the validation call before a target is stored.
"""

from .binder import CloudBinder, DeviceSide
from .client import ApiClient, CloudRequestError, CloudUnavailableError
from .tags import TagStore
from .timing import Timing

__all__ = [
    "ApiClient",
    "CloudBinder",
    "CloudRequestError",
    "CloudUnavailableError",
    "DeviceSide",
    "TagStore",
    "Timing",
]

"""A log backend that appends every message to a file as NDJSON and acknowledges it (a test hook).

Set ``SUPERVISOR_TEST_LOG_SINK=<path>`` and the supervisor registers it: end-to-end tests read
every message of every run of the supervisor (the local stream only carries what is published
while a client listens) and exercise delivery acknowledgements (supervisor/logs/hub.py
``LogBackend``) as the cloud backend gives them. Not for devices: the file grows without bound.
"""

from __future__ import annotations

import threading
from typing import Any

from .codec import load


class FileSink:
    acknowledges = True

    def __init__(self, path: str) -> None:
        self._file = open(path, "ab")  # noqa: SIM115 - open for the supervisor's lifetime
        self._lock = threading.Lock()
        self._encode_many = load().encode_many

    def log(self, message: Any) -> None:
        self.log_many([message])

    def log_many(self, messages: list[Any]) -> None:
        acks = [m["_ack"] for m in messages if "_ack" in m]
        public = [{k: v for k, v in m.items() if k[:1] != "_"} for m in messages] if acks else messages
        with self._lock:
            self._file.write(self._encode_many(public))
            self._file.flush()
        for ack in acks:
            ack()

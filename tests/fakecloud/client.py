"""The fake API as a separate process, and a client for its control routes (what tests use)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class FakeCloud:
    """``python -m tests.fakecloud`` on a fixed port with its SQLite file, restartable (``stop``,
    ``start``) with the same data; ``url`` is what a device's ``apiEndpoint`` says."""

    def __init__(
        self, workdir: Path, port: int, *, metrics_throttle_s: float = 60.0, logs_unknown_delay_s: float = 1.0
    ) -> None:
        self.workdir = workdir
        self.port = port
        self.db = workdir / "fakecloud.sqlite"
        self.log_path = workdir / "fakecloud.log"
        self.metrics_throttle_s = metrics_throttle_s
        #: The real server waits 55 s before refusing a log stream of an unknown device (§5.1).
        self.logs_unknown_delay_s = logs_unknown_delay_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.trust_env = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> FakeCloud:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.fakecloud",
                    "--port",
                    str(self.port),
                    "--db",
                    str(self.db),
                    "--metrics-throttle",
                    str(self.metrics_throttle_s),
                    "--logs-unknown-delay",
                    str(self.logs_unknown_delay_s),
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fakecloud exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.session.get(f"{self.url}/ping", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"fakecloud not ready after {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        """The API goes away (connections refused) until :meth:`start`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # ------------------------------------------------------------------------------ control
    def _call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = self.session.request(
            method, f"{self.url}/_fake{path}", json=body, params=params, timeout=30
        )
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def create_application(
        self, name: str = "fleet", device_type: str = "generic-amd64", app_id: int | None = None
    ) -> dict[str, Any]:
        return self._call("POST", "/applications", {"name": name, "device_type": device_type, "id": app_id})

    def create_device(self, application: int, uuid: str, api_key: str, **kw: Any) -> int:
        """A device that is already registered (``id``, ``device_name`` optional)."""
        return self._call(
            "POST", "/devices", {"application": application, "uuid": uuid, "api_key": api_key, **kw}
        )["id"]

    def create_key(self, role: str, **kw: Any) -> str:
        return self._call("POST", "/keys", {"role": role, **kw})["key"]

    def provisioning_key(self, application: int) -> str:
        return self.create_key("provisioning-api-key", application=application)

    def revoke(self, *, key: str | None = None, device: int | None = None) -> None:
        self._call("POST", "/keys/revoke", {"key": key} if key is not None else {"device": device})

    def create_release(self, application: int, services: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return self._call("POST", "/releases", {"application": application, "services": services, **kw})

    def set_target(self, application: int, release: int | None) -> None:
        self._call("PATCH", f"/applications/{application}", {"target_release": release})

    def set_var(self, kind: str, owner: Any, name: str, value: str) -> None:
        self._call("POST", "/vars", {"kind": kind, "owner": owner, "name": name, "value": value})

    def fault(self, kind: str, **kw: Any) -> int:
        return self._call("POST", "/faults", {"kind": kind, **kw})["id"]

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def devices(self) -> list[dict[str, Any]]:
        return self._call("GET", "/devices")

    def device(self, uuid: str) -> dict[str, Any] | None:
        return next((d for d in self.devices() if d["uuid"] == uuid), None)

    def reports(self, uuid: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"after": after}
        if uuid:
            params["uuid"] = uuid
        return self._call("GET", "/reports", **params)

    def requests(self, after: int = 0) -> list[dict[str, Any]]:
        return self._call("GET", "/requests", after=after)

    def logs(self, uuid: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """Lines the log stream stored (§5.1), oldest first: ``message``, ``timestamp``, ``isSystem``,
        ``isStdErr``, ``serviceId`` (when sent), ``stream`` (one per request), ``id``."""
        params: dict[str, Any] = {"after": after}
        if uuid:
            params["uuid"] = uuid
        return self._call("GET", "/logs", **params)

    def log_counts(self, uuid: str | None = None, after: int = 0) -> dict[str, Any]:
        """Per-service counts of the stored lines after id ``after`` (``GET /_fake/log-counts``):
        ``services`` [{serviceId, lines, distinct, min, max, firstAt, lastAt}], ``system``,
        ``suppressed``, ``lastId``."""
        params: dict[str, Any] = {"after": after}
        if uuid:
            params["uuid"] = uuid
        return self._call("GET", "/log-counts", **params)

    def log_streams(self) -> dict[str, int]:
        """``open``: log-stream requests open now; ``opened``: since this server process started."""
        return self._call("GET", "/log-streams")

    def stats(self, since: float = 0, until: float = 1e12) -> list[dict[str, Any]]:
        return self._call("GET", "/stats", since=since, until=until)

"""Serving the API with waitress in a thread we can stop, and building its Flask app when first needed.

waitress runs an asyncore loop until its socket map is empty; to stop promptly we ask the loop
itself (through its trigger) to close every channel, so ``run()`` returns without waiting for its
poll timeout, then shut the worker pool down.

Flask, werkzeug, Jinja2, click, itsdangerous and the OpenSSL they load (hashlib, ssl) are about 12 MB
resident (issue #17: idle <= 30 MB). :class:`LazyApp` answers the two routes an idle device is asked
(``GET /ping``, ``GET /v1/healthy``: healthchecks, spec §1.3) as the Flask app does, and builds the app
at the first other request; from then on everything goes to Flask. Nothing here imports Flask.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from ..runtime import Supervisor

log = logging.getLogger(__name__)
request_log = logging.getLogger("supervisor.api")


def log_line(method: str, path: str, status: int, elapsed_ms: float, reason: Callable[[], str]) -> None:
    """One line per request: DEBUG when it went well (a client polling ``/v2/state/status`` must not
    flood the journal), INFO with the reason for a client error, ERROR for a server error. The
    path only: the query string may carry an API key, which must never be logged."""
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.ERROR
    if not request_log.isEnabledFor(level):
        return
    if status < 400:
        request_log.debug("%s %s %s - %.1f ms", method, path, status, elapsed_ms)
        return
    request_log.log(level, "%s %s %s - %.1f ms: %s", method, path, status, elapsed_ms, reason())


class LazyApp:
    """The WSGI app waitress serves: ``/ping`` and ``/v1/healthy`` here, the rest through the Flask app
    (``build()``), made at the first request that needs it. The answers, request log line and
    ``api_requests`` metric are the Flask routes' (supervisor/api/v1.py); a device about to go down
    is left to Flask (its 503)."""

    LIGHT = frozenset({"/ping", "/v1/healthy"})

    def __init__(self, supervisor: Supervisor, build: Callable[[], Flask]) -> None:
        self.supervisor = supervisor
        self._build = build
        self._flask: Flask | None = None
        self._lock = threading.Lock()

    @property
    def flask(self) -> Flask:
        if self._flask is None:
            with self._lock:
                if self._flask is None:
                    started = time.monotonic()
                    self._flask = self._build()
                    log.debug("API app built in %.0f ms", (time.monotonic() - started) * 1000)
        return self._flask

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if self._flask is None and method in ("GET", "HEAD") and path in self.LIGHT:
            power = getattr(self.supervisor, "power", None)
            if power is None or power.going_down is None:
                return self._light(method, path, start_response)
        return self.flask(environ, start_response)

    def _light(self, method: str, path: str, start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.monotonic()
        status, body = 200, b"OK"
        if path == "/v1/healthy":
            problems = [reason for ok, reason in self.supervisor.health() if not ok]
            if problems:
                request_log.warning("Healthcheck failed: %s", "; ".join(problems))
                status, body = 500, b"Unhealthy"
        start_response("200 OK" if status == 200 else "500 INTERNAL SERVER ERROR",
                       [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        log_line(method, path, status, (time.monotonic() - started) * 1000, body.decode)
        metrics = getattr(self.supervisor, "metrics", None)
        if metrics is not None:
            metrics.inc("api_requests", 1, path, method, str(status))
        return [] if method == "HEAD" else [body]


class ListenError(Exception):
    """The API cannot listen where it was told to; the message is one line naming the address."""


def _listen_error(host: str, port: int, err: OSError) -> ListenError:
    if err.errno == errno.EADDRINUSE:
        return ListenError(f"port {port} is already in use on {host}: stop what listens there "
                           "(another supervisor?) or choose another port with --port")
    if err.errno == errno.EACCES:
        return ListenError(f"no permission to listen on port {port} ({host}): "
                           "use a port above 1023, or run as root")
    return ListenError(f"cannot listen on {host}:{port}: {err.strerror or err}")


class ApiServer:
    def __init__(self, app: Callable[..., Any], host: str, port: int, threads: int = 8) -> None:
        from waitress.server import create_server

        try:
            self._server = create_server(
                app, host=host, port=port, threads=threads, ident="supervisor",
                clear_untrusted_proxy_headers=True,
                # Keep reading a connection during its request, so a stream sees its client leave
                # (``waitress.client_disconnected``, supervisor/api/streams.py).
                channel_request_lookahead=1,
                # A stream whose client reads slowly waits at 512 KiB of unsent output (waitress's
                # default lets 16 MiB pile up per connection, 1 MiB of it in RAM): the log hub's
                # bounded queue then drops for that client alone (docs/API.md, "Streaming").
                outbuf_high_watermark=512 * 1024,
            )
        except OSError as err:  # bind() failed: say where, in one line (the CLI exits 2)
            raise _listen_error(host, port, err) from None
        self._thread: threading.Thread | None = None
        self._pool_lock = threading.Lock()
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._server.effective_port)  # type: ignore[attr-defined]  # waitress may give a str

    def set_threads(self, count: int) -> None:
        """Grow or shrink the worker pool (an idle worker ends when the pool shrinks). Nothing once
        stopped: a stream ending after :meth:`stop` would otherwise start a new pool nobody ends."""
        with self._pool_lock:
            if not self._stopped:
                self._server.task_dispatcher.set_thread_count(count)  # type: ignore[attr-defined]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._thread.start()
        log.info("Supervisor API listening on port %s", self.port)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pause(self) -> None:
        """Stop accepting connections (the listening socket closes; open connections are served)."""
        server = self._server

        def close_listener() -> None:
            if server.accepting:
                server.accepting = False
                server.del_channel()
                server.socket.close()

        server.trigger.pull_trigger(close_listener)  # type: ignore[attr-defined]

    def resume(self) -> None:
        """Listen again on the same address after :meth:`pause`."""
        server = self._server

        def reopen_listener() -> None:
            if not server.accepting:
                server.create_socket(server.family, server.socktype)
                server.set_reuse_addr()
                server.bind_server_socket()
                server.accept_connections()

        server.trigger.pull_trigger(reopen_listener)  # type: ignore[attr-defined]

    def stop(self, timeout: float = 1.0) -> None:
        from waitress import wasyncore

        server = self._server
        with self._pool_lock:
            self._stopped = True
        if self._thread is None or not self._thread.is_alive():
            server.close()
            return
        # Run the close inside the loop thread: closing sockets from here would race its poll.
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # type: ignore[attr-defined]
        except OSError as err:  # the trigger is gone: the loop cannot be woken by it
            log.warning("API server trigger unusable (%s): closing its sockets directly", err)
            self._thread.join(timeout)  # the loop may be closing the broken trigger itself
            if self._thread.is_alive():
                # Socket objects only: their close is idempotent. The trigger's raw fd numbers are
                # left to the loop, which closes them once (closing them here too could hit reused
                # numbers).
                trigger = server.trigger  # type: ignore[attr-defined]
                for channel in list(server._map.values()):  # type: ignore[attr-defined]
                    if channel is not trigger:
                        channel.close()
        self._thread.join(timeout)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)  # type: ignore[attr-defined]

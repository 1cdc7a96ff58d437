"""Serving the Flask app with waitress in a thread we can stop.

waitress runs an asyncore loop until its socket map is empty; to stop promptly we ask the loop
itself (through its trigger) to close every channel, so ``run()`` returns without waiting for its
poll timeout, then shut the worker pool down.
"""

from __future__ import annotations

import errno
import logging
import threading

from flask import Flask

log = logging.getLogger(__name__)


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
    def __init__(self, app: Flask, host: str, port: int, threads: int = 8) -> None:
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

    @property
    def port(self) -> int:
        return int(self._server.effective_port)  # type: ignore[attr-defined]  # waitress may give a str

    def set_threads(self, count: int) -> None:
        """Grow or shrink the worker pool (an idle worker ends when the pool shrinks)."""
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
        if self._thread is None or not self._thread.is_alive():
            server.close()
            return
        # Run the close inside the loop thread: closing sockets from here would race its poll.
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))  # type: ignore[attr-defined]
        self._thread.join(timeout)
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)  # type: ignore[attr-defined]

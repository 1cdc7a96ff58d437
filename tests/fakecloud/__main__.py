"""``python -m tests.fakecloud --port 8080 [--db PATH]``: the fake balena API as a server process.

``--seed`` creates an application, a provisioning key and a user key on an empty database and
prints them as one JSON line, for trying a supervisor against it by hand.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from .server import serve
from .store import Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakecloud", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--db", default="fakecloud.sqlite", help="SQLite file (kept across restarts)")
    parser.add_argument(
        "--metrics-throttle",
        type=float,
        default=60.0,
        help="seconds between stored metrics of one device (the real server: 60)",
    )
    parser.add_argument(
        "--logs-unknown-delay",
        type=float,
        default=55.0,
        help="seconds before a log stream of an unknown device gets its 401 (the real server: 55)",
    )
    parser.add_argument("--seed", action="store_true", help="create an app and keys, print them")
    args = parser.parse_args(argv)
    store = Store(args.db)
    if args.seed:
        app = store.create_application("fleet", "generic-amd64")
        seeded = {
            "application": app,
            "provisioning_key": store.create_key("provisioning-api-key", application=app["id"]),
            "user_key": store.create_key("user"),
        }
        print(json.dumps(seeded), flush=True)
    server = serve(
        store,
        args.host,
        args.port,
        metrics_throttle_s=args.metrics_throttle,
        log_unknown_delay_s=args.logs_unknown_delay,
    )
    print(f"fakecloud listening on http://{args.host}:{server.server_address[1]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stop.wait()
    server.api.log_streams.shutdown()  # open log streams answered 503 and read to their end
    server.shutdown()
    server.server_close()
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

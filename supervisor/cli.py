"""``python -m supervisor``: parse settings, start, and stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from . import __version__
from .config import ConfigError
from .runtime import DEFAULT_BLINK_SECONDS, Settings

log = logging.getLogger("supervisor")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(
            f"supervisor: environment variable {name} must be an integer, got {value!r}"
        ) from None


def _app_ids(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"app ids must be integers, got {text!r}") from None
    if not ids or any(i <= 0 for i in ids):
        raise argparse.ArgumentTypeError(f"app ids must be positive integers, got {text!r}")
    return ids


def _env_app_ids(name: str) -> tuple[int, ...] | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return _app_ids(value)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"supervisor: environment variable {name}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor",
        description="A device supervisor, wire-compatible with the balena Supervisor. Without a "
        "config.json the device is unmanaged: local mode, no cloud, no API key needed.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "command", nargs="?", choices=("run", "api-key"), default="run",
        help="run: start the supervisor (default); api-key: print the device's global API key from "
        "the data directory (the key every API request of a managed device needs) and exit",
    )
    parser.add_argument(
        "--root", default=os.environ.get("SUPERVISOR_ROOT"),
        help="prefix for every balenaOS host path: the config is ROOT/mnt/boot/config.json, "
        "locks live in ROOT/tmp/balena-supervisor (env SUPERVISOR_ROOT; default /)",
    )
    parser.add_argument(
        "--data-dir", default=os.environ.get("SUPERVISOR_DATA_DIR"),
        help="where the SQLite database lives (env SUPERVISOR_DATA_DIR; default "
        "ROOT/mnt/data/resin-data/balena-supervisor, or ~/.local/share/pysupervisor when the "
        "default root is not a balenaOS device)",
    )
    parser.add_argument(
        "--port", type=int, default=_env_int("SUPERVISOR_LISTEN_PORT"),
        help="API port (env SUPERVISOR_LISTEN_PORT; default config.json listenPort, else 48484)",
    )
    parser.add_argument("--host", default=os.environ.get("SUPERVISOR_LISTEN_HOST", "0.0.0.0"),
                        help="API bind address (env SUPERVISOR_LISTEN_HOST; default 0.0.0.0)")
    parser.add_argument(
        "--led", default=os.environ.get("SUPERVISOR_LED"),
        help="identify LED: gpio:PIN, file:/sys/class/leds/NAME/brightness, or none "
        "(env SUPERVISOR_LED; default LED_FILE, else ROOT/sys/class/leds/led0 if present)",
    )
    parser.add_argument(
        "--blink-seconds", type=float,
        default=float(os.environ.get("SUPERVISOR_BLINK_SECONDS", DEFAULT_BLINK_SECONDS)),
        help="how long POST /v1/blink blinks (env SUPERVISOR_BLINK_SECONDS; default 15)",
    )
    parser.add_argument(
        "--apps", type=_app_ids, default=_env_app_ids("SUPERVISOR_APPS"),
        help="manage only these app ids (comma separated): other apps are neither applied nor "
        "removed, their containers, networks and volumes left alone, and dangling images are not "
        "cleaned up; for a development machine sharing its engine (env SUPERVISOR_APPS; default: "
        "every supervised app)",
    )
    parser.add_argument(
        "--no-host-setup", dest="host_setup", action="store_false",
        default=os.environ.get("SUPERVISOR_HOST_SETUP", "true").lower() not in ("0", "false", "no"),
        help="leave the host alone: no supervisor0 network or extra-firmware volume, no firewall rules, "
        "no starting or stopping of avahi and openvpn (env SUPERVISOR_HOST_SETUP=false)",
    )
    parser.add_argument("--log-level", default=os.environ.get("SUPERVISOR_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"],
                        help="log verbosity (env SUPERVISOR_LOG_LEVEL; default info)")
    return parser


def print_api_key(root: str | None, data_dir: str | None) -> int:
    """``python -m supervisor api-key``: the global key, as the supervisor with the same
    ``--root``/``--data-dir`` created it. 1 when there is no database there yet: a key made up here
    would hide a wrong ``--root`` (the supervisor creates the key on its first start)."""
    from .apikeys import ApiKeys
    from .db import Database
    from .paths import Paths

    paths = Paths.create(root, data_dir)
    if not paths.database.is_file():
        print(f"supervisor: no database at {paths.database}: start the supervisor once, or pass the "
              "--root/--data-dir it runs with", file=sys.stderr)
        return 1
    db = Database(paths.database)
    try:
        print(ApiKeys(db).global_key())
    finally:
        db.close()
    return 0


def _skip_charset_detection() -> None:
    """requests imports charset_normalizer (about 2.6 MB resident) only to guess the encoding of a
    response that declares none (``Response.apparent_encoding``); the Docker and balena APIs answer
    JSON, which requests decodes without it (and ``.text`` then falls back to UTF-8). Only the
    supervisor process does this (issue #17); requests says so with a warning, silenced here.
    Only with requests >= 2.32: older ones (kirkstone's 2.27 among them) then fail to import."""
    import importlib.util
    import re
    import warnings

    spec = importlib.util.find_spec("requests")  # finds, does not import
    if spec is None or spec.origin is None:
        return
    version = os.path.join(os.path.dirname(spec.origin), "__version__.py")
    try:
        with open(version, encoding="utf-8") as file:
            found = re.search(r'^__version__ = "(\d+)\.(\d+)', file.read(), re.M)
    except OSError:
        return
    if found is None or (int(found[1]), int(found[2])) < (2, 32):
        return
    sys.modules.setdefault("charset_normalizer", None)  # type: ignore[arg-type]  # "not installed"
    warnings.filterwarnings("ignore", message="Unable to find acceptable character detection")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _skip_charset_detection()
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
    )
    if args.port is not None and not 0 <= args.port < 65536:
        print(f"supervisor: --port must be 0-65535, got {args.port}", file=sys.stderr)
        return 2
    if args.command == "api-key":
        return print_api_key(args.root, args.data_dir)
    settings = Settings(root=args.root, data_dir=args.data_dir, port=args.port, host=args.host,
                        led=args.led, blink_seconds=args.blink_seconds, apps=args.apps,
                        host_setup=args.host_setup)

    from .api.server import ListenError
    from .runtime import Supervisor

    try:
        supervisor = Supervisor(settings)
    except (ConfigError, ListenError, ValueError) as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("Received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    supervisor.start()
    while not stop.wait(1.0):
        pass
    if supervisor.stop():
        log.info("Supervisor stopped")  # after the last thread ended
    else:
        log.warning("Supervisor stopped with threads still running")
    return 0

"""File descriptors are closed once and never used after close (the CI flake of run 3: the waitress
trigger's pipe died under a running API server). A stale fd number is reused by the kernel for the
next open (lowest free number), so a late write or close lands on whatever took it: these tests
open a pipe right after a component let its fds go and check that the component leaves it alone."""

from __future__ import annotations

import os
import select
import socket
from pathlib import Path

from supervisor.logs.docker_source import DockerLogSource
from supervisor.logs.engine_http import EngineAddress
from supervisor.logs.positions import PositionStore


def _reuse(number: int) -> list[socket.socket]:
    """Socket pairs opened until one end is fd ``number`` (freed just before). A socket pair, not a
    pipe: whichever end takes the number, what is written there shows up on the other."""
    made: list[socket.socket] = []
    while number not in [s.fileno() for s in made] and len(made) < 32:
        made.extend(socket.socketpair())
    assert number in [s.fileno() for s in made], "the kernel did not hand the freed number out again"
    return made


def _untouched(socks: list[socket.socket]) -> bool:
    """Nothing was written into any of ``socks``' pairs."""
    return not select.select(socks, [], [], 0.05)[0]


def test_engine_log_source_never_writes_to_its_wake_pipe_after_it_is_closed(tmp_path: Path) -> None:
    source = DockerLogSource(lambda messages, delivered=None: None,
                             engine=EngineAddress(unix_path=str(tmp_path / "no-engine.sock")),
                             positions=PositionStore(tmp_path / "positions.json"))
    stale = source._wake_w
    source.start()
    source.stop()
    socks = _reuse(stale)
    try:
        source.stop()  # a second stop (Supervisor.stop after a timed-out one)
        source.attach("c" * 64, 1, "info")  # the log monitor, late
        source.detach("c" * 64)
        assert _untouched(socks)
    finally:
        for sock in socks:
            sock.close()


def test_engine_log_source_never_started_has_nothing_to_close_late(tmp_path: Path) -> None:
    """A Supervisor built but not started (its engine source never ran) frees its pipe at stop."""
    before = set(os.listdir("/proc/self/fd"))
    source = DockerLogSource(lambda messages, delivered=None: None,
                             engine=EngineAddress(unix_path=str(tmp_path / "no-engine.sock")),
                             positions=PositionStore(tmp_path / "positions.json"))
    source.stop()
    assert set(os.listdir("/proc/self/fd")) <= before

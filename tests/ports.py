"""Loopback ports for the servers the tests start (`sigma serve api`, redis-server) and for addresses meant to be
dead.

`free_port` used to return what `bind(("127.0.0.1", 0))` gave: a port from the kernel's ephemeral range, the same
range every outgoing connection on the machine draws its local port from (a CI run opens thousands). Between the
check and the server's own bind another process could take it, and a client retrying a dead port in that range can
even connect to itself (TCP simultaneous open). A port chosen at random below (or above) that range is one the kernel
never hands out by itself: only another explicit bind can take it.
"""
from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PICK = random.SystemRandom()     # not the `random` state a test may seed: two sessions never walk the same ports


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux: net.ipv4.ip_local_port_range), or Linux's default."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _candidates() -> list[range]:
    low, high = ephemeral_range()
    return [r for r in (range(10000, low), range(high + 1, 65536)) if len(r) >= 1000]


def _bound(port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def free_port() -> int:
    """A loopback TCP port free now, outside the ephemeral range where there is room (else one the kernel picks)."""
    ranges = _candidates()
    for _ in range(500 if ranges else 0):
        pool = _PICK.choice(ranges)
        s = _bound(_PICK.randrange(pool.start, pool.stop))
        if s is not None:
            with s:
                return s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def held_port() -> tuple[int, socket.socket]:
    """A free port and the socket holding it bound (not listening: a connection to it is refused, no server can bind
    it): close the socket just before the server that is to come up there binds it."""
    while True:
        s = _bound(free_port())
        if s is not None:
            return s.getsockname()[1], s


@contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port nothing listens on for the block: held bound (not listening, no SO_REUSEADDR), so a connection
    to it is refused and no server can bind it meanwhile (a `free_port` closed at once could be taken and answer)."""
    port, s = held_port()
    with s:
        yield port

"""The test kit's ports (tests/ports.py, conftest.RedisServer): a port picked for a server must still be the server's
when it binds, and an address meant to be dead must stay dead.

`free_port` returned a port of the kernel's ephemeral range, where every outgoing connection on the machine (a CI
run opens thousands) draws its local port: between the pick and the server's bind it could be taken, and a
redis-server of the session fixture then failed to start (`Address already in use`), erroring every test that used it.
"""
from __future__ import annotations

import shutil
import socket

import conftest
import pytest
from ports import _candidates, dead_port, ephemeral_range, free_port


def test_free_port_picks_outside_the_ephemeral_range_a_port_that_binds():
    if not _candidates():
        pytest.skip("the ephemeral range leaves no room on this machine")
    low, high = ephemeral_range()
    for _ in range(50):
        port = free_port()
        assert not low <= port <= high, (port, low, high)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_dead_port_refuses_connections_and_no_server_can_bind_it():
    with dead_port() as port:
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.settimeout(30)
            client.connect(("127.0.0.1", port))
        with socket.socket() as server, pytest.raises(OSError, match="in use"):
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # as uvicorn and redis-server bind
            server.bind(("127.0.0.1", port))


@pytest.fixture
def redis_binary():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    return binary


def test_a_redis_server_whose_picked_port_was_taken_meanwhile_starts_on_another(redis_binary, tmp_path, monkeypatch):
    """Staged with the real race's outcome: the picked port is listened on by someone else when redis-server binds."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(conftest, "free_port", lambda: next(picks, None) or free_port())
        server = conftest.RedisServer(redis_binary, tmp_path)
        assert server.port == taken
        try:
            server.start()
            assert server.port != taken and server.client().info("server")["process_id"] == server.proc.pid
            server.restart()                                      # a restart keeps the port its clients know
            assert server.client().info("server")["process_id"] == server.proc.pid
        finally:
            server.stop(kill=True)


def test_a_redis_server_that_could_not_bind_is_not_taken_for_the_one_answering_there(redis_binary, tmp_path):
    """A server on a port (here a real redis-server) answers PING: the kit's start, whose own server failed to bind
    that port, used to return as if its server were up."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = conftest.RedisServer(redis_binary, tmp_path / "a")
    first.start()
    try:
        second = conftest.RedisServer(redis_binary, tmp_path / "b", first.port)    # a chosen port: not moved
        with pytest.raises(RuntimeError, match="exited"):
            second.start()
    finally:
        first.stop(kill=True)

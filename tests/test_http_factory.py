"""`uvicorn --factory sigma.api.app:app_from_env`, the way docs/service.md says a deployment may run the API by hand:
real uvicorn over a socket, real redis-server. It was served by uvicorn's own protocol, without the guards
`sigma serve api` installs (a 12 KB header over api.max_header_bytes served 200, a WebSocket upgrade served as
HTTP); the factory now gives the uvicorn that loads it the same protocol and options.
"""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import uuid

import httpx
import pytest
from servicekit import STARTUP_S, TESTS, base_env, free_port, read_until_closed, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard: STARTUP_S for the start on a loaded machine


@pytest.fixture(scope="module")
def factory_api(redis_server, tmp_path_factory):
    """`python -m uvicorn --factory sigma.api.app:app_from_env`, its settings from the environment only."""
    env = {**base_env(redis_server.url), "SIGMA__REDIS__KEY_PREFIX": f"t{uuid.uuid4().hex[:10]}",
           "SIGMA__API__MAX_HEADER_BYTES": "8192"}
    log = tmp_path_factory.mktemp("factory") / "uvicorn.log"
    for attempt in range(3):       # a free port taken meanwhile by another test's process: another port
        port = free_port()
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "sigma.api.app:app_from_env",
                                     "--port", str(port), "--http", "h11", "--log-level", "info"],
                                    env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(TESTS.parent))

        def up(proc: subprocess.Popen = proc, port: int = port) -> bool:
            if proc.poll() is not None:
                return True
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(up, STARTUP_S, "uvicorn --factory /healthz")   # a loaded machine took over 60 s
        if proc.poll() is None:
            break
        if attempt == 2 or "address already in use" not in log.read_text(errors="replace"):
            pytest.fail(f"uvicorn exited: {log.read_text(errors='replace')[-3000:]}")
    yield port
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        return read_until_closed(s, ConnectionResetError)


def test_factory_applies_the_configured_header_limit(factory_api):
    answer = raw(factory_api, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 12000
                 + b"\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b'"headers_too_large"' in answer and b"api.max_header_bytes=8192" in answer, answer[:400]


def test_factory_refuses_a_websocket_upgrade(factory_api):
    answer = raw(factory_api, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b'"bad_request"' in answer and b"WebSocket" in answer, answer[:400]


def test_factory_outside_uvicorn_says_the_guards_are_missing(monkeypatch, caplog):
    from sigma.api.app import app_from_env

    monkeypatch.setenv("SIGMA_API_KEYS", "some-key")
    monkeypatch.delenv("SIGMA_SERVE_CONFIG", raising=False)
    with caplog.at_level(logging.ERROR, logger="sigma.api"):
        app_from_env()
    assert any("none of the API's connection guards" in r.getMessage() for r in caplog.records), caplog.text


def test_factory_config_error_is_one_line_and_exit_2(tmp_path):
    # uvicorn printed the ConfigError's traceback and exited 1; `sigma serve api` says one line and exits 2
    env = {**base_env("redis://127.0.0.1:1/0"), "SIGMA_API_KEYS": "k1:annotate+nosuchscope"}
    done = subprocess.run([sys.executable, "-m", "uvicorn", "--factory", "sigma.api.app:app_from_env",
                           "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=STARTUP_S,
                          cwd=str(TESTS.parent))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "sigma: error [invalid_config]: SIGMA_API_KEYS" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]

"""A TCP proxy in front of the test redis-server that can lose the reply to a MULTI/EXEC.

The fault it makes is the one a frozen or overloaded Redis makes for a client with a socket timeout:
the request reaches Redis and runs, the reply never comes back in time. Only that connection is
affected; every other connection through the proxy works.
"""
from __future__ import annotations

import socket
import threading
import time

EXEC = b"\r\nEXEC\r\n"


class ReplyLosingProxy:
    """`marker`: the bytes of the command after which replies are lost (default EXEC; e.g. a script's sha for its
    EVALSHA)."""

    def __init__(self, upstream_port: int, marker: bytes = EXEC):
        self.marker = marker
        self.upstream_port = upstream_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.lock = threading.Lock()
        self.exec_replies_to_lose = 0
        self.lost = 0
        self.hold_next_s = 0.0                  # `hold_next`: the next command with the marker waits this long
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_next_exec_replies(self, n: int) -> None:
        with self.lock:
            self.exec_replies_to_lose = n

    def hold_next(self, seconds: float) -> None:
        """Delay the next command that holds the marker by `seconds` on its way to Redis (a slow network or a busy
        Redis between a caller's read and its write), then pass it on."""
        with self.lock:
            self.hold_next_s = seconds

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            muted = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, muted), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, muted), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, muted: threading.Event) -> None:
        tail = b""
        try:
            while chunk := client.recv(65536):
                seen, tail = tail + chunk, (tail + chunk)[-len(self.marker):]
                if self.marker in seen and not muted.is_set():
                    with self.lock:
                        hold, self.hold_next_s = self.hold_next_s, 0.0
                    if hold:
                        time.sleep(hold)
                    with self.lock:
                        if self.exec_replies_to_lose > 0:
                            self.exec_replies_to_lose -= 1
                            self.lost += 1
                            muted.set()            # from here on, Redis' answers to this client vanish
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, muted: threading.Event) -> None:
        try:
            while chunk := upstream.recv(65536):
                if not muted.is_set():
                    client.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

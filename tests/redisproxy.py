"""TCP proxies in front of the test redis-server: one that can lose the reply to a MULTI/EXEC, one that answers
garbage to chosen requests (`GarblingProxy`).

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


def _read_request(f) -> bytes | None:
    """One RESP request (an array of bulk strings, as redis-py sends), raw; None at the end of the stream."""
    head = f.readline()
    if not head:
        return None
    raw = [head]
    if head[:1] == b"*":
        for _ in range(int(head[1:])):
            size = f.readline()
            raw.append(size)
            raw.append(f.read(int(size[1:]) + 2))
    return b"".join(raw)


def _read_reply(f) -> bytes:
    """One RESP2/RESP3 reply, raw."""
    head = f.readline()
    if not head:
        raise ConnectionError("the server closed the connection")
    kind, rest = head[:1], head[1:-2]
    out = [head]
    if kind in (b"$", b"=", b"!") and int(rest) >= 0:
        out.append(f.read(int(rest) + 2))
    elif kind in (b"*", b"~", b">") and int(rest) >= 0:
        out += [_read_reply(f) for _ in range(int(rest))]
    elif kind in (b"%", b"|"):
        out += [_read_reply(f) for _ in range(2 * int(rest))]
    return b"".join(out)


class GarblingProxy:
    """A proxy that answers garbage for a real Redis: every request goes to the real server and its reply comes back
    whole, but while `garble` is set, a request whose bytes contain it is not sent on and the client gets `reply`
    in its place (by default a RESP3 map whose key is an array: redis-py's parser fails with a TypeError, not a
    RedisError). redis-py reads one reply per request on a connection, so the stream stays aligned."""

    def __init__(self, upstream_port: int, reply: bytes = b"%1\r\n*1\r\n:1\r\n:2\r\n"):
        self.upstream_port = upstream_port
        self.reply = reply
        self.garble: bytes | None = None
        self.garbled = 0                       # requests answered with `reply`
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        cin, uin = client.makefile("rb"), upstream.makefile("rb")
        try:
            while True:
                request = _read_request(cin)
                if request is None:
                    return
                garble = self.garble
                if garble is not None and garble in request:
                    self.garbled += 1
                    client.sendall(self.reply)
                    continue
                upstream.sendall(request)
                client.sendall(_read_reply(uin))
        except (OSError, ConnectionError, ValueError):
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()

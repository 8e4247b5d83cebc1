"""A budget over the request bytes the API parses and decodes at once (`limits.max_bytes_in_flight`).

A 44 MB base64 JSON body costs several times its size while it is parsed (the buffer, the decoded text, the
two base64 strings, the two images): 16 such requests at once took the API to 1.5 GB. Each submission holds a
`Reservation` that grows by every chunk of its body as the chunk arrives and is given back whole when the
request is enqueued or refused, whichever way it ends (an exception, a client that hangs up, a body timeout: the
`with` block's exit). The budget counts bytes received, never bytes promised: it took the declared Content-Length
up front, so two clients that declared 64 MiB each and sent a byte every 5 s held the whole default budget and
every other upload, a 17-byte one too, was 429 `server_busy` until `api.body_timeout_s` cut them; they could
reconnect and do it again, for ever. A client now holds only what it has sent, which costs it the bandwidth.

Two refusals, both 429 `server_busy` with Retry-After:
- up front, before a byte is read (so `Expect: 100-continue` gets it before sending): the declared length does
  not fit beside the bytes other requests hold now;
- while the body arrives: a chunk does not fit, and no room was freed within `wait_s` (or every other request
  holding bytes is itself waiting for room, which only a refusal ends). The answer closes the connection (the rest
  of the body is not read).
A request is always let grow when no other request holds bytes, so no legal request is refused for ever. Everything
runs on the server's event loop, so plain integers need no lock.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import Request

from sigma.api.errors import ApiError

Receive = Callable[[], Awaitable[dict[str, Any]]]


class Reservation:
    """The bytes one request has received and holds (`held`); `waiting` while it waits for room."""

    def __init__(self, budget: ByteBudget):
        self.budget = budget
        self.held = 0
        self.waiting = False

    async def grow(self, n: int) -> None:
        """Take `n` more bytes, waiting up to `budget.wait_s` for room; 429 `server_busy` (close) when none comes."""
        b = self.budget
        loop = asyncio.get_running_loop()
        deadline = loop.time() + b.wait_s
        while not b.fits(self, n):
            others = [r for r in b.open if r is not self and r.held]
            remaining = deadline - loop.time()
            if remaining <= 0 or all(r.waiting for r in others):
                raise b.busy(f"{self.held + n} bytes of this body received", close=True)
            self.waiting = True
            try:
                await asyncio.wait_for(b.freed().wait(), remaining)
            except TimeoutError:
                pass
            finally:
                self.waiting = False
        b.used += n
        self.held += n

    def receive(self, receive: Receive) -> Receive:
        """`receive` that takes each body chunk from the budget before handing it on."""
        async def charged() -> dict[str, Any]:
            msg = await receive()
            if msg["type"] == "http.request" and msg.get("body"):
                await self.grow(len(msg["body"]))
            return msg
        return charged


class ByteBudget:
    def __init__(self, capacity: int, retry_after_s: int, wait_s: float | None = None):
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.wait_s = float(retry_after_s if wait_s is None else wait_s)
        self.used = 0
        self.open: set[Reservation] = set()
        self._freed = asyncio.Event()

    def fits(self, r: Reservation, n: int) -> bool:
        """`n` more bytes for `r`: within the capacity, or `r` is the only request holding bytes."""
        return self.used + n <= self.capacity or self.used == r.held

    def freed(self) -> asyncio.Event:
        return self._freed

    def busy(self, what: str, close: bool = False) -> ApiError:
        headers = {"Retry-After": str(self.retry_after_s)}
        if close:       # the rest of the body is not read: the connection cannot carry another request
            headers["Connection"] = "close"
        return ApiError(429, "server_busy", f"the API holds {self.used} bytes of other requests' bodies "
                        f"(limits.max_bytes_in_flight={self.capacity}; {what}); retry after {self.retry_after_s} s",
                        headers)

    @contextmanager
    def hold(self, declared: int | None) -> Iterator[Reservation]:
        """A reservation for one request, given back on exit however the request ends. `declared` (its
        Content-Length) is checked against the bytes other requests hold now, before a byte is read."""
        r = Reservation(self)
        if declared is not None and not self.fits(r, declared):
            raise self.busy(f"this body declares {declared} bytes")
        self.open.add(r)
        try:
            yield r
        finally:
            self.open.discard(r)
            self.used -= r.held
            r.held = 0
            # wake every waiter (each re-checks), and give later ones a fresh event
            self._freed.set()
            self._freed = asyncio.Event()


def declared_length(request: Request) -> int | None:
    """The body's Content-Length (the body limit already refused anything larger), else None (chunked)."""
    value = request.headers.get("content-length")
    if value is not None and value.isdigit() and len(value) <= 20:
        return int(value)
    return None


def charged_request(request: Request, reservation: Reservation) -> Request:
    """`request` whose body is taken from `reservation`'s budget chunk by chunk as it is read."""
    return Request(request.scope, reservation.receive(request.receive))

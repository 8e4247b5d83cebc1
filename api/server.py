"""How uvicorn serves the API: keep-alive, header and unread-body timeouts (`uvicorn_options`).

uvicorn bounds only the idle time between requests (`timeout_keep_alive`). A client that opens a connection
and trickles its headers, or keeps sending a body nobody reads after its answer went out, held a connection
(and its buffers) for as long as it liked: 100 such clients stayed 30 s and more. `GuardedH11Protocol` adds:

- a header timeout (`api.header_timeout_s`): from a connection's start, or the first byte of its next
  request, to the end of the request head; else a raw 408 and the connection is closed;
- a drain timeout (`api.body_timeout_s`): an answer that went out before the body was read (401, 413, 429)
  leaves the rest of the body to be discarded; it must have arrived within that time, else close.

The body a route does read is bounded by the `BodyTimeout` middleware (408 `request_timeout` as JSON).

`return_large_buffers_to_os` is the other half of the memory budget (`api/budget.py`): glibc raises its mmap
threshold after the first large free, so later 16-25 MB request buffers came from the heap and stayed in the
process after the request (832 MB held after 16 large bodies); a fixed 1 MiB threshold gives them back.
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sigma.service.settings import ServeConfig

_BODY = json.dumps({"error": {"code": "request_timeout", "message": "the request headers did not arrive in "
                                                                    "time"}}).encode()
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                   b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    drain_timeout_s: float = 60.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._drained: Any = None      # the request whose unread body the drain timer is about

    # -- timers ----------------------------------------------------------------------------------
    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.logger.info("request headers not received within %.1f s: 408, closing", self.header_timeout_s)
        self.transport.write(REQUEST_TIMEOUT)      # no request was parsed: h11 cannot frame an answer
        self.transport.close()

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if (not self.transport.is_closing() and self.cycle is self._drained
                and self.conn.their_state is h11.SEND_BODY):
            self.logger.info("unread request body still arriving after %.1f s: closing", self.drain_timeout_s)
            self.transport.close()

    # -- uvicorn's protocol hooks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_timer is None:   # the first byte of a request
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:                             # its head is complete
            self._cancel("_head_timer")
        if self._drain_timer is not None and (self.cycle is not self._drained
                                              or self.conn.their_state is not h11.SEND_BODY):
            self._cancel("_drain_timer")                                      # the unread body is all in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and self._drain_timer is None:
            self._drained = self.cycle
            self._drain_timer = self.loop.call_later(self.drain_timeout_s, self._drain_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel("_head_timer")
        self._cancel("_drain_timer")
        super().connection_lost(exc)


M_MMAP_THRESHOLD = -3          # glibc mallopt parameter
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_buffers_to_os() -> bool:
    """Serve every allocation of 1 MiB or more from its own mapping, unmapped on free (glibc only; an
    operator's MALLOC_MMAP_THRESHOLD_ wins). True when applied."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):     # not glibc (musl, macOS): nothing to tune
        logging.getLogger("sigma.api").debug("mallopt unavailable; large buffers stay with the allocator")
        return False


def guarded_protocol(header_timeout_s: float, drain_timeout_s: float) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout_s": header_timeout_s, "drain_timeout_s": drain_timeout_s})


def uvicorn_options(cfg: ServeConfig) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` that apply the API's connection timeouts."""
    return {"http": guarded_protocol(cfg.api.header_timeout_s, cfg.api.body_timeout_s),
            "timeout_keep_alive": cfg.api.keep_alive_timeout_s}

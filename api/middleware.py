"""Pure-ASGI layers: time every request, answer any unexpected exception without dropping the connection,
refuse bodies over `limits.max_request_bytes`, and bound how long reading a body may take.

The body limit is checked against Content-Length first and then counted while the body streams in, so a
chunked upload without a length cannot exhaust memory or disk either. A request framed both ways (Content-Length
and Transfer-Encoding) is refused before either is believed: 400 `bad_request`, the connection closed. The read
timeout starts at the app's first read of the body (the headers are bounded by the server protocol,
`sigma.api.server`), so a client that trickles its body gets 408 `request_timeout` instead of holding a connection
and its buffers; one that stops sending gets it sooner, after the idle timeout.
Both raise a `BodyReadAborted` out of `receive`; parsers let it through and the layer that raised it answers.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from sigma.api.metrics import ANSWERED_BY_SERVER, CLIENT_CLOSED, PEER_FATE_S, PEER_GONE, ApiMetrics

log = logging.getLogger("sigma.api")


class BodyReadAborted(Exception):
    """Raised from `receive` when the body may not be read further; the middleware that raised it answers."""


class BodyTooLarge(BodyReadAborted):
    pass


class BodyReadTimeout(BodyReadAborted):
    """`idle`: nothing came for `api.body_idle_timeout_s` (rather than the body not all within `body_timeout_s`);
    `slow`: the bytes a rate window brought, under `api.min_body_rate`."""

    def __init__(self, idle: bool = False, slow: int | None = None):
        super().__init__()
        self.idle = idle
        self.slow = slow


def _json_error(status: int, code: str, message: str, close: bool = True,
                headers: dict[str, str] | None = None) -> tuple[dict, dict]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if close:   # the rest of the body is not read: the connection cannot carry another request
        raw.append((b"connection", b"close"))
    start = {"type": "http.response.start", "status": status, "headers": raw}
    return start, {"type": "http.response.body", "body": body}


class _Tracked:
    """Wraps `send` to know whether the answer has started (then an error can only close the connection)."""

    def __init__(self, send: Any):
        self._send = send
        self.started = False

    async def __call__(self, msg: dict) -> None:
        if msg["type"] == "http.response.start":
            self.started = True
        await self._send(msg)


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body exceeds limits.max_request_bytes={self.max_bytes}"
        names = {name for name, _ in scope.get("headers", [])}
        if b"content-length" in names and b"transfer-encoding" in names:
            # RFC 9112 6.3: the server reads the chunks (h11 does) and a proxy in front may read the length, so the
            # two see different requests on one connection (request smuggling); and the byte budget
            # (`declared_length`) held the length, a few bytes, while the chunks ran to the limit
            start, body = _json_error(400, "bad_request", "a request may not carry both Content-Length and "
                                      "Transfer-Encoding (RFC 9112 6.3); send one")
            await send(start)
            await send(body)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value) if len(value) <= 20 else self.max_bytes + 1
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    start, body = _json_error(413, "request_too_large", message)
                    await send(start)
                    await send(body)
                    return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return msg

        tracked = _Tracked(send)
        try:
            await self.app(scope, counting_receive, tracked)
        except BodyTooLarge:
            if tracked.started:
                raise
            start, body = _json_error(413, "request_too_large", message)
            await send(start)
            await send(body)


class _RateWindow:
    """`api.min_body_rate` over windows of `api.body_rate_window_s` of waiting on the client (its clock runs
    only while the app waits for the body, as the idle bound's does): each window must bring rate x window bytes."""

    def __init__(self, rate: int, window: float):
        self.rate, self.window = rate, window
        self.end = window          # the waiting clock's reading at which the current window closes
        self.bytes = 0             # what the current window brought

    def close_before(self, clock: float) -> None:
        """Close every window that ended by `clock` (seconds waited): BodyReadTimeout(slow=bytes) for one short."""
        while self.rate > 0 and clock >= self.end:
            if self.bytes < self.rate * self.window:
                raise BodyReadTimeout(slow=self.bytes)
            self.end += self.window
            self.bytes = 0

    def left(self, clock: float) -> float:
        return self.end - clock if self.rate > 0 else float("inf")


class BodyTimeout:
    """408 `request_timeout` when the body is not all there `seconds` after the app first asked for it, when nothing
    of it has come for `idle_seconds` while the app waits for more, or when a window of `rate_window` seconds of
    that waiting brings fewer than `min_rate` bytes a second. The idle bound is what frees the byte budget
    (`sigma.api.budget`) from a client that sends most of a large body fast and then stalls: it held what it had
    sent, and every other upload got 429 `server_busy`, for all of `seconds`; the rate bound does the same for one
    that then trickles a byte every few seconds, each wait under the idle bound. Only the time spent waiting on the
    client counts, not the app's own pauses between reads (a wait for room in the budget)."""

    def __init__(self, app: Any, seconds: float, idle_seconds: float | None = None, min_rate: int = 0,
                 rate_window: float = 10.0):
        self.app = app
        self.seconds = seconds
        self.idle_seconds = seconds if idle_seconds is None else min(idle_seconds, seconds)
        self.min_rate, self.rate_window = min_rate, rate_window

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        complete = False
        waited = 0.0                     # seconds spent waiting on the client for the body
        rate = _RateWindow(self.min_rate, self.rate_window)

        async def timed_receive() -> dict:
            nonlocal deadline, complete, waited
            if complete:                 # after the body: waiting for a disconnect is not bounded here
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.seconds
            if deadline - loop.time() <= 0:
                raise BodyReadTimeout()
            started = loop.time()
            arrival = asyncio.ensure_future(receive())
            try:
                while True:
                    now = loop.time()
                    wait = min(deadline - now, self.idle_seconds - (now - started), rate.left(waited + now - started))
                    done, _ = await asyncio.wait({arrival}, timeout=max(wait, 0.0))
                    if done:
                        break
                    now = loop.time()
                    if now >= deadline:
                        raise BodyReadTimeout()
                    if now - started >= self.idle_seconds:
                        raise BodyReadTimeout(idle=True)
                    rate.close_before(waited + now - started)
            finally:
                waited += loop.time() - started
                if not arrival.done():
                    arrival.cancel()
            msg = arrival.result()
            if msg["type"] != "http.request" or not msg.get("more_body", False):
                complete = True
            else:                        # the bytes that end the body count in no window: it is all in
                rate.bytes += len(msg.get("body", b""))
                rate.close_before(waited)
            return msg

        tracked = _Tracked(send)
        try:
            await self.app(scope, timed_receive, tracked)
        except BodyReadTimeout as exc:
            if tracked.started:
                raise
            if exc.slow is not None:
                log.info("request body: %d bytes in %.1f s of waiting, under %d bytes/s: 408", exc.slow,
                         self.rate_window, self.min_rate)
                message = (f"the request body came too slowly: {exc.slow} bytes in {self.rate_window:.15g} s, under "
                           f"api.min_body_rate={self.min_rate} (measured over each "
                           f"api.body_rate_window_s={self.rate_window:.15g} s of waiting on it)")
            elif exc.idle:
                log.info("request body: nothing more received for %.1f s: 408", self.idle_seconds)
                message = (f"nothing more of the request body arrived for api.body_idle_timeout_s="
                           f"{self.idle_seconds:.15g} s")
            else:
                log.info("request body not received within %.1f s: 408", self.seconds)
                message = f"the request body did not arrive within api.body_timeout_s={self.seconds:.15g} s"
            start, body = _json_error(408, "request_timeout", message)
            await send(start)
            await send(body)


class CatchAll:
    """Any exception a route lets out becomes a 500 `internal_error` answer *without* closing the connection
    (Starlette's outermost handler answers too, but then re-raises, and the server drops the connection:
    a keep-alive client lost the requests it had queued on it). Details go to the log only."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        tracked = _Tracked(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if type(exc).__name__ == "ClientDisconnect":     # nobody is left to answer
                return
            if tracked.started:
                raise
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            start, body = _json_error(500, "internal_error", f"internal error ({type(exc).__name__}); see the "
                                      "API log", close=False)
            await send(start)
            await send(body)


class HeadAsGet:
    """HEAD is served as GET without its body: RFC 9110 9.1 says a general-purpose server MUST support both, and
    FastAPI's routes take only the methods they name, so HEAD /healthz (an uptime checker's probe), /readyz, /metrics
    and /v1/jobs/{id} were 405. The routes see GET on a copy of the scope; uvicorn keeps HEAD on its own, so it
    sends the headers (Content-Length as GET's) and no body. What routing wrote into the copy (the matched route,
    for the metrics' label) is copied back; the metrics count the request as HEAD. Added innermost."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            return await self.app(scope, receive, send)
        inner = {**scope, "method": "GET"}
        try:
            await self.app(inner, receive, send)
        finally:
            scope.update({key: value for key, value in inner.items() if key != "method"})


def _route_methods(routes: Any) -> set[str]:
    """Every method the routes take, those of included routers and mounts too (FastAPI keeps an included router as
    one entry, `original_router`, that has no `methods` of its own)."""
    methods: set[str] = set()
    for route in routes:
        methods |= set(getattr(route, "methods", None) or ())
        inner = getattr(getattr(route, "original_router", None), "routes", None) or getattr(route, "routes", None)
        if inner:
            methods |= _route_methods(inner)
    return methods


# `%2F` in a path: the server decodes it to `/` before routing, so `/v1/jobs/{id}%2Fmask.png` was served as the
# mask route (what a proxy that routes on the raw path saw as a job) and `/v1/jobs/a%2Fb` as an unknown path, a 404
# `not_found` that said nothing of why
_ENCODED_SLASH = re.compile(rb"%2f", re.IGNORECASE)


class ServerTargets:
    """The two request forms that name no resource of this server (RFC 9110 9.3.6, 9.3.7; RFC 9112 3.2.3, 3.2.4),
    which the router answered 404 `not_found` as an unknown path. `OPTIONS *` asks about the server itself: 200 with
    `Allow` naming every method some route takes (HEAD with GET, OPTIONS for this), no body. Any other method with
    the `*` target is 400 `bad_request` (only OPTIONS may use it). `CONNECT` (authority form, `host:443`: a proxy's
    tunnel) is for a proxy, and this is an origin server: 405 `method_not_allowed` with that same `Allow`, and the
    connection closed, as a tunnelling client may already be sending what it meant for the tunnel (TLS bytes),
    which would be read as the next request. A path with a percent-encoded slash (`%2F`) is 400 `bad_request`
    (`_ENCODED_SLASH`). Added innermost but for `HeadAsGet`; no key is needed."""

    def __init__(self, app: Any):
        self.app = app
        self._allow: str | None = None

    def allow(self, scope: dict) -> str:
        """The methods some route of the app takes, computed once from its routes (`scope["app"]`)."""
        if self._allow is None:
            methods = _route_methods(getattr(getattr(scope.get("app"), "router", None), "routes", ()))
            if "GET" in methods:
                methods.add("HEAD")
            self._allow = ", ".join(sorted(methods | {"OPTIONS"}))
        return self._allow

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method = scope.get("method")
        # uvicorn prefixes the target with `--root-path` (if any): `*` behind a root path is that root and `*`
        asterisk = scope.get("raw_path") == str(scope.get("root_path", "")).encode("latin-1", "replace") + b"*"
        if method == "OPTIONS" and asterisk:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"allow", self.allow(scope).encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if method == "CONNECT":
            start, body = _json_error(405, "method_not_allowed", "CONNECT asks a proxy for a tunnel; this is the "
                                      "SIGMA API, an origin server, and opens none: send the request itself "
                                      "(POST /v1/annotate)", headers={"Allow": self.allow(scope)})
        elif asterisk:
            start, body = _json_error(400, "bad_request", f"the request target '*' is for OPTIONS only (RFC 9112 "
                                      f"3.2.4), not {method}: name a path (GET /healthz)")
        elif _ENCODED_SLASH.search(scope.get("raw_path") or b""):
            start, body = _json_error(400, "bad_request", "the request path holds a percent-encoded '/' (%2F): no "
                                      "path segment of this API holds a slash (a job id is 32 hex digits); send the "
                                      "path as the route spells it (GET /v1/jobs/{id}/mask.png)")
        else:
            return await self.app(scope, receive, send)
        await send(start)
        await send(body)


async def peer_gone(scope: dict) -> bool:
    """Whether the client of a request answered after its FIN had closed rather than half-closed (`PEER_GONE`, set by
    the server protocol): a FIN cannot tell the two apart, the client's side answering the answer can (an ACK, or a
    reset from a socket that is closed). Waits at most `PEER_FATE_S`; False where the protocol set nothing."""
    fate = scope.get(PEER_GONE)
    if fate is None:
        return False
    try:
        return bool(await asyncio.wait_for(asyncio.shield(fate), PEER_FATE_S + 0.5))
    except TimeoutError:
        return False


class RequestMetrics:
    """Counts and times every answer by method, route template and status. A request whose client hung up before
    any answer counts as `CLIENT_CLOSED` (499), not 500: nothing failed on this side, and any client could otherwise
    drive the service's 5xx rate. One whose body the server protocol refused as it arrived counts as the status it
    sent (`ANSWERED_BY_SERVER`): the route saw only a disconnect. Label values are bounded whatever a client sends
    (`sigma.api.metrics`)."""

    def __init__(self, app: Any, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status: int | None = None
        client_gone = False
        start = time.perf_counter()

        async def watch() -> dict:
            nonlocal client_gone
            msg = await receive()
            if msg["type"] == "http.disconnect":
                client_gone = True
            return msg

        async def capture(msg: dict) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, watch, capture)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if status is None:      # the server's own refusal of the body (sigma.api.server), else nobody answered
                status = scope.get(ANSWERED_BY_SERVER) or (CLIENT_CLOSED if client_gone else 500)
            elif await peer_gone(scope):    # answered after the client's FIN, and its side reset the answer
                status = CLIENT_CLOSED
            self.metrics.observe(scope.get("method", "?"), path, status, time.perf_counter() - start)

"""How uvicorn serves the API: keep-alive, header and unread-body timeouts (`uvicorn_options`).

uvicorn bounds only the idle time between requests (`timeout_keep_alive`). A client that opens a connection
and trickles its headers, or keeps sending a body nobody reads after its answer went out, held a connection
(and its buffers) for as long as it liked: 100 such clients stayed 30 s and more. `GuardedH11Protocol` adds:

- a header timeout (`api.header_timeout_s`): from a connection's start, or the first byte of its next
  request, to the end of the request head; else a raw 408 and the connection is closed;
- a drain timeout (`api.body_timeout_s`): an answer that went out before the body was read (401, 413, 429)
  leaves the rest of the body to be discarded; it must have arrived within that time, else close;
- a lingering close (`api.close_linger_s`, `api.close_linger_bytes`) for an answer that closes the connection
  before the body was read (413 `request_too_large` / `file_too_large` with `Connection: close`);
- a request h11 cannot parse (a header line without a colon, a bad chunk size) is answered as every error is,
  JSON 400 `bad_request` (`send_400_response`), not uvicorn's text/plain `Invalid HTTP request received.`, which a
  client parsing `{"error": {"code"}}` could not read;
- an `Expect` other than `100-continue` is JSON 417 `expectation_failed` at the request's head (`unmet_expectation`),
  then the lingering close: it was served as if absent;
- a WebSocket upgrade is JSON 400 `bad_request` at its head (`websocket_upgrade`; uvicorn loads no WebSocket protocol,
  `ws="none"`), any other upgrade ignored; so is a target with a fragment or percent-encoded bytes not UTF-8
  (`bad_target`);
- a request head (its line and header fields) over `api.max_header_bytes` is JSON 431 `headers_too_large`, however
  it arrives (`HeadLimitedConnection`). h11 bounds only a head still incomplete when its buffer is checked: a 200 KB
  cookie that arrived in one read was served, a 20 KB one that came in 1 KB segments (a real network's) was a 400
  `bad_request` that said "malformed", and the client, still sending, met a reset (ECONNRESET / EPIPE), not the answer;
- a chunk of a chunked body whose size line declares more than `limits.max_request_bytes` leaves the body room for is
  JSON 413 `request_too_large` at that line, before the chunk is read (`HeadLimitedConnection`): h11 takes sizes of up
  to 2**80 bytes and hands the chunk on as it arrives, so the API read it until the byte count or a timeout cut it;
  a chunked body cut into more than `MAX_SMALL_CHUNKS` chunks averaging under `SMALL_CHUNK_BYTES` is JSON 400
  `bad_request` (each chunk costs the event loop the same whatever its size).

- a connection limit (`api.max_connections`, `connection_limit`): a connection past it is answered 503
  `too_many_connections` before its request is read, and closed with the lingering close below (it holds no slot
  meanwhile; at most `accept_backlog` such closes at once, the descriptors the limit keeps for an accept burst, and
  past that closed at once): closed at once, a client that was still sending its request (a 3 MiB upload) met a
  reset, 10 times out of 10, and never read the 503. Without it every idle, slow or trickling
  client held a file descriptor: past RLIMIT_NOFILE (1024 soft on many systems) accept() failed with EMFILE, asyncio
  logged the failure with its traceback some 2,000 times a second (92,000 in 30 s), new clients hung unaccepted,
  and the requests in flight failed 500 where they opened a file (a lazy import, a spooled upload);
  `connection_limit` keeps the count under what the open-file limit leaves for Redis, uploads and the process.

Both refusals close the connection with the lingering close below, as a 413 does: what the client still sends of the
refused request is discarded within the bounds, so it reads the answer instead of a reset.

Why the lingering close: uvicorn closes the socket right after such an answer (`transport.close()` once h11 is
MUST_CLOSE). A socket closed with unread data makes the kernel send a reset instead of a FIN, and the client's
next send fails (ECONNRESET / EPIPE): a client that writes its whole body before it reads (http.client and
urllib.request; over a lossy link or on Windows httpx and requests too) never saw the 413, 20 times out of 20 with
a 3 MiB body to the 1 MiB POST /v1/batches. Now the answer is followed by a half-close (`write_eof`: a FIN after
the answer, so the client knows no other answer comes), and what the client still sends is read and discarded,
not parsed, until it closes its side, or `close_linger_bytes` more have come, or `close_linger_s` has passed,
whichever is first; then the socket is closed. A body that ends within the bound meets no reset; an endless one
is still cut, after at most that many bytes or seconds.

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
import re
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from sigma.api.metrics import ANSWERED_BY_SERVER, PEER_EOF, PEER_FATE_S, PEER_GONE
from sigma.service.settings import ServeConfig

_BODY = json.dumps({"error": {"code": "request_timeout", "message": "the request headers did not arrive in "
                                                                    "time"}}).encode()
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                   b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)
BAD_REQUEST = json.dumps({"error": {"code": "bad_request", "message": "the request is not valid HTTP/1.1 (a "
                                    "malformed request line or header, or a bad chunk of a chunked body)"}}).encode()


HEADERS_TOO_LARGE_REASON = b"Request Header Fields Too Large"
CONTENT_LENGTH_DIGITS = 20      # h11's bound on a Content-Length's digits (1 billion TB): it refuses a longer one
_LONG_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*([0-9]{%d,})[ \t]*\r?$" % (CONTENT_LENGTH_DIGITS + 1),
                                  re.IGNORECASE | re.MULTILINE)
MAX_SMALL_CHUNKS = 4096         # a chunked body may begin this many chunks of any size...
SMALL_CHUNK_BYTES = 1024        # ...and more only while they average at least this many bytes


def too_many_connections(limit: int) -> bytes:
    """The whole raw answer to a connection past `api.max_connections`: no request was read, so h11 cannot frame
    it; `Retry-After: 1`, as the slots free within the header and keep-alive timeouts."""
    body = json.dumps({"error": {"code": "too_many_connections", "message": f"the server holds its limit of {limit} "
                                 "connections (api.max_connections); try again later"}}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"retry-after: 1\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


FDS_PER_CONNECTION = 4     # its socket, a Redis connection of the pool, the two spooled file parts of an upload
SPARE_FDS = 64             # the process's own: listener, logs, imports, the Redis pool's background connections
UVICORN_BACKLOG = 2048


def accept_backlog(limit: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one go before any of them is seen
    (and refused past the limit): uvicorn's 2048, or the connection limit where that is lower, so that a burst of
    connects cannot take more descriptors than the budget keeps for it."""
    return min(UVICORN_BACKLOG, limit)


def fds_needed(limit: int) -> int:
    return limit * FDS_PER_CONNECTION + accept_backlog(limit) + SPARE_FDS


def connection_limit(max_connections: int) -> int:
    """`api.max_connections`, or fewer where the open-file limit (RLIMIT_NOFILE) cannot hold that many
    connections with what each may open, plus an accept burst: the soft limit is raised toward the hard one first
    (as Go and nginx do: 1024 soft is common where the hard limit is far higher), and the limit that results is
    logged when lowered. A server that runs out of descriptors fails every request that opens a file, not only new
    connections, and asyncio logs each failed accept with its traceback, up to 2048 times a turn of its loop."""
    import resource

    need = fds_needed(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):        # a limit the process may not raise: keep the soft one
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    room = soft - SPARE_FDS
    fits = ((room - UVICORN_BACKLOG) // FDS_PER_CONNECTION if room >= UVICORN_BACKLOG * (FDS_PER_CONNECTION + 1)
            else room // (FDS_PER_CONNECTION + 1))    # each connection with its place in an accept burst
    limit = max(1, min(max_connections, fits))
    logging.getLogger("sigma.api").warning(
        "api.max_connections=%d lowered to %d: the open-file limit (RLIMIT_NOFILE, `ulimit -n`) is %d; raise it to "
        "%d for %d connections", max_connections, limit, soft, need, max_connections)
    return limit


def headers_too_large(max_head_bytes: int) -> bytes:
    """The JSON body of a 431: what the limit is and where it is set."""
    return json.dumps({"error": {"code": "headers_too_large", "message": "the request line and header fields are "
                                 f"more than api.max_header_bytes={max_head_bytes} bytes; send fewer or smaller "
                                 "headers (a large cookie or token)"}}).encode()


_ABSOLUTE_FORM = re.compile(rb"^https?://([^/?]*)(.*)$", re.IGNORECASE | re.DOTALL)


def origin_form(request: h11.Request) -> h11.Request:
    """`request` with an absolute-form target (`GET http://host:port/healthz?x=1`, as a client configured to talk to
    a forward proxy sends) turned into origin form (`/healthz?x=1`), its Host field the target's authority: RFC 9112
    3.2.2 says a server MUST accept the absolute form and MUST then ignore the Host field for the target's. uvicorn
    took the whole URL as the path, so every route answered 404 `not_found`. An `http` target with no host is
    invalid (RFC 9110 4.2.1): 400 `bad_request`. Any other target is returned as it is."""
    found = _ABSOLUTE_FORM.match(request.target)
    if found is None:
        return request
    host = found.group(1).rpartition(b"@")[2]        # userinfo is deprecated, and never the host (RFC 9110 4.2.4)
    if not host:
        raise h11.RemoteProtocolError("an absolute-form request target without a host", error_status_hint=400)
    rest = found.group(2)
    target = rest if rest.startswith(b"/") else b"/" + rest      # `http://host` and `http://host?x=1`: the root
    if not rest and request.method == b"OPTIONS":     # RFC 9112 3.2.4: `OPTIONS http://host` is `OPTIONS *`
        target = b"*"
    headers = [(name, host if name.lower() == b"host" else value) for name, value in request.headers.raw_items()]
    return h11.Request(method=request.method, target=target, headers=headers, http_version=request.http_version)


def unsupported_version(request: h11.Request) -> str | None:
    """Why `request`'s HTTP version is refused (505), else None. h11 parses any `HTTP/d.d` in a request line and
    frames the answer as HTTP/1.1, so an HTTP/2 client's connection preface (`PRI * HTTP/2.0`, then `SM` and binary
    frames: `curl --http2-prior-knowledge`, gRPC) was routed (404) and its next line refused as malformed (400):
    two answers, neither naming the cause. A major version other than 1 is refused at its request line; HTTP/1.x
    of a higher minor version is served as 1.1 (RFC 9110 2.5)."""
    version = request.http_version
    if version.startswith(b"1."):
        return None
    said = version.decode("ascii", "replace")
    if request.method == b"PRI" and request.target == b"*" and version == b"2.0":
        return ("an HTTP/2 connection preface (PRI * HTTP/2.0): this server speaks HTTP/1.1 only; send HTTP/1.1 "
                "requests (HTTP/2 is not negotiated here: drop curl's --http2-prior-knowledge)")
    return f"HTTP/{said} is not supported: this server speaks HTTP/1.1 (and 1.0)"


def websocket_upgrade(request: h11.Request) -> str | None:
    """Why `request` is refused (400) for asking to become a WebSocket (`Connection: Upgrade`, `Upgrade: websocket`),
    else None. No route of the API is a WebSocket. Where `websockets` or `wsproto` is installed (`uvicorn[standard]`),
    uvicorn handed such a connection to its WebSocket protocol, past this protocol's bounds (the connection limit, the
    header timeout) and into the app as a `websocket` scope, which the HTTP middleware lets through unchecked; where
    neither is, it served the request as HTTP and logged two warnings for each (one telling the operator to install
    `uvicorn[standard]`). Refused at its head, whatever is installed; another upgrade (`h2c`, `curl --http2`) is
    ignored, as RFC 9110 7.8 allows: the request is served in HTTP/1.1."""
    tokens = [token.strip().lower() for name, value in request.headers if name == b"connection"
              for token in value.split(b",")]
    if b"upgrade" not in tokens:
        return None
    protocols = [p.strip().lower().split(b"/")[0] for name, value in request.headers if name == b"upgrade"
                 for p in value.split(b",")]
    if b"websocket" not in protocols:
        return None
    return ("a WebSocket upgrade (Upgrade: websocket): the SIGMA API serves no WebSocket; send plain HTTP/1.1 "
            "requests (POST /v1/jobs, then GET /v1/jobs/{id})")


def bad_target(target: bytes) -> str | None:
    """Why a request target (in any form) is refused (400), else None. A fragment (`#x`) is no
    part of a request target (RFC 9112 3.2; a client never sends it, a broken proxy may): uvicorn took it into the
    path, so `GET /healthz#x` was a 404 `not_found`. A path or query whose percent-encoding decodes to bytes that are
    not UTF-8 (`/v1/jobs/%ff`, `?out=%ff%fe`) was decoded with each bad byte replaced by U+FFFD, so the route saw
    another name than the one sent (a job id `\ufffd`, a query value that could match another)."""
    from urllib.parse import unquote_to_bytes

    if b"#" in target:
        return ("the request target holds a fragment ('#'), which is no part of a request (RFC 9112 3.2): send the "
                "path and query without it")
    path, _, query = target.partition(b"?")
    for part, what in ((path, "path"), (query.replace(b"+", b" "), "query")):
        if b"%" not in part:
            continue
        try:
            unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            return (f"the request target's {what} is percent-encoded bytes that are not UTF-8 "
                    f"({part[:64].decode('ascii', 'replace')!r}): encode its text as UTF-8 before percent-encoding")
    return None


def unmet_expectation(request: h11.Request) -> str | None:
    """Why `request`'s `Expect` cannot be met (417), else None. The one expectation HTTP defines is `100-continue`
    (h11 handles it, and ignores it in HTTP/1.0 as RFC 9110 10.1.1 says); any other member (`Expect: something-else`,
    `100-continue; x=1`) was served as if absent, so a client that made its request depend on it had it carried
    out unmet. RFC 9110 10.1.1: 417 Expectation Failed, as Go's and Node's servers answer; empty members are none."""
    members = [member.strip() for name, value in request.headers if name == b"expect" for member in value.split(b",")]
    unmet = [member for member in members if member and member.lower() != b"100-continue"]
    if not unmet:
        return None
    said = b", ".join(unmet).decode("ascii", "replace")
    return (f"Expect: {said[:64]}{'...' if len(said) > 64 else ''} cannot be met: the only expectation this server "
            "knows is 100-continue; send the request without it")


class HeadLimitedConnection(h11.Connection):
    """h11's server side, with each request's head (its line and header fields, up to the blank line) held to
    `max_head_bytes` however it arrives: h11 measures only an incomplete head, when a read leaves it unfinished
    (`max_incomplete_event_size`), and parses a complete one of any size. A refusal raises h11's own
    RemoteProtocolError with `error_status_hint` 431, and `head_refused` says the last refusal was one (a head
    h11 refuses as incomplete and too long is one too; a chunk-size line too long in a body is a 400)."""

    def __init__(self, max_head_bytes: int, max_body_bytes: int | None = None):
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.max_body_bytes = max_body_bytes
        self.head_refused = False
        self.body_refused: tuple[int, str] | None = None    # a refused body's status (413, 400) and why, else None
        self.version_refused: str | None = None     # why a request of another HTTP version was refused (505)
        self.expectation_refused: str | None = None     # why a request's `Expect` was refused (417)
        self.request_refused: str | None = None     # why a request was refused at its head (400 bad_request)
        self._received = 0       # bytes received on the connection
        self._head_start = 0     # where in them the request being read began (after the previous one's end)
        self._body_seen = 0      # bytes of the current request's body handed on
        self._chunks = 0         # chunks of it begun

    def receive_data(self, data: bytes) -> None:
        self._received += len(data)
        super().receive_data(data)

    def send(self, event: Any) -> bytes | None:
        """h11's `send`, but a final answer to a request whose client still waits for `100 Continue` (`Expect:
        100-continue`, the body not asked for: a 401, 415 or 429 from the head alone) says `Connection: close` and
        ends the connection (with the lingering close, so a client that sends the body anyway reads the answer).
        Otherwise the connection stayed open for the declared body, which such a client need not send (RFC 9110
        10.1.1), and the next request it sent on the connection was read as that body: no answer until
        `api.body_timeout_s` closed it. RFC 9110 says the server SHOULD say which it does; Go's server closes too."""
        if (isinstance(event, h11.Response) and self.they_are_waiting_for_100_continue
                and b"close" not in (value.lower() for name, value in event.headers if name == b"connection")):
            event = h11.Response(status_code=event.status_code, reason=event.reason, http_version=event.http_version,
                                 headers=[*event.headers.raw_items(), (b"connection", b"close")])
        return super().send(event)

    def _unparsed(self) -> int:
        return len(self.trailing_data[0])

    def next_event(self) -> Any:
        reading_head = self.their_state is h11.IDLE
        long_length = self._long_content_length() if reading_head else None
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.head_refused = reading_head and exc.error_status_hint == 431
            if not reading_head and exc.error_status_hint == 431 and self.body_refused is None:
                # h11's bound on a line of a chunked body (a size line, the trailer section) still incomplete: it was
                # the generic 400, and the connection closed at once, so a client still sending met a reset
                self.body_refused = (400, "a chunk-size line or the trailer fields of the chunked body run over "
                                     f"{self.max_head_bytes} bytes (api.max_header_bytes); send smaller trailers")
                raise h11.RemoteProtocolError(self.body_refused[1], error_status_hint=400) from exc
            if long_length is not None and not self.head_refused and str(exc) == "bad Content-Length":
                self.body_refused = (413, f"request body exceeds limits.max_request_bytes={self.max_body_bytes}: its "
                                     f"Content-Length has {len(long_length)} digits "
                                     f"({long_length[:24].decode()}{'...' if len(long_length) > 24 else ''}); not read")
                raise h11.RemoteProtocolError(self.body_refused[1], error_status_hint=413) from exc
            raise
        if isinstance(event, h11.Request):
            self._body_seen = self._chunks = 0
            size = self._received - self._unparsed() - self._head_start
            if size > self.max_head_bytes:
                self.head_refused = True
                raise h11.RemoteProtocolError(f"request head of {size} bytes, over {self.max_head_bytes}",
                                              error_status_hint=431)
            self.version_refused = unsupported_version(event)
            if self.version_refused is not None:
                raise h11.RemoteProtocolError(self.version_refused, error_status_hint=505)
            self.expectation_refused = unmet_expectation(event)
            if self.expectation_refused is not None:
                raise h11.RemoteProtocolError(self.expectation_refused, error_status_hint=417)
            self.request_refused = websocket_upgrade(event)
            if self.request_refused is not None:
                raise h11.RemoteProtocolError(self.request_refused, error_status_hint=400)
            self.request_refused = bad_target(event.target)
            if self.request_refused is not None:
                raise h11.RemoteProtocolError(self.request_refused, error_status_hint=400)
            event = origin_form(event)
        elif isinstance(event, h11.Data):
            self._body_seen += len(event.data)
            self._chunks += bool(event.chunk_start)
        elif isinstance(event, h11.EndOfMessage):
            self._head_start = self._received - self._unparsed()
        self._refuse_declared_chunk()
        self._refuse_tiny_chunks()
        return event

    def _long_content_length(self) -> bytes | None:
        """The digits of a Content-Length of more than `CONTENT_LENGTH_DIGITS` in the head h11 is about to read, else
        None. h11 refuses such a length as it refuses `abc`, "bad Content-Length", and consumes the head, so it is
        looked for first: a length no body can reach is 413 `request_too_large`, as the API answers a 20-digit one
        (a 23-digit length was the generic 400 "not valid HTTP/1.1"). Reads h11's private buffer (as
        `_refuse_declared_chunk` its reader); where a release has none, such a length stays a 400."""
        data = getattr(getattr(self, "_receive_buffer", None), "_data", None)
        if not isinstance(data, bytearray):
            return None
        end = data.find(b"\n\r\n", 0, self.max_head_bytes + 4)
        found = _LONG_CONTENT_LENGTH.search(data, 0, end if end >= 0 else min(len(data), self.max_head_bytes))
        return bytes(found.group(1)) if found else None

    def _refuse_tiny_chunks(self) -> None:
        """400 once a chunked body has begun more than `MAX_SMALL_CHUNKS` chunks averaging under `SMALL_CHUNK_BYTES`:
        each chunk costs h11 and uvicorn some 10 us of the event loop whatever its size, so 12 MB of one-byte chunks
        took 21 s of the API process's only thread, every other request (a /healthz) waiting up to 1.2 s at a
        time, and a 64 MiB body of them would take ten minutes. No client of this API sends a body so cut up."""
        if self._chunks > MAX_SMALL_CHUNKS and self._body_seen < self._chunks * SMALL_CHUNK_BYTES:
            self.body_refused = (400, f"a chunked body of more than {MAX_SMALL_CHUNKS} chunks averaging under "
                                 f"{SMALL_CHUNK_BYTES} bytes ({self._body_seen} bytes in {self._chunks}); send "
                                 "larger chunks")
            raise h11.RemoteProtocolError(self.body_refused[1], error_status_hint=400)

    def _refuse_declared_chunk(self) -> None:
        """413 (a RemoteProtocolError with that hint, `body_refused` saying why) once a chunk's size line declares
        more than the body may still take: h11 reads sizes of up to 20 hex digits (2**80 bytes) and hands the chunk
        on as it comes, so such a chunk was read until `limits.max_request_bytes` or a body timeout cut it. h11 keeps
        the size in its chunked reader's `_bytes_in_chunk` (what is left of the chunk being read); there is no public
        way to it, and where a release has none this check is skipped and the byte count still cuts the body."""
        if self.max_body_bytes is None or self.their_state is not h11.SEND_BODY:
            return
        left = getattr(getattr(self, "_reader", None), "_bytes_in_chunk", None)
        if isinstance(left, int) and self._body_seen + left > self.max_body_bytes:
            self.body_refused = (413, f"request body exceeds limits.max_request_bytes={self.max_body_bytes}: a chunk "
                                 f"declares {left} more bytes after {self._body_seen}; not read")
            raise h11.RemoteProtocolError(self.body_refused[1], error_status_hint=413)


class _LingeringTransport:
    """The transport uvicorn's protocol and its request cycles see: `close()` becomes a lingering close while the
    request's body is still arriving after a complete answer (see the module's docstring); everything else is the
    socket transport's own."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedH11Protocol):
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        if not self._protocol.start_lingering():
            self._transport.close()
            self._protocol._bound_close()

    def is_closing(self) -> bool:
        """True while lingering too: uvicorn then neither arms its keep-alive timer nor parses a next request."""
        return self._protocol.lingering or self._transport.is_closing()


class GuardedH11Protocol(H11Protocol):
    header_timeout_s: float = 10.0
    drain_timeout_s: float = 60.0
    linger_s: float = 2.0
    linger_bytes: int = 8 * 1024 * 1024
    max_head_bytes: int = 16 * 1024
    max_connections: int = 1000
    max_body_bytes: int | None = None
    send_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _quiet_invalid_request(self.logger)
        self.conn: HeadLimitedConnection = HeadLimitedConnection(self.max_head_bytes, self.max_body_bytes)
        self._refused = False          # a request h11 could not take was answered (send_400_response)
        self._head_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._drained: Any = None      # the request whose unread body the drain timer is about
        self._linger_timer: asyncio.TimerHandle | None = None
        self._socket: asyncio.Transport | None = None     # the real transport, under the lingering wrapper
        self.lingering = False
        self._linger_left = 0
        self._peer_eof = False         # the client half-closed after a whole request (`eof_received`)
        self._refused_lingering = False   # a connection past the limit, answered 503, its request being discarded
        self._fate_timer: asyncio.TimerHandle | None = None     # `_check_delivery`'s next look at the socket
        self._fate: asyncio.Future[bool] | None = None          # `_ask_fate`'s answer: did the client leave
        self._fate_deadline = 0.0
        self._send_timer: asyncio.TimerHandle | None = None     # `_send_expired`: an answer the client does not read
        self._send_left = 0            # `_unsent()` when that timer was armed

    def _should_upgrade(self) -> bool:
        """Never: a WebSocket upgrade is refused at its head (`websocket_upgrade`), and any other is ignored, served as
        HTTP/1.1 without uvicorn's two warnings per request ("Unsupported upgrade request.")."""
        return False

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
            self._close_now()

    # -- lingering close ---------------------------------------------------------------------------
    def start_lingering(self) -> bool:
        """On uvicorn's close after an answer sent before the body was read, or after the refusal of a request h11
        could not take (its rest may still be arriving): send a FIN after the answer and keep reading (and
        discarding) what the client still sends, within the bounds. False when there is nothing to linger for (the
        body is all in, no answer went out, a route is still reading the refused body, lingering is off): then close
        as uvicorn asked."""
        transport = self._socket
        idle = self.cycle is None or self.cycle.response_complete or self.cycle.disconnected
        answered_early = self.cycle is not None and self.cycle.response_complete \
            and self.conn.their_state is h11.SEND_BODY
        if (self.lingering or transport is None or transport.is_closing() or not idle
                or not (answered_early or self._refused)
                or self.linger_s <= 0 or self.linger_bytes <= 0 or not transport.can_write_eof()):
            return False
        try:
            transport.write_eof()        # the FIN goes out after the buffered answer
        except OSError:                  # the client is gone already (a reset): nothing to linger for
            return False
        self.lingering = True
        self._linger_left = self.linger_bytes
        self._cancel("_drain_timer")
        transport.resume_reading()       # uvicorn pauses reading while a body is not being read
        self._linger_timer = self.loop.call_later(self.linger_s, self._linger_expired)
        return True

    # -- answers the client does not read --------------------------------------------------------------------
    def pause_writing(self) -> None:
        """asyncio: the answer's bytes not taken by the client fill the transport's buffer. From here the client must
        read within `send_timeout_s`, else the connection is cut (`_send_expired`). Nothing bounded a client that
        asks and never reads (pipelined GET /openapi.json with a full receive window): the route's send waited for
        ever, no keep-alive timer ran, and each such client held a connection of `api.max_connections` (and megabytes
        of buffers) for good: three of them behind `api.max_connections=3` had every other client 503 for minutes."""
        super().pause_writing()
        if self._send_timer is None:
            self._arm_send_timer()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel("_send_timer")

    def _bound_close(self) -> None:
        """After a close of the socket transport: asyncio keeps it (and the connection's slot) until what is buffered
        is written, for ever to a client that does not read; `send_timeout_s` bounds that too."""
        transport = self._socket
        if transport is not None and self._send_timer is None and transport.get_write_buffer_size() > 0:
            self._arm_send_timer()

    def _unsent(self) -> int:
        """Bytes of answers the client has not taken: the transport's buffer and, on Linux, the kernel's send queue
        (TIOCOUTQ: not yet acknowledged). The kernel's queue is where a slow reader's progress shows first: asyncio
        writes again only once a third of a send buffer of megabytes is free."""
        transport = self._socket
        if transport is None:
            return 0
        sock = transport.get_extra_info("socket")
        queued = 0
        try:
            import fcntl
            import struct
            import termios

            queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        except (AttributeError, ImportError, OSError, ValueError):
            pass
        return transport.get_write_buffer_size() + queued

    def _arm_send_timer(self) -> None:
        self._send_left = self._unsent()
        self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_expired)

    def _send_expired(self) -> None:
        """No byte taken by the client for `send_timeout_s`: cut. Any taken (a slow reader): wait again (nginx's
        `send_timeout` is as much: between two successive writes, not for the whole answer)."""
        self._send_timer = None
        if self._socket is None or self._socket.get_write_buffer_size() == 0:
            return
        if self._unsent() < self._send_left:
            self._arm_send_timer()
            return
        self.logger.info("answer not read by the client for %.1f s (api.send_timeout_s): closing", self.send_timeout_s)
        self._cancel("_linger_timer")
        self._socket.abort()             # discards what is buffered: connection_lost frees the slot

    def _linger_expired(self) -> None:
        self._linger_timer = None
        self.logger.info("request body still arriving %.1f s after a closing answer: closing", self.linger_s)
        self._close_now()

    def _discard(self, data: bytes) -> None:
        self._linger_left -= len(data)
        if self._linger_left < 0:
            self.logger.info("request body went on %d bytes past a closing answer: closing", self.linger_bytes)
            self._close_now()

    def _close_now(self) -> None:
        self._cancel("_linger_timer")
        if self._socket is not None:
            self._socket.close()
            self._bound_close()

    # -- uvicorn's protocol hooks ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._socket = transport
        super().connection_made(_LingeringTransport(transport, self))  # type: ignore[arg-type]
        if len(self.server_state.connections) > self.max_connections:
            _log_refused_connection(self.logger, self.max_connections)
            transport.write(too_many_connections(self.max_connections))
            self.server_state.connections.discard(self)      # it holds no slot while what it still sends is read
            self._refused = True
            if _refusals["lingering"] < accept_backlog(self.max_connections) and self.start_lingering():
                self._refused_lingering = True
                _refusals["lingering"] += 1
                return
            transport.close()            # past the bound of lingering refusals: at once, freeing its descriptor
            return
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)

    def data_received(self, data: bytes) -> None:
        if self.lingering:               # the rest of a body already answered: neither parsed nor kept
            self._discard(data)
            return
        if self.conn.their_state is h11.IDLE and self._head_timer is None:   # the first byte of a request
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_expired)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:                             # its head is complete
            self._cancel("_head_timer")
        if self._drain_timer is not None and (self.cycle is not self._drained
                                              or self.conn.their_state is not h11.SEND_BODY):
            self._cancel("_drain_timer")                                      # the unread body is all in

    def eof_received(self) -> bool | None:
        """The client shut down its sending side (a half-close: `shutdown(SHUT_WR)`, `nc -N`, `curl --no-keepalive`
        behind some proxies). After a whole request whose answer is still to come, the connection stays open for
        that answer (True): uvicorn took the FIN as a hang-up, so the client read nothing, although a POST /v1/jobs
        had queued its job, whose id it never learned. The request's scope gets `PEER_EOF` set, so a route that waits
        on the client (POST /v1/annotate) stops waiting and answers at once (a FIN cannot tell a half-close from a
        client that left). Mid-head, mid-body, idle or lingering: closed, as before (None)."""
        cycle = self.cycle
        if (self.lingering or cycle is None or cycle.response_complete or cycle.disconnected
                or self.conn.their_state is not h11.DONE):
            return None
        self._peer_eof = True
        cycle.scope.setdefault(PEER_EOF, asyncio.Event()).set()
        return True

    def on_response_complete(self) -> None:
        answered = self.cycle
        if answered is not None and not self._peer_eof and _was_reset(self._socket):
            _mark_gone(answered.scope, self.loop)     # the answer's write met the client's reset: it left before it
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and self._drain_timer is None and not self.lingering:
            self._drained = self.cycle
            self._drain_timer = self.loop.call_later(self.drain_timeout_s, self._drain_expired)
        if self._peer_eof and answered is not None and self._fate is None:
            self._ask_fate(answered.scope)
        if self._peer_eof and not self.transport.is_closing():
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete and self.conn.their_state is h11.DONE:
                cycle.scope.setdefault(PEER_EOF, asyncio.Event()).set()     # a whole request pipelined before the FIN
            elif self._fate is not None and not self._fate.done():
                self._fate_timer = self.loop.call_later(0, self._check_delivery)  # closes once the client answers
            else:
                self.transport.close()       # nothing more can come from the client: the answers are all out

    def _ask_fate(self, scope: dict) -> None:
        """For the answer to a client that sent a FIN: `scope[PEER_GONE]`, resolved once the client's side has taken
        the answer (every byte acknowledged: a half-closed client, still reading) or refused it (a reset: a client
        that closed, whose kernel answers data with a reset), within `PEER_FATE_S`; the request metrics count the
        latter 499, as before the half-close was answered, when every FIN was a hang-up. A write that already met
        the reset closed the transport: `connection_lost` resolves it from its error. Nothing where the socket
        cannot be asked (not Linux): the answer counts as sent."""
        sock = self._socket.get_extra_info("socket") if self._socket is not None else None
        if sock is None or _delivery(sock) is _UNKNOWN:
            return
        self._fate = self.loop.create_future()
        scope[PEER_GONE] = self._fate
        self._fate_deadline = self.loop.time() + PEER_FATE_S

    def _check_delivery(self) -> None:
        self._fate_timer = None
        transport = self._socket
        if transport is None or transport.is_closing() or self._fate is None or self._fate.done():
            return                           # connection_lost resolves the fate
        state = _PENDING if transport.get_write_buffer_size() else _delivery(transport.get_extra_info("socket"))
        if state is _PENDING and self.loop.time() < self._fate_deadline:
            self._fate_timer = self.loop.call_later(DELIVERY_POLL_S, self._check_delivery)
            return
        self._fate.set_result(state is _RESET)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """What h11 could not take, answered in the API's error shape (uvicorn's own is text/plain): 431
        `headers_too_large` for a head over `max_head_bytes`, else 400 `bad_request`; then a lingering close. When
        an answer has already gone out (a body drained after a 401), only the connection is closed, as nothing can
        follow."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.close()
            return
        if self.conn.head_refused:
            status, reason, body = 431, HEADERS_TOO_LARGE_REASON, headers_too_large(self.max_head_bytes)
            self.logger.info("request head over %d bytes: 431, closing", self.max_head_bytes)
        elif self.conn.version_refused:
            status, reason = 505, b"HTTP Version Not Supported"
            body = json.dumps({"error": {"code": "http_version_not_supported",
                                         "message": self.conn.version_refused}}).encode()
            self.logger.info("request of another HTTP version refused (505, closing): %s", self.conn.version_refused)
        elif self.conn.expectation_refused:
            status, reason = 417, b"Expectation Failed"
            body = json.dumps({"error": {"code": "expectation_failed",
                                         "message": self.conn.expectation_refused}}).encode()
            self.logger.info("request refused (417, closing): %s", self.conn.expectation_refused)
        elif self.conn.request_refused:
            status, reason = 400, b"Bad Request"
            body = json.dumps({"error": {"code": "bad_request", "message": self.conn.request_refused}}).encode()
            self.logger.info("request refused (400, closing): %s", self.conn.request_refused)
        elif self.conn.body_refused:
            status, said = self.conn.body_refused
            code, reason = ("request_too_large", b"Content Too Large") if status == 413 else ("bad_request",
                                                                                             b"Bad Request")
            body = json.dumps({"error": {"code": code, "message": said}}).encode()
            self.logger.info("request body refused (%d, closing): %s", status, said)
            if self.cycle is not None and not self.cycle.response_started:
                # the route reading this body gets a disconnect (it answers nothing: this is the answer), and the
                # rest of the body is discarded by the lingering close; the metrics count the status sent here
                self.cycle.scope[ANSWERED_BY_SERVER] = status
                self.cycle.disconnected = True
                self.cycle.message_event.set()
        else:
            status, reason, body = 400, b"Bad Request", BAD_REQUEST
            self.logger.info("request not valid HTTP/1.1: 400, closing")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
                                 + self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
            self._refused = True
        except h11.LocalProtocolError:      # h11 would not frame an answer now: close, as above
            pass
        self.transport.close()

    def shutdown(self) -> None:
        if self.lingering:               # the server is stopping: no more waiting for the client
            self._close_now()
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused_lingering:
            self._refused_lingering = False
            _refusals["lingering"] -= 1
        self._cancel("_head_timer")
        self._cancel("_drain_timer")
        self._cancel("_linger_timer")
        self._cancel("_fate_timer")
        self._cancel("_send_timer")
        if self._fate is not None and not self._fate.done():      # the answer met a reset while still being written
            self._fate.set_result(isinstance(exc, (ConnectionResetError, BrokenPipeError)))
        cycle = self.cycle
        if exc is not None and cycle is not None and not cycle.response_complete:
            _mark_gone(cycle.scope, self.loop)        # a reset before the answer: the route's answer goes nowhere
        super().connection_lost(exc)


_UNKNOWN, _PENDING, _DELIVERED, _RESET = "unknown", "pending", "delivered", "reset"
TCP_CLOSE = 7                  # tcp_info's state once a reset ended the connection (linux/tcp_states.h)
DELIVERY_POLL_S = 0.005


def _delivery(sock: Any) -> str:
    """Where the bytes written to `sock` stand: `_RESET` (the peer reset the connection), `_DELIVERED` (all of them
    acknowledged: Linux's SIOCOUTQ counts those sent and not yet acknowledged and those not yet sent), `_PENDING`,
    or `_UNKNOWN` where the system has no such answer."""
    import fcntl
    import socket
    import struct
    import termios

    try:
        if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE:
            return _RESET
        queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (AttributeError, OSError):
        return _UNKNOWN
    return _DELIVERED if queued == 0 else _PENDING


def _was_reset(transport: asyncio.Transport | None) -> bool:
    """Whether the client reset the connection (Linux's TCP_INFO state CLOSE), as read right after an answer was
    written: a write that met the reset does not raise, the transport closes later. False where it cannot be told."""
    import socket

    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE
    except (AttributeError, OSError):
        return False


def _mark_gone(scope: dict, loop: asyncio.AbstractEventLoop) -> None:
    """`scope[PEER_GONE]`, already resolved True: the request metrics count the request 499 (client closed), not as
    the status a route answered into a connection the client had reset. A client that reset after its whole request
    was read (its job queued by POST /v1/jobs) and before the answer was counted 202, as if it had read its job's id;
    one that reset a moment earlier, while the body was still read, 499."""
    fate = scope.get(PEER_GONE)
    if fate is None:
        fate = scope[PEER_GONE] = loop.create_future()
    if not fate.done():
        fate.set_result(True)


UVICORN_INVALID_REQUEST = "Invalid HTTP request received."


class _DropInvalidRequest(logging.Filter):
    """Drops uvicorn's warning `Invalid HTTP request received.`, which it writes before every `send_400_response`: one
    line in the API's log (at the default level, warning) per malformed request any client sends, also for a 413 or
    431 the request was not invalid for; `send_400_response` logs each refusal with its status at info."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != UVICORN_INVALID_REQUEST


def _quiet_invalid_request(logger: logging.Logger) -> None:
    """Install `_DropInvalidRequest` on uvicorn's protocol logger, once (after uvicorn configured its logging)."""
    if not any(isinstance(f, _DropInvalidRequest) for f in logger.filters):
        logger.addFilter(_DropInvalidRequest())


_refusals = {"last": 0.0, "count": 0, "lingering": 0}     # "lingering": 503 refusals in their lingering close now


def _log_refused_connection(logger: logging.Logger, limit: int) -> None:
    """One line a minute at most, with how many were refused since: a flood of connections must not flood the
    log as well."""
    import time

    _refusals["count"] += 1
    now = time.monotonic()
    if now - _refusals["last"] >= 60.0:
        logger.warning("%d connection(s) refused with 503 too_many_connections: api.max_connections=%d are open",
                       _refusals["count"], limit)
        _refusals["last"], _refusals["count"] = now, 0


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


def guarded_protocol(header_timeout_s: float, drain_timeout_s: float, linger_s: float = 2.0,
                     linger_bytes: int = 8 * 1024 * 1024, max_head_bytes: int = 16 * 1024,
                     max_connections: int = 1000, max_body_bytes: int | None = None,
                     send_timeout_s: float = 30.0) -> type[GuardedH11Protocol]:
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout_s": header_timeout_s, "drain_timeout_s": drain_timeout_s, "linger_s": linger_s,
                 "linger_bytes": linger_bytes, "max_head_bytes": max_head_bytes, "max_connections": max_connections,
                 "max_body_bytes": max_body_bytes, "send_timeout_s": send_timeout_s})


def uvicorn_options(cfg: ServeConfig) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` that apply the API's connection timeouts and its
    bound on a request's head, and its connection limit (which may raise this process's RLIMIT_NOFILE)."""
    limit = connection_limit(cfg.api.max_connections)
    return {"http": guarded_protocol(cfg.api.header_timeout_s, cfg.api.body_timeout_s, cfg.api.close_linger_s,
                                     cfg.api.close_linger_bytes, cfg.api.max_header_bytes,
                                     limit, cfg.limits.max_request_bytes, cfg.api.send_timeout_s),
            "timeout_keep_alive": cfg.api.keep_alive_timeout_s, "backlog": accept_backlog(limit),
            "ws": "none"}      # no WebSocket protocol is loaded, whatever is installed (`websocket_upgrade`)


def guard_uvicorn_config(config: Any, cfg: ServeConfig) -> None:
    """Give a `uvicorn.Config` that is loading the app (`uvicorn --factory sigma.api.app:app_from_env`) the protocol
    and options `sigma serve api` passes (`uvicorn_options`). uvicorn picks its protocol classes before it calls the
    factory and makes each connection's protocol from `config.http_protocol_class` after, so they are replaced here.
    Run by hand, the app was served by uvicorn's own h11/httptools protocol: no header timeout, no bound on a request's
    head (a 100 KB header was served), no connection limit, a WebSocket upgrade served as HTTP with two warnings, a
    fragment in the target routed; uvicorn's --http, --ws, --timeout-keep-alive and --backlog are replaced by the
    api.* settings, which the service's config says."""
    options = uvicorn_options(cfg)
    config.http = config.http_protocol_class = options["http"]
    config.ws = "none"
    config.ws_protocol_class = None
    config.timeout_keep_alive = options["timeout_keep_alive"]
    config.backlog = options["backlog"]
    logging.getLogger("sigma.api").info(
        "serving with the API's guarded HTTP/1.1 protocol (api.max_header_bytes, api.header_timeout_s, "
        "api.max_connections, api.keep_alive_timeout_s; no WebSocket): uvicorn's --http, --ws, --timeout-keep-alive "
        "and --backlog are replaced by the service config's api.* settings")


def uvicorn_loading(frame: Any) -> Any:
    """The `uvicorn.Config` whose `load()` is `frame` (the factory's caller), else None: a server other than uvicorn
    (gunicorn's worker, hypercorn) or a direct call."""
    try:
        import uvicorn
    except ImportError:        # pragma: no cover - the serve extra installs it
        return None
    owner = frame.f_locals.get("self") if frame is not None and frame.f_code.co_name == "load" else None
    return owner if isinstance(owner, uvicorn.Config) else None

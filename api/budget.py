"""A budget over the request bytes the API parses and decodes at once (`limits.max_bytes_in_flight`).

A 44 MB base64 JSON body costs several times its size while it is parsed (the buffer, the decoded text, the
two base64 strings, the two images): 16 such requests at once took the API to 1.5 GB. Each submission takes
its Content-Length (or `limits.max_request_bytes` when the body has no length) from the budget before reading
the body and gives it back when it is enqueued or refused; when the budget cannot cover it the answer is 429
`server_busy` with Retry-After, before a byte of the body is read. One request is always admitted when the
budget is idle, so no legal request is refused forever. Everything runs on the server's event loop, so plain
integers need no lock.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import Request

from sigma.api.errors import ApiError


class ByteBudget:
    def __init__(self, capacity: int, retry_after_s: int):
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.used = 0
        self.holders = 0

    def try_take(self, n: int) -> bool:
        if self.holders and self.used + n > self.capacity:
            return False
        self.used += n
        self.holders += 1
        return True

    def release(self, n: int) -> None:
        self.used -= n
        self.holders -= 1

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        if not self.try_take(n):
            raise ApiError(429, "server_busy", f"the API is parsing {self.used} bytes of other requests "
                           f"(limits.max_bytes_in_flight={self.capacity}); retry after {self.retry_after_s} s",
                           {"Retry-After": str(self.retry_after_s)})
        try:
            yield
        finally:
            self.release(n)


def declared_length(request: Request, default: int) -> int:
    """The body's Content-Length (the body limit already refused anything larger), else `default`."""
    value = request.headers.get("content-length")
    if value is not None and value.isdigit() and len(value) <= 20:
        return int(value)
    return default

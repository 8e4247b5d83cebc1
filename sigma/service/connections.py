"""The one place Redis clients are made, so every process talks to Redis with the same timeouts.

A down Redis must fail fast (connect timeout) rather than hang a request or a worker; the blocking
read of a consumer needs a socket timeout longer than its BLOCK, or every idle read would time out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aredis

    from sigma.service.settings import RedisSettings


def display_url(url: str) -> str:
    """The URL for messages and logs, with any password replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def sync_client(settings: RedisSettings, *, block_ms: int = 0) -> redis.Redis:
    """For workers and CLI tools; `block_ms`: the longest blocking command the caller issues, so a blocking
    read gets `socket_timeout_s` on top of its BLOCK before a silent (frozen) server counts as a timeout.

    One immediate retry inside the client after a connection error (a pooled connection the server closed), no
    more, and none after a timeout: redis-py's default (3 retries with up to 10 s of backoff) would hide an outage
    for tens of seconds, while the consumer loop has its own backoff, keeps its results, and says what it is waiting
    for. A retried timeout made each command on a frozen Redis (SIGSTOP, a stalled host) cost two socket timeouts:
    an idle `sigma worker` told to stop took ≈ 37 s (its read, then its heartbeat key's delete), past a supervisor's
    grace, as `async_client` already knew for the API."""
    import redis
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    return redis.Redis.from_url(settings.url, socket_connect_timeout=settings.connect_timeout_s,
                                socket_timeout=block_ms / 1000 + settings.socket_timeout_s,
                                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                                health_check_interval=5)


def async_client(settings: RedisSettings, socket_timeout: float | None) -> aredis.Redis:
    """For the API: one pool per event loop. One immediate retry after a connection error (a pooled connection
    the server closed), none after a timeout: a frozen Redis would otherwise cost each call up to four socket
    timeouts (the health-check PING, the command, and each again on a new connection, whose handshake waits too),
    so /metrics took 4 x `socket_timeout_s` to say `sigma_redis_up 0` and a submission as long to answer 503."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return aredis.Redis.from_url(settings.url, socket_connect_timeout=settings.connect_timeout_s,
                                 socket_timeout=socket_timeout, max_connections=settings.max_connections,
                                 retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                                 health_check_interval=5)


def probe_client(settings: RedisSettings, timeout_s: float | None = None) -> redis.Redis:
    """For one-shot checks (start-up ping, container health check): no retries, a short socket timeout."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    timeout = timeout_s if timeout_s is not None else settings.connect_timeout_s + 1
    return redis.Redis.from_url(settings.url, socket_connect_timeout=min(settings.connect_timeout_s, timeout),
                                socket_timeout=timeout, retry=Retry(NoBackoff(), 0))

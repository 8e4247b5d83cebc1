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


def sync_client(settings: RedisSettings, *, block_ms: int = 0) -> redis.Redis:
    """For workers and CLI tools; `block_ms`: the longest blocking command the caller issues."""
    import redis

    return redis.Redis.from_url(settings.url, socket_connect_timeout=settings.connect_timeout_s,
                                socket_timeout=max(settings.socket_timeout_s, block_ms / 1000 + 5),
                                health_check_interval=5)


def async_client(settings: RedisSettings, socket_timeout: float | None) -> aredis.Redis:
    """For the API: one pool per event loop; no retry inside the client (the API answers 503 instead)."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aredis.Redis.from_url(settings.url, socket_connect_timeout=settings.connect_timeout_s,
                                 socket_timeout=socket_timeout, max_connections=settings.max_connections,
                                 retry=Retry(NoBackoff(), 1), health_check_interval=5)

"""The heartbeat registry: how readers find the live workers' heartbeat hashes without walking the keyspace.

A worker's heartbeat is a hash with a TTL (`P:worker:<consumer>`, `P:batch:tasks:worker:<consumer>`): the worker is
alive while the hash exists, and Redis' TTL is the only judge of that. Readers (/metrics, /readyz, the container
health check, `sigma batch status`, a fleet worker deciding a run is refused everywhere) used to find the hashes
with SCAN MATCH, which walks every key — jobs, blobs, results: 200 000 keys were 200 round trips per /readyz and
400 per fleet status, however few workers there were — so each probe grew slower as the service grew busier.

Now each beat also records its key in a sorted set (`Keys.worker_registry`, `Keys.batch_worker_registry`), scored by
when the hash expires on Redis' own clock (`TIME` + the worker's TTL: no clock skew between hosts, and a worker
whose TTL differs from the reader's is judged by its own), in the same script as the HSET and PEXPIRE, so the two
never disagree. A reader runs one script: members whose score has passed are dropped (ZREMRANGEBYSCORE), and of
the rest those whose hash is gone (a stopped worker deleted it, a hand DEL) are dropped too; the keys left are
returned, and the caller reads the hashes in one pipeline. A killed worker's entry goes by itself once its TTL has
passed; the registry holds the live workers and, between readers, the dead of the last TTL (each beat prunes too).

Rolling upgrade: a worker of an earlier release beats without registering. The registry carries a sentinel member
(`""`, score +inf) that every beat writes, and the registry key lives a day past the last beat (`REGISTRY_TTL_MS`).
While no worker of this release has beaten within that day (the sentinel is absent: an API upgraded before its
workers, or a fleet of earlier workers only), readers fall back to SCAN MATCH and see every heartbeat, as before.
Once one has, the registry alone is read: a worker of the earlier release still running beside it is not seen
until it is upgraded (upgrade the workers before the API and nothing is missed: the earlier API still SCANs).

The scripts name keys outside KEYS (the members): fine on one Redis, as everything here is (not Redis Cluster).
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

SCAN_COUNT = 1000           # keys SCAN looks at per round trip (the fallback walks the whole keyspace)
PAGE = 1000                 # heartbeat keys per HGETALL pipeline
REGISTRY_TTL_MS = 86_400_000     # the registry (and its sentinel) outlives the last beat this long

# KEYS[1] the heartbeat hash, KEYS[2] the registry; ARGV[1] the hash's TTL (ms), ARGV[2] the registry's TTL (ms),
# ARGV[3..] field, value, ... of the hash
BEAT = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], string.format('%.0f', now + tonumber(ARGV[1])), KEYS[1])
redis.call('ZADD', KEYS[2], '+inf', '')
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('(%.0f', now))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS[1] the registry. {0} when it is absent (no worker of this release beat within REGISTRY_TTL_MS), else
# {1, live key, ...}: members past their score, and members whose hash is gone, are removed on the way.
READ = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now))
local out = {1}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.0f', now), '+inf')) do
  if m ~= '' then
    if redis.call('EXISTS', m) == 1 then out[#out + 1] = m else redis.call('ZREM', KEYS[1], m) end
  end
end
return out
"""


def loading(heartbeat: dict[str, str]) -> bool:
    """Whether an annotation worker's heartbeat (decoded) says it is still loading its model (`state: loading`): it
    beats from before its load, and takes no job until it is `ready`. A hash without `state` (a worker of an earlier
    release, which beat only once loaded) is ready."""
    return heartbeat.get("state") == "loading"


def beat_args(ttl_ms: int, mapping: dict[str, Any]) -> list[Any]:
    """ARGV of `BEAT` for a hash of `mapping` living `ttl_ms`."""
    args: list[Any] = [int(ttl_ms), REGISTRY_TTL_MS]
    for k, v in mapping.items():
        args += [k, v]
    return args


def _pages(keys: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(keys), PAGE):
        yield keys[start:start + PAGE]


def heartbeat_pages(client: Any, registry: str, pattern: str) -> Iterator[list[Any]]:
    """The live heartbeat keys, a page at a time: the registry's (one round trip), or SCAN MATCH `pattern`'s pages
    while the registry is absent (workers of an earlier release only). A key may expire before it is read."""
    answer = client.register_script(READ)(keys=[registry])
    if int(answer[0]):
        yield from _pages(list(answer[1:]))
        return
    cursor = 0
    while True:
        cursor, found = client.scan(cursor, match=pattern, count=SCAN_COUNT)
        if found:
            yield found
        if not cursor:
            return


def live_heartbeat_keys(client: Any, registry: str, pattern: str) -> list[Any]:
    """Every live heartbeat key (`heartbeat_pages`) at once."""
    return [key for page in heartbeat_pages(client, registry, pattern) for key in page]


async def heartbeat_pages_async(client: Any, registry: str, pattern: str) -> AsyncIterator[list[Any]]:
    """`heartbeat_pages` on an asyncio client (the API)."""
    answer = await client.register_script(READ)(keys=[registry])
    if int(answer[0]):
        for page in _pages(list(answer[1:])):
            yield page
        return
    cursor = 0
    while True:
        cursor, found = await client.scan(cursor, match=pattern, count=SCAN_COUNT)
        if found:
            yield found
        if not cursor:
            return

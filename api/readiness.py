"""Which workers /readyz counts across a Redis that lost its data (FLUSHALL, a restart without AOF, a failover to an
empty replica).

The workers' heartbeat hashes go with the data and come back at each worker's next beat (`queue.heartbeat_interval_ms`).
Meanwhile /readyz said "no worker", 503, on every API process at once (they all read the one Redis), so a load
balancer took the whole front end out while the workers were alive and would take the jobs queued meanwhile (they
make their group again from the stream's start). A lost Redis is told from workers that stopped (their keys deleted:
503 at once is the truth then) by a marker key that only a loss of data removes, `P:epoch`, a random value each API
process remembers: when it is gone or has changed, the workers this process last saw are still counted until their
heartbeats would have expired (`queue.heartbeat_ttl_ms` after their last beat, as a worker that dies is counted that
long anyway), each named in `checks.workers.remembered` until it beats again. A process that had not read the workers
within that time before the loss remembers none and says what Redis says.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

import redis


class WorkerMemory:
    """One API process's memory of the live workers it read last (their hashes, and until when each would count)."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._epoch: bytes | None = None
        self._seen: dict[str, tuple[float, dict[str, str]]] = {}    # name → (counts until, monotonic; its hash)
        self._lost: dict[str, tuple[float, dict[str, str]]] = {}    # those seen before a loss, not seen since

    async def _data_lost(self, r: Any, key: str) -> bool:
        """Whether `key` (the marker) is gone or changed since this process last read it; it is made again if gone."""
        value = await r.get(key)
        if value is None:
            try:        # several API processes: the first one's value stays
                await r.set(key, secrets.token_hex(8), nx=True)
                value = await r.get(key)
            except redis.ResponseError:     # refusing writes (OOM, a replica): the write probe says so; ask again later
                pass
        lost = self._epoch is not None and value != self._epoch
        self._epoch = value
        return lost

    async def workers(self, svc: Any) -> tuple[list[dict[str, str]], list[str]]:
        """The live workers' heartbeat hashes, with those remembered across a loss of Redis' data; and the names of
        the remembered ones (not in Redis now)."""
        now, wall = time.monotonic(), time.time()
        if await self._data_lost(svc.r, svc.keys.epoch()):
            self._lost = {**self._lost, **self._seen}
        found: dict[str, tuple[float, dict[str, str]]] = {}
        await svc.read_heartbeats(found)
        self._lost = {name: seen for name, seen in self._lost.items() if name not in found and seen[0] > now}
        self._seen = {}
        for name, (beat, h) in found.items():
            age = min(max(wall - beat, 0.0), self.ttl_s)      # since its last beat; a clock skew bounded by the TTL
            self._seen[name] = (now + self.ttl_s - age, h)
        remembered = sorted(self._lost)
        return [h for _, h in found.values()] + [self._lost[name][1] for name in remembered], remembered

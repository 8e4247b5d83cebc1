"""The one consumer loop every SIGMA worker runs: reclaim → dead-letter → read → handle → store → ack.

The annotation worker (`sigma worker`) and the batch fleet worker (`sigma worker --batch`) are two
`Handler`s on this loop, so the delivery rules are written once:

- an entry leaves the stream only through `ack` (after its outcome is stored) or the dead-letter stream
  (after `max_deliveries` deliveries); a handler that says "retry" leaves it pending, and the lease
  (extended by the heartbeat while the entry is worked on) hands it to a worker again when it runs out;
- Redis trouble is transient: connection loss, timeouts (a SIGSTOPped server), `OOM` under
  `maxmemory`, `LOADING` after a restart. The loop backs off with jitter, reconnects, and keeps the
  outcomes it already computed until they are stored — it never drops work and never exits because
  of Redis; it exits on `stop` (SIGTERM/SIGINT) or on a bug (an exception from a handler).
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import redis

from sigma.service.queue import Entry, Heartbeat, StreamQueue
from sigma.service.settings import QueueSettings

log = logging.getLogger("sigma.service.consumer")

TRANSIENT_REPLIES = ("OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOGROUP", "BUSY")


def is_transient(exc: BaseException) -> bool:
    """Redis errors that end by themselves (or by our reconnect), as opposed to bugs."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(TRANSIENT_REPLIES)


@dataclass
class Outcome:
    """A handler's decision for one entry. `store` writes the entry's result to Redis (idempotently):
    it runs before the ack, and again after an outage if Redis failed in between."""

    entry: Entry
    action: Literal["ack", "retry", "dead"]
    error: dict[str, Any] | None = None
    store: Callable[[], Any] | None = None
    stored: bool = False


class Handler(Protocol):
    batch_size: int
    max_wait_ms: int

    def handle(self, entries: list[Entry]) -> list[Outcome]: ...

    def on_retry(self, entry: Entry, error: dict[str, Any]) -> None: ...

    def on_dead(self, entry: Entry, error: dict[str, Any] | None) -> dict[str, Any]: ...

    def info(self) -> dict[str, Any]: ...


@dataclass
class ConsumerCounts:
    batches: int = 0
    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    redis_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Backoff:
    """Full-jitter exponential backoff, reset by a success."""

    base_s: float = 0.05
    cap_s: float = 2.0
    attempt: int = 0
    since: float | None = field(default=None)

    def next_delay(self) -> float:
        self.attempt += 1
        if self.since is None:
            self.since = time.monotonic()
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** min(self.attempt, 16)))

    def reset(self) -> None:
        self.attempt, self.since = 0, None

    @property
    def waited_s(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


class Consumer:
    """Runs a handler on one stream until `stop` is set."""

    def __init__(self, client: redis.Redis, queue: StreamQueue, handler: Handler, settings: QueueSettings, *,
                 heartbeat_key: str, stop: threading.Event | None = None, describe: str = ""):
        self.r = client
        self.queue = queue
        self.handler = handler
        self.settings = settings
        self.stop = stop or threading.Event()
        self.describe = describe or queue.stream
        self.counts = ConsumerCounts()
        self.heartbeat = Heartbeat(client, heartbeat_key, settings.heartbeat_interval_ms,
                                   settings.heartbeat_ttl_ms, self._info, queue)
        self._unstored: list[Outcome] = []
        self._backoff = Backoff()
        self._next_reclaim = 0.0
        self._last_warning = 0.0

    def _info(self) -> dict[str, Any]:
        return {**self.handler.info(), **self.counts.as_dict()}

    # -- Redis trouble -----------------------------------------------------------------------
    def _transient(self, exc: BaseException, doing: str) -> None:
        self.counts.redis_errors += 1
        delay = self._backoff.next_delay()
        now = time.monotonic()
        if self._backoff.attempt == 1 or now - self._last_warning > 30:
            log.warning("%s: redis error while %s (%s: %s); retrying with backoff (waiting %.0f s so far, "
                        "%d result(s) kept)", self.describe, doing, type(exc).__name__, exc, self._backoff.waited_s,
                        len(self._unstored))
            self._last_warning = now
        self.stop.wait(delay)

    def connect(self) -> bool:
        """Wait for Redis and the group; False when stopped first."""
        while not self.stop.is_set():
            try:
                self.r.ping()
                self.queue.ensure_group()
                if self._backoff.attempt:
                    log.info("%s: redis is back after %.1f s", self.describe, self._backoff.waited_s)
                self._backoff.reset()
                return True
            except redis.RedisError as exc:
                if not is_transient(exc):
                    raise
                self._transient(exc, "connecting")
        return False

    # -- the loop ----------------------------------------------------------------------------
    def run(self, max_batches: int | None = None, exit_when_idle: bool = False) -> ConsumerCounts:
        if not self.connect():
            return self.counts
        self.heartbeat.start()
        try:
            while not self.stop.is_set():
                if max_batches is not None and self.counts.batches >= max_batches and not self._unstored:
                    break
                try:
                    if self._unstored:
                        self._store_all()
                        continue
                    if not self._step() and exit_when_idle and self._idle():
                        break
                    self._backoff.reset()
                except redis.RedisError as exc:
                    if not is_transient(exc):
                        raise
                    self._transient(exc, "consuming")
                    if "NOGROUP" in str(exc) or isinstance(exc, redis.ConnectionError):
                        self.connect()
            if self._unstored:     # stopping with results in hand: one last try to store them
                try:
                    self._store_all()
                except redis.RedisError as exc:
                    log.warning("%s: stopped with %d result(s) unstored (%s); their entries stay pending and "
                                "will be redelivered", self.describe, len(self._unstored), exc)
        finally:
            self.heartbeat.stop()
        return self.counts

    def _idle(self) -> bool:
        return self.queue.depth() == 0 and self.queue.pending_count() == 0

    def _step(self) -> bool:
        """One reclaim-or-read and its processing; False when there was nothing to do."""
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self.settings.reclaim_interval_ms / 1000
            live, exhausted = self.queue.reclaim(count=max(16, self.handler.batch_size))
            for entry in exhausted:
                self._dead_letter(entry, None)
            if live:
                log.info("%s: reclaimed %d entries idle past the lease", self.describe, len(live))
                self.counts.reclaimed += len(live)
                for start in range(0, len(live), self.handler.batch_size):
                    self.process(live[start:start + self.handler.batch_size])
                return True
        batch = self.queue.read_batch(self.handler.batch_size, self.settings.block_ms, self.handler.max_wait_ms)
        if batch:
            self.process(batch)
        return bool(batch)

    def process(self, entries: list[Entry]) -> None:
        ids = [e.id for e in entries]
        self.heartbeat.track(ids)
        try:
            outcomes = self.handler.handle(entries)
        except BaseException:
            self.heartbeat.untrack(ids)
            raise
        self.counts.batches += 1
        self._unstored.extend(outcomes)
        self._store_all()

    def _store_all(self) -> None:
        """Store, then ack (or retry, or dead-letter) every outcome in hand; a Redis error keeps the rest."""
        while self._unstored:
            outcome = self._unstored[0]
            self._settle(outcome)
            self._unstored.pop(0)
            self.heartbeat.untrack([outcome.entry.id])

    def _settle(self, outcome: Outcome) -> None:
        entry = outcome.entry
        if outcome.action == "retry" and entry.deliveries >= self.settings.max_deliveries:
            outcome.action = "dead"
        if outcome.action == "dead":
            self._dead_letter(entry, outcome.error)
            return
        if outcome.action == "retry":
            self.handler.on_retry(entry, outcome.error or {})
            self.counts.retried += 1
            return
        if outcome.store is not None and not outcome.stored:
            outcome.store()
            outcome.stored = True
        self.queue.ack([entry.id])
        self.counts.acked += 1

    def _dead_letter(self, entry: Entry, error: dict[str, Any] | None) -> None:
        record = self.handler.on_dead(entry, error)
        self.queue.dead_letter(entry, json.dumps(record, default=str))
        self.counts.dead_lettered += 1
        log.warning("%s: entry %s dead-lettered after %d deliveries: %s", self.describe, entry.id, entry.deliveries,
                    record)

"""The one consumer loop every SIGMA worker runs: reclaim → dead-letter → read → handle → store → ack.

The annotation worker (`sigma worker`) and the batch fleet worker (`sigma worker --batch`) are two
`Handler`s on this loop, so the delivery rules are written once:

- an entry leaves the stream only through `ack` (after its outcome is stored) or the dead-letter stream
  (after `max_deliveries` deliveries); a handler that says "retry" leaves it pending, and the lease
  (extended by the heartbeat while the entry is worked on) hands it to a worker again when it runs out;
  "defer" does the same without spending a delivery (the entry was refused for a reason not its own: its run
  folder held by a local run, its run.json over this worker's size limit), so `max_deliveries` never dead-letters it
  for that (the fleet handler bounds it itself: `worker.max_defer_s` with no shard written by the holder, or every
  live worker refused it, then "dead");
- Redis trouble is transient: connection loss, timeouts (a SIGSTOPped server), `OOM` under
  `maxmemory`, `LOADING` after a restart (`is_transient`). The loop backs off with jitter, reconnects,
  keeps the outcomes it already computed until they are stored (and runs the worker's `after_batch` check once
  they are), and the entries it read until they are handled (their leases extended meanwhile, so an outage costs
  no delivery) — it never drops work and
  never exits because of Redis; it exits on `stop` (SIGTERM/SIGINT) or on a bug (an exception from a
  handler that is not a transient Redis error).
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import redis
import redis.exceptions as redis_errors

from sigma.service.queue import DEFER_GONE, DEFER_HELD, Entry, Heartbeat, StreamQueue
from sigma.service.settings import QueueSettings
from sigma.text import shown

log = logging.getLogger("sigma.service.consumer")

# redis-py raises these classes for replies whose code it knows (and strips the code from the message:
# an OOM reply reads "command not allowed when used memory > 'maxmemory'", as does a pipeline's).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,            # refused, reset, closed; BusyLoadingError (LOADING after a restart) too
    redis.TimeoutError,               # a frozen (SIGSTOP) or overloaded server
    redis_errors.OutOfMemoryError,    # OOM: over maxmemory with noeviction
    redis_errors.ReadOnlyError,       # READONLY: talking to a replica during a failover
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,    # CLUSTERDOWN, MASTERDOWN
)
# Replies redis-py leaves as a plain ResponseError, by their code. NOGROUP and UNBLOCKED: the stream (and its
# group) is gone (FLUSHALL, a DEL, a failover to an empty replica): UNBLOCKED is what a consumer blocked in
# XREADGROUP gets (Redis >= 7), NOGROUP the others; `connect` makes the group again.
TRANSIENT_REPLIES = ("OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOGROUP", "UNBLOCKED", "BUSY",
                     "MISCONF", "READONLY", "NOREPLICAS")


def is_transient(exc: BaseException) -> bool:
    """Redis errors that end by themselves (or by our reconnect), as opposed to bugs."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    if not isinstance(exc, redis.ResponseError):
        return False
    # a pipeline prefixes the reply: "Command # 2 (XADD ...) of pipeline caused error: MISCONF ..."
    reply = str(exc).rpartition("caused error: ")[2].lstrip("('\"")
    return reply.startswith(TRANSIENT_REPLIES)


def is_out_of_memory(exc: BaseException) -> bool:
    """Redis over maxmemory (noeviction): it ends only when memory is freed, which may take a person."""
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).rpartition("caused error: ")[2].startswith("OOM")


@dataclass
class Outcome:
    """A handler's decision for one entry. `store` writes the entry's result to Redis (idempotently):
    it runs before the ack, and again after an outage if Redis failed in between."""

    entry: Entry
    action: Literal["ack", "retry", "defer", "dead"]
    error: dict[str, Any] | None = None
    store: Callable[[], Any] | None = None
    stored: bool = False                      # `store` (or `on_retry`) ran: not again after a Redis error
    record: dict[str, Any] | None = None      # what `on_dead` returned, for the dead-letter entry


class Handler(Protocol):
    batch_size: int
    max_wait_ms: int
    # optional `reclaim_count`: entries one reclaim may take (XAUTOCLAIM COUNT; default max(16, batch_size)) —
    # every one claimed is this worker's, its lease kept alive, until handled; optional `on_gone(entry)`: an entry
    # it deferred was found settled by another consumer (its lease lapsed under that one), for what it noted of it

    def handle(self, entries: list[Entry]) -> list[Outcome]: ...

    def on_retry(self, entry: Entry, error: dict[str, Any]) -> None: ...

    def on_dead(self, entry: Entry, error: dict[str, Any] | None) -> dict[str, Any]: ...

    def info(self) -> dict[str, Any]: ...


def default_consumer() -> str:
    """A consumer name unique to this process on this host: the Redis group tells workers apart by it."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ConsumerCounts:
    batches: int = 0
    acked: int = 0
    retried: int = 0
    deferred: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    lost: int = 0                 # outcomes dropped: their entry was another consumer's by then, or gone
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
                 heartbeat_key: str, heartbeat_registry: str | None = None,
                 stop: threading.Event | None = None, describe: str = "",
                 handle_timeout_s: float | None = None,
                 on_stuck: Callable[[list[Entry], float], None] | None = None,
                 after_batch: Callable[[], None] | None = None):
        self.r = client
        self.queue = queue
        self.handler = handler
        self.settings = settings
        self.stop = stop or threading.Event()
        self.describe = describe or queue.stream
        self.counts = ConsumerCounts()
        self.heartbeat = Heartbeat(client, heartbeat_key, settings.heartbeat_interval_ms,
                                   settings.heartbeat_ttl_ms, self._info, queue, watch=self._watch,
                                   registry=heartbeat_registry)
        # A handler call that runs past `handle_timeout_s` is stuck (a model hung in native code, a plugin in an
        # endless loop): the heartbeat would extend its entries' leases for ever, so no other worker got them and
        # their jobs never ended. The heartbeat thread notices; `on_stuck(entries, seconds)` decides (the worker
        # records why and exits for its supervisor to restart it); without one the leases are left to run out.
        self.handle_timeout_s = handle_timeout_s
        self.on_stuck = on_stuck
        self._handling: tuple[float, list[Entry]] | None = None
        self._stuck_reported = False
        # Called once a batch's outcomes are stored (the worker's memory check, worker.max_rss_mb): also when the
        # store had to wait for Redis and ran later, from `run` (a batch stored late was never checked, so a worker
        # past the limit after a Redis fault went on taking batches).
        self.after_batch = after_batch
        self._stored_unchecked = False       # a batch handled whose outcomes have not been followed by after_batch
        self._unstored: list[Outcome] = []   # decided, not yet stored/acked
        self._unhandled: list[Entry] = []    # read (ours in the group), not yet handled
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
                try:
                    if self._unstored:
                        self._store_all()
                        self._after_stored()
                        continue
                    if self._unhandled:
                        self._handle_kept()
                        continue
                    if max_batches is not None and self.counts.batches >= max_batches:
                        break
                    if not self._step() and exit_when_idle and self._idle():
                        break
                    self._backoff.reset()
                except redis.RedisError as exc:
                    if not is_transient(exc):
                        raise
                    self._transient(exc, "consuming")
                    if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc) or isinstance(exc, redis.ConnectionError):
                        self.connect()
            self._finish_on_stop()
        finally:
            self.heartbeat.stop()
        return self.counts

    def _finish_on_stop(self) -> None:
        """Stopping with outcomes in hand: one last try to store them; entries never handled stay pending."""
        try:
            if self._unstored:
                self._store_all()
        except redis.RedisError as exc:
            log.warning("%s: stopped with %d result(s) unstored (%s); their entries stay pending and will be "
                        "redelivered", self.describe, len(self._unstored), exc)
        if self._unhandled:
            log.warning("%s: stopped with %d entries read but not handled (redis was unavailable); they stay "
                        "pending and will be redelivered", self.describe, len(self._unhandled))

    def _idle(self) -> bool:
        return self.queue.depth() == 0 and self.queue.pending_count() == 0

    def _keep(self, entries: list[Entry]) -> None:
        """Entries this consumer now holds: tracked by the heartbeat (their lease is extended) until settled."""
        self.heartbeat.track([e.id for e in entries])
        self._unhandled.extend(entries)

    def _step(self) -> bool:
        """One reclaim-or-read and its processing; False when there was nothing to do."""
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self.settings.reclaim_interval_ms / 1000
            count = getattr(self.handler, "reclaim_count", None) or max(16, self.handler.batch_size)
            live, exhausted = self.queue.reclaim(count=count)
            # Held from here on: a Redis error below must not drop them (each new claim costs a delivery).
            self.heartbeat.track([e.id for e in exhausted])
            self._unstored.extend(Outcome(entry, "dead") for entry in exhausted)
            if live:
                log.info("%s: reclaimed %d entries idle past the lease", self.describe, len(live))
                self.counts.reclaimed += len(live)
                self._keep(live)
            if exhausted:
                self._store_all()
            if live:
                self._handle_kept()
                return True
        batch = self.queue.read_batch(self.handler.batch_size, self.settings.block_ms, self.handler.max_wait_ms)
        if batch:
            self._keep(batch)
            self._handle_kept()
        return bool(batch)

    def _handle_kept(self) -> None:
        """Hand the entries in hand to the handler, a batch at a time, and settle their outcomes. A transient
        Redis error from the handler (loading jobs, marking them running) keeps the entries for the next try
        after the backoff, leases extended, instead of leaving them to be reclaimed at the cost of a delivery."""
        first = True
        while self._unhandled and (first or not self.stop.is_set()):   # on stop: finish the batch in hand only
            first = False
            self._skip_lost()
            if not self._unhandled:
                break
            chunk = self._unhandled[:self.handler.batch_size]
            self._handling, self._stuck_reported = (time.monotonic(), chunk), False
            try:
                outcomes = self.handler.handle(chunk)
            except redis.RedisError as exc:
                if is_transient(exc):
                    raise                       # kept: retried after the backoff
                self.heartbeat.untrack([e.id for e in self._unhandled])
                raise
            finally:
                self._handling = None
            del self._unhandled[:len(chunk)]
            self.counts.batches += 1
            self._unstored.extend(outcomes)
            self._stored_unchecked = True
            self._store_all()
            self._after_stored()

    def _skip_lost(self) -> None:
        """Leave out of the entries not yet handled those the heartbeat found held by another consumer or settled
        (this worker's lease ran out: it was paused or stalled past `queue.lease_ms`). A worker that lost its lease
        went on through the rest of what it held (a reclaim takes up to `reclaim_count` entries, handled a batch at a
        time), starting jobs another worker was doing and storing results for them: that work is skipped now."""
        if not self._unhandled:
            return
        lost = self.heartbeat.take_lost([e.id for e in self._unhandled])
        if not lost:
            return
        self.counts.lost += len(lost)
        log.warning("%s: %d entries in hand are held by another consumer now or settled (this worker's lease ran "
                    "out: it was paused or stalled); they are skipped, not handled here: %s", self.describe,
                    len(lost), ", ".join(sorted(lost)[:5]))
        self._unhandled[:] = [e for e in self._unhandled if e.id not in lost]

    def _after_stored(self) -> None:
        """Every outcome in hand is stored: `after_batch` once for the batch they came from, whether they were
        stored at once or, after a Redis error, by a later pass of the loop."""
        if not self._stored_unchecked or self._unstored:
            return
        self._stored_unchecked = False
        if self.after_batch is not None:
            self.after_batch()

    def _watch(self) -> None:
        """In the heartbeat thread: the batch in hand has been handled for longer than `handle_timeout_s`."""
        handling = self._handling
        if handling is None or not self.handle_timeout_s or self._stuck_reported:
            return
        started, entries = handling
        waited = time.monotonic() - started
        if waited < self.handle_timeout_s:
            return
        self._stuck_reported = True
        log.error("%s: a batch of %d entries has been handled for %.0f s (longer than %g s): stuck", self.describe,
                  len(entries), waited, self.handle_timeout_s)
        self.heartbeat.untrack([e.id for e in entries])     # their leases run out: another worker takes them
        if self.on_stuck is not None:
            self.on_stuck(list(entries), waited)

    def progressed(self) -> None:
        """The handler moved on within the batch in hand (a fleet shard is many model batches: one finished):
        `handle_timeout_s` counts from now, so it bounds one model batch, not a whole shard of minutes."""
        handling = self._handling
        if handling is not None and not self._stuck_reported:
            self._handling = (time.monotonic(), handling[1])

    def process(self, entries: list[Entry]) -> None:
        """Handle entries read elsewhere and settle their outcomes (a Redis error keeps them for `run`)."""
        self._keep(entries)
        self._handle_kept()

    def _store_all(self) -> None:
        """Store, then ack (or retry, or dead-letter) every outcome in hand; a Redis error keeps the rest. Outcomes of
        entries this consumer holds no more are dropped first (`_drop_lost`)."""
        self._drop_lost()
        while self._unstored:
            outcome = self._unstored[0]
            self._settle(outcome)
            self._unstored.pop(0)
            self.heartbeat.untrack([outcome.entry.id])

    def _drop_lost(self) -> None:
        """Drop the outcomes that must not be settled by this consumer any more. Its lease ran out while it worked
        (the process paused by SIGSTOP, a stalled host, past `queue.lease_ms`) and another worker reclaimed the entry:
        a dead letter would fail the job that worker is doing, and a defer (an XCLAIM) took the entry back from it, so
        both did the job. Those are dropped; a result ("ack") and a retry's note are still settled: a job's result is
        stored only if it has none yet (`FINISH`), a shard is the same bytes whoever writes it, and neither moves the
        entry. An entry no longer pending at all (settled by another worker, or lost by Redis: a restart without its
        data, a FLUSHALL, which took the job's record too) has nothing left to settle: its outcome is dropped, said
        in one line, and the handler's `on_gone` told."""
        if not self._unstored:
            return
        owners = self.queue.owners([o.entry.id for o in self._unstored])
        kept = []
        for outcome in self._unstored:
            owner = owners.get(outcome.entry.id)
            action = outcome.action     # a retry on the last delivery is a dead letter (`_settle`)
            if action == "retry" and outcome.entry.deliveries >= self.settings.max_deliveries:
                action = "dead"
            if owner == self.queue.consumer or (owner is not None and action in ("ack", "retry")):
                kept.append(outcome)
                continue
            self.counts.lost += 1
            self.heartbeat.untrack([outcome.entry.id])
            where = (f"held by {owner} now (this worker's lease ran out while it worked: it was paused or stalled)"
                     if owner is not None else "no longer pending (settled by another worker, or Redis lost it: a "
                     "restart without its data, a FLUSHALL)")
            log.warning("%s: entry %s (%s) is %s; its outcome here (%s) is dropped", self.describe,
                        outcome.entry.id, shown(json.dumps(outcome.entry.fields), 120), where, action)
            if owner is None and hasattr(self.handler, "on_gone"):
                self.handler.on_gone(outcome.entry)
        self._unstored[:] = kept

    def _settle(self, outcome: Outcome) -> None:
        entry = outcome.entry
        if outcome.action == "retry" and entry.deliveries >= self.settings.max_deliveries:
            outcome.action = "dead"
        if outcome.action == "dead":
            self._dead_letter(outcome)
            return
        if outcome.action == "defer":
            # idempotent (sets the counter): settled again after a Redis error. Only while the entry is still this
            # consumer's: `_drop_lost` looked before the outcomes were settled, and a lease can lapse in between
            done = self.queue.defer(entry)
            if done == DEFER_GONE and hasattr(self.handler, "on_gone"):
                self.handler.on_gone(entry)
            if done == DEFER_HELD:
                self.counts.lost += 1
                log.warning("%s: entry %s is held by another consumer now (this worker's lease ran out while it "
                            "worked: it was paused or stalled); its outcome here (defer) is dropped", self.describe,
                            entry.id)
                return
            self.counts.deferred += 1
            return
        if outcome.action == "retry":
            if not outcome.stored:
                try:
                    self.handler.on_retry(entry, outcome.error or {})
                except redis.RedisError as exc:
                    # The note of why is all a retry writes (the entry stays pending, redelivered after its lease).
                    # Over maxmemory it was retried until memory was freed, and the worker handled nothing else
                    # meanwhile: one failed shard stopped a fleet worker for as long as Redis stayed full.
                    if not is_out_of_memory(exc):
                        raise
                    log.warning("%s: entry %s left for redelivery without its error noted (redis is out of "
                                "memory): %s", self.describe, entry.id, (outcome.error or {}).get("code"))
                outcome.stored = True
                self.counts.retried += 1
            return
        if outcome.store is not None and not outcome.stored:
            outcome.store()
            outcome.stored = True
        self.queue.ack([entry.id])
        self.counts.acked += 1

    def _dead_letter(self, outcome: Outcome) -> None:
        entry = outcome.entry
        if outcome.record is None:      # once, even when the XADD below fails and the outcome is settled again
            outcome.record = self.handler.on_dead(entry, outcome.error)
        self.queue.dead_letter(entry, json.dumps(outcome.record, default=str))
        self.counts.dead_lettered += 1
        log.warning("%s: entry %s dead-lettered after %d deliveries: %s", self.describe, entry.id, entry.deliveries,
                    outcome.record)

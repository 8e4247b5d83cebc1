"""Redis Streams work queue with at-least-once delivery: the primitives every SIGMA consumer shares.

The online service (`workers.worker`) and fleet batch mode (`sigma worker --batch`) both consume
through this module, so the delivery rules are written once:

    q = StreamQueue(redis.Redis.from_url(url), stream="sigma:stream:pixel-diff", group="sigma-workers",
                    consumer="host-123", lease_ms=30_000, max_deliveries=3,
                    dead_stream="sigma:dead:pixel-diff")
    q.ensure_group()                          # XGROUP CREATE ... MKSTREAM (idempotent)
    q.add({"job": "abc"}, max_len=1000)       # XADD, refused (None) when XLEN >= max_len; never trims
    batch = q.read_batch(max_batch=8, block_ms=1000, max_wait_ms=5)   # XREADGROUP COUNT/BLOCK, micro-batched
    live, exhausted = q.reclaim(count=16)     # XAUTOCLAIM entries idle past the lease (Redis >= 6.2)
    q.dead_letter(entry, error="...")         # XACK, then XADD dead stream + XDEL: one script, at most once
    q.ack([e.id for e in batch])              # XACK + XDEL in one script: only after the result is stored
    q.extend(ids)                             # XCLAIM JUSTID of those still ours: refresh their lease
    q.defer(entry)                            # XCLAIM RETRYCOUNT if still ours: retried after the lease, no delivery
    q.depth(), q.pending_count(), q.dead_count()

    hb = Heartbeat(client, key="sigma:worker:host-123", interval_ms=2000, ttl_ms=10_000,
                   info=lambda: {...}, queue=q)   # a thread: HSET + PEXPIRE, and q.extend(in-flight ids)
    hb.track(ids) / hb.untrack(ids); hb.start(); hb.stop()

Rules this module keeps: an entry leaves the stream only through `ack` (after the caller stored its
result) or `dead_letter` (after it was delivered `max_deliveries` times); nothing is trimmed with
MAXLEN except the dead-letter stream, whose entries are copies. `Entry.deliveries` is Redis' own
delivery counter (1 on first read, +1 per XAUTOCLAIM), so a worker killed with `kill -9` costs its
entries one delivery each, and an entry that kills every worker ends in the dead-letter stream.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from sigma.service.heartbeats import BEAT, beat_args
from sigma.text import shown

log = logging.getLogger("sigma.service.queue")

ACK = """
-- KEYS: stream; ARGV: group, id, id, ... Acknowledge and delete in one step. A script and not a MULTI:
-- Redis refuses every command queued in a MULTI once it is over `maxmemory`, while XACK and XDEL alone (and
-- a script calling only them) still run, so finished work leaves the queue, and frees memory, when Redis is full.
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""

DEAD_LETTER = """
-- KEYS: stream, dead stream; ARGV: group, entry id, dead maxlen, field, value, ...
-- The XACK decides: the same call sent again (a lost reply; the consumer settles an outcome until Redis
-- answers) finds the entry settled and adds no second record. XACK is not `denyoom`, so, as in ACK, a
-- poison entry still leaves the queue when Redis is over `maxmemory`.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('XDEL', KEYS[1], ARGV[2])
return id
"""

EXTEND = """
-- KEYS: stream; ARGV: group, consumer, id, id, ... Reset the idle time of the entries still pending to this consumer;
-- returns the ids that are not (another consumer claimed them after this one's lease ran out, or they are settled).
-- A plain XCLAIM took an entry back from whoever held it: a worker paused (SIGSTOP, a stalled VM) past its lease,
-- whose entry another worker had reclaimed, claimed it back with its first beat on waking, and both did the job.
local lost = {}
for i = 3, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if row[1] ~= nil and row[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

DEFER = """
-- KEYS: stream; ARGV: group, consumer, id, retry count. Hand the entry back for a retry after a full lease, its
-- delivery counter set to the retry count, only while it is pending to this consumer: 1 deferred, 0 pending no more
-- (settled), -1 held by another consumer. A plain XCLAIM (as EXTEND's note says) took the entry from whoever held it:
-- a worker whose lease had lapsed (paused past queue.lease_ms) took back, by deferring it, the entry another worker
-- had reclaimed and was doing, and its counter was set back under that worker.
local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if row[1] == nil then return 0 end
if row[1][2] ~= ARGV[2] then return -1 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'RETRYCOUNT', ARGV[4], 'JUSTID')
return 1
"""

ADD_IF_SHORTER = """
local limit = tonumber(ARGV[1])
if limit > 0 and redis.call('XLEN', KEYS[1]) >= limit then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


def stream_text(value: Any) -> str:
    """A stream field, id or name as Redis returned it (bytes without decode_responses) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# `StreamQueue.defer`'s answers other than 1 (deferred)
DEFER_GONE = 0
DEFER_HELD = -1

# A dead letter's error (a JSON record) is kept to this many characters.
DEAD_ERROR_LIMIT = 4000


def bounded_error(error: str, limit: int = DEAD_ERROR_LIMIT) -> str:
    """The error as a dead letter keeps it: cut to `limit`, and still JSON when it was (a record cut at 4000
    characters was no longer JSON, and whoever read the dead letter could not parse its error): each text in
    it is cut in the middle until it fits."""
    if len(error) <= limit:
        return error
    try:
        record = json.loads(error)
    except ValueError:
        return error[:limit]
    if not isinstance(record, dict):
        return error[:limit]
    keep = limit // 2
    while keep >= 16:
        cut = {k: shown(v, keep) if isinstance(v, str) else v for k, v in record.items()}
        text = json.dumps(cut, default=str)
        if len(text) <= limit:
            return text
        keep //= 2
    return json.dumps({"code": str(record.get("code", ""))[:64], "message": "(the error record was too long)"})


@dataclass
class Entry:
    """One stream entry as a consumer sees it."""

    id: str
    fields: dict[str, str]
    deliveries: int = 1
    claimed: bool = False          # came from XAUTOCLAIM, not a first read


@dataclass
class QueueStats:
    depth: int
    pending: int
    dead: int
    consumers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class StreamQueue:
    """A stream + consumer group + dead-letter stream, seen by one named consumer."""

    def __init__(self, client: redis.Redis, stream: str, group: str, consumer: str, *, lease_ms: int,
                 max_deliveries: int, dead_stream: str, dead_maxlen: int = 10_000):
        self.r = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.lease_ms = lease_ms
        self.max_deliveries = max_deliveries
        self.dead_stream = dead_stream
        self.dead_maxlen = dead_maxlen
        self._reclaim_cursor = "0-0"
        self._add = client.register_script(ADD_IF_SHORTER)
        self._ack = client.register_script(ACK)
        self._dead_letter = client.register_script(DEAD_LETTER)
        self._extend = client.register_script(EXTEND)
        self._defer = client.register_script(DEFER)

    # -- producing ---------------------------------------------------------------------------
    def ensure_group(self) -> None:
        """The group, made if missing. Looked for first (a read): XGROUP CREATE is refused over maxmemory even when
        the group exists, and a worker (re)connecting while Redis was full waited for memory before any work."""
        try:
            if any(stream_text(g.get("name")) == self.group for g in self.r.xinfo_groups(self.stream)):
                return
        except redis.ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def add(self, fields: dict[str, str], max_len: int = 0) -> str | None:
        """XADD unless the stream already holds `max_len` entries (0 = no limit); atomic (Lua)."""
        flat: list[str] = []
        for k, v in fields.items():
            flat += [k, v]
        out = self._add(keys=[self.stream], args=[max_len, *flat])
        return stream_text(out) if out else None

    # -- consuming ---------------------------------------------------------------------------
    def _parse(self, raw: list) -> list[Entry]:
        entries = []
        for entry_id, data in raw or []:
            if data is None:          # deleted while pending (only before Redis 7)
                continue
            entries.append(Entry(stream_text(entry_id), {stream_text(k): stream_text(v) for k, v in data.items()}))
        return entries

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer; `block_ms=None` does not block."""
        resp = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        if not resp:
            return []
        return self._parse(resp[0][1])

    def read_batch(self, max_batch: int, block_ms: int, max_wait_ms: int = 0) -> list[Entry]:
        """Block up to `block_ms` for a first entry, then up to `max_wait_ms` more to fill the batch."""
        batch = self.read(max_batch, max(1, block_ms))
        if not batch or max_wait_ms <= 0:
            return batch
        # Polled, not XREADGROUP BLOCK: Redis 7.0 fires short BLOCK timeouts on its 100 ms cron tick
        # (hz 10), so a 5 ms BLOCK can cost 100 ms. A non-blocking read every millisecond is exact.
        deadline = time.monotonic() + max_wait_ms / 1000.0
        while len(batch) < max_batch:
            try:
                more = self.read(max_batch - len(batch), None)
            except redis.RedisError:
                break       # what was read is this consumer's now: return it; the error shows on the next call
            if more:
                batch += more
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(0.001, left))
        return batch

    def reclaim(self, count: int = 16) -> tuple[list[Entry], list[Entry]]:
        """Claim entries idle past the lease; split them into (to retry, delivered too often)."""
        resp = self.r.xautoclaim(self.stream, self.group, self.consumer, self.lease_ms,
                                 start_id=self._reclaim_cursor, count=count)
        cursor, raw = stream_text(resp[0]), resp[1]
        self._reclaim_cursor = cursor if cursor != "0-0" else "0-0"
        entries = self._parse(raw)
        if not entries:
            return [], []
        counts = self.delivery_counts([e.id for e in entries])
        live, exhausted = [], []
        for entry in entries:
            if entry.id not in counts:      # settled since the claim (its first worker acknowledged it late)
                continue
            entry.deliveries = counts[entry.id]
            entry.claimed = True
            (exhausted if entry.deliveries > self.max_deliveries else live).append(entry)
        return live, exhausted

    def delivery_counts(self, ids: list[str]) -> dict[str, int]:
        """Redis' delivery counter of each id still pending (an id not pending is left out). Each id is asked for
        alone, in one pipeline: one XPENDING over the range from the lowest id to the highest, cut at a count, left
        out the ids past the cut when other consumers' entries lay between (a dead worker's entries among a live
        one's batch), and `reclaim` took those for delivered too often: dead-lettered on their second delivery."""
        return {stream_text(row["message_id"]): int(row["times_delivered"]) for row in self._pending_rows(ids)}

    def extend(self, ids: list[str]) -> list[str]:
        """Reset the idle time of entries this consumer still works on (no delivery is counted); returns the ids it
        holds no more (`EXTEND`): another consumer took them after this one's lease ran out, or they are settled."""
        if not ids:
            return []
        return [stream_text(i) for i in self._extend(keys=[self.stream], args=[self.group, self.consumer, *ids])]

    def owners(self, ids: list[str]) -> dict[str, str]:
        """The consumer each id is pending to (an id not pending is left out), in one pipeline."""
        return {stream_text(row["message_id"]): stream_text(row["consumer"]) for row in self._pending_rows(ids)}

    def _pending_rows(self, ids: list[str]) -> list[dict]:
        """XPENDING's row of each id still pending, each id asked for alone (see `delivery_counts`), in one
        pipeline; none for an id not pending."""
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return [row for rows in pipe.execute() for row in rows]

    def defer(self, entry: Entry) -> int:
        """Leave the entry pending for a retry after a full lease, with this delivery not counted: its counter set
        back to what it was before it reached us (XCLAIM RETRYCOUNT; the next XAUTOCLAIM adds it again). For work
        refused for a reason that is not the entry's (its run folder held by a local run): a retry spent a delivery
        each time, and a long wait dead-lettered entries nothing was wrong with. Only while the entry is still this
        consumer's (`DEFER`): 1 deferred; 0 (`DEFER_GONE`) the entry is pending no more (another consumer, whose
        lease on it had lapsed, acknowledged or dead-lettered it meanwhile); -1 (`DEFER_HELD`) another consumer
        holds it (this one's lease lapsed and it was reclaimed): left with that one."""
        return int(self._defer(keys=[self.stream],
                               args=[self.group, self.consumer, entry.id, max(entry.deliveries - 1, 0)]))

    def ack(self, ids: list[str]) -> None:
        """Acknowledge and delete: call only after the entry's result is stored."""
        if ids:
            self._ack(keys=[self.stream], args=[self.group, *ids])

    def dead_letter(self, entry: Entry, error: str, **extra: str) -> str | None:
        """Move the entry to the dead-letter stream with its last error; the record's id, or None when the entry
        was settled already (by this call sent before, or by another consumer)."""
        record = {**entry.fields, "entry_id": entry.id, "stream": self.stream, "deliveries": str(entry.deliveries),
                  "error": bounded_error(error), "consumer": self.consumer, "at": f"{time.time():.3f}", **extra}
        flat: list[str] = []
        for k, v in record.items():
            flat += [k, v]
        out = self._dead_letter(keys=[self.stream, self.dead_stream],
                                args=[self.group, entry.id, self.dead_maxlen, *flat])
        return stream_text(out) if out else None

    # -- observing ---------------------------------------------------------------------------
    def depth(self) -> int:
        return int(self.r.xlen(self.stream))

    def pending_count(self) -> int:
        try:
            return int(self.r.xpending(self.stream, self.group)["pending"])
        except redis.ResponseError:   # no group yet
            return 0

    def dead_count(self) -> int:
        return int(self.r.xlen(self.dead_stream))

    def dead_entries(self, count: int = 100) -> list[Entry]:
        return self._parse(self.r.xrange(self.dead_stream, count=count))

    def stats(self) -> QueueStats:
        return QueueStats(self.depth(), self.pending_count(), self.dead_count())


# The status a process ends with when its heartbeat cannot go on (`Heartbeat._dead`), as a hung batch's (1): its
# supervisor starts a fresh one.
HEARTBEAT_DEAD_STATUS = 1


def _end_process(reason: str) -> None:
    """`Heartbeat.on_dead` by default: the log flushed, the process ended at once from the heartbeat thread (the
    main thread may be inside a model for minutes, so raising there is no way to stop it)."""
    logging.shutdown()
    os._exit(HEARTBEAT_DEAD_STATUS)


class Heartbeat:
    """A daemon thread: writes the worker's key with a TTL and extends the lease of in-flight entries.

    Its own failures (Redis briefly down) are swallowed and retried on the next beat: a heartbeat
    that misses a beat makes the worker look dead, which is the truth while Redis is unreachable.

    Any other exception from a beat (a reply redis-py cannot parse, a MemoryError, a thread the connection pool could
    not start, an `info` that raised) ended the thread without a word: the worker went on taking and doing jobs while
    it looked dead (/readyz: no worker) and its leases ran out, so its jobs were handed to others and done twice. Now
    such an error is said once per kind and the next beat tries again; when beats keep failing that way for longer
    than the heartbeat's TTL (the worker has looked dead that long), or the thread itself cannot go on, `on_dead`
    is called with the reason (the workers: say it, forget the heartbeat key, exit 1 for the supervisor to start a
    fresh process), by default the process ends with status 1 (`HEARTBEAT_DEAD_STATUS`): never a zombie worker.
    """

    def __init__(self, client: redis.Redis, key: str, interval_ms: int, ttl_ms: int,
                 info: Callable[[], dict[str, Any]], queue: StreamQueue | None = None,
                 watch: Callable[[], None] | None = None, registry: str | None = None,
                 on_dead: Callable[[str], None] | None = None):
        self.r = client
        self.key = key
        # the sorted set readers find this key in (`sigma.service.heartbeats`); None: the hash alone. Its script
        # is made once here, not at every beat
        self.registry = registry
        self._beat_script = client.register_script(BEAT) if registry is not None else None
        self.interval = interval_ms / 1000.0
        self.ttl_ms = ttl_ms
        self.info = info
        self.queue = queue
        self.watch = watch              # called after every beat, in this thread (the consumer's stuck-batch check)
        self.on_dead = on_dead          # the heartbeat cannot go on: end the process (default: `_end_process`)
        self._in_flight: set[str] = set()
        # ids a beat found held by another consumer or settled (`extend`): the consumer skips those it has not handed
        # to its handler yet (`Consumer._skip_lost`) instead of doing work another worker does now
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._writing = threading.Lock()       # held while a beat writes the key (`halt` waits for it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sigma-heartbeat", daemon=True)
        self.beats = 0
        self.last_error: str | None = None
        self.unexpected_errors = 0      # beats failed by something other than Redis (each kind said once)
        self._kinds_said: set[str] = set()
        self._failing_since: float | None = None    # monotonic time of the first such failure in a row
        # set while the worker loads its model (`sigma.workers.worker.beating_while_loading`): it holds no job and no
        # lease, so beats failing past the TTL lose nothing and do not end it (the TTL is counted once it is cleared)
        self.holds_no_work = False

    def track(self, ids: list[str]) -> None:
        with self._lock:
            self._in_flight.update(ids)
            self._lost.difference_update(ids)       # claimed again by this consumer: its own once more

    def take_lost(self, ids: list[str]) -> set[str]:
        """Those of `ids` a beat found this consumer holds no more, forgotten here (each is reported once)."""
        with self._lock:
            found = self._lost.intersection(ids)
            self._lost.difference_update(found)
        return found

    def untrack(self, ids: list[str]) -> None:
        with self._lock:
            self._in_flight.difference_update(ids)
            self._lost.difference_update(ids)        # settled (or dropped) by the consumer: nothing left to skip

    def beat(self) -> None:
        """Extend the leases first: XCLAIM is allowed when Redis is over `maxmemory` and the HSET is not, and
        an expired lease hands the work in progress to another worker (one more delivery, work done twice)."""
        with self._lock:
            ids = sorted(self._in_flight)
        if ids and self.queue is not None:
            try:
                lost = self.queue.extend(ids)
                if lost:            # taken over after our lease ran out: not extended again (the consumer drops them)
                    with self._lock:
                        still = self._in_flight.intersection(lost)     # not settled or re-tracked meanwhile
                        self._in_flight.difference_update(lost)
                        self._lost.update(still)
                    log.warning("heartbeat %s: %d entries in hand are held by another consumer now (this worker's "
                                "lease on them ran out: it was paused or stalled) or settled; their outcome here "
                                "will be dropped: %s", self.key, len(lost), ", ".join(lost[:5]))
            except redis.ResponseError as exc:
                # NOGROUP: the stream went (FLUSHALL, a restart without its data) with the entries in hand: no
                # lease is left to extend, but the worker is alive; its heartbeat was skipped until the batch
                # ended, which hid a fleet worker for its whole shard (no live worker; /readyz 503 meanwhile)
                if "NOGROUP" not in str(exc):
                    raise
        info = {k: (v if isinstance(v, (str, int, float)) else str(v)) for k, v in self.info().items()}
        info["last_beat"] = f"{time.time():.3f}"
        with self._writing:                    # none after `halt`: it would write a gone worker's key again
            if self._stop.is_set():
                return
            if self._beat_script is not None:      # hash, TTL and registry entry in one script: they cannot disagree
                self._beat_script(keys=[self.key, self.registry], args=beat_args(self.ttl_ms, info))
            else:
                pipe = self.r.pipeline(transaction=True)
                pipe.hset(self.key, mapping=info)
                pipe.pexpire(self.key, self.ttl_ms)
                pipe.execute()
        self.beats += 1

    def _beat_once(self) -> None:
        try:
            self.beat()
        except redis.RedisError as exc:
            if self.last_error is None:
                log.warning("heartbeat %s: redis error (%s: %s); retrying every %.1f s", self.key,
                            type(exc).__name__, exc, self.interval)
            self.last_error = f"{type(exc).__name__}: {exc}"
            return
        except Exception as exc:  # noqa: BLE001 - a beat that fails otherwise is retried too (class docstring)
            self._unexpected(exc)
            return
        if self.last_error is not None:
            log.info("heartbeat %s: beating again", self.key)
        self.last_error = None
        self._failing_since = None

    def _unexpected(self, exc: Exception) -> None:
        """A beat failed by something other than Redis being away: said once per kind, tried again next beat, and
        the process ended (`_dead`) once beats have failed so for longer than the TTL: it has looked dead that
        long, its leases are running out, and it cannot say why to anyone reading Redis."""
        self.unexpected_errors += 1
        kind = type(exc).__name__
        self.last_error = f"{kind}: {exc}"
        idle = self.holds_no_work
        if kind not in self._kinds_said:
            self._kinds_said.add(kind)
            then = ("the worker holds no job while its model loads, so it loads on; it ends if beats still fail "
                    "for %.1f s (queue.heartbeat_ttl_ms) once it takes jobs" if idle else
                    "ending the worker if it keeps failing for %.1f s (queue.heartbeat_ttl_ms)")
            log.error("heartbeat %s: a beat failed (%s: %s), not a Redis outage; trying again every %.2g s; " + then,
                      self.key, kind, exc, self.interval, self.ttl_ms / 1000.0)
        if idle:        # nothing to lose yet: exiting would only cut the load (and its worker.load_retry_s) short
            self._failing_since = None
            return
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self.ttl_ms / 1000.0:
            self._dead(f"heartbeat {self.key}: no beat for {now - self._failing_since:.1f} s (longer than "
                       f"queue.heartbeat_ttl_ms), every try failing with {self.last_error}; the worker looks dead "
                       f"and its jobs go to others, so it exits with status {HEARTBEAT_DEAD_STATUS} to be started "
                       f"afresh (heartbeat_failed)")

    def _dead(self, reason: str) -> None:
        """The heartbeat cannot go on: stop beating and end the process (`on_dead`, else `_end_process`)."""
        self._stop.set()
        try:
            log.critical("%s", reason)
        finally:
            (self.on_dead or _end_process)(reason)

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self._beat_once()
                if self.watch is not None:
                    try:
                        self.watch()
                    except Exception as exc:  # noqa: BLE001 - a failing check must not stop the beats
                        log.warning("heartbeat %s: watch failed: %s: %s", self.key, type(exc).__name__, exc)
        except BaseException as exc:  # noqa: BLE001 - the thread ending silently left a zombie worker
            self._dead(f"heartbeat {self.key}: its thread failed ({type(exc).__name__}: {exc}); the worker would "
                       f"look dead while working, so it exits with status {HEARTBEAT_DEAD_STATUS} to be started "
                       f"afresh (heartbeat_failed)")

    def start(self) -> None:
        """The first beat now (a Redis error is retried by the thread: starting never fails on Redis). Once only: a
        worker starts beating before its model loads, and its consumer loop starts it again (nothing then). A thread
        the machine refused (RuntimeError) is raised, and a later `start` tries again."""
        if self._thread.is_alive():
            return
        self._beat_once()
        self._thread.start()

    def halt(self, timeout_s: float = 1.0) -> None:
        """No beat from now on: a beat in flight is waited for up to `timeout_s`. For a hard exit's cleanup, before it
        deletes the key on a connection of its own: a beat after that delete wrote the key again, and the worker,
        gone, looked alive (or loading) until its TTL ran out."""
        self._stop.set()
        if self._writing.acquire(timeout=timeout_s):       # a write in flight is done; none starts after this
            self._writing.release()

    def stop(self, delete: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 1.0)
        if delete:
            try:
                pipe = self.r.pipeline(transaction=True)
                pipe.delete(self.key)
                if self.registry is not None:
                    pipe.zrem(self.registry, self.key)
                pipe.execute()
            except redis.RedisError:
                pass

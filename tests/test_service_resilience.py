"""Workers that outlive Redis (issue 11, item 8), with real processes on a redis-server of the module's own.

One stack serves every test here: the API, a pixel-diff worker, a sigma-lite worker (tiny, random weights:
the model's code path at a test's cost) and a `sigma worker --batch` fleet worker. Redis is then frozen
with SIGSTOP for longer than the workers' socket timeout under load, restarted, and pushed over `maxmemory`
(noeviction) with jobs in flight. After each fault: every accepted job is done exactly once (`completions`
in its hash), every shard of the fleet run is done, no worker exited, nobody restarted anything by hand.
"""
from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from servicekit import Proc, ServiceUnderTest, make_pair, png_bytes, wait_until

from sigma.batch import BatchConfig
from sigma.batch.layout import RunDir
from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl
from sigma.service.consumer import is_transient
from sigma.service.fleet import submit_run

pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]  # a hang guard, not a race (60-240 s failed on load)

LITE = ["worker.options={model: tiny-lite, random_init: true}", "worker.max_batch_size=4"]
SLOW = ["worker.options={delay_ms: 1500}", "worker.max_batch_size=3"]
# The workers' socket timeout is queue.block_ms / 1000 + redis.socket_timeout_s = 1.2 s here
# (sigma.service.connections.sync_client); the API's is redis.socket_timeout_s = 1 s. Frozen for more than
# three of them, every worker's loop runs into at least one timeout (and the heartbeat threads into several).
WORKER_SOCKET_TIMEOUT_S = 1.2
STALL_S = 4.5


class Stack:
    """The API + one worker of each kind, against `private_redis`."""

    def __init__(self, redis_server, tmp: Path):
        self.svc = ServiceUnderTest(redis_server, tmp, overrides=[
            "api.annotators=[pixel-diff,sigma-lite,slow-diff]", "redis.socket_timeout_s=1",
            "limits.max_queue_length=5000"])
        self.tmp = tmp
        self.fleet: Proc | None = None
        self.fleet_consumer = f"fleet-{uuid.uuid4().hex[:6]}"

    def start(self) -> None:
        svc = self.svc
        svc.start_api()
        svc.start_worker("pixel-diff", wait=False)
        svc.start_worker("sigma-lite", LITE, wait=False)
        self.fleet = Proc(["worker", "--batch", "--consumer", self.fleet_consumer, *svc.worker_sets(batch=True)],
                          svc.env,
                          self.tmp / "fleet-worker.log")
        r = svc.redis_server.client()
        keys = [f"{svc.prefix}:worker:{w.consumer}" for w in svc.workers]

        def all_up() -> bool:
            for proc in self.procs():
                if not proc.alive():
                    raise AssertionError(f"{proc.args[:3]} exited: {proc.output()}")
            loaded = all(r.hget(k, "model_loaded") == b"1" for k in keys)
            return loaded and bool(r.exists(f"{svc.prefix}:batch:tasks:worker:{self.fleet_consumer}"))
        wait_until(all_up, 90, "the workers' heartbeats", interval=0.2)

    def procs(self) -> list[Proc]:
        return [*self.svc.workers, *([self.fleet] if self.fleet else [])]

    def assert_all_alive(self) -> None:
        for proc in self.procs():
            assert proc.alive(), f"{proc.args[:3]} exited: {proc.output()}"

    def logs(self) -> str:
        return "\n".join(p.log.read_text(errors="replace") for p in self.procs())

    def close(self) -> None:
        for proc in [*self.procs(), *([self.svc.api] if self.svc.api else [])]:
            proc.signal(signal.SIGTERM)           # all at once: each then exits in parallel
        self.svc.close()
        if self.fleet is not None:
            self.fleet.stop()


@pytest.fixture(scope="module")
def stack(private_redis, tmp_path_factory):
    s = Stack(private_redis, tmp_path_factory.mktemp("resilience"))
    try:
        s.start()
        yield s
    finally:
        private_redis.thaw()
        s.close()


# -- helpers -------------------------------------------------------------------------------------------
PAIRS = [tuple(png_bytes(a) for a in make_pair(seed=300 + i)) for i in range(8)]


def submit(client: httpx.Client, svc: ServiceUnderTest, annotator: str, n: int) -> httpx.Response:
    original, edited = PAIRS[n % len(PAIRS)]
    return client.post("/v1/jobs", files=svc.files(original, edited), data={"annotator": annotator},
                       headers=svc.headers())


class Load:
    """Clients submitting jobs without pause, round-robin over annotators; every 202 is an accepted job."""

    def __init__(self, svc: ServiceUnderTest, annotators: list[str], clients: int = 2):
        self.svc, self.annotators = svc, annotators
        self.accepted: list[str] = []
        self.statuses: Counter = Counter()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(clients)]

    def _run(self, k: int) -> None:
        with httpx.Client(base_url=self.svc.url, timeout=30.0) as client:
            n = k
            while not self.stop.is_set():
                try:
                    resp = submit(client, self.svc, self.annotators[n % len(self.annotators)], n)
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                    continue
                finally:
                    n += len(self.threads)
                self.statuses[resp.status_code] += 1
                if resp.status_code == 202:
                    self.accepted.append(resp.json()["id"])
                else:
                    assert resp.status_code == 503, resp.text
                    assert resp.json()["error"]["code"] == "queue_unavailable", resp.text
                time.sleep(0.01)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def job_states(svc: ServiceUnderTest, ids: list[str]) -> list[tuple[str, int]]:
    r = svc.redis_server.client()
    pipe = r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(f"{svc.prefix}:job:{job_id}", "status", "completions")
    return [((s or b"").decode(), int(c or 0)) for s, c in pipe.execute()]


def wait_done(svc: ServiceUnderTest, ids: list[str], timeout: float) -> None:
    def finished() -> bool:
        return all(s in ("done", "failed") for s, _ in job_states(svc, ids))
    wait_until(finished, timeout, f"{len(ids)} accepted jobs to finish", interval=0.2)


def exactly_once(svc: ServiceUnderTest, ids: list[str]) -> dict[str, int]:
    """Figures over the accepted jobs, plus a scan of every job hash of the prefix for a second completion
    (a submission the API answered 503 for may still have been queued when Redis woke up: never twice).

    First, nothing stays pending: every delivered entry is acked in the end. "In the end": such a 503'd
    submission is not in `ids` (nobody waited for it) and may be in a worker's hands right now, and an ack
    follows its result's store; the figures are taken once the streams have drained."""
    r = svc.redis_server.client()
    streams = [f"{svc.prefix}:stream:{a}" for a in ("pixel-diff", "sigma-lite", "slow-diff")]

    def pending() -> dict[str, int]:
        return {s: int(r.xpending(s, "sigma-workers")["pending"]) for s in streams if r.exists(s)}

    wait_until(lambda: not any(pending().values()), 60, "every delivered entry to be acked", interval=0.2)
    states = job_states(svc, ids)
    every = [k.decode().rsplit(":", 1)[1] for k in r.scan_iter(match=f"{svc.prefix}:job:*", count=1000)]
    return {"accepted": len(ids), "done_once": sum(s == "done" and c == 1 for s, c in states),
            "lost": sum(s != "done" for s, _ in states), "duplicated": sum(c > 1 for _, c in states),
            "jobs_in_redis": len(every),
            "duplicated_anywhere": sum(c > 1 for _, c in job_states(svc, every))}


def fleet_run(stack: Stack, name: str, shards: int, size: int = 2) -> Path:
    corpus = stack.tmp / f"{name}-corpus"
    write_pairs_jsonl(corpus, synthetic_pairs(shards * size, size=40, seed=shards))
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": size},
                                      "annotator": "pixel-diff", "workers": 0})
    out = stack.tmp / f"{name}-run"
    info = submit_run(cfg, out, stack.svc.redis_server.url, stack.svc.prefix)
    assert info["queued"] == shards
    return out


def wait_fleet(out: Path, timeout: float) -> dict:
    def all_done():
        summary = RunDir(out).summary()
        return summary if summary["done"] == summary["shards"] else None
    return wait_until(all_done, timeout, f"every shard of {out.name} done", interval=0.2)


# -- the consumer loop in-process, against a real Redis over maxmemory -------------------------------------
class full_redis:
    """`with full_redis(client):` Redis over maxmemory (noeviction) inside the block: every `denyoom` write
    (SET, HSET, XADD, anything queued in a MULTI) gets an OOM reply."""

    def __init__(self, client):
        self.r = client

    def __enter__(self):
        self.r.config_set("maxmemory-policy", "noeviction")
        self.r.config_set("maxmemory", 1)
        return self

    def __exit__(self, *exc):
        self.r.config_set("maxmemory", 0)


def test_oom_and_other_passing_replies_are_transient(private_redis):
    r = private_redis.client()
    r.hset("resilience:h", "a", "1")
    with full_redis(r):
        seen = []
        for attempt in (lambda: r.set("resilience:x", "1"),
                        lambda: r.pipeline(transaction=True).set("resilience:x", "1").incr("resilience:y").execute(),
                        lambda: r.eval("redis.call('HGET', KEYS[1], 'a'); return redis.call('HSET', KEYS[1], 'a', 2)",
                                       1, "resilience:h")):
            with pytest.raises(redis.RedisError) as info:
                attempt()
            seen.append(info.value)
    assert all(is_transient(exc) for exc in seen), [repr(e) for e in seen]
    with pytest.raises(redis.ResponseError) as bug:            # a programming error is not waited out
        r.lpush("resilience:h", "x")
    assert not is_transient(bug.value)
    assert is_transient(redis.ResponseError("Command # 2 (XADD s * a b) of pipeline caused error: MISCONF "
                                            "Redis is configured to save RDB snapshots, but it's failing"))


def test_a_poison_entry_is_dead_lettered_while_redis_is_full(private_redis):
    """Over maxmemory a MULTI holding an XADD is refused whole (the old dead-lettering), so an exhausted entry
    stayed pending and came back: the script acknowledges first, which Redis lets go on writing."""
    from sigma.service.queue import StreamQueue

    r = private_redis.client()
    q = StreamQueue(r, "resilience:poison", "g", "c", lease_ms=1000, max_deliveries=3,
                    dead_stream="resilience:poison:dead")
    q.ensure_group()
    q.add({"job": "poison"})
    entry = q.read(1, None)[0]
    with full_redis(r):
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            r.xadd("resilience:other", {"a": "b"})
        assert q.dead_letter(entry, "boom") is not None
        assert q.dead_count() == 1 and q.pending_count() == 0 and q.depth() == 0
    assert q.dead_entries()[0].fields["error"] == "boom"


def test_a_failed_shard_does_not_stop_the_fleet_while_redis_is_full(private_redis, tmp_path, caplog):
    """A shard task that fails (here its run.json is torn) is left for redelivery, its error noted in Redis for the
    dead letter: a SET, refused over maxmemory. The note was retried until memory was freed and the fleet worker
    did nothing else meanwhile (CI: a run's shards stalled for the whole squeeze). Now the other runs' shards are
    done while Redis stays full; the failed task stays pending, for its lease to hand it on. The worker starts while
    Redis is full, too: its group is looked for before it is made (XGROUP CREATE is refused over maxmemory)."""
    from sigma.service.fleet import GROUP, run_batch_worker
    from sigma.service.keys import Keys
    from sigma.service.queue import StreamQueue

    prefix = f"fleetoom-{uuid.uuid4().hex[:6]}"
    r = private_redis.client()
    tasks = StreamQueue(r, Keys(prefix).batch_tasks(), GROUP, "test", lease_ms=60_000, max_deliveries=5,
                        dead_stream=Keys(prefix).batch_dead())
    tasks.ensure_group()
    torn = tmp_path / "torn-run"
    torn.mkdir()
    (torn / "run.json").write_text('{"run_hash": "abc", "shar')
    tasks.add({"run_dir": str(torn), "shard": "00000", "run_hash": "abc"})      # read first: fails first
    corpus = tmp_path / "corpus"
    write_pairs_jsonl(corpus, synthetic_pairs(6, size=40, seed=6))
    cfg = BatchConfig.model_validate({"input": {"path": str(corpus), "shard_size": 2}, "annotator": "pixel-diff",
                                      "workers": 0})
    out = tmp_path / "run"
    assert submit_run(cfg, out, private_redis.url, prefix)["queued"] == 3
    stop, result = threading.Event(), []
    with full_redis(r):
        worker = threading.Thread(target=lambda: result.append(run_batch_worker(
            private_redis.url, prefix, "fleet-oom", stop=stop, run_read_retry_s=0.2, lease_ms=60_000, block_ms=100,
            reclaim_interval_ms=60_000)), daemon=True)
        worker.start()
        try:
            summary = wait_fleet(out, 30)
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                r.set(f"{prefix}:still-full", "1")
        finally:
            stop.set()
            worker.join(timeout=30)
    assert not worker.is_alive() and result, "the fleet worker did not stop"
    assert summary["done"] == 3 and result[0].done == 3 and result[0].failed == 1, (summary, result[0])
    assert tasks.pending_count() == 1 and tasks.depth() == 1     # the torn one, left to its lease; the rest acked
    assert "without its error noted (redis is out of memory): run_unreadable" in caplog.text


class MarkingHandler:
    """Writes a marker per entry in `handle` (an HSET: refused over maxmemory), like a handler that marks
    its jobs running; records the delivery count it saw for each entry."""

    batch_size = 4
    max_wait_ms = 0

    def __init__(self, client, key: str):
        self.r, self.key = client, key
        self.seen: dict[str, int] = {}
        self.dead: list[str] = []

    def handle(self, entries):
        from sigma.service.consumer import Outcome

        for e in entries:
            self.r.hset(self.key, e.fields["n"], e.deliveries)
        for e in entries:
            self.seen[e.fields["n"]] = e.deliveries
        return [Outcome(e, "ack") for e in entries]

    def on_retry(self, entry, error):
        pass

    def on_dead(self, entry, error):
        self.dead.append(entry.fields["n"])
        return error or {"code": "worker_lost"}

    def info(self):
        return {"consumer": "marking"}


def start_consumer(consumer) -> tuple[threading.Thread, list[BaseException]]:
    """`consumer.run()` in a daemon thread; what it raises lands in the list, for the test to report."""
    failure: list[BaseException] = []

    def run():
        try:
            consumer.run()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failure.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failure


def test_consumer_holds_what_it_read_through_a_long_outage_without_spending_deliveries(private_redis):
    """Redis refuses the handler's writes for longer than max_deliveries leases: the consumer keeps the entries
    it read (extending their leases), retries with backoff, and handles each on its first delivery once Redis
    accepts writes again: nothing reclaimed, nothing dead-lettered, the loop never exits."""
    from sigma.service.connections import sync_client
    from sigma.service.consumer import Consumer
    from sigma.service.queue import StreamQueue
    from sigma.service.settings import QueueSettings, RedisSettings

    prefix = f"hold-{uuid.uuid4().hex[:6]}"
    # a lease of 600 ms, beaten every 50 ms: at 200 ms a heartbeat held off the CPU 150 ms (a loaded machine) let
    # the consumer reclaim its own entry once Redis took writes again, seen on its second delivery
    qs = QueueSettings(lease_ms=600, block_ms=50, reclaim_interval_ms=50, heartbeat_interval_ms=50,
                       heartbeat_ttl_ms=1000, max_deliveries=2)
    client = sync_client(RedisSettings(url=private_redis.url, socket_timeout_s=1), block_ms=qs.block_ms)
    queue = StreamQueue(client, f"{prefix}:s", "g", "c1", lease_ms=qs.lease_ms, max_deliveries=qs.max_deliveries,
                        dead_stream=f"{prefix}:dead")
    queue.ensure_group()
    for n in range(6):
        queue.add({"n": str(n)})
    handler = MarkingHandler(client, f"{prefix}:marks")
    stop = threading.Event()
    consumer = Consumer(client, queue, handler, qs, heartbeat_key=f"{prefix}:hb", stop=stop)
    r = private_redis.client()
    with full_redis(r):
        thread, failure = start_consumer(consumer)
        began = time.monotonic()
        # the handler refused at least once (waited for: one sample after a sleep could come before the thread ran)
        wait_until(lambda: consumer.counts.redis_errors > 0 or not thread.is_alive(), 30, "a refused write")
        time.sleep(max(0.0, began + 1.5 - time.monotonic()))   # > max_deliveries x lease_ms: a lease left to run
        assert thread.is_alive(), failure                      # out would be spent
        assert handler.seen == {} and consumer.counts.redis_errors > 0
    wait_until(lambda: len(handler.seen) == 6, 15, "every entry handled")
    stop.set()
    thread.join(timeout=10)
    assert not failure, failure
    assert handler.seen == {str(n): 1 for n in range(6)}, handler.seen   # each on its first delivery
    assert handler.dead == [] and queue.dead_count() == 0
    assert consumer.counts.reclaimed == 0 and consumer.counts.acked == 6
    assert queue.depth() == 0 and queue.pending_count() == 0


def test_consumer_outlives_its_stream_being_deleted_while_it_blocks(private_redis):
    """FLUSHALL (or a DEL, or a failover to an empty replica) while a worker waits in XREADGROUP BLOCK: Redis
    answers it `UNBLOCKED the stream key no longer exists`, which ended `sigma worker` with a traceback (an idle
    pixel-diff worker died; the busy ones got NOGROUP, which is waited out). The loop makes the group again."""
    from sigma.service.connections import sync_client
    from sigma.service.consumer import Consumer
    from sigma.service.queue import StreamQueue
    from sigma.service.settings import QueueSettings, RedisSettings

    prefix = f"unblocked-{uuid.uuid4().hex[:6]}"
    qs = QueueSettings(block_ms=3000, reclaim_interval_ms=50, heartbeat_interval_ms=50)
    client = sync_client(RedisSettings(url=private_redis.url, socket_timeout_s=1), block_ms=qs.block_ms)
    queue = StreamQueue(client, f"{prefix}:s", "g", "c1", lease_ms=qs.lease_ms, max_deliveries=qs.max_deliveries,
                        dead_stream=f"{prefix}:dead")
    queue.ensure_group()
    queue.add({"n": "0"})
    handler = MarkingHandler(client, f"{prefix}:marks")
    stop = threading.Event()
    consumer = Consumer(client, queue, handler, qs, heartbeat_key=f"{prefix}:hb", stop=stop)
    thread, failure = start_consumer(consumer)
    wait_until(lambda: "0" in handler.seen, 30, "the first entry handled")
    time.sleep(0.5)                                  # blocked in XREADGROUP now
    private_redis.client().delete(f"{prefix}:s")
    time.sleep(0.5)
    assert thread.is_alive(), failure
    queue.add({"n": "1"})                            # a new stream: the worker finds it and makes its group again
    wait_until(lambda: "1" in handler.seen, 15, "an entry of the new stream handled")
    stop.set()
    thread.join(timeout=10)
    assert not failure, failure


class FreezingHandler(MarkingHandler):
    """Freezes Redis (SIGSTOP) as its first batch is decided, for `frozen_s`: the outcomes' store (an HSET, then
    the XACK) meets a Redis that answers nothing, times out and is stored later, once Redis is back."""

    batch_size = 2

    def __init__(self, client, key: str, server, frozen_s: float):
        super().__init__(client, key)
        self.server, self.frozen_s, self.batches = server, frozen_s, 0

    def handle(self, entries):
        from sigma.service.consumer import Outcome

        self.batches += 1
        for e in entries:
            self.seen[e.fields["n"]] = e.deliveries
        if self.batches == 1:
            self.server.freeze()
            threading.Timer(self.frozen_s, self.server.thaw).start()
        return [Outcome(e, "ack", store=lambda n=e.fields["n"]: self.r.hset(self.key, n, "stored")) for e in entries]


def test_a_batch_stored_late_after_a_redis_fault_still_gets_the_memory_check(private_redis, caplog):
    """The memory check (worker.max_rss_mb, the consumer's `after_batch`) ran only when a batch's outcomes were
    stored at once. When Redis failed between the decision and the store, the loop stored them later, once Redis
    was back, and skipped the check: a worker past the limit took the next batch (and the next, for as long as each
    store met a fault), growing towards the OOM killer. Now the check runs once the late store succeeds: with
    worker.max_rss_mb=1 (always past it) the worker stops after its first batch, stored, the rest left queued."""
    import logging

    from sigma.service.connections import sync_client
    from sigma.service.consumer import Consumer
    from sigma.service.queue import StreamQueue
    from sigma.service.settings import QueueSettings, RedisSettings
    from sigma.workers.lifecycle import recycle_past_max_rss

    prefix = f"late-{uuid.uuid4().hex[:6]}"
    qs = QueueSettings(lease_ms=30_000, block_ms=50, reclaim_interval_ms=60_000, heartbeat_interval_ms=100,
                       heartbeat_ttl_ms=5000, max_deliveries=3)
    client = sync_client(RedisSettings(url=private_redis.url, socket_timeout_s=0.5), block_ms=qs.block_ms)
    queue = StreamQueue(client, f"{prefix}:s", "g", "c1", lease_ms=qs.lease_ms, max_deliveries=qs.max_deliveries,
                        dead_stream=f"{prefix}:dead")
    queue.ensure_group()
    for n in range(4):
        queue.add({"n": str(n)})
    handler = FreezingHandler(client, f"{prefix}:marks", private_redis, frozen_s=2.0)
    stop = threading.Event()
    recycler = recycle_past_max_rss(1, stop, "late worker")
    consumer = Consumer(client, queue, handler, qs, heartbeat_key=f"{prefix}:hb", stop=stop, after_batch=recycler)
    caplog.set_level(logging.WARNING)
    try:
        thread, failure = start_consumer(consumer)
        thread.join(timeout=30)
    finally:
        private_redis.thaw()
        stop.set()
    assert not thread.is_alive() and not failure, failure
    r = private_redis.client()
    assert consumer.counts.redis_errors > 0, consumer.counts          # the store did meet the frozen Redis
    assert recycler.recycled and "exceeds worker.max_rss_mb=1 after a batch" in caplog.text, caplog.text
    assert handler.batches == 1 and handler.seen == {"0": 1, "1": 1}, (handler.batches, handler.seen)
    assert r.hgetall(f"{prefix}:marks") == {b"0": b"stored", b"1": b"stored"}        # the late store did happen
    assert consumer.counts.acked == 2 and queue.pending_count() == 0 and queue.depth() == 2, consumer.counts


# -- the faults -----------------------------------------------------------------------------------------
def test_redis_frozen_past_the_socket_timeout_under_load(stack):
    svc, r = stack.svc, stack.svc.redis_server.client()
    out = fleet_run(stack, "stall", shards=24)
    with Load(svc, ["pixel-diff", "sigma-lite"]) as load:
        wait_until(lambda: len(load.accepted) >= 20, 30, "load to build up")
        svc.redis_server.freeze()
        t0 = time.monotonic()
        time.sleep(STALL_S)
        svc.redis_server.thaw()
        stalled = time.monotonic() - t0
        accepted_at_thaw = len(load.accepted)
        wait_until(lambda: len(load.accepted) >= accepted_at_thaw + 10, 30, "submissions to resume")
    wait_done(svc, load.accepted, 90)
    summary = wait_fleet(out, 60)
    figures = exactly_once(svc, load.accepted)
    print(f"\nredis frozen {stalled:.1f} s (worker socket timeout {WORKER_SOCKET_TIMEOUT_S} s): {figures}, "
          f"HTTP {dict(load.statuses)}, fleet shards {summary['done']}/{summary['shards']} done")
    assert figures["done_once"] == figures["accepted"] and figures["lost"] == 0
    assert figures["duplicated"] == 0 and figures["duplicated_anywhere"] == 0
    assert summary["failed"] == 0 and summary["pending"] == 0
    assert r.xlen(f"{svc.prefix}:batch:tasks:dead") == 0
    stack.assert_all_alive()
    for proc in stack.procs():                     # each worker did run into the stall, and waited it out
        log = proc.log.read_text(errors="replace")
        assert "redis error (TimeoutError" in log or "redis error while consuming (TimeoutError" in log, log[-3000:]


def test_redis_restart_keeps_every_worker_including_the_fleet(stack):
    svc = stack.svc
    out = fleet_run(stack, "restart", shards=8)
    with httpx.Client(base_url=svc.url, timeout=30.0) as client:
        ids = [submit(client, svc, a, n).json()["id"] for n, a in enumerate(["pixel-diff", "sigma-lite"] * 5)]
    svc.redis_server.stop()                        # SIGTERM: AOF fsynced; queued work survives
    time.sleep(1.5)
    svc.redis_server.start()
    wait_done(svc, ids, 60)
    wait_fleet(out, 60)
    figures = exactly_once(svc, ids)
    assert figures["done_once"] == len(ids) and figures["duplicated_anywhere"] == 0, figures
    stack.assert_all_alive()


def test_redis_over_maxmemory_refuses_new_work_and_drains_what_it_accepted(stack):
    """Over maxmemory (noeviction) with jobs in flight and queued: /readyz says "out of memory", submissions get
    503, and the workers work off everything already accepted while Redis stays full (marking a job running,
    storing its result and acknowledging it all run over maxmemory, and each finished job frees its images);
    once memory is freed the service is ready again by itself."""
    svc, r = stack.svc, stack.svc.redis_server.client()
    slow = svc.start_worker("slow-diff", SLOW, wait=False)
    wait_until(lambda: r.hget(f"{svc.prefix}:worker:{slow.consumer}", "model_loaded") == b"1", 60, "slow worker")
    stack.fleet.signal(signal.SIGSTOP)             # its shards are worked while Redis is full, not before
    out = fleet_run(stack, "oom", shards=6)
    slow.signal(signal.SIGSTOP)                    # so that its first batch is a full one
    with httpx.Client(base_url=svc.url, timeout=30.0) as client:
        ids = [submit(client, svc, "slow-diff", n).json()["id"] for n in range(6)]
        ids += [submit(client, svc, a, n).json()["id"] for n, a in enumerate(["pixel-diff", "sigma-lite"] * 2)]
        slow.signal(signal.SIGCONT)
        in_flight = wait_until(lambda: [j for j, (s, _) in zip(ids[:6], job_states(svc, ids[:6]), strict=True)
                                        if s == "running"], 15, "a slow-diff batch in flight")
        with full_redis(r):
            ready = client.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["redis"] == {"ok": False, "error": "out of memory"}, ready.text
            refused = submit(client, svc, "pixel-diff", 0)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "queue_unavailable"
            assert "out of memory" in refused.json()["error"]["message"]
            stack.fleet.signal(signal.SIGCONT)
            wait_done(svc, ids, 60)
            summary = wait_fleet(out, 60)
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                r.set(f"{svc.prefix}:still-full", "1")             # full the whole time
            assert r.keys(f"{svc.prefix}:blob:*") == []            # every accepted job's images freed
            figures = exactly_once(svc, ids)
            stack.assert_all_alive()
            assert slow.alive(), slow.output()
        print(f"\nmaxmemory squeeze, {len(in_flight)} job(s) in flight and {len(ids) - len(in_flight)} queued: "
              f"{figures}, fleet shards {summary['done']}/{summary['shards']} done while Redis was full")
        assert figures["done_once"] == len(ids) and figures["duplicated_anywhere"] == 0, figures
        wait_until(lambda: client.get("/readyz").status_code == 200, 20, "/readyz to recover by itself")
        after = submit(client, svc, "pixel-diff", 1)
        assert after.status_code == 202, after.text
        wait_done(svc, [after.json()["id"]], 20)
    stack.assert_all_alive()
    assert slow.alive()


def test_readyz_names_no_redis_address(stack):
    """Item 6 for /readyz (no key): the Redis error stays in the logs, the caller gets a phrase."""
    svc = stack.svc
    svc.redis_server.stop()                        # connection refused: redis-py's message names host:port
    try:
        down = svc.http.get("/readyz")
    finally:
        svc.redis_server.start()
    assert down.status_code == 503
    body = json.dumps(down.json())
    assert str(svc.redis_server.port) not in body and "127.0.0.1" not in body, body
    assert down.json()["checks"]["redis"]["ok"] is False
    wait_until(lambda: svc.http.get("/readyz").status_code == 200, 20, "/readyz to recover")
    stack.assert_all_alive()


class SlowHandler(MarkingHandler):
    """Takes `delay_s` over each batch of one entry."""

    batch_size = 1

    def __init__(self, client, key: str, delay_s: float):
        super().__init__(client, key)
        self.delay_s = delay_s

    def handle(self, entries):
        time.sleep(self.delay_s)
        return super().handle(entries)


def test_every_stuck_batch_is_reported_not_only_the_first(redis_server):
    """handle_timeout_s: the heartbeat thread reports a batch handled for longer (`on_stuck`, the worker's exit).
    The reported flag was never reset, so after a stuck batch that came back, the next one went unnoticed."""
    from sigma.service.connections import sync_client
    from sigma.service.consumer import Consumer
    from sigma.service.queue import StreamQueue
    from sigma.service.settings import QueueSettings, RedisSettings

    prefix = f"stuck-{uuid.uuid4().hex[:6]}"
    qs = QueueSettings(lease_ms=5000, block_ms=50, reclaim_interval_ms=1000, heartbeat_interval_ms=50,
                       heartbeat_ttl_ms=500, max_deliveries=3)
    client = sync_client(RedisSettings(url=redis_server.url), block_ms=qs.block_ms)
    queue = StreamQueue(client, f"{prefix}:s", "g", "c1", lease_ms=qs.lease_ms, max_deliveries=qs.max_deliveries,
                        dead_stream=f"{prefix}:dead")
    queue.ensure_group()
    for n in range(2):
        queue.add({"n": str(n)})
    reported: list[tuple[list[str], float]] = []
    consumer = Consumer(client, queue, SlowHandler(client, f"{prefix}:marks", 1.5), qs, heartbeat_key=f"{prefix}:hb",
                        handle_timeout_s=0.3, on_stuck=lambda entries, s: reported.append(([e.fields["n"]
                                                                                               for e in entries], s)))
    consumer.run(max_batches=2)
    assert [names for names, _ in reported] == [["0"], ["1"]], reported
    assert all(0.3 <= s < 1.5 for _, s in reported), reported
    assert consumer.counts.acked == 2

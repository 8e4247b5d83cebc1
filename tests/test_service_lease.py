"""A worker that loses its lease, with real `sigma worker` processes, real signals and a real Redis.

A worker paused (SIGSTOP: a stalled VM, a debugger, a laptop lid) for longer than `queue.lease_ms` has its entry
reclaimed by another worker. When it resumes, its heartbeat used to XCLAIM the entry back from that worker (a plain
XCLAIM takes an entry from whoever holds it), so the two did the job at once and handed the entry back and forth.
Now a beat extends only the entries still pending to its own consumer, and an outcome the worker may no longer settle
is dropped (`Consumer._drop_lost`): each job is answered once.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
from servicekit import make_pair, running_service, wait_until

# a hang guard, not a race: under three busy loops (load ~26) the file took 10 minutes and one of its real-process
# tests ran past 240 s, its job still inside its wait for the stopped-and-resumed worker
pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]

GROUP = "sigma-workers"
# long enough that the worker is still inside the job after it is stopped and let go again, on a loaded machine
# too: a stopped process's sleep runs on, so the job ends soon after SIGCONT only when the stop lasted this long
JOB_MS = 20_000


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def stop_inside_the_job(svc, worker, job_id: str) -> None:
    """SIGSTOP the worker once the job is running, and wait until it is stopped: the job must still be running
    then (the worker is frozen with it in hand, no result stored), else the test could not show anything."""
    wait_until(lambda: svc.raw_job(job_id).get("status") == "running", 60, "the worker to start the job")
    worker.signal(signal.SIGSTOP)
    wait_until(lambda: _state(worker.pid) in ("T", "t"), 30, "the worker to be stopped")
    assert svc.raw_job(job_id).get("status") == "running", svc.raw_job(job_id)


def test_a_worker_paused_past_its_lease_does_not_claim_its_entry_back(redis_server, tmp_path):
    """A real `sigma worker` stopped inside a job past its lease, the entry reclaimed by another consumer, then let go
    (SIGCONT): its heartbeat used to claim the entry back (a plain XCLAIM). Now the entry is never the resumed
    worker's again (sampled until the job is done), the job is answered once, by the resumed worker (the other
    consumer here does nothing), and the worker goes on. Conditions only: no timing is assumed."""
    slow = [f"worker.options={{delay_ms: {JOB_MS}}}", "worker.max_batch_size=1"]
    with running_service(redis_server, tmp_path) as svc:
        worker = svc.start_worker("slow-diff", slow)
        original, edited = make_pair(seed=7)
        resp = svc.submit(original, edited, {"annotator": "slow-diff"})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        r = svc.redis_server.client()
        stream = f"{svc.prefix}:stream:slow-diff"
        stop_inside_the_job(svc, worker, job_id)
        try:
            # its lease (queue.lease_ms=800) runs out while it is stopped: another consumer reclaims the entry
            claimed = wait_until(lambda: r.xautoclaim(stream, GROUP, "thief", 800, start_id="0-0", count=10)[1], 60,
                                 "the stopped worker's lease to run out")
            assert len(claimed) == 1, claimed
            entry_id = claimed[0][0]
        finally:
            worker.signal(signal.SIGCONT)
        owners = []

        def done() -> bool:
            owners.extend(row["consumer"] for row in r.xpending_range(stream, GROUP, entry_id, entry_id, 1))
            return svc.raw_job(job_id).get("status") == "done"

        wait_until(done, 300, "the job to be done", interval=0.02)
        # without the fix the resumed worker's first beat took it back and held it until the job ended
        assert set(owners) <= {b"thief"}, owners
        raw = svc.raw_job(job_id)
        assert raw["completions"] == "1" and raw["worker"] == worker.consumer, raw
        # its result stored, the worker acknowledged the entry: nothing is left for the thief to settle
        wait_until(lambda: not r.xpending_range(stream, GROUP, "-", "+", 10), 30, "the entry to be acknowledged")
        assert worker.alive(), worker.output()
        assert "Traceback" not in worker.output(), worker.output()


def test_a_job_lost_with_redis_data_mid_batch_is_said_and_the_worker_goes_on(redis_server, tmp_path):
    """Redis restarted without its data (here: the service's keys deleted, as FLUSHALL or an empty restart leaves
    them) while a real worker was inside a job: the job's record and its entry are gone, so its result has nowhere to
    go. The worker says so in one line (it used to drop it without a word), re-creates no record, stays up, and does
    the next job. The keys go while the worker is stopped inside the job, so it cannot have finished first."""
    slow = [f"worker.options={{delay_ms: {JOB_MS}}}", "worker.max_batch_size=1"]
    with running_service(redis_server, tmp_path) as svc:
        worker = svc.start_worker("slow-diff", slow)
        r = svc.redis_server.client()
        original, edited = make_pair(seed=8)
        resp = svc.submit(original, edited, {"annotator": "slow-diff"})
        assert resp.status_code == 202, resp.text
        first = resp.json()["id"]
        stop_inside_the_job(svc, worker, first)
        try:
            # every key of this service (the session's Redis is shared: not FLUSHALL), the worker's heartbeat too
            for key in list(r.scan_iter(match=f"{svc.prefix}:*")):
                r.delete(key)
        finally:
            worker.signal(signal.SIGCONT)
        wait_until(lambda: "is no longer pending" in worker.output(), 300, "the worker to say the job was lost")
        assert svc.raw_job(first) == {}                  # not re-created by a late result
        resp = svc.submit(original, edited, {"annotator": "slow-diff"})
        assert resp.status_code == 202, resp.text
        second = resp.json()["id"]
        wait_until(lambda: svc.raw_job(second).get("status") == "done", 300, "the next job to be done")
        assert worker.alive(), worker.output()
        assert "Traceback" not in worker.output(), worker.output()


class Decided:
    """A handler whose outcome for every entry is `action` (the consumer's settling is what is under test)."""

    batch_size = 1
    max_wait_ms = 0

    def __init__(self, action: str):
        self.action = action
        self.retried: list[str] = []
        self.dead: list[str] = []
        self.gone: list[str] = []

    def handle(self, entries):
        from sigma.service.consumer import Outcome

        return [Outcome(e, self.action, error={"code": "x", "message": "x"}) for e in entries]

    def on_retry(self, entry, error) -> None:
        self.retried.append(entry.id)

    def on_dead(self, entry, error):
        self.dead.append(entry.id)
        return error or {}

    def on_gone(self, entry) -> None:
        self.gone.append(entry.id)

    def info(self):
        return {}


def _queues(redis_server, *names: str, max_deliveries: int = 3):
    """Consumers `names` of one fresh stream and group on the test's Redis, with the queue settings their worker
    would have: what every in-process test below starts from. Returns (prefix, client, settings, queues)."""
    import uuid

    from sigma.service.queue import StreamQueue
    from sigma.service.settings import QueueSettings

    prefix = f"lease-{uuid.uuid4().hex[:8]}"
    client = redis_server.client()
    qs = QueueSettings(lease_ms=60_000, block_ms=50, max_deliveries=max_deliveries)
    queues = [StreamQueue(client, f"{prefix}:s", "g", name, lease_ms=qs.lease_ms, max_deliveries=qs.max_deliveries,
                          dead_stream=f"{prefix}:dead") for name in names]
    queues[0].ensure_group()
    return prefix, client, qs, queues


@pytest.mark.parametrize(("action", "max_deliveries"), [("dead", 3), ("defer", 3), ("retry", 3), ("ack", 3),
                                                       ("retry", 1)])
def test_an_outcome_for_an_entry_another_worker_reclaimed_moves_it_no_more(redis_server, action, max_deliveries):
    """Worker a's lease ran out while it worked and worker b reclaimed the entry: a's dead letter failed the job b was
    doing, and its defer (an XCLAIM) took the entry back from b. Those are dropped now (a retry on the last delivery is
    a dead letter: dropped too); a result (ack) and a retry's note move nothing and are still settled (a job's result
    is stored only when it has none: FINISH)."""

    from sigma.service.consumer import Consumer

    prefix, client, qs, (a,) = _queues(redis_server, "a", max_deliveries=max_deliveries)
    a.add({"job": "j"})
    entries = a.read(1, None)
    client.xclaim(a.stream, "g", "b", 0, [entries[0].id])        # b reclaims it
    handler = Decided(action)
    consumer = Consumer(client, a, handler, qs, heartbeat_key=f"{prefix}:hb")
    consumer.process(entries)
    settled = action == "ack" or (action == "retry" and max_deliveries > 1)
    assert a.dead_count() == 0 and handler.dead == []
    assert handler.retried == ([entries[0].id] if action == "retry" and settled else [])
    assert consumer.counts.lost == (0 if settled else 1)
    owners = a.owners([entries[0].id])
    assert owners == ({} if action == "ack" else {entries[0].id: "b"}), owners


def test_an_outcome_for_an_entry_redis_lost_is_dropped_and_said(redis_server, caplog):
    """Redis restarted without its data (or FLUSHALL) while a worker held an entry: the entry, its group and the
    job's record are gone. The outcome in hand is dropped, said in one line, and the worker goes on."""
    import logging

    from sigma.service.consumer import Consumer

    prefix, client, qs, (a,) = _queues(redis_server, "a", max_deliveries=1)
    a.add({"job": "j"})
    entries = a.read(1, None)
    client.delete(a.stream)          # what a restart without persistence leaves: no stream, no group
    a.ensure_group()                 # made again by whichever worker reconnects first
    handler = Decided("dead")
    consumer = Consumer(client, a, handler, qs, heartbeat_key=f"{prefix}:hb")
    with caplog.at_level(logging.WARNING, logger="sigma.service.consumer"):
        consumer.process(entries)
    assert handler.dead == [] and handler.gone == [entries[0].id] and consumer.counts.lost == 1
    assert a.dead_count() == 0
    assert any("no longer pending" in rec.getMessage() for rec in caplog.records), caplog.text



def test_a_defer_takes_no_entry_back_from_the_consumer_that_reclaimed_it(redis_server):
    """`defer` was a plain XCLAIM: worker a, whose lease had lapsed and whose entry worker b had reclaimed, took it
    back by deferring it (and set its delivery counter back under b). It is ownership-checked now, as the heartbeat's
    EXTEND is: a's defer leaves the entry with b (-1), an entry settled meanwhile is said gone (0), a's own is
    deferred (1) with its counter set back."""

    from sigma.service.queue import DEFER_GONE, DEFER_HELD

    _, client, _, (a, b) = _queues(redis_server, "a", "b")
    for n in range(3):
        a.add({"job": str(n)})
    mine, taken, settled = a.read(3, None)
    client.xclaim(a.stream, "g", "b", 0, [taken.id])             # b reclaims it (a's lease ran out)
    b.ack([settled.id])                                          # settled by another consumer
    counted = a.delivery_counts([taken.id])
    assert a.defer(taken) == DEFER_HELD
    assert a.owners([taken.id]) == {taken.id: "b"}
    assert a.delivery_counts([taken.id]) == counted
    assert a.defer(settled) == DEFER_GONE and a.owners([settled.id]) == {}
    assert a.defer(mine) == 1
    assert a.owners([mine.id]) == {mine.id: "a"} and a.delivery_counts([mine.id]) == {mine.id: 0}


def test_a_lease_lost_while_a_batch_is_settled_drops_its_defer(redis_server):
    """The consumer looks at who holds its entries before it settles a batch's outcomes (`_drop_lost`), but a lease
    can lapse while it settles them (a result's store is slow, the process is paused): entry 2, reclaimed by b while
    entry 1's result was stored, was still deferred by a (taken back from b). Now its defer is dropped and counted
    lost, the entry left with b."""

    from sigma.service.consumer import Consumer, Outcome

    prefix, client, qs, (a,) = _queues(redis_server, "a")
    a.add({"job": "1"})
    a.add({"job": "2"})
    first, second = a.read(2, None)

    class StoreThenDefer(Decided):
        batch_size = 2

        def handle(self, entries):
            steal = lambda: client.xclaim(a.stream, "g", "b", 0, [second.id])   # noqa: E731 - b reclaims it
            return [Outcome(entries[0], "ack", store=steal), Outcome(entries[1], "defer")]

    handler = StoreThenDefer("defer")
    consumer = Consumer(client, a, handler, qs, heartbeat_key=f"{prefix}:hb")
    consumer.process([first, second])
    assert a.owners([first.id, second.id]) == {second.id: "b"}
    assert consumer.counts.lost == 1 and consumer.counts.deferred == 0 and handler.gone == []


def test_entries_lost_while_a_batch_is_worked_are_skipped_in_the_rest_of_it(redis_server, caplog):
    """A consumer holding more entries than one handler batch (a reclaim takes up to `reclaim_count`) whose lease ran
    out while it worked on the first (paused): its heartbeat found the others held by another consumer, and it still
    handled them, one batch after another, starting jobs that worker was doing and storing results for them. Now
    the entries a beat found lost are skipped, said in one line, and left with the consumer that holds them."""
    import logging

    from sigma.service.consumer import Consumer, Outcome

    prefix, client, qs, (a,) = _queues(redis_server, "a")
    for n in range(3):
        a.add({"job": str(n)})
    entries = a.read(3, None)
    consumer: Consumer

    class LosesTheRest(Decided):
        def __init__(self, action: str):
            super().__init__(action)
            self.handled: list[str] = []

        def handle(self, batch):
            self.handled += [e.id for e in batch]
            if len(self.handled) == 1:       # inside the first: b reclaims the others, and a beat notices
                client.xclaim(a.stream, "g", "b", 0, [e.id for e in entries[1:]])
                consumer.heartbeat.beat()
            return [Outcome(e, "ack") for e in batch]

    handler = LosesTheRest("ack")
    consumer = Consumer(client, a, handler, qs, heartbeat_key=f"{prefix}:hb")
    with caplog.at_level(logging.WARNING, logger="sigma.service.consumer"):
        consumer.process(entries)
    assert handler.handled == [entries[0].id]
    assert a.owners([e.id for e in entries]) == {e.id: "b" for e in entries[1:]}
    assert consumer.counts.lost == 2 and consumer.counts.acked == 1
    assert any("they are skipped" in rec.getMessage() for rec in caplog.records), caplog.text
    assert consumer.heartbeat.take_lost([e.id for e in entries]) == set()

"""A worker that loses its lease, with real `sigma worker` processes, real signals and a real Redis.

A worker paused (SIGSTOP: a stalled VM, a debugger, a laptop lid) for longer than `queue.lease_ms` has its entry
reclaimed by another worker. When it resumes, its heartbeat used to XCLAIM the entry back from that worker (a plain
XCLAIM takes an entry from whoever holds it), so the two did the job at once and handed the entry back and forth.
Now a beat extends only the entries still pending to its own consumer, and an outcome the worker may no longer settle
is dropped (`Consumer._drop_lost`): each job is answered once.
"""
from __future__ import annotations

import signal
import time

import pytest
from servicekit import make_pair, running_service, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

GROUP = "sigma-workers"


def pending_rows(r, stream: str) -> list[dict]:
    return r.xpending_range(stream, GROUP, "-", "+", 10)


def test_a_worker_paused_past_its_lease_does_not_claim_its_entry_back(redis_server, tmp_path):
    # 12 s in the job: it is still inside it when stopped, also on a loaded machine
    slow = ["worker.options={delay_ms: 12000}", "worker.max_batch_size=1"]
    with running_service(redis_server, tmp_path) as svc:
        worker = svc.start_worker("slow-diff", slow)
        original, edited = make_pair(seed=7)
        resp = svc.submit(original, edited, {"annotator": "slow-diff"})
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["id"]
        r = svc.redis_server.client()
        stream = f"{svc.prefix}:stream:slow-diff"
        wait_until(lambda: svc.raw_job(job_id).get("status") == "running", 30, "the worker to start the job")
        worker.signal(signal.SIGSTOP)
        try:
            rows = wait_until(lambda: [row for row in pending_rows(r, stream) if row["time_since_delivered"] > 1500],
                              30, "the worker's lease to run out (queue.lease_ms=800) while it is stopped")
            assert rows[0]["consumer"] == worker.consumer.encode(), rows
            # another worker reclaims it, as a live worker's reclaim pass does
            claimed = r.xautoclaim(stream, GROUP, "thief", 800, start_id="0-0", count=10)
            assert [entry_id for entry_id, _ in claimed[1]] == [rows[0]["message_id"]], claimed
        finally:
            worker.signal(signal.SIGCONT)
        resumed = time.time()
        beat_key = f"{svc.prefix}:worker:{worker.consumer}"
        wait_until(lambda: float(r.hget(beat_key, "last_beat") or 0) > resumed + 0.3, 30,
                   "the resumed worker's heartbeat to beat again")
        rows = pending_rows(r, stream)
        # the entry stays with the worker that reclaimed it (it used to be claimed back by the resumed worker)
        assert [row["consumer"] for row in rows] == [b"thief"], rows
        # the resumed worker finishes the job it was doing: its result is the job's one answer
        wait_until(lambda: svc.raw_job(job_id).get("status") == "done", 90, "the job to be done")
        raw = svc.raw_job(job_id)
        assert raw["completions"] == "1", raw
        assert raw["worker"] == worker.consumer, raw
        wait_until(lambda: "held by another consumer now" in worker.output(), 30, "the worker to say it lost the lease")
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


@pytest.mark.parametrize(("action", "max_deliveries"), [("dead", 3), ("defer", 3), ("retry", 3), ("ack", 3),
                                                       ("retry", 1)])
def test_an_outcome_for_an_entry_another_worker_reclaimed_moves_it_no_more(redis_server, action, max_deliveries):
    """Worker a's lease ran out while it worked and worker b reclaimed the entry: a's dead letter failed the job b was
    doing, and its defer (an XCLAIM) took the entry back from b. Those are dropped now (a retry on the last delivery is
    a dead letter: dropped too); a result (ack) and a retry's note move nothing and are still settled (a job's result
    is stored only when it has none: FINISH)."""
    import uuid

    from sigma.service.consumer import Consumer
    from sigma.service.queue import StreamQueue
    from sigma.service.settings import QueueSettings

    prefix = f"lease-{uuid.uuid4().hex[:8]}"
    client = redis_server.client()
    qs = QueueSettings(lease_ms=60_000, block_ms=50, max_deliveries=max_deliveries)
    a, b = (StreamQueue(client, f"{prefix}:s", "g", name, lease_ms=qs.lease_ms, max_deliveries=qs.max_deliveries,
                        dead_stream=f"{prefix}:dead") for name in ("a", "b"))
    a.ensure_group()
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
    import uuid

    from sigma.service.consumer import Consumer
    from sigma.service.queue import StreamQueue
    from sigma.service.settings import QueueSettings

    prefix = f"lease-{uuid.uuid4().hex[:8]}"
    client = redis_server.client()
    qs = QueueSettings(lease_ms=60_000, block_ms=50, max_deliveries=1)
    a = StreamQueue(client, f"{prefix}:s", "g", "a", lease_ms=qs.lease_ms, max_deliveries=qs.max_deliveries,
                    dead_stream=f"{prefix}:dead")
    a.ensure_group()
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


def test_a_job_lost_with_redis_data_mid_batch_is_said_and_the_worker_goes_on(redis_server, tmp_path):
    """Redis restarted without its data (here: its keys deleted, as FLUSHALL or an empty restart leaves them) while a
    real worker was inside a job: the job's record and its entry are gone, so its result has nowhere to go. The worker
    says so in one line (it used to drop it without a word), stays up, and does the next job."""
    slow = ["worker.options={delay_ms: 2500}", "worker.max_batch_size=1"]
    with running_service(redis_server, tmp_path) as svc:
        worker = svc.start_worker("slow-diff", slow)
        r = svc.redis_server.client()
        original, edited = make_pair(seed=8)
        resp = svc.submit(original, edited, {"annotator": "slow-diff"})
        assert resp.status_code == 202, resp.text
        first = resp.json()["id"]
        wait_until(lambda: svc.raw_job(first).get("status") == "running", 30, "the worker to start the job")
        # every key of this service (the session's Redis is shared: not FLUSHALL), the worker's heartbeat too
        for key in list(r.scan_iter(match=f"{svc.prefix}:*")):
            r.delete(key)
        wait_until(lambda: "is no longer pending" in worker.output(), 30, "the worker to say the job was lost")
        assert svc.raw_job(first) == {}                  # not re-created by a late result
        resp = svc.submit(original, edited, {"annotator": "slow-diff"})
        assert resp.status_code == 202, resp.text
        second = resp.json()["id"]
        wait_until(lambda: svc.raw_job(second).get("status") == "done", 60, "the next job to be done")
        assert worker.alive(), worker.output()
        assert "Traceback" not in worker.output(), worker.output()

"""`sigma worker`: a long-lived consumer that annotates queued jobs in micro-batches.

Loop: every `reclaim_interval_ms` run the reaper (XAUTOCLAIM entries idle past the lease; those
delivered more than `max_deliveries` times go to the dead-letter stream and their job fails), then
XREADGROUP up to `max_batch_size` entries, waiting `max_wait_ms` to fill the batch, run the
predictor, store each result, and only then XACK + XDEL.

Failure policy (crash-only): a bad input fails its job at once (retrying cannot help); a model
exception is retried by redelivery after the lease, up to `max_deliveries`; Redis being unreachable
is waited out with a bounded backoff; anything else ends the process with a traceback and a
non-zero exit, and the supervisor (Docker `restart:`, systemd) starts a fresh one, whose reaper
picks up what the dead one held. SIGTERM/SIGINT: finish the current batch, acknowledge, exit 0.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

import redis

from workers.jobs import JobStore, Keys
from workers.predictor import Predictor
from workers.queue import Entry, Heartbeat, StreamQueue
from workers.settings import ServeConfig

log = logging.getLogger("sigma.worker")


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def gpu_memory_bytes() -> int | None:
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return int(torch.cuda.memory_allocated())
    except Exception:  # noqa: BLE001 - a probe, never fatal
        return None
    return None


def sync_client(cfg: ServeConfig) -> redis.Redis:
    return redis.Redis.from_url(cfg.redis.url, socket_connect_timeout=cfg.redis.connect_timeout_s,
                                socket_timeout=max(cfg.redis.socket_timeout_s, cfg.queue.block_ms / 1000 + 5),
                                health_check_interval=5)


class Worker:
    def __init__(self, cfg: ServeConfig, predictor: Predictor | None = None, consumer: str | None = None):
        self.cfg = cfg
        self.annotator = cfg.worker.annotator
        self.consumer = consumer or cfg.worker.consumer or default_consumer()
        self.predictor = predictor or Predictor(cfg.worker.annotator, cfg.worker.options,
                                                cfg.limits.io_config(cfg.api.align), cfg.worker.plugins)
        self.keys = Keys(cfg.redis.key_prefix)
        self.r = sync_client(cfg)
        q = cfg.queue
        self.queue = StreamQueue(self.r, self.keys.stream(self.annotator), q.group, self.consumer,
                                 lease_ms=q.lease_ms, max_deliveries=q.max_deliveries,
                                 dead_stream=self.keys.dead(self.annotator), dead_maxlen=q.dead_letter_maxlen)
        self.jobs = JobStore(self.r, self.keys, q.result_ttl_s)
        self.stopping = False
        self.started_at = time.time()
        self.counts = {"batches": 0, "jobs_done": 0, "jobs_failed": 0, "dead_lettered": 0, "duplicates": 0,
                       "retries": 0}
        self.heartbeat: Heartbeat | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"consumer": self.consumer, "host": socket.gethostname(), "pid": os.getpid(),
                                "annotator": self.annotator, "config_hash": self.predictor.config_hash,
                                "model_loaded": int(self.predictor.annotator is not None),
                                "started_at": f"{self.started_at:.3f}", **self.counts}
        mem = gpu_memory_bytes()
        if mem is not None:
            info["gpu_memory_bytes"] = mem
        return info

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        log.info("signal %s: finishing the current batch, then exiting", signum)
        self.stopping = True

    def _wait_for_redis(self) -> None:
        delay = 0.05
        while not self.stopping:
            try:
                self.r.ping()
                self.queue.ensure_group()
                return
            except redis.ConnectionError as exc:
                log.warning("redis unreachable (%s); retrying in %.2fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def run(self, max_batches: int | None = None) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.predictor.setup()
        log.info("worker %s: %s loaded in %.0f ms, consuming %s", self.consumer, self.annotator,
                 self.predictor.setup_ms or 0, self.queue.stream)
        self._wait_for_redis()
        self.heartbeat = Heartbeat(self.r, self.keys.worker(self.consumer), self.cfg.queue.heartbeat_interval_ms,
                                   self.cfg.queue.heartbeat_ttl_ms, self._info, self.queue)
        self.heartbeat.start()
        next_reclaim = 0.0
        try:
            while not self.stopping:
                if max_batches is not None and self.counts["batches"] >= max_batches:
                    break
                try:
                    if time.monotonic() >= next_reclaim:
                        self.reap()
                        next_reclaim = time.monotonic() + self.cfg.queue.reclaim_interval_ms / 1000
                    batch = self.queue.read_batch(self.cfg.worker.max_batch_size, self.cfg.queue.block_ms,
                                                  self.cfg.worker.max_wait_ms)
                    if batch:
                        self.process(batch)
                except redis.ConnectionError as exc:
                    log.warning("redis connection lost (%s); waiting for it", exc)
                    self._wait_for_redis()
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):   # Redis restarted without persistence: recreate
                        raise
                    self.queue.ensure_group()
        finally:
            self.heartbeat.stop()
        log.info("worker %s: stopped after %s", self.consumer, self.counts)
        return 0

    # -- work --------------------------------------------------------------------------------
    def reap(self) -> None:
        live, exhausted = self.queue.reclaim(count=max(16, self.cfg.worker.max_batch_size))
        for entry in exhausted:
            self._dead_letter(entry)
        if live:
            log.info("reclaimed %d entries idle past the lease", len(live))
            self.counts["retries"] += len(live)
            self.process(live)

    def _dead_letter(self, entry: Entry, last_error: dict | None = None) -> None:
        job_id = entry.fields.get("job", "")
        if last_error is None:
            raw = self.r.hget(self.keys.job(job_id), "last_error") if job_id else None
            last_error = json.loads(raw) if raw else {
                "code": "worker_lost", "message": "the worker processing this job stopped without a result "
                f"({entry.deliveries} deliveries)"}
        error = {"code": "dead_letter", "message": f"gave up after {entry.deliveries} deliveries: "
                 f"[{last_error.get('code')}] {last_error.get('message')}", "last_error": last_error,
                 "deliveries": entry.deliveries}
        if job_id:
            self.jobs.finish(job_id, "failed", self.consumer, error=error)
        self.queue.dead_letter(entry, json.dumps(last_error))
        self.counts["dead_lettered"] += 1
        log.warning("job %s dead-lettered after %d deliveries: %s", job_id, entry.deliveries, last_error)

    def process(self, entries: list[Entry]) -> None:
        assert self.heartbeat is not None
        ids = [e.id for e in entries]
        self.heartbeat.track(ids)
        try:
            self._process(entries)
        finally:
            self.heartbeat.untrack(ids)
        self.counts["batches"] += 1

    def _process(self, entries: list[Entry]) -> None:
        job_ids = [e.fields.get("job", "") for e in entries]
        loaded = self.jobs.load(job_ids)
        work: list[tuple[Entry, dict[str, Any]]] = []
        to_ack: list[str] = []
        for entry, job_id, (h, original, edited) in zip(entries, job_ids, loaded, strict=True):
            status = self.jobs.start(job_id, self.consumer) if h else None
            if status is None or status in ("done", "failed", "cancelled"):
                if status == "done":
                    self.counts["duplicates"] += 1
                to_ack.append(entry.id)          # expired, cancelled or already finished
                continue
            if original is None or edited is None:
                self.jobs.finish(job_id, "failed", self.consumer,
                                 error={"code": "job_expired", "message": "the job's images expired before "
                                        "a worker reached it (queue.job_ttl_s)"})
                to_ack.append(entry.id)
                continue
            item = {"id": job_id, "original": original, "edited": edited,
                    "instruction": json.loads(h.get("instruction") or "null"),
                    "threshold": json.loads(h.get("threshold") or "null"),
                    "outputs": json.loads(h.get("outputs") or '["rle"]')}
            work.append((entry, item))
        self.queue.ack(to_ack)
        if not work:
            return
        start = time.perf_counter()
        try:
            results: list[Any] = self.predictor([item for _, item in work])
        except Exception:  # noqa: BLE001 - isolate the item that fails, keep the others
            if len(work) == 1:
                results = [sys.exc_info()[1]]
            else:
                results = []
                for _, item in work:
                    try:
                        results.append(self.predictor([item])[0])
                    except Exception as exc:  # noqa: BLE001
                        results.append(exc)
        self.jobs.record_batch(self.annotator, len(work), time.perf_counter() - start)
        for (entry, item), res in zip(work, results, strict=True):
            if isinstance(res, Exception):
                self._failed_attempt(entry, res)
            elif res["ok"]:
                self.jobs.finish(item["id"], "done", self.consumer, result=res["result"])
                self.queue.ack([entry.id])
                self.counts["jobs_done"] += 1
            else:
                self.jobs.finish(item["id"], "failed", self.consumer, error=res["error"])
                self.queue.ack([entry.id])
                self.counts["jobs_failed"] += 1

    def _failed_attempt(self, entry: Entry, exc: BaseException) -> None:
        """A model exception: leave the entry pending (redelivered after the lease) or dead-letter it."""
        job_id = entry.fields.get("job", "")
        error = {"code": getattr(exc, "code", "model_error"),
                 "message": f"{type(exc).__name__}: {exc}"[:2000],
                 "trace": "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]}
        log.warning("job %s failed on delivery %d: %s", job_id, entry.deliveries, error["message"])
        if entry.deliveries >= self.cfg.queue.max_deliveries:
            self._dead_letter(entry, error)
        else:
            self.jobs.note_error(job_id, error)


def run_worker(cfg: ServeConfig, consumer: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return Worker(cfg, consumer=consumer).run()

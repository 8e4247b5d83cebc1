"""Fleet mode: shard tasks on a Redis stream, consumed by `sigma worker --batch` on every GPU machine.

Delivery follows the service's rules (`workers.queue`): at-least-once, a lease extended by the
heartbeat while a shard is worked on, XAUTOCLAIM of entries whose worker died, dead-letter after
`max_deliveries`. Running a shard twice is safe: its output is a pure function of (input, shard, run
hash), published by atomic rename, and a finished shard is skipped. The run folder (and the corpus)
must be on storage every worker sees; Redis carries only {run_dir, shard, run_hash}.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigma.batch.config import BatchConfig
from sigma.batch.layout import RunDir
from sigma.batch.runner import corpus_from_config, prepare_run
from sigma.errors import InputError, SigmaError

log = logging.getLogger("sigma.batch.fleet")

DEFAULT_STREAM = "sigma:batch:tasks"
GROUP = "sigma-batch"


def redis_client(url: str | None):
    import redis

    url = url or os.environ.get("SIGMA_REDIS_URL") or "redis://127.0.0.1:6379/0"
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10)


def make_queue(client, stream: str, consumer: str, lease_ms: int = 30_000, max_deliveries: int = 3):
    from workers.queue import StreamQueue

    q = StreamQueue(client, stream, GROUP, consumer, lease_ms=lease_ms, max_deliveries=max_deliveries,
                    dead_stream=f"{stream}:dead")
    q.ensure_group()
    return q


def submit_run(cfg: BatchConfig, out: str | Path, redis_url: str | None = None,
               stream: str | None = None) -> dict[str, Any]:
    """Plan the run (or reuse its plan) and queue one task per unfinished shard."""
    import redis

    stream = stream or DEFAULT_STREAM
    rundir, _, run_hash, shards = prepare_run(cfg, out, resume=True)
    pending = [s for s in shards if not rundir.is_done(s, run_hash)]
    try:
        q = make_queue(redis_client(redis_url), stream, consumer="submitter")
        for shard in pending:
            q.add({"run_dir": str(rundir.root.resolve()), "shard": shard.key, "run_hash": run_hash})
    except redis.RedisError as exc:
        raise InputError(f"cannot queue shard tasks on Redis ({exc})", code="redis_unavailable") from exc
    return {"stream": stream, "queued": len(pending), "skipped": len(shards) - len(pending), "run_hash": run_hash}


def queue_status(redis_url: str | None = None, stream: str | None = None) -> dict[str, Any]:
    import redis

    stream = stream or DEFAULT_STREAM
    client = redis_client(redis_url)
    try:
        q = make_queue(client, stream, consumer="status")
        workers = sum(1 for _ in client.scan_iter(match=f"{stream}:worker:*", count=500))
        return {"stream": stream, "queued": q.depth(), "in_progress": q.pending_count(), "dead": q.dead_count(),
                "live_workers": workers}
    except redis.RedisError as exc:
        raise InputError(f"cannot read the queue on Redis ({exc})", code="redis_unavailable") from exc


@dataclass
class _RunCache:
    """One annotator + decode pool per run config, kept across tasks: loading a model once per shard
    would cost more than the shard."""

    workers: int | None = None
    key: str | None = None
    pipeline: Any = None

    def get(self, cfg: BatchConfig, run_hash: str):
        from sigma.batch.pipeline import Pipeline

        key = f"{run_hash}:{cfg.annotator}"
        if key != self.key:
            self.close()
            self.pipeline = Pipeline(cfg, workers=self.workers)
            self.key = key
        return self.pipeline

    def close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close()
        self.pipeline, self.key = None, None


@dataclass
class WorkerStats:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    dead: int = 0
    pairs: int = 0
    errors: list[str] = field(default_factory=list)


class PermanentTaskError(Exception):
    """A task no retry can fix (its run folder is gone or belongs to another run)."""


def process_task(fields: dict[str, str], cache: _RunCache) -> tuple[str, int, str | None]:
    """Run one shard task: ("done" | "skipped" | "failed", pairs, error)."""
    try:
        rundir = RunDir(fields["run_dir"])
        record = rundir.load()
    except (KeyError, SigmaError) as exc:
        raise PermanentTaskError(f"bad task {fields}: {getattr(exc, 'message', exc)}") from exc
    if record["run_hash"] != fields.get("run_hash"):
        raise PermanentTaskError(f"{fields['run_dir']} now holds run {record['run_hash']}, "
                                 f"not {fields.get('run_hash')}")
    shard = next((s for s in rundir.shards() if s.key == fields.get("shard")), None)
    if shard is None:
        raise PermanentTaskError(f"{fields['run_dir']}: no shard {fields.get('shard')!r} in the plan")
    run_hash = record["run_hash"]
    if rundir.is_done(shard, run_hash):
        return "skipped", 0, None
    cfg = BatchConfig.model_validate(record["config"])
    corpus = corpus_from_config(cfg)
    stats = cache.get(cfg, run_hash).run(corpus, [shard], rundir, run_hash)
    result = stats.shards[0] if stats.shards else None
    if result is None or result.status != "done":
        return "failed", stats.pairs, (result.error if result else "no result")
    return "done", stats.pairs, None


def run_batch_worker(redis_url: str | None = None, stream: str | None = None, consumer: str | None = None, *,
                     lease_ms: int = 30_000, max_deliveries: int = 3, block_ms: int = 1000,
                     reclaim_interval_ms: int = 2000, heartbeat_interval_ms: int = 2000,
                     heartbeat_ttl_ms: int = 10_000, workers: int | None = None,
                     stop: threading.Event | None = None, exit_when_idle: bool = False,
                     max_tasks: int | None = None) -> WorkerStats:
    """Consume shard tasks until `stop` is set (SIGTERM in the CLI), or the queue is empty with
    `exit_when_idle`. The shard in progress is always finished before returning."""
    from workers.queue import Heartbeat

    stream = stream or DEFAULT_STREAM
    consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
    stop = stop or threading.Event()
    client = redis_client(redis_url)
    q = make_queue(client, stream, consumer, lease_ms, max_deliveries)
    stats = WorkerStats()
    current: dict[str, str] = {}
    hb = Heartbeat(client, f"{stream}:worker:{consumer}", heartbeat_interval_ms, heartbeat_ttl_ms,
                   info=lambda: {"consumer": consumer, "mode": "batch", "done": stats.done, "failed": stats.failed,
                                 "shard": current.get("shard", "")}, queue=q)
    hb.start()
    cache = _RunCache(workers=workers)
    next_reclaim = 0.0
    handled = 0
    try:
        while not stop.is_set() and (max_tasks is None or handled < max_tasks):
            entries = []
            if time.monotonic() >= next_reclaim:
                live, exhausted = q.reclaim()
                for entry in exhausted:
                    q.dead_letter(entry, error=f"delivered {entry.deliveries} times without finishing")
                    stats.dead += 1
                entries = live[:1]
                next_reclaim = time.monotonic() + reclaim_interval_ms / 1000.0
            if not entries:
                entries = q.read(1, block_ms)
            if not entries:
                if exit_when_idle and q.depth() == 0 and q.pending_count() == 0:
                    break
                continue
            for entry in entries:
                handled += 1
                current.update(entry.fields)
                hb.track([entry.id])
                try:
                    outcome, pairs, error = process_task(entry.fields, cache)
                except PermanentTaskError as exc:
                    q.dead_letter(entry, error=str(exc))
                    stats.dead += 1
                    stats.errors.append(str(exc))
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. the corpus is briefly unreachable: retried via the lease
                    outcome, pairs, error = "failed", 0, f"{type(exc).__name__}: {exc}"
                finally:
                    hb.untrack([entry.id])
                    current.clear()
                stats.pairs += pairs
                if outcome in ("done", "skipped"):
                    q.ack([entry.id])
                    setattr(stats, outcome, getattr(stats, outcome) + 1)
                else:
                    stats.failed += 1
                    stats.errors.append(f"{entry.fields.get('shard')}: {error}")
                    log.warning("shard %s failed (delivery %d): %s", entry.fields.get("shard"), entry.deliveries,
                                error)
                    if entry.deliveries >= max_deliveries:
                        q.dead_letter(entry, error=error or "failed")
                        stats.dead += 1
                    # else: left pending; the lease runs out and a worker (maybe this one) retries it
    finally:
        hb.stop()
        cache.close()
    return stats


def run_batch_worker_from_serve_config(cfg, consumer: str | None = None, stream: str | None = None) -> int:
    """Entry point for `sigma worker --batch`: the service's Redis and queue settings, SIGTERM-aware."""
    import signal

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    stream = stream or f"{cfg.redis.key_prefix}:batch:tasks"
    print(f"sigma worker --batch: consuming {stream} on {cfg.redis.url}", flush=True)
    stats = run_batch_worker(cfg.redis.url, stream, consumer, lease_ms=cfg.queue.lease_ms,
                             max_deliveries=cfg.queue.max_deliveries, block_ms=cfg.queue.block_ms,
                             reclaim_interval_ms=cfg.queue.reclaim_interval_ms,
                             heartbeat_interval_ms=cfg.queue.heartbeat_interval_ms,
                             heartbeat_ttl_ms=cfg.queue.heartbeat_ttl_ms, stop=stop)
    print(f"sigma worker --batch: {stats.done} shard(s) done, {stats.skipped} already done, {stats.failed} failed, "
          f"{stats.dead} dead-lettered", flush=True)
    return 0

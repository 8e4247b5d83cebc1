"""`sigma worker --batch`: the fleet handler on the service's consumer loop, with the service's settings.

Reads `P:batch:tasks` (P = `redis.key_prefix`), the stream `sigma batch submit` and `POST /v1/batches` write,
so a non-default prefix reaches both sides through the one settings model.
"""
from __future__ import annotations

import logging
import threading

from sigma.service.fleet import run_batch_worker
from sigma.service.keys import Keys
from sigma.service.settings import ServeConfig
from sigma.workers.worker import install_stop_signals


def run_batch_worker_from_serve_config(cfg: ServeConfig, consumer: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    install_stop_signals(stop)
    stream = Keys(cfg.redis.key_prefix).batch_tasks()
    print(f"sigma worker --batch: consuming {stream} on {cfg.redis.url}", flush=True)
    stats = run_batch_worker(cfg.redis, consumer=consumer, queue=cfg.queue, stop=stop)
    print(f"sigma worker --batch: {stats.done} shard(s) done, {stats.skipped} already done, {stats.failed} failed, "
          f"{stats.dead} dead-lettered", flush=True)
    return 0

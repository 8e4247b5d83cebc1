"""`sigma worker --batch`: the fleet handler on the service's consumer loop, with the service's settings.

Reads `P:batch:tasks` (P = `redis.key_prefix`), the stream `sigma batch submit` and `POST /v1/batches` write,
so a non-default prefix reaches both sides through the one settings model.
"""
from __future__ import annotations

import logging
import threading

from sigma.registry import import_plugins
from sigma.service.connections import display_url
from sigma.service.consumer import default_consumer
from sigma.service.fleet import check_batch_timeout, run_batch_worker
from sigma.service.keys import Keys
from sigma.service.queue import Entry
from sigma.service.settings import ServeConfig
from sigma.workers.lifecycle import (
    Interrupted,
    StopSignals,
    exit_status,
    forget_worker_key,
    recycle_past_max_rss,
    report_unreachable_redis,
)


def run_batch_worker_from_serve_config(cfg: ServeConfig, consumer: str | None = None) -> int:
    """`worker.plugins` (and `--plugin`) are imported first, so a run may name a third-party annotator. The
    consumer is `consumer` (--consumer), else `worker.consumer`, else <host>-<pid>: worker.consumer was ignored.
    Past `worker.max_rss_mb` once a shard is stored and acknowledged, it stops (status 75, `RECYCLE_EXIT_STATUS`)
    for its supervisor to start a fresh process, as `sigma worker` does after a batch: a slow leak over hours of
    shards is recycled between shards, not ended by the OOM killer mid-shard. A `worker.batch_timeout_s` not above
    `worker.run_read_retry_s` + `$SIGMA_MODEL_LOCK_WAIT_S` is refused (`check_batch_timeout`): it killed a worker
    waiting for a model folder."""
    # before Redis: a watchdog that would kill a deferral
    check_batch_timeout(cfg.worker.batch_timeout_s, cfg.worker.run_read_retry_s)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import_plugins(cfg.worker.plugins, "worker.plugins")
    stop = threading.Event()
    consumer = consumer or cfg.worker.consumer or default_consumer()   # as `sigma worker` names itself
    stream = Keys(cfg.redis.key_prefix).batch_tasks()

    def say_stopped(reason: str) -> None:
        print(f"sigma worker --batch: stopped ({reason})", flush=True)

    signals = StopSignals(stop, say_stopped).install()
    # said once a SIGTERM stops it cleanly: said before, a supervisor (a test) that stopped it on this line could kill
    # it in between (status -15, not 0: test_cli_flags' shared-settings test under load)
    print(f"sigma worker --batch: consuming {stream} on {display_url(cfg.redis.url)}", flush=True)
    signals.at_hard_exit(forget_worker_key(cfg.redis, Keys(cfg.redis.key_prefix).batch_worker(consumer)))

    def on_stuck(entries: list[Entry], seconds: float) -> None:
        """A shard hung (its task now says `worker_hung`): end for the supervisor, as `sigma worker` does."""
        signals.hard_exit(f"a shard hung for {seconds:.0f} s (worker.batch_timeout_s); exiting with status 1", 1)

    recycler = recycle_past_max_rss(cfg.worker.max_rss_mb, stop, f"batch worker {consumer}", "a shard")
    try:
        with signals.abrupt_while("checking Redis"):
            report_unreachable_redis(cfg.redis, "sigma worker --batch")
        stats = run_batch_worker(cfg.redis, consumer=consumer, queue=cfg.queue, stop=stop,
                                 run_read_retry_s=cfg.worker.run_read_retry_s,
                                 batch_timeout_s=cfg.worker.batch_timeout_s, on_stuck=on_stuck,
                                 max_defer_s=cfg.worker.max_defer_s, after_task=recycler)
    except Interrupted as exc:
        say_stopped(str(exc))
        signals.end(0)
        return 0
    print(f"sigma worker --batch: {stats.done} shard(s) done, {stats.skipped} already done, {stats.failed} failed, "
          f"{stats.dead} dead-lettered", flush=True)
    code = exit_status(recycler, signals)
    signals.end(code)
    return code

"""`sigma worker`: one long-lived annotation worker — the annotation handler on the service's consumer loop.

Loads the annotator once, then consumes its stream in micro-batches (`sigma.service.consumer`): reclaim
entries idle past the lease, dead-letter those delivered `max_deliveries` times, read up to
`max_batch_size` entries, annotate, store each result and only then acknowledge. Redis outages, stalls
and `maxmemory` refusals are waited out (backoff with jitter, results kept until stored), at start-up too
(after one line on stderr naming the URL), and so is a model folder a stopped saver holds (`weights_busy`: a
line per try). SIGTERM/SIGINT: exit 0 — at once while loading or waiting,
after finishing, storing and acknowledging the batch in hand otherwise, at once on a second signal
(`lifecycle.py`). Past `worker.max_rss_mb` after a batch: exit 75 (`RECYCLE_EXIT_STATUS`), to be started afresh.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sigma.service.annotation import AnnotationHandler
from sigma.service.connections import sync_client
from sigma.service.consumer import Consumer, default_consumer
from sigma.service.keys import Keys
from sigma.service.predictor import Predictor
from sigma.service.queue import Entry, StreamQueue
from sigma.service.settings import ServeConfig
from sigma.workers.lifecycle import (
    Interrupted,
    StopSignals,
    exit_status,
    forget_worker_key,
    load_waiting_out_transient_faults,
    quietly,
    recycle_past_max_rss,
    report_unreachable_redis,
)

log = logging.getLogger("sigma.worker")


def build_worker(cfg: ServeConfig, predictor: Predictor | None = None, consumer: str | None = None,
                 stop: threading.Event | None = None) -> Consumer:
    """The annotation handler of `cfg.worker.annotator` on a consumer of its stream."""
    name = consumer or cfg.worker.consumer or default_consumer()
    annotator = cfg.worker.annotator
    predictor = predictor or Predictor(annotator, cfg.worker.options, cfg.limits.io_config(cfg.api.align),
                                       cfg.worker.plugins, decode_pool_retry_s=cfg.worker.decode_pool_retry_s)
    keys = Keys(cfg.redis.key_prefix)
    client = sync_client(cfg.redis, block_ms=cfg.queue.block_ms)
    q = cfg.queue
    queue = StreamQueue(client, keys.stream(annotator), q.group, name, lease_ms=q.lease_ms,
                        max_deliveries=q.max_deliveries, dead_stream=keys.dead(annotator),
                        dead_maxlen=q.dead_letter_maxlen)
    handler = AnnotationHandler(client, keys, annotator, predictor, consumer=name, result_ttl_s=q.result_ttl_s,
                                batch_size=cfg.worker.max_batch_size, max_wait_ms=cfg.worker.max_wait_ms,
                                max_deliveries=q.max_deliveries)
    return Consumer(client, queue, handler, q, heartbeat_key=keys.worker(name),
                    heartbeat_registry=keys.worker_registry(), stop=stop,
                    describe=f"worker {name} ({annotator})", handle_timeout_s=cfg.worker.batch_timeout_s or None)


@contextmanager
def beating_while_loading(worker: Consumer) -> Iterator[None]:
    """The worker's heartbeat from before its model loads (`state: loading`, `model_loaded: 0`, the tries refused
    in `load_retries` and `load_error`), so that /readyz and /metrics see a worker loading, or waiting out memory,
    threads or a busy model folder for up to `worker.load_retry_s`, rather than no worker: it beat only once
    loaded. The consumer loop goes on with the same heartbeat. A load that fails for good deletes it (the process
    ends); a heartbeat thread the machine refused is said and left to the consumer loop to start. Meanwhile the
    worker holds no job (`Heartbeat.holds_no_work`): beats that fail past the TTL (a reply redis-py cannot parse, a
    MemoryError under the limit the load is waiting out) are said and tried again, instead of ending the worker with
    `heartbeat_failed` and cutting `worker.load_retry_s` short; the TTL counts from the end of the load."""
    worker.heartbeat.holds_no_work = True
    try:
        worker.heartbeat.start()
    except RuntimeError as exc:       # a thread refused (out of threads): the load's own retries come first
        log.warning("%s: no heartbeat while loading (%s); it starts with the consumer loop", worker.describe, exc)
    try:
        yield
    except BaseException:
        worker.heartbeat.stop()
        raise
    finally:
        worker.heartbeat.holds_no_work = False


def run_worker(cfg: ServeConfig, consumer: str | None = None) -> int:
    """Runs until stopped, then ends the process (`StopSignals.end`: status 0, or 75 when it recycled itself past
    `worker.max_rss_mb`); errors before the loop (a plugin that cannot be imported, an annotator that cannot be
    built) are raised for the CLI to say, but for a model folder a stopped saver holds (`weights_busy`) and memory or
    threads the machine refused the load (for up to `worker.load_retry_s`): said, and loaded again
    (`load_waiting_out_transient_faults`), as a Redis not up yet is waited for."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    worker = build_worker(cfg, consumer=consumer, stop=stop)
    handler: AnnotationHandler = worker.handler  # type: ignore[assignment]

    def say_stopped(reason: str) -> None:
        log.info("%s: stopped (%s)", worker.describe, reason)

    signals = StopSignals(stop, say_stopped).install()
    signals.at_hard_exit(worker.heartbeat.halt)     # beating from before the load: no beat after the delete
    signals.at_hard_exit(forget_worker_key(cfg.redis, worker.heartbeat.key))

    def on_stuck(entries: list[Entry], seconds: float) -> None:
        """A batch hung: say so in each job (its dead-letter record will), then end for the supervisor."""
        error = {"code": "worker_hung", "message": f"the worker had no result after {seconds:.0f} s "
                 f"(worker.batch_timeout_s={cfg.worker.batch_timeout_s:.15g}) and exited to be restarted"}
        for entry in entries:
            quietly(handler.on_retry, entry, error)
        signals.hard_exit(f"a batch hung for {seconds:.0f} s (worker.batch_timeout_s); exiting with status 1", 1)
    worker.on_stuck = on_stuck

    recycler = recycle_past_max_rss(cfg.worker.max_rss_mb, stop, worker.describe)
    worker.after_batch = recycler
    try:
        with signals.abrupt_while("checking Redis"):
            report_unreachable_redis(cfg.redis, "sigma worker")
        log.info("%s: loading the annotator", worker.describe)
        with signals.abrupt_while("loading the model"), beating_while_loading(worker):
            load_waiting_out_transient_faults(handler.predictor.setup, "sigma worker", stop, cfg.worker.load_retry_s,
                                              refused=handler.load_refused)
        log.info("%s: loaded in %.0f ms, consuming %s", worker.describe, handler.predictor.setup_ms or 0,
                 worker.queue.stream)
        counts = worker.run()
    except Interrupted as exc:
        say_stopped(str(exc))
        signals.end(0)
        return 0
    log.info("%s: stopped after %s %s", worker.describe, counts.as_dict(), handler.counts)
    code = exit_status(recycler, signals)
    signals.end(code)
    return code

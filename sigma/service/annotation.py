"""The annotation handler: what `sigma worker` does with a batch of queued jobs.

Per batch: load the jobs and their images (one pipeline), mark them running, run the predictor once
for the whole batch, and hand each job's outcome to the consumer, which stores it (`FINISH`, at most
once per job) and only then acknowledges the entry. A bad input fails its job at once (retrying cannot
help); a model exception is retried by redelivery up to `max_deliveries`, after the batch was retried
one pair at a time so that one poisonous pair does not fail its neighbours. A job whose images the worker had no
memory to decode (`out_of_memory`: the machine's shortage, not the upload's) is retried once the same way, then
failed (`OUT_OF_MEMORY_DELIVERIES`).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import traceback
from functools import partial
from typing import Any

import redis

from sigma.errors import memory_refusal, threads_refused
from sigma.service.consumer import Outcome
from sigma.service.jobs import JobStore
from sigma.service.keys import Keys
from sigma.service.predictor import Predictor
from sigma.service.queue import Entry

log = logging.getLogger("sigma.worker")

# A job whose images the worker had no memory to decode is redelivered (after `queue.lease_ms`, its error noted) until
# it has been delivered this many times, then failed `out_of_memory`: a shortage that passes (another job's decode,
# a neighbour's peak) no longer fails a good upload for good, and a pair too large for the worker's memory is failed
# on its second try instead of going round until `queue.max_deliveries` dead-letters it.
OUT_OF_MEMORY_DELIVERIES = 2


def gpu_memory_bytes() -> int | None:
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return int(torch.cuda.memory_allocated())
    except Exception:  # noqa: BLE001 - a probe, never fatal
        return None
    return None


def rss_mb() -> float | None:
    """This process' resident memory in MiB (Linux /proc/self/statm), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def run_isolated(fn, items: list[Any]) -> list[Any]:
    """`fn(items)`, and when it raises on a batch, `fn([item])` for each item: one exception per bad item,
    results for the rest. The one "retry the batch one at a time" path of every worker. A SystemExit from the model
    (a plugin, or a library it calls, giving up with sys.exit()) is that item's failure too: it ended the worker,
    and the jobs read with the bad one spent a delivery each time, until all were dead-lettered as worker_lost."""
    try:
        return list(fn(items))
    except (Exception, SystemExit):  # noqa: BLE001 - isolate the item that fails, keep the others
        if len(items) == 1:
            return [_as_exception(sys.exc_info()[1])]
    out: list[Any] = []
    for item in items:
        try:
            out.append(fn([item])[0])
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            out.append(_as_exception(exc))
    return out


def _as_exception(exc: BaseException | None) -> Exception:
    if isinstance(exc, Exception):
        return exc
    return RuntimeError(f"the model called sys.exit({getattr(exc, 'code', None)!r})")


def error_record(exc: BaseException) -> dict[str, Any]:
    """A model exception as the job's retried error: `model_error`, or the SigmaError's code; a thread the machine
    would not start for the model (`threads_refused`) is `out_of_threads`, and memory it would not give the model
    (`memory_refused`: a MemoryError, numpy's `Unable to allocate`, ENOMEM) `out_of_memory`: the machine's fault,
    not the model's (it was `model_error`, in the job's `last_error` and its dead letter)."""
    if threads_refused(exc):
        code = "out_of_threads"
    elif memory_refusal(exc):     # also a native library's own error saying so (torch's `can't allocate memory`)
        code = "out_of_memory"
    else:
        code = getattr(exc, "code", "model_error")
    return {"code": code, "message": f"{type(exc).__name__}: {exc}"[:2000],
            "trace": "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]}


class AnnotationHandler:
    """Jobs of one annotator stream → results in their job records."""

    def __init__(self, client: redis.Redis, keys: Keys, annotator: str, predictor: Predictor, *, consumer: str,
                 result_ttl_s: int, batch_size: int, max_wait_ms: int, max_deliveries: int = OUT_OF_MEMORY_DELIVERIES):
        self.r = client
        self.keys = keys
        self.annotator = annotator
        self.predictor = predictor
        self.consumer = consumer
        self.jobs = JobStore(client, keys, result_ttl_s)
        self.batch_size = batch_size
        self.max_wait_ms = max_wait_ms
        # past `queue.max_deliveries` a retry is a dead letter: the last delivery fails the job out_of_memory instead
        self.out_of_memory_deliveries = min(OUT_OF_MEMORY_DELIVERIES, max_deliveries)
        self.started_at = time.time()
        self.counts = {"jobs_done": 0, "jobs_failed": 0, "duplicates": 0}
        # the model's load, as the heartbeat shows it while it is tried again (`sigma.workers.lifecycle`): the tries
        # refused so far and the last refusal's code (weights_busy, out_of_memory, out_of_threads)
        self.load_retries = 0
        self.load_error = ""

    def load_refused(self, code: str) -> None:
        """A load of the model refused for a reason that passes (`load_waiting_out_transient_faults`): counted, for
        the heartbeat's `load_retries` and `load_error`."""
        self.load_retries += 1
        self.load_error = code

    def info(self) -> dict[str, Any]:
        loaded = self.predictor.annotator is not None
        # `state`: "loading" while the model is loaded (and tried again), "ready" once it is; a worker beats from
        # before its load, so /readyz and /metrics see it loading (or refused memory, threads, its folder) rather
        # than no worker at all. Readers take a hash without `state` (an earlier release: it beat once loaded) as ready
        info: dict[str, Any] = {"consumer": self.consumer, "host": socket.gethostname(), "pid": os.getpid(),
                                "annotator": self.annotator, "config_hash": self.predictor.config_hash,
                                "model_loaded": int(loaded), "state": "ready" if loaded else "loading",
                                "load_retries": self.load_retries, "load_error": self.load_error,
                                "started_at": f"{self.started_at:.3f}", **self.counts}
        if loaded:      # the decode pool's state: 1 while it is given up (threads refused), and how often
            info.update(decode_threads=self.predictor.decoding_threads,
                        decode_pool_refusals=self.predictor.decode_pool_refusals)
        mem = gpu_memory_bytes() if loaded else None     # not into a torch the main thread may be importing
        if mem is not None:
            info["gpu_memory_bytes"] = mem
        rss = rss_mb()
        if rss is not None:
            info["rss_mb"] = round(rss, 1)
        return info

    def _finish(self, job_id: str, status: str, result: dict | None = None, error: dict | None = None) -> None:
        self.jobs.finish(job_id, status, self.consumer, result=result, error=error)
        self.counts["jobs_done" if status == "done" else "jobs_failed"] += 1

    def handle(self, entries: list[Entry]) -> list[Outcome]:
        job_ids = [e.fields.get("job", "") for e in entries]
        loaded = self.jobs.load(job_ids)
        outcomes: list[Outcome] = []
        work: list[tuple[Entry, dict[str, Any]]] = []
        for entry, job_id, (h, original, edited) in zip(entries, job_ids, loaded, strict=True):
            status = self.jobs.start(job_id, self.consumer, entry.deliveries) if h else None
            if status is None or status in ("done", "failed", "cancelled"):
                if status == "done":
                    self.counts["duplicates"] += 1
                outcomes.append(Outcome(entry, "ack"))          # expired, cancelled or already finished
                continue
            if original is None or edited is None:
                error = {"code": "job_expired", "message": "the job's images expired before a worker reached it "
                         "(queue.job_ttl_s)"}
                outcomes.append(Outcome(entry, "ack", store=partial(self._finish, job_id, "failed", error=error)))
                continue
            item = {"id": job_id, "original": original, "edited": edited,
                    "instruction": json.loads(h.get("instruction") or "null"),
                    "threshold": json.loads(h.get("threshold") or "null"),
                    "mask_mode": json.loads(h.get("mask_mode") or "null"),
                    "outputs": json.loads(h.get("outputs") or '["rle"]')}
            work.append((entry, item))
        if not work:
            return outcomes
        start = time.perf_counter()
        results = run_isolated(self.predictor, [item for _, item in work])
        seconds = time.perf_counter() - start
        for (entry, item), res in zip(work, results, strict=True):
            if isinstance(res, Exception):
                error = error_record(res)
                log.warning("job %s failed on delivery %d: %s", item["id"], entry.deliveries, error["message"])
                outcomes.append(Outcome(entry, "retry", error=error))
            elif not res["ok"] and res["error"].get("code") == "out_of_memory" \
                    and entry.deliveries < self.out_of_memory_deliveries:
                log.warning("job %s: no memory to decode its images on delivery %d; left for redelivery: %s",
                            item["id"], entry.deliveries, res["error"].get("message"))
                outcomes.append(Outcome(entry, "retry", error=res["error"]))
            elif res["ok"]:
                outcomes.append(Outcome(entry, "ack", store=partial(self._finish, item["id"], "done",
                                                                    result=res["result"])))
            else:
                outcomes.append(Outcome(entry, "ack", store=partial(self._finish, item["id"], "failed",
                                                                    error=res["error"])))
        try:   # metrics are best effort: never worth holding results back for
            self.jobs.record_batch(self.annotator, len(work), seconds)
        except redis.RedisError as exc:
            log.debug("batch metrics not recorded: %s", exc)
        return outcomes

    def on_retry(self, entry: Entry, error: dict[str, Any]) -> None:
        self.jobs.note_error(entry.fields.get("job", ""), error)

    def on_dead(self, entry: Entry, last_error: dict[str, Any] | None) -> dict[str, Any]:
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
            self._finish(job_id, "failed", error=error)
        return last_error


"""Fleet mode: shard tasks on a Redis stream, consumed by `sigma worker --batch` on every GPU machine.

Delivery follows the service's rules (the fleet handler runs on the one consumer loop, `consumer.py`):
at-least-once, a lease extended by the heartbeat while a shard is worked on, XAUTOCLAIM of entries whose worker
died, dead-letter after `max_deliveries`. Running a shard twice is safe: its output is a pure function of (input,
shard, run hash), published by atomic rename, and a finished shard is skipped. The run folder (and the corpus)
must be on storage every worker sees; Redis carries only {run_dir, shard, run_hash}.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import RedisError

from sigma.batch.config import BatchConfig
from sigma.batch.layout import DEAD_READ, TASK_READ, RunDir
from sigma.batch.record import check_options, check_record, corpus_problem, record_version, recorded_config
from sigma.batch.runner import corpus_from_config, prepare_run, with_default_annotator
from sigma.errors import ConfigError, InputError, SigmaError, WeightsBusyError, first_line, threads_refused
from sigma.folderlock import LockWait
from sigma.io.corpora import CORPUS_READERS
from sigma.io.corpora.base import Shard, resolved_under
from sigma.io.images import shown_path
from sigma.registry import ANNOTATORS, check_annotator_files, import_plugins, list_annotators
from sigma.service.annotation import rss_mb
from sigma.service.connections import display_url, sync_client
from sigma.service.consumer import Backoff, Consumer, Outcome, default_consumer, is_out_of_memory
from sigma.service.deferral import (
    MAX_DEFER_S,
    Deferral,
    deferred_summary,
    forget_deferral,
    note_deferral,
    refused_by_text,
)
from sigma.service.heartbeats import live_heartbeat_keys
from sigma.service.keys import Keys
from sigma.service.queue import Entry, StreamQueue, stream_text
from sigma.service.settings import QueueSettings, RedisSettings
from sigma.text import cut_long_values, loads, shown

log = logging.getLogger("sigma.batch.fleet")

GROUP = "sigma-batch"


def make_queue(client, keys: Keys, consumer: str, lease_ms: int = 30_000, max_deliveries: int = 3) -> StreamQueue:
    q = StreamQueue(client, keys.batch_tasks(), GROUP, consumer, lease_ms=lease_ms, max_deliveries=max_deliveries,
                    dead_stream=keys.batch_dead())
    q.ensure_group()
    return q


@contextmanager
def _client(settings: RedisSettings, client: Any = None) -> Iterator[Any]:
    """The caller's client (a long-lived process keeps one: the API, so a status poll is not a TCP connect
    each time), else one made for this call and closed after it."""
    if client is not None:
        yield client
        return
    own = sync_client(settings)
    try:
        yield own
    finally:
        own.close()


def submit_run(cfg: BatchConfig, out: str | Path, redis: RedisSettings | str | None = None,
               key_prefix: str | None = None, client: Any = None, max_shards: int | None = None,
               max_tasks: int | None = None, out_name: str = "--out",
               lock_wait: LockWait | None = None) -> dict[str, Any]:
    """Plan the run (or reuse its plan) and queue one task per unfinished shard on `P:batch:tasks`. `max_shards`:
    a new plan of more shards is refused (too_many_shards), before anything is written or queued. `max_tasks`:
    the stream (every run's tasks, waiting or in progress) may not grow past it (queue_full), checked before
    anything is queued and again, atomically, by each chunk. `out_name`: what the caller calls the output folder,
    in a refusal that tells them to choose another (`sigma batch submit`'s --out; the API's request field).
    `lock_wait`: how long a new run's folder waits for its commit lock (`RunDir.locked`): the API's own short
    bound, so that a request is answered `folder_busy` in seconds, not after `$SIGMA_FOLDER_LOCK_WAIT_S`."""
    import redis as redis_lib

    # the options' files first, before the folder is taken or planned: a missing weights file was queued and found
    # only by the workers, every shard dead-lettered (`check_annotator_files`; the workers still check their own)
    named = with_default_annotator(cfg)
    check_annotator_files(named.annotator, named.options)
    settings = redis_settings(redis, key_prefix)
    keys = Keys(settings.key_prefix)
    # Planning a new run writes run.json: the folder is held exclusively (not while a local run holds it). A run
    # already planned is only read, so the folder is shared as the fleet workers share it: the run can be submitted
    # again (a dead-lettered shard, tasks Redis lost) while workers finish its other shards, which an exclusive
    # hold refused (run_locked) for as long as any worker held a shard. A local run still excludes it.
    planned = RunDir(out).exists()
    with RunDir(out).locked(exclusive=not planned, other=out_name, lock_wait=lock_wait):
        rundir, _, run_hash, shards, record = prepare_run(cfg, out, resume=True, sweep=not planned,
                                                          max_shards=max_shards, out_name=out_name)
        _check_plugins(rundir, cfg, record)
    pending = [s for s in shards if not rundir.is_done(s, run_hash, verify=True)]
    run_dir = str(rundir.root.resolve())
    to_queue: list[Shard] = []
    queued = 0
    try:
        with _client(settings, client) as conn:
            q = make_queue(conn, keys, consumer="submitter")
            # a shard whose task is still on the stream (queued, or held by a worker) is not queued again: a
            # submission sent twice (a client retrying a slow POST /v1/batches) queued every shard twice, and two
            # workers could compute one shard side by side. The stream (every run's tasks) is read newest first and
            # no further once every pending shard has its task: it was read whole on every submission, a finished
            # run's or a retry's too
            with_task = _pending_with_task(conn, keys.batch_tasks(), run_dir, run_hash, pending)
            to_queue = [s for s in pending if s.key not in with_task]
            if max_tasks is not None and to_queue and conn.xlen(keys.batch_tasks()) + len(to_queue) > max_tasks:
                raise _queue_full(len(to_queue), max_tasks, 0)
            plugins = json.dumps(cfg.plugins)
            for start in range(0, len(to_queue), SUBMIT_CHUNK):
                chunk = to_queue[start:start + SUBMIT_CHUNK]
                # a confined run's root rides in the task (Redis), not only in run.json (the shared disk): a
                # run.json edited to drop it cannot lift the confinement (`process_task`); so do the modules the
                # run imports (outside the run hash): a run.json edited to name others cannot make workers import
                # them
                confined = {"root": cfg.input.root} if cfg.input.root else {}
                tasks = [{"run_dir": run_dir, "shard": s.key, "run_hash": run_hash, "plugins": plugins, **confined}
                         for s in chunk]
                if not _add_tasks(conn, q, keys, tasks, max_tasks or 0):
                    raise _queue_full(len(to_queue), max_tasks or 0, queued)   # filled by another submission
                queued += len(chunk)
    except redis_lib.RedisError as exc:
        partial = ""
        if to_queue:
            # the chunks sent are on the stream whole (one script each), the rest not at all; a second submission
            # queues only the shards with no task, so it finishes the job without doubling any
            in_flight = min(SUBMIT_CHUNK, len(to_queue) - queued)
            partial = (f"; {queued} of {len(to_queue)} shard task(s) were queued before it failed (the {in_flight} "
                       "in flight may be too, once Redis answers): submit the run again to queue the rest (a shard "
                       "with a task is not queued twice)")
        raise InputError(f"cannot queue shard tasks on Redis at {display_url(settings.url)} ({exc}){partial}",
                         code="redis_unavailable") from exc
    return {"stream": keys.batch_tasks(), "queued": len(to_queue), "skipped": len(shards) - len(pending),
            "already_queued": len(pending) - len(to_queue), "run_hash": run_hash}


def _each_once(plugins: Any) -> Any:
    """A list of module names each once (as a config now holds it, `sigma.config.schema.Modules`): a run.json or a
    task written before lists were made so may name one twice, and is the same list. Anything else as it is."""
    if isinstance(plugins, list) and all(isinstance(module, str) for module in plugins):
        return list(dict.fromkeys(plugins))
    return plugins


def _check_plugins(rundir: RunDir, cfg: BatchConfig, record: dict[str, Any]) -> None:
    """The tasks carry this submission's plugins and the workers refuse a run.json that names others
    (`_trusted_config`): such a run is refused here, before anything is queued to be dead-lettered. Plugins are
    outside the run hash (a module name is not what the masks depend on), so this is their one check. `record`:
    the run record `prepare_run` read and checked (read again, it was one more parse of up to ~15 MB)."""
    recorded = (record.get("config") or {}).get("plugins", [])
    if _each_once(recorded) != cfg.plugins:
        raise InputError(f"{rundir.run_file}: its plugins {shown(recorded)} are not this submission's "
                         f"{shown(cfg.plugins)}; the workers import the submission's and refuse a run.json that names "
                         "others. Submit with the same --plugin, or, if run.json was edited, restore it",
                         code="run_modified")


# Shard tasks per round trip to Redis when a run is submitted: one script call adds a chunk (one XADD per task,
# a round trip each before: 50,000 shards were 50,000 round trips, minutes over a WAN, and a failure half way left
# an unknown number queued). A chunk of 1000 keeps Redis busy ~1 ms, so other clients do not wait behind it.
SUBMIT_CHUNK = 1000
# how long a chunk's token is kept: longer than any client retry of that one call
CHUNK_TOKEN_TTL_S = 3600

ADD_TASKS = """
-- KEYS: stream, the chunk's token; ARGV: token ttl, stream limit (0: none), values per task, then each task's
-- field/value pairs in turn. Atomic: a chunk is on the stream whole or not at all, and only when the stream then
-- holds no more than the limit (else false). The token makes it idempotent: the same call sent again (redis-py
-- retries once when a reply is lost: a timeout, a dropped connection) finds it set and adds nothing.
local per = tonumber(ARGV[3])
local n = (#ARGV - 3) / per
local limit = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if limit > 0 and redis.call('XLEN', KEYS[1]) + n > limit then return false end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
for i = 4, #ARGV, per do
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i, i + per - 1))
end
return n
"""


def _add_tasks(conn: Any, q: StreamQueue, keys: Keys, tasks: list[dict[str, str]], limit: int = 0) -> bool:
    """One round trip: `tasks` (each with the same fields, in the same order) appended to the stream at once;
    False (nothing added) when the stream would then hold more than `limit` entries (0: no limit)."""
    flat: list[str] = []
    for task in tasks:
        for name, value in task.items():
            flat += [name, value]
    token = keys.batch_submit_token(uuid.uuid4().hex)
    added = conn.register_script(ADD_TASKS)(keys=[q.stream, token],
                                            args=[CHUNK_TOKEN_TTL_S, limit, 2 * len(tasks[0]), *flat])
    return added is not None


def _queue_full(wanted: int, limit: int, queued: int) -> InputError:
    partial = (f"; {queued} of them were queued before the stream filled up: submit the run again later to "
               "queue the rest") if queued else "; nothing was queued"
    return InputError(f"the batch queue is full: {wanted} shard task(s) would take it past its limit of {limit} "
                      f"(api.max_batch_tasks, every run's tasks waiting or in progress){partial}", code="queue_full")


# entries per round trip when a run's status reads the dead letters (`DEAD_READ`) or the task stream (`TASK_READ`)
DEAD_PAGE = 500
TASK_PAGE = 1000


def queue_status(redis: RedisSettings | str | None = None, key_prefix: str | None = None,
                 client: Any = None, run: RunDir | None = None, dead_letters: dict[str, str] | None = None,
                 dead_limit: int = DEAD_READ, task_limit: int = TASK_READ,
                 record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fleet queue (it serves every run); with `run`, also that run's own tasks on it (`run_tasks`, queued or
    in progress) and `unqueued`: its pending shards that no task will ever run — Redis lost them (restarted
    without its data, FLUSHALL, a failover to an empty replica) — so the run would stay "pending" for ever with
    idle workers; submitting the run again queues them. The run's tasks are looked for among the newest `task_limit`
    entries of the task stream, and no further once every pending shard has its task (`tasks_read`; `tasks_read_all`
    false when it stopped short with shards not found): such a shard may have its task further on, so it is counted
    `unchecked`, neither `unqueued` nor looked for among the dead letters. `deferred`: its tasks handed back because
    another process holds the run folder (with `deferred_s`, the longest any has been, `deferred_idle_s`, the longest
    with no shard written there, and `deferred_reason`, who holds it). `dead_lettered`: its pending shards with no task
    whose task is in the dead-letter stream (a worker gave up on it before it could write the shard's status: it
    could not read or trust run.json), found among the newest `dead_limit` dead letters (`dead_read`; `dead_read_all`
    false when the stream holds more); `dead_letters`, when given, is filled with each one's reason (shard key ->
    "dead-lettered after N deliveries: [code] message", as a status file a worker writes says it) for the run's
    summary to count the shard failed (`RunDir.summary(dead_letters=...)`), so it is not `unqueued` either.
    `record`: the run record the caller already read and checked (`verified_record`), not parsed again."""
    import redis as redis_lib

    settings = redis_settings(redis, key_prefix)
    keys = Keys(settings.key_prefix)
    pending = run.pending_keys(record) if run is not None else None
    try:
        with _client(settings, client) as conn:
            q = make_queue(conn, keys, consumer="status")
            workers = len(live_heartbeat_keys(conn, keys.batch_worker_registry(), keys.batch_worker_pattern()))
            status = {"stream": keys.batch_tasks(), "queued": q.depth(), "in_progress": q.pending_count(),
                      "dead": q.dead_count(), "live_workers": workers}
            if run is not None and pending is not None:
                run_dir, run_hash = str(run.root.resolve()), pending[0]
                tasks, tasks_read = _find_run_tasks(conn, keys.batch_tasks(), run_dir, run_hash, set(pending[1]),
                                                    task_limit)
                with_task = set(tasks.values())
                missing = {key for key in pending[1] if key not in with_task}
                tasks_read_all = tasks_read.complete or tasks_read.read >= status["queued"]   # XLEN
                # not found among the entries read, and the rest unread: it may have its task there
                waiting = missing if tasks_read_all else set()
                letters, dead_read = _run_dead_letters(conn, keys.batch_dead(), run_dir, run_hash, waiting,
                                                       dead_limit)
                status["run_tasks"] = len(tasks)
                status["unqueued"] = len(waiting) - len(letters)
                status["unchecked"] = len(missing) - len(waiting)
                status["tasks_read"] = tasks_read.read
                status["tasks_read_all"] = tasks_read_all
                status["dead_lettered"] = len(letters)
                status["dead_read"] = dead_read.read
                status["dead_read_all"] = dead_read.complete or dead_read.read >= status["dead"]
                if dead_letters is not None:
                    dead_letters.update(letters)
                status.update(deferred_summary(conn, keys, tasks))
            return status
    except redis_lib.RedisError as exc:
        raise InputError(f"cannot read the queue on Redis at {display_url(settings.url)} ({exc})",
                         code="redis_unavailable") from exc


@dataclass
class _NewestFirst:
    """A stream read newest first, a page per round trip, at most `limit` entries (None: all): the one bounded
    walk a run's status makes of the task stream and of the dead letters, both shared by every run. `read`: entries
    read so far; `complete`: the reader needs no more (`done()`) or the stream has none left."""

    conn: Any
    stream: str
    limit: int | None
    page: int
    read: int = 0
    complete: bool = False

    def entries(self, done: Callable[[], bool]) -> Iterator[tuple[str, dict[str, str]]]:
        """Each entry (id, fields), until `done()` (asked before each page) or the limit."""
        end = "+"
        while self.limit is None or self.read < self.limit:
            if done():
                self.complete = True
                return
            count = self.page if self.limit is None else min(self.page, self.limit - self.read)
            page = self.conn.xrevrange(self.stream, max=end, min="-", count=count)
            self.read += len(page)
            for entry_id, data in page:
                yield stream_text(entry_id), {stream_text(k): stream_text(v) for k, v in data.items()}
            if len(page) < count:
                self.complete = True
                return
            end = "(" + stream_text(page[-1][0])                  # exclusive end (Redis >= 6.2)
        self.complete = done()


def _pending_with_task(conn: Any, stream: str, run_dir: str, run_hash: str, pending: list[Shard]) -> set[str]:
    """The keys of the `pending` shards that have a task on the stream; nothing read when none is pending."""
    if not pending:
        return set()
    wanted = {s.key for s in pending}
    tasks, _ = _find_run_tasks(conn, stream, run_dir, run_hash, wanted, None)
    return wanted & set(tasks.values())


def _run_task_ids(conn: Any, stream: str, run_dir: str, run_hash: str, page: int = TASK_PAGE) -> dict[str, str]:
    """This run's tasks on the stream: entry id -> the shard key it names, all of them (the whole stream read; a
    submission reads only as far as its pending shards need, `_pending_with_task`). Acknowledged tasks are deleted,
    so the stream holds only work not finished yet: queued, or held by a worker."""
    return _find_run_tasks(conn, stream, run_dir, run_hash, None, None, page)[0]


def _find_run_tasks(conn: Any, stream: str, run_dir: str, run_hash: str, wanted: set[str] | None, limit: int | None,
                    page: int = TASK_PAGE) -> tuple[dict[str, str], _NewestFirst]:
    """This run's tasks among the newest `limit` entries of the stream (None: all), read no further once every
    shard in `wanted` has one (None: read on); with the read's account (`read`, `complete`)."""
    tasks: dict[str, str] = {}
    found: set[str] = set()
    reader = _NewestFirst(conn, stream, limit, page)
    for entry_id, fields in reader.entries(lambda: wanted is not None and wanted <= found):
        if fields.get("run_dir") == run_dir and fields.get("run_hash") == run_hash:
            tasks[entry_id] = fields.get("shard", "")
            found.add(tasks[entry_id])
    return tasks, reader


def _run_dead_letters(conn: Any, dead_stream: str, run_dir: str, run_hash: str, keys: set[str],
                      limit: int) -> tuple[dict[str, str], _NewestFirst]:
    """The reasons of this run's dead letters for the shards `keys` (the newest letter of each), read newest first
    from at most `limit` entries of the dead-letter stream; with the read's account (`read`; `complete`: every key
    was found, or the stream read to its end)."""
    letters: dict[str, str] = {}
    reader = _NewestFirst(conn, dead_stream, limit, DEAD_PAGE)
    for _, fields in reader.entries(lambda: len(letters) == len(keys)):
        shard = fields.get("shard", "")
        if (shard in keys and shard not in letters and fields.get("run_dir") == run_dir
                and fields.get("run_hash") == run_hash):
            letters[shard] = _dead_reason(fields)
    return letters, reader


def _dead_reason(fields: dict[str, str]) -> str:
    """A dead letter's reason as `FleetHandler.on_dead` writes it in a shard's status file."""
    try:
        error = json.loads(fields.get("error") or "null")
    except ValueError:
        error = None
    if not isinstance(error, dict):
        error = {"code": "unknown", "message": fields.get("error", "")}
    return dead_letter_reason(fields.get("deliveries", "?"), error)


def dead_letter_reason(deliveries: Any, error: dict[str, Any]) -> str:
    """What a dead-lettered shard's failed status says: `FleetHandler.on_dead` writes it, a run's status reads it back
    from a dead letter when no worker could write it (`_dead_reason`)."""
    return f"dead-lettered after {deliveries} deliveries: [{error.get('code')}] {error.get('message')}"


def redis_settings(redis: RedisSettings | str | None, key_prefix: str | None = None) -> RedisSettings:
    """A URL (or None: $SIGMA_REDIS_URL, else the default) and a prefix, as the service's settings."""
    if isinstance(redis, RedisSettings):
        settings = redis
    else:
        url = redis or os.environ.get("SIGMA_REDIS_URL") or RedisSettings().url
        settings = RedisSettings(url=url, connect_timeout_s=2, socket_timeout_s=10)
    if key_prefix:
        settings = settings.model_copy(update={"key_prefix": key_prefix})
    return settings


# Under a worker's `worker.batch_timeout_s`, the share of it a decode chunk may take before the decode pool takes
# itself for hung (the run's `stall_s`, 900 s by default, is lowered to it). The worker's watch counts from the last
# pair done, the pool's from when it waits on the chunk: at 900 s against 600 s the worker always gave up first —
# it exited, the shard was redelivered to hang again and was dead-lettered as `worker_hung` — and the pool's own
# remedy (kill the decoders, start new ones, fail this shard only, the worker goes on) never ran.
DECODE_STALL_SHARE = 0.5


def check_batch_timeout(batch_timeout_s: float, run_read_retry_s: float) -> None:
    """Refuse a hang watchdog (`worker.batch_timeout_s`) not above the longest a task may wait before its first pair:
    `worker.run_read_retry_s` (reading an unreadable run.json again, one deadline for the task's reads) plus
    `$SIGMA_MODEL_LOCK_WAIT_S` (120 s by default: one load of the run's model waits that long in all for a folder a
    stopped saver holds, then the task is deferred, `ModelBusy`). The watch counts from the task's start, so a
    watchdog at or below that sum killed such a worker as hung (`worker_hung`, exit 1, a delivery spent) instead of
    deferring, and it restarted to hang again; the rule compared it with the lock wait alone, and a watchdog just
    above it still fired. Now such a worker does not start: one `invalid_config` line naming the three values."""
    from sigma.models.factory import ENV_LOCK_WAIT, lock_wait_s

    wait_s = lock_wait_s()
    worst_s = run_read_retry_s + wait_s
    if 0 < batch_timeout_s <= worst_s:
        raise ConfigError(
            f"worker.batch_timeout_s={batch_timeout_s:.15g} is not above "
            f"worker.run_read_retry_s={run_read_retry_s:.15g} + ${ENV_LOCK_WAIT}={wait_s} = {worst_s:.15g} s: a task "
            f"may read its run.json again for {run_read_retry_s:.15g} s, then wait {wait_s} s for a model folder "
            "(options.weights) a stopped saver holds before it is deferred, and the worker would be killed as hung "
            "(worker_hung, exit 1) meanwhile; set "
            f"worker.batch_timeout_s above {worst_s:.15g} (0: no limit), or lower the other two")


def decode_stall_s(stall_s: float, batch_timeout_s: float) -> float:
    """The decode pool's stall bound for a worker whose batches time out after `batch_timeout_s` (0: none)."""
    return min(stall_s, DECODE_STALL_SHARE * batch_timeout_s) if batch_timeout_s > 0 else stall_s


@dataclass
class _RunCache:
    """One annotator + decode pool per run config, kept across tasks: loading a model once per shard
    would cost more than the shard. `batch_timeout_s`: the worker's; the pool's stall bound stays below it."""

    workers: int | None = None
    batch_timeout_s: float = 0.0
    key: str | None = None
    pipeline: Any = None

    def get(self, cfg: BatchConfig, run_hash: str) -> Any:
        from sigma.batch.pipeline import Pipeline

        key = f"{run_hash}:{cfg.annotator}"
        if key != self.key:
            self.close()
            stall_s = decode_stall_s(cfg.stall_s, self.batch_timeout_s)     # outside the run hash: speed only
            self.pipeline = Pipeline(cfg.model_copy(update={"stall_s": stall_s}), workers=self.workers)
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
    deferred: int = 0          # refused because a local run held the run folder: retried, no delivery spent
    pairs: int = 0
    errors: list[str] = field(default_factory=list)


# A task's error as the worker's log, its stats and the dead letter keep it: each path or name at most 1024
# characters, the message at most 3000 (a dead letter keeps 4000 of its record). A task naming a 300 KB run_dir
# put it, several times over, in every one.
TASK_ERROR_TOKEN = 1024
TASK_ERROR_LIMIT = 3000


def task_error(message: str) -> str:
    return cut_long_values(message, TASK_ERROR_LIMIT, TASK_ERROR_TOKEN)


def shown_shard(fields: dict[str, str]) -> str:
    """A task's shard key as the worker's heartbeat and log show it: control characters escaped, cut past 240
    characters (a planned key is at most ~130). A damaged or hostile task's key went whole into the heartbeat hash
    every beat (megabytes in Redis, and in every `sigma batch status --redis` scan) and into the log with its
    terminal escapes."""
    return shown_path(fields.get("shard", ""))


class PermanentTaskError(Exception):
    """A task no retry can fix (its run folder is gone or belongs to another run). `code`: the dead letter's."""

    def __init__(self, message: str, code: str = "bad_task"):
        super().__init__(task_error(message))
        self.code = code


class RunBusy(Exception):
    """The run folder is held exclusively by a local `sigma batch run` (or a submission planning it): no fault of
    the task's. It is deferred (retried after the lease without spending a delivery) while the holder writes shards
    there; one that writes none for `worker.max_defer_s` (stopped, hung, its host gone) has it dead-lettered."""

    # the deferral's code; `given_up`: the dead letter's once `worker.max_defer_s` ran out
    code = "run_locked"

    def __init__(self, message: str, root: Path):
        super().__init__(message)
        self.root = root

    def given_up(self, fields: dict[str, str], deferral: Deferral, max_defer_s: float) -> tuple[str, str]:
        """The dead letter's code and message: which run, who holds it, how long, and how to go on."""
        return "run_locked_too_long", (
            f"{fields.get('run_dir')}: shard {shown_shard(fields)} was not run: another process has held the run "
            f"folder for {deferral.last - deferral.since:.0f} s ({_deferred(deferral, max_defer_s)}): {self}. A "
            "local `sigma batch run` that is stopped (Ctrl-Z) or hung keeps it until it ends, a lock left by a host "
            f"that went away (NFS) until the file server lets it go. End or resume that process; then {_AGAIN}")


# how a task given up on is queued again (`RunBusy.given_up`)
_AGAIN = ("submit the run again (`sigma batch submit` with the same input and options, or POST /v1/batches) to queue "
          "this shard, or finish the run locally with `sigma batch run ... --resume` on this --out")


def utc_text(seconds: float) -> str:
    """A time as a dead letter says it: UTC, ISO 8601 (`2026-12-05T09:45:07Z`), as the other stamps SIGMA writes. It
    was the writing worker's local time with its zone's name (`2026-12-05 10:45:07 CET`): workers in different zones
    wrote different names for one fleet, and the API's status answered with the server's zone."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _deferred(deferral: Deferral, max_defer_s: float) -> str:
    """How often, since when (UTC), and how long with no shard written in the run folder: a given-up task's record."""
    since = utc_text(deferral.since)
    return (f"deferred {deferral.count} times since {since}, no shard written in the run folder for "
            f"{deferral.idle_s:.0f} s, worker.max_defer_s={max_defer_s:.15g}")


class ModelBusy(RunBusy):
    """The run's saved model folder (`options.weights`) held by another process for all of
    `$SIGMA_MODEL_LOCK_WAIT_S` — a `save_model` stopped (Ctrl-Z, SIGSTOP) or hung mid-commit — so its annotator could
    not be built (`weights_busy`). Transient, and no fault of the task's: the same load succeeds once the saver goes on
    or dies. It was taken for the shard's failure (`shard_failed`, a delivery spent each lease), dead-lettered after
    `queue.max_deliveries` and the shard failed for good; now it is deferred as a held run folder is (after the lease,
    no delivery spent; each attempt first waits out the lock's bound, so it never loops hot), and given up on
    (`weights_busy`) only when no shard has been written in the run folder for `worker.max_defer_s`."""

    code = "weights_busy"

    def given_up(self, fields: dict[str, str], deferral: Deferral, max_defer_s: float) -> tuple[str, str]:
        return "weights_busy", (
            f"{fields.get('run_dir')}: shard {shown_shard(fields)} was not run: its model folder (options.weights) "
            f"was held by another process at each try for {deferral.last - deferral.since:.0f} s "
            f"({_deferred(deferral, max_defer_s)}): {self}. Resume or end that process; then {_AGAIN}")


class MachineRefused(RunBusy):
    """A shortage of this machine's (threads, memory) that defers a task instead of failing its shard; the
    subclasses differ only in what was refused and what to raise, said in one dead-letter message."""

    refused = ""
    remedy = ""

    def given_up(self, fields: dict[str, str], deferral: Deferral, max_defer_s: float) -> tuple[str, str]:
        """The dead letter of a shortage that outlasted `worker.max_defer_s`; the same words for every shortage."""
        return self.code, (
            f"{fields.get('run_dir')}: shard {shown_shard(fields)} was not run: the machine of each worker that took "
            f"it {self.refused} for {deferral.last - deferral.since:.0f} s "
            f"({_deferred(deferral, max_defer_s)}): {self}. {self.remedy}; then {_AGAIN}")


class ThreadsRefused(MachineRefused):
    """This machine would start no thread the shard needs (`threads_refused`: the pipeline's writer or reader, its
    decode pool's manager; a pids limit, `ulimit -u`, or no memory left for a thread's stack): a state of the machine,
    mostly brief, no fault of the task's. It was the shard's failure (`shard_failed`, a delivery spent each lease), so a
    limit that lasted `queue.max_deliveries` leases dead-lettered good shards and failed the run, though the next
    task after the limit was lifted ran; now it is deferred as a held run folder is (after the lease, no delivery
    spent, for this worker or another), and dead-lettered (`out_of_threads`) only when no shard has been written in
    the run folder for `worker.max_defer_s`."""

    code = "out_of_threads"
    refused = "would start no thread for it"
    remedy = ("Raise the limit on processes (`ulimit -u`, the container's pids limit) or the memory for thread stacks "
              "(`ulimit -v`, `ulimit -s`)")


class MemoryRefused(MachineRefused):
    """This machine refused the memory to load the run's model (`out_of_memory` while its annotator was built: a low
    RLIMIT_AS, a container near its limit, safetensors' mmap refused): a state of the machine, mostly brief, no fault of
    the task's — as `sigma worker` loads again (`worker.load_retry_s`). It was the shard's failure (`shard_failed`, a
    delivery spent each lease), so a shortage lasting `queue.max_deliveries` leases dead-lettered good shards; now it
    is deferred as `ThreadsRefused` is (after the lease, no delivery spent, for this worker or another), and
    dead-lettered (`out_of_memory`) only when no shard has been written in the run folder for `worker.max_defer_s`."""

    code = "out_of_memory"
    refused = "refused the memory to load the run's model"
    remedy = "Raise the memory limit (`ulimit -v`, the container's memory) or free memory"


class RunTooLarge(RunBusy):
    """The run's run.json is over this worker's `$SIGMA_MAX_RUN_BYTES`: a limit of this machine's, not a fault of the
    task's, and a worker with a higher one (a mixed fleet) can run it. It was dead-lettered at once (`run_too_large`),
    so the first worker with a lower limit took and dead-lettered most of a run's tasks before the workers that could
    run them got any. Now it is deferred as a held run folder is (after the lease, no delivery spent, for another
    worker; the record names the workers that refused it), and dead-lettered `run_too_large` only once every live
    batch worker has refused it (`refused_everywhere`), or no shard has been written in the run folder for
    `worker.max_defer_s`."""

    code = "run_too_large"

    def refused_everywhere(self, deferral: Deferral, live: set[str]) -> bool:
        """Every batch worker alive now (its heartbeat: `queue.heartbeat_ttl_ms`) has refused the task: none can take
        it, and waiting for more leases would only leave the run pending."""
        return bool(live) and live <= set(deferral.refused_by)

    def given_up(self, fields: dict[str, str], deferral: Deferral, max_defer_s: float) -> tuple[str, str]:
        """The dead letter's code and message: which workers refused it, over how long, which bound ended the wait
        (every live worker refused it, or `worker.max_defer_s`), and how to go on."""
        bound = (f"no worker took it for worker.max_defer_s={max_defer_s:.15g} ({_deferred(deferral, max_defer_s)})"
                 if deferral.idle_s >= max_defer_s else
                 f"given up once every live worker had refused it (worker.max_defer_s={max_defer_s:.15g} not reached)")
        refused = refused_by_text(deferral.refused_by, deferral.last - deferral.since)
        return "run_too_large", (
            f"{fields.get('run_dir')}: shard {shown_shard(fields)} was not run: its run.json is over the run size "
            f"limit of every batch worker it was offered to: {refused}, "
            f"deferred {deferral.count} times; {bound}. "
            f"{self}. Set the same $SIGMA_MAX_RUN_BYTES on every worker (or start one above this size); then {_AGAIN}")


class PluginMissing(Exception):
    """The run's corpus format or annotator is registered by a plugin this worker has not imported (started without
    the run's `--plugin`, or without the module installed). The task goes back through its lease (a delivery spent)
    so a worker that has the plugin may take it, and is dead-lettered (`plugin_missing`) once `max_deliveries`
    deliveries all found none."""

    def __init__(self, message: str):
        super().__init__(task_error(message))


class RunUnreadable(Exception):
    """The run folder is there but its run.json could not be read (or parsed) for the whole patience: the task
    goes back through its lease like a failed shard, and is dead-lettered (`run_unreadable`) only once
    `max_deliveries` deliveries all found it so."""

    def __init__(self, message: str):
        super().__init__(task_error(message))


# How long one delivery reads an unreadable run.json again (full-jitter backoff) before it gives the task back:
# a file being replaced, a write half seen over NFS, a momentary EACCES or ESTALE. `worker.run_read_retry_s`.
RUN_READ_RETRY_S = 5.0


@dataclass
class _Plan:
    stamp: tuple[int, int, int, int]
    record: dict[str, Any]
    shards: dict[str, Shard]
    # what `_trusted_config` and `_check_corpus` found for this record, per (run hash, root) and for its corpus: a
    # BatchConfig or the reason it was refused. Checking a version 2 plan hashes it (15 MB for 50,000 shards), and a
    # version 1 plan is checked by planning the corpus: once per record, not once per task
    checked: dict[Any, Any] = field(default_factory=dict)


# run.json -> its parsed plan, per worker process. A plan is fixed once written (a new one is a new file: atomic
# rename), so it is read again only when its inode, size or mtime changed. Parsed per task, a run of 50,000
# one-pair shards (a 15 MB run.json) cost 1.4 s of JSON and Shard objects per task for 30 ms of work: quadratic.
_PLANS: dict[str, _Plan] = {}
_PLANS_KEPT = 4


def _folder_gone(root: Path) -> bool:
    """The run folder itself is missing (deleted, never there, or a file now): no retry brings it back. Any other
    error looking at it (EACCES, ESTALE, EIO) may pass."""
    try:
        return not stat.S_ISDIR(os.stat(root).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError as exc:   # a name too long for the filesystem is so on every try
        return exc.errno == errno.ENAMETOOLONG


def _read_record(rundir: RunDir, patience_s: float) -> dict[str, Any]:
    """run.json's record. A run.json that cannot be read or parsed while its folder is there is read again, with
    backoff, for `patience_s`: a worker that found it briefly unreadable (replaced, a write half seen over NFS, a
    momentary EACCES) dead-lettered the task at once and the shard was failed for good. Then RunUnreadable: the
    task is retried through its lease. A folder that is gone, or a run.json that is a link out of the folder, is
    said at once (InputError)."""
    backoff = Backoff(base_s=0.05, cap_s=1.0)
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return rundir.load()
        except InputError as exc:
            # a record that parses but is no run (a shard key that is a path): as bad on every try
            torn = exc.code == "bad_run" and isinstance(exc.__cause__, ValueError)
            if not (exc.code == "not_a_run" or torn) or _folder_gone(rundir.root):
                raise
            error = f"[{exc.code}] {exc.message}"
        except OSError as exc:
            if _folder_gone(rundir.root):
                raise InputError(f"{rundir.root}: the run folder is gone ({exc})", code="not_a_run") from exc
            error = f"{type(exc).__name__}: {exc}"
        delay = backoff.next_delay()
        if time.monotonic() + delay > deadline:
            raise RunUnreadable(f"{rundir.run_file}: unreadable for {patience_s:.15g} s ({error})")
        time.sleep(delay)


def _load_plan(rundir: RunDir, fresh: bool = False,
               patience_s: float = RUN_READ_RETRY_S) -> tuple[dict[str, Any], dict[str, Shard]]:
    path = str(rundir.run_file)
    try:
        st = os.lstat(path)              # the link itself: a run.json made a link later is read (and refused) again
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    cached = _PLANS.get(path)
    if not fresh and stamp is not None and cached is not None and cached.stamp == stamp:
        return cached.record, cached.shards
    record = _read_record(rundir, patience_s)   # not a run, a link out: its InputError; unreadable: RunUnreadable
    shards: dict[str, Shard] = {}
    for item in record["shards"]:
        shard = Shard.from_dict(item)
        shards.setdefault(shard.key, shard)
    if stamp is not None:
        _PLANS.pop(path, None)
        while len(_PLANS) >= _PLANS_KEPT:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[path] = _Plan(stamp, record, shards)
    return record, shards


def locate_task(fields: dict[str, str],
                patience_s: float = RUN_READ_RETRY_S) -> tuple[RunDir, dict[str, Any], Shard]:
    """The run folder, its record and the shard a task names; PermanentTaskError when no retry can find them
    (the folder is gone, holds another run, plans no such shard, or links out of itself), RunUnreadable when its
    run.json stayed unreadable for `patience_s` — both reads' bound together (one deadline): each had all of it, and
    a task could wait twice `worker.run_read_retry_s` under the worker's watchdog (`check_batch_timeout`)."""
    deadline = time.monotonic() + patience_s
    try:
        if not os.path.isabs(fields["run_dir"]):     # would be read from the worker's own folder: a damaged task
            raise InputError("the task's run_dir is not an absolute path", code="bad_task")
        rundir = RunDir(fields["run_dir"])
        record, shards = _load_plan(rundir, patience_s=patience_s)
        if record.get("run_hash") != fields.get("run_hash") or fields.get("shard") not in shards:
            # before a task is given up on, the plan as it is on disk now, not as kept (a run folder made again
            # at once on a filesystem with coarse mtimes may reuse the inode, size and mtime)
            record, shards = _load_plan(rundir, fresh=True, patience_s=max(0.0, deadline - time.monotonic()))
    except SigmaError as exc:
        if exc.code == "run_too_large":   # no bad task: this machine's $SIGMA_MAX_RUN_BYTES is below the driver's
            raise RunTooLarge(exc.message, Path(fields["run_dir"])) from exc
        raise PermanentTaskError(f"bad task {fields}: {exc.message}") from exc
    except (KeyError, ValueError) as exc:   # ValueError: a NUL in the path (a damaged entry)
        raise PermanentTaskError(f"bad task {fields}: {exc}") from exc
    if record.get("run_hash") != fields.get("run_hash"):
        raise PermanentTaskError(f"{fields['run_dir']} now holds run {record.get('run_hash')}, "
                                 f"not {fields.get('run_hash')}")
    shard = shards.get(fields.get("shard", ""))
    if shard is None:
        raise PermanentTaskError(f"{fields['run_dir']}: no shard {fields.get('shard')!r} in the plan")
    try:
        rundir.check_links(shard, record["run_hash"])
    except SigmaError as exc:
        raise PermanentTaskError(f"bad task {fields}: [{exc.code}] {exc.message}") from exc
    return rundir, record, shard


def _kept_plan(rundir: RunDir, record: dict[str, Any]) -> _Plan | None:
    plan = _PLANS.get(str(rundir.run_file))
    return plan if plan is not None and plan.record is record else None


def _trusted_config(fields: dict[str, str], record: dict[str, Any], plan: _Plan | None = None) -> BatchConfig:
    """The run's config as the task vouches for it. run.json sits on shared storage that users of the batch root may
    write: one rewritten after planning made every worker run what it said — the annotator options (weights read
    from anywhere), the corpus path and its `input.root` confinement gone, another shard plan (a shard's file
    pointed at another corpus: the rest of the run annotated other pairs under the same hash). The config, corpus,
    model and plan are what the run hash covers (`sigma.batch.record.check_record`), and the hash came with the task
    (Redis): a record that no longer hashes to it, or whose input is not its corpus, is refused. A confined run's
    root and the run's plugins came with the task too: the root is put back and the corpus path must lie under it,
    and the plugins must be the task's (a task queued before tasks carried them is taken as it was). A corpus
    format only a plugin registers is looked for first (`_need_corpus_format`): without it the config does not
    validate, which read as a run.json damaged or edited (`bad_task`, dead-lettered at once) when the worker only
    lacked the run's plugin. So is an annotator only a plugin registers (`_need_annotator`), once the config is
    trusted."""
    key = (fields.get("run_hash"), fields.get("root"), fields.get("plugins"))
    found = plan.checked.get(key) if plan is not None else None
    if found is None:
        found = _checked_config(fields, record)
        if plan is not None:
            plan.checked[key] = found
    if isinstance(found, str):
        raise PermanentTaskError(found)
    _need_annotator(fields, record, found)
    return found


def _checked_config(fields: dict[str, str], record: dict[str, Any]) -> BatchConfig | str:
    """`_trusted_config`'s answer: the config, or why the task is refused."""
    where = f"{fields['run_dir']}: run.json"
    _need_corpus_format(fields, record)
    try:
        record_version(record, where)
        cfg = recorded_config(record, where)
        root = fields.get("root")
        if root:
            cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"root": root})})
            if resolved_under(str(cfg.input.path), os.path.realpath(root)) is None:
                return task_error(f"{fields['run_dir']}: run.json names a corpus outside the run's root (edited after "
                                  "the run was planned); refused, nothing read")
        if "plugins" in fields and _each_once(loads(fields["plugins"])) != cfg.plugins:
            return task_error(f"{where}: its plugins {cfg.plugins} are not the run's {fields['plugins']} (edited "
                              "after the run was planned); refused, nothing imported")
        check_record(record, str(fields.get("run_hash")), where)
        check_options(record, where, "refused, nothing run")   # its annotator cannot be built here as planned
    except InputError as exc:
        return task_error(f"[{exc.code}] {exc.message}")
    except ValueError as exc:      # the task's plugins field is no JSON: a damaged task
        return task_error(f"bad task {fields}: {exc}")
    return cfg


def _check_corpus(fields: dict[str, str], record: dict[str, Any], corpus: Any, plan: _Plan | None) -> None:
    """The corpus the checked config opens is the one the run hash covers (a version 1 record's path may be
    relative, read from the folder the worker started in), and a version 1 record's plan, outside its hash, is
    what the corpus plans (`sigma.batch.record.plan_problem`). PermanentTaskError when not."""
    problem = plan.checked.get("corpus") if plan is not None else None
    if problem is None:
        problem = corpus_problem(corpus, record) or ""
        if plan is not None:
            plan.checked["corpus"] = problem
    if problem:
        raise PermanentTaskError(f"{fields['run_dir']}: run.json: {problem}; refused, nothing read")


def _need_corpus_format(fields: dict[str, str], record: dict[str, Any]) -> None:
    """The run's corpus format is one this worker reads, or PluginMissing (`_need_plugin`). Looked for before the
    config is validated: an unknown format fails validation, which would read as a damaged run.json."""
    config = record.get("config")
    source = config.get("input") if isinstance(config, dict) else None
    name = source.get("format") if isinstance(source, dict) else None
    if not isinstance(name, str) or name == "auto" or name in CORPUS_READERS:
        return                                      # known, or not a name at all: validation says what is wrong
    _need_plugin(fields, record, "corpus format", name, lambda: name in CORPUS_READERS)


def _need_annotator(fields: dict[str, str], record: dict[str, Any], cfg: BatchConfig) -> None:
    """The run's annotator is one this worker can build, or PluginMissing (`_need_plugin`), as for its corpus format.
    Asked once the config holds to the run hash: the annotator was registered where the run was planned (its identity
    is recorded), so one unknown here is a plugin's. Before, building it failed inside the shard, `shard_failed`
    "Unknown annotator ..." (or the plugin's failed import), unlike a corpus format's `plugin_missing`."""
    name = cfg.annotator
    if name is None or name in {entry.name for entry in list_annotators()}:
        return                                      # None: the default, a built-in
    _need_plugin(fields, record, "annotator", name, lambda: name in ANNOTATORS)


def _need_plugin(fields: dict[str, str], record: dict[str, Any], what: str, name: str,
                 known: Callable[[], bool]) -> None:
    """`name` (the run's `what`, registered by no module imported here) is `known()` once the run's own plugins
    (`plugins:` in its config, recorded by `sigma batch submit --plugin MODULE`) are imported, as they are for its
    annotator (`with_default_annotator`), so a worker with the module installed needs no flag; else PluginMissing,
    naming them and the flag to pass. A task that carries the run's plugins (every task queued since they were hashed
    with the run) has those imported, never a list run.json alone names: run.json may have been edited to name any
    module."""
    config = record.get("config")
    plugins = config.get("plugins") if isinstance(config, dict) else None
    if "plugins" in fields:
        try:
            plugins = loads(fields["plugins"])
        except ValueError:
            return                                  # a damaged task: `_checked_config` says so
    plugins = [p for p in plugins if isinstance(p, str)] if isinstance(plugins, list) else []
    failed = None
    try:
        import_plugins(plugins)
    except ConfigError as exc:
        failed = exc.message
    if known():
        return
    if failed:
        why, module = f"the run's plugin could not be imported here ({failed})", shown(plugins[0], 120)
    elif plugins:
        why, module = (f"the run's plugins ({', '.join(shown(p, 120) for p in plugins)}) were imported here and "
                       f"register no such {what}"), "MODULE"
    else:
        why, module = ("the run records no plugin (it was planned by a process that had imported it, e.g. the API's "
                       "api.plugins)"), "MODULE"
    raise PluginMissing(f"{fields['run_dir']}: the run's {what} {shown(name, 120)!r} is registered by a plugin "
                        f"and {why}: run its shards on workers started with `sigma worker --batch --plugin {module}` "
                        "(or worker.plugins) with the module installed (a worker without it hands the task back, up "
                        "to queue.max_deliveries times; then submit the run again)")


class _Beat:
    """The pipeline's progress bar, as the consumer's watch sees it: each model batch done (`update`) is progress,
    so `worker.batch_timeout_s` bounds one model batch of a shard, not the whole shard."""

    def __init__(self, on_progress: Callable[[], None]):
        self.on_progress = on_progress

    def update(self, n: int = 1) -> None:
        self.on_progress()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to show."""


def _pipeline(cache: _RunCache, cfg: BatchConfig, run_hash: str, rundir: RunDir) -> Any:
    """The run's pipeline, its annotator built once per run (`_RunCache`). A model folder a stopped saver holds
    (`weights_busy`) is ModelBusy, memory or a thread the machine refused the load (`out_of_memory`,
    `out_of_threads`) MemoryRefused or ThreadsRefused: deferred, not the shard's failure."""
    try:
        return cache.get(cfg, run_hash)
    except WeightsBusyError as exc:
        raise ModelBusy(exc.message, rundir.root) from exc
    except SigmaError as exc:
        # the machine refused the load memory or a thread (`sigma.registry._build_failed`): deferred, no delivery
        # spent; it counted as the shard's failure and a shortage lasting max_deliveries leases dead-lettered it
        if exc.code == "out_of_memory":
            raise MemoryRefused(f"loading the run's model: {exc.message}", rundir.root) from exc
        if exc.code == "out_of_threads":
            raise ThreadsRefused(f"loading the run's model: {exc.message}", rundir.root) from exc
        raise
    except MemoryError as exc:        # refused outside the annotator's build (the pipeline's own set-up)
        raise MemoryRefused(f"setting up the run's pipeline: {first_line(exc)}", rundir.root) from exc


def process_task(fields: dict[str, str], cache: _RunCache, patience_s: float = RUN_READ_RETRY_S,
                 on_progress: Callable[[], None] | None = None) -> tuple[str, int, str | None]:
    """Run one shard task: ("done" | "skipped" | "failed", pairs, error); "skipped": the shard is done for the run and
    its file holds to the size and sha256 its status recorded. `on_progress`: called as pairs are done.
    RunBusy while a local run holds the run folder (ModelBusy while a stopped saver holds the run's model folder);
    PluginMissing when its corpus format or annotator needs a plugin not here."""
    rundir, record, shard = locate_task(fields, patience_s)
    run_hash = record["run_hash"]
    # held to its checksum, as `submit_run` held it when it queued the task: held to its size only, a shard file
    # damaged in place was skipped as done, so no submission could get it written again through the fleet
    if rundir.is_done(shard, run_hash, verify=True):
        return "skipped", 0, None
    plan = _kept_plan(rundir, record)
    cfg = _trusted_config(fields, record, plan)
    corpus = corpus_from_config(cfg)
    _check_corpus(fields, record, corpus, plan)
    with ExitStack() as held:
        try:
            held.enter_context(rundir.locked(exclusive=False))
        except InputError as exc:
            if exc.code != "run_locked":
                raise
            raise RunBusy(exc.message, rundir.root) from exc
        # the temporary parquet a worker killed on this shard before left: nobody else sweeps it
        rundir.sweep_temps(shard, run_hash)
        beat = _Beat(on_progress) if on_progress is not None else None
        stats = _pipeline(cache, cfg, run_hash, rundir).run(corpus, [shard], rundir, run_hash, progress=beat)
    result = stats.shards[0] if stats.shards else None
    if result is None or result.status != "done":
        return "failed", stats.pairs, (result.error if result else "no result")
    return "done", stats.pairs, None


class FleetHandler:
    """Shard tasks → shard files in their run folders; one task at a time (a shard is minutes of work)."""

    batch_size = 1
    max_wait_ms = 0
    # One task per reclaim, as per read: a reclaim took up to 16 tasks of dead workers at once, and the worker then
    # ran those shards one after another (minutes each) while keeping their leases alive, so idle workers could not
    # take them (and a stop left them pending, a delivery spent on each).
    reclaim_count = 1

    # how long a task's last error is kept for its dead letter (`Keys.batch_task_error`)
    last_error_ttl_s = 86_400
    # how long a dead letter's failed status waits for another writer of that shard's status (a write takes ms)
    status_wait_s = 10.0
    # how long the live batch workers found (`_live_workers`) are taken as still so: a heartbeat's interval
    live_workers_kept_s = 2.0

    def __init__(self, consumer: str, workers: int | None = None, run_read_retry_s: float = RUN_READ_RETRY_S,
                 client: Any = None, keys: Keys | None = None, batch_timeout_s: float = 0.0,
                 max_defer_s: float = MAX_DEFER_S):
        self.consumer = consumer
        self.run_read_retry_s = run_read_retry_s
        self.max_defer_s = max_defer_s
        # where a task's last error is kept (None: not kept): a task whose workers all hung or died is dead-lettered
        # by a worker that never ran it, and its record said only "worker_lost"
        self.client, self.keys = client, keys
        self.on_progress: Callable[[], None] | None = None
        self.stats = WorkerStats()
        self.cache = _RunCache(workers=workers, batch_timeout_s=batch_timeout_s)
        self.current: dict[str, str] = {}
        self._live: tuple[float, set[str]] | None = None      # (when, the live batch workers then)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"consumer": self.consumer, "mode": "batch", "done": self.stats.done,
                                "failed": self.stats.failed, "shard": shown_shard(self.current)}
        rss = rss_mb()           # as `sigma worker`'s: what worker.max_rss_mb is set against
        if rss is not None:
            info["rss_mb"] = round(rss, 1)
        return info

    def handle(self, entries: list[Entry]) -> list[Outcome]:
        outcomes = []
        for entry in entries:
            self.current.update(entry.fields)
            try:
                outcome, pairs, error = process_task(entry.fields, self.cache, self.run_read_retry_s,
                                                     self.on_progress)
            except PermanentTaskError as exc:
                self.stats.errors.append(str(exc))
                outcomes.append(Outcome(entry, "dead", error={"code": exc.code, "message": str(exc)}))
                continue
            except RunBusy as exc:             # a local run, or a stopped saver of its model, holds a folder:
                # after the lease, no delivery spent
                outcomes.append(self._defer(entry, exc))
                continue
            except PluginMissing as exc:       # through the lease, for a worker with the plugin; then dead-lettered
                self.stats.failed += 1
                self.stats.errors.append(str(exc))
                log.warning("task %s (delivery %d): %s", shown_shard(entry.fields), entry.deliveries, exc)
                outcomes.append(Outcome(entry, "retry", error={"code": "plugin_missing", "message": str(exc)}))
                continue
            except RunUnreadable as exc:       # through the lease; dead-lettered after max_deliveries
                self.stats.failed += 1
                self.stats.errors.append(str(exc))
                log.warning("task %s (delivery %d): %s", shown_shard(entry.fields), entry.deliveries, exc)
                outcomes.append(Outcome(entry, "retry", error={"code": "run_unreadable", "message": str(exc)}))
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. the corpus is briefly unreachable: retried via the lease
                if threads_refused(exc):       # the machine's state, not the task's: deferred, no delivery spent
                    outcomes.append(self._defer(entry, ThreadsRefused(
                        f"{type(exc).__name__}: {exc}", Path(entry.fields.get("run_dir") or "."))))
                    continue
                outcome, pairs, error = "failed", 0, task_error(f"{type(exc).__name__}: {exc}")
            finally:
                self.current.clear()
            self.stats.pairs += pairs
            if outcome in ("done", "skipped"):
                setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
                outcomes.append(Outcome(entry, "ack", store=(lambda e=entry: self._forget_deferral(e))))
            else:
                error = task_error(error or "failed")
                self.stats.failed += 1
                self.stats.errors.append(task_error(f"{shown_shard(entry.fields)}: {error}"))
                log.warning("shard %s failed (delivery %d): %s", shown_shard(entry.fields), entry.deliveries, error)
                outcomes.append(Outcome(entry, "retry", error={"code": "shard_failed", "message": error or "failed"}))
        return outcomes

    def _defer(self, entry: Entry, exc: RunBusy) -> Outcome:
        """Defer the task (its run folder, or its model folder — `ModelBusy` — held by another process), or give it
        up: deferred for `max_defer_s` with no shard written in the run folder meanwhile, its holder is no live run
        doing the work but one stopped (Ctrl-Z), hung, or gone with its host while shared storage keeps its lock, and
        the task would be deferred every lease for ever, the run "pending" with no sign why. Then it is
        dead-lettered (`run_locked_too_long`; `weights_busy` for a model folder), saying which run, who holds it and
        how to go on. A run.json over this worker's own size limit (`RunTooLarge`) is given up on sooner as well:
        once every live batch worker has refused it (`run_too_large`). Without Redis to count in (no client, or Redis
        over maxmemory) it is deferred uncounted, as before."""
        deferral, given_up = None, False
        if self.client is not None and self.keys is not None:
            try:
                deferral = note_deferral(self.client, self.keys, entry.id, exc.root, str(exc), self.max_defer_s,
                                         worker=self.consumer)
                given_up = deferral.idle_s >= self.max_defer_s or self._refused_everywhere(exc, deferral)
            except RedisError as error:
                if not is_out_of_memory(error):
                    raise                      # transient: the consumer hands the task in hand back to us
                log.warning("task %s deferred, not counted toward worker.max_defer_s (redis is out of memory)",
                            shown_shard(entry.fields))
        if deferral is not None and given_up:
            code, message = exc.given_up(entry.fields, deferral, self.max_defer_s)
            message = task_error(message)
            self.stats.errors.append(message)
            log.warning("task %s given up on: %s", shown_shard(entry.fields), message)
            return Outcome(entry, "dead", error={"code": code, "message": message})
        self.stats.deferred += 1
        counted = (f"; deferred {deferral.count} times over {deferral.last - deferral.since:.0f} s, no shard written "
                   f"there for {deferral.idle_s:.0f} s of worker.max_defer_s={self.max_defer_s:.15g}"
                   if deferral is not None else "")
        log.info("task %s deferred (delivery %d not counted%s): %s", shown_shard(entry.fields), entry.deliveries,
                 counted, exc)
        return Outcome(entry, "defer", error={"code": exc.code, "message": str(exc)})

    def _refused_everywhere(self, exc: RunBusy, deferral: Deferral) -> bool:
        """A task refused for this worker's own limit (`RunTooLarge`) that every live batch worker has refused."""
        return isinstance(exc, RunTooLarge) and exc.refused_everywhere(deferral, self._live_workers())

    def _live_workers(self) -> set[str]:
        """The consumers whose batch heartbeat is alive now (this one always: its first beat may not be stored
        yet), from the heartbeat registry (`sigma.service.heartbeats`; a SCAN of the keyspace only while no worker
        of this release registers). Kept for `live_workers_kept_s`, so a worker refusing a large run's tasks one
        after another reads once, not once per task."""
        now = time.monotonic()
        if self._live is not None and now - self._live[0] < self.live_workers_kept_s:
            return self._live[1]
        live = {self.consumer}
        if self.client is not None and self.keys is not None:
            start = len(self.keys.batch_worker(""))
            for key in live_heartbeat_keys(self.client, self.keys.batch_worker_registry(),
                                           self.keys.batch_worker_pattern()):
                live.add(stream_text(key)[start:])
        self._live = (now, live)
        return live

    def _forget_deferral(self, entry: Entry) -> None:
        """The task ran, or is given up on: its deferral record, if any, goes, whichever delivery this was. Only a
        task that came back through a reclaim was looked at before, but one worker's lease can lapse while it works
        (a loaded host, a missed heartbeat): another worker reclaims the task meanwhile and defers it, and the first
        one's ack left that record in Redis for worker.max_defer_s + a day, for a task long gone."""
        if self.client is not None and self.keys is not None:
            forget_deferral(self.client, self.keys, entry.id)

    def on_gone(self, entry: Entry) -> None:
        """A task this worker deferred was settled by another worker meanwhile (done after a lapsed lease): the
        record this deferral noted is for a task no longer on the stream."""
        self._forget_deferral(entry)

    def on_retry(self, entry: Entry, error: dict[str, Any]) -> None:
        """Left pending: the lease runs out and a worker (maybe this one) retries the shard. Its error is kept
        (`Keys.batch_task_error`) for the dead letter, which a worker that reclaims it spent may write."""
        if self.client is not None and self.keys is not None and error:
            self.client.set(self.keys.batch_task_error(entry.id), json.dumps(error, default=str),
                            ex=self.last_error_ttl_s)
        self._forget_deferral(entry)

    def _last_error(self, entry: Entry) -> dict[str, Any] | None:
        if self.client is None or self.keys is None:
            return None
        try:
            raw = self.client.get(self.keys.batch_task_error(entry.id))
            self.client.delete(self.keys.batch_task_error(entry.id))
            error = json.loads(raw) if raw else None
        except ValueError:
            return None
        return error if isinstance(error, dict) else None

    def on_dead(self, entry: Entry, error: dict[str, Any] | None) -> dict[str, Any]:
        """The run's status must say the shard failed, and why (not "pending" for ever): a failed status file,
        written unless the shard is done meanwhile. A task whose folder is gone or holds another run has no
        status to write."""
        self.stats.dead += 1
        self._forget_deferral(entry)
        error = (error or self._last_error(entry)
                 or {"code": "worker_lost", "message": f"delivered {entry.deliveries} times without finishing"})
        try:
            rundir, record, shard = locate_task(entry.fields, patience_s=0)    # no waiting: it is given up on
        except (PermanentTaskError, RunUnreadable, RunTooLarge, OSError):   # RunTooLarge: the record is unread
            return error
        reason = dead_letter_reason(entry.deliveries, error)
        try:
            # bounded: a process stopped (Ctrl-Z) or hung while writing this shard's status held the worker here
            # for ever, the task in hand and its lease extended by the heartbeat
            rundir.mark_failed(shard, record["run_hash"], reason, wait_s=self.status_wait_s,
                               error_code=error.get("code"), deliveries=entry.deliveries, dead_letter=True)
        except (OSError, SigmaError) as exc:   # unwritable, a link out, held: the dead-letter stream has the record
            log.warning("shard %s: could not record its failure in %s: %s", shard.key, rundir.root, exc)
        return error

    def close(self) -> None:
        self.cache.close()


def run_batch_worker(redis: RedisSettings | str | None = None, key_prefix: str | None = None,
                     consumer: str | None = None, *, queue: QueueSettings | None = None, workers: int | None = None,
                     stop: threading.Event | None = None, exit_when_idle: bool = False,
                     max_tasks: int | None = None, run_read_retry_s: float = RUN_READ_RETRY_S,
                     batch_timeout_s: float = 0.0, on_stuck: Callable[[list[Entry], float], None] | None = None,
                     after_task: Callable[[], None] | None = None, max_defer_s: float = MAX_DEFER_S,
                     **queue_overrides: Any) -> WorkerStats:
    """Consume shard tasks until `stop` is set (SIGTERM in the CLI), or the queue is empty with
    `exit_when_idle`. The shard in progress is always finished before returning. `queue_overrides`:
    fields of QueueSettings (lease_ms, block_ms, max_deliveries, reclaim_interval_ms, ...).
    `run_read_retry_s`: how long a delivery reads an unreadable run.json again before giving the task back.
    `batch_timeout_s` (0: none): a shard with no pair done for that long is stuck (a model that hangs): its task
    gets `worker_hung` as its last error and `on_stuck(entries, seconds)` is called, from the heartbeat thread (the
    CLI ends the process for its supervisor to restart); the lease runs out and the task is redelivered, and
    dead-lettered after `max_deliveries` with that error. A decode chunk waits at most half of it (`decode_stall_s`):
    a hung decode pool is replaced and its shard failed before the worker is taken for hung.
    `after_task()`: called once each task's outcome is stored and acknowledged, never mid-shard; it may set `stop`
    (the CLI's `worker.max_rss_mb` check), and the worker then returns with nothing in hand.
    `max_defer_s`: a task whose run folder another process holds is deferred (no delivery spent) until no shard has
    been written there for this long, then dead-lettered `run_locked_too_long` (`worker.max_defer_s`)."""
    settings = redis_settings(redis, key_prefix)
    qs = (queue or QueueSettings()).model_copy(update=queue_overrides)
    keys = Keys(settings.key_prefix)
    consumer = consumer or default_consumer()
    client = sync_client(settings, block_ms=qs.block_ms)
    q = StreamQueue(client, keys.batch_tasks(), GROUP, consumer, lease_ms=qs.lease_ms,
                    max_deliveries=qs.max_deliveries, dead_stream=keys.batch_dead(), dead_maxlen=qs.dead_letter_maxlen)
    handler = FleetHandler(consumer, workers, run_read_retry_s, client=client, keys=keys,
                           batch_timeout_s=batch_timeout_s, max_defer_s=max_defer_s)

    def stuck(entries: list[Entry], seconds: float) -> None:
        error = {"code": "worker_hung", "message": f"no pair of the shard was done for {seconds:.0f} s "
                 f"(worker.batch_timeout_s={batch_timeout_s:.15g}): the model hangs; the worker exited to be restarted"}
        for entry in entries:
            try:
                handler.on_retry(entry, error)
            except Exception as exc:  # noqa: BLE001 - Redis down: the dead letter says worker_lost instead
                log.warning("could not record that shard %s hung: %s", shown_shard(entry.fields), exc)
        if on_stuck is not None:
            on_stuck(entries, seconds)

    loop = Consumer(client, q, handler, qs, heartbeat_key=keys.batch_worker(consumer),
                    heartbeat_registry=keys.batch_worker_registry(), stop=stop,
                    describe=f"batch worker {consumer}", handle_timeout_s=batch_timeout_s or None, on_stuck=stuck,
                    after_batch=after_task)
    handler.on_progress = loop.progressed
    try:
        loop.run(max_batches=max_tasks, exit_when_idle=exit_when_idle)
    finally:
        handler.close()
    return handler.stats

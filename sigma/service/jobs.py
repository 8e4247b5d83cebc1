"""A job's record in Redis, and the atomic steps on it that must never be split (key names: `keys.py`).

`ENQUEUE` (in one MULTI with the SETs of the images) stores the job and adds the stream entry, or
deletes the images when the queue is full, so a 429 leaves nothing behind. `WITHDRAW` takes back a
submission the API answered 503 for after its MULTI was sent (a timeout loses the reply, not the request: a
frozen Redis runs the MULTI when it wakes): it cancels the job or, arriving first, leaves a cancelled record
that ENQUEUE then refuses to overwrite, so a 503 never leaves a job behind that nobody knows the id of.
`FINISH` stores a result only if the job has none yet: a job reclaimed after its first worker died just
after storing is acknowledged, not stored twice (`completions` stays 1).
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis

from sigma.service.keys import Keys

TERMINAL = ("done", "failed", "cancelled")

ENQUEUE = """
-- Runs in the same MULTI right after the two SETs of the images (large values travel as plain SET
-- arguments: passing them through a script's ARGV costs ~4x more).
-- KEYS: stream, job, blob original, blob edited; ARGV: max_len, ttl_s, job id, field, value, ...
-- Job ids are fresh uuids, so a record already there is this same MULTI sent again (the client library
-- retries once after a lost reply): queued once, no second entry, and no images kept for a finished job;
-- or a WITHDRAW that arrived first (see below): nothing queued.
local st = redis.call('HGET', KEYS[2], 'status')
if st then
  if st ~= 'queued' and st ~= 'running' then redis.call('DEL', KEYS[3], KEYS[4]) end
  if st == 'cancelled' then return false end
  return 'again'
end
local limit = tonumber(ARGV[1])
if limit > 0 and redis.call('XLEN', KEYS[1]) >= limit then
  redis.call('DEL', KEYS[3], KEYS[4])
  return false
end
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[2], ARGV[2])
return redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
"""

FINISH = """
-- KEYS: job, done list, blob original, blob edited
-- ARGV: status, result json, error json, finished_at, ttl_s, worker, done_ttl_s
-- The images go first, whatever the job's state (a finished job has none left to keep): DEL is not a
-- `denyoom` command, and Redis lets a script that already wrote go on writing when it is over `maxmemory`
-- (noeviction), so finishing a job, which frees far more than its result takes, still works when Redis
-- is full: the queue that frees the memory keeps draining.
redis.call('DEL', KEYS[3], KEYS[4])
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st == 'done' or st == 'failed' or st == 'cancelled' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'error', ARGV[3],
           'finished_at', ARGV[4], 'worker', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'completions', 1)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[7])
return 1
"""

WITHDRAW = """
-- KEYS: job, blob original, blob edited; ARGV: error json, finished_at, ttl_s, job id, owner, annotator.
-- Returns the job's status before (false: not there yet, or never to come). A finished job is left alone.
-- DEL first (not `denyoom`), as in FINISH.
redis.call('DEL', KEYS[2], KEYS[3])
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'done' or st == 'failed' or st == 'cancelled' then return st end
redis.call('HSET', KEYS[1], 'id', ARGV[4], 'owner', ARGV[5], 'annotator', ARGV[6], 'status', 'cancelled',
           'error', ARGV[1], 'finished_at', ARGV[2], 'worker', 'api')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return st or false
"""

START = """
-- KEYS: job; ARGV: worker, started_at, delivery. Marks a queued job running; returns its status before.
-- `attempts` is the stream entry's delivery count (Redis' own), so handling a batch again after a Redis
-- error (same delivery) does not count an attempt twice.
-- A running job has no final error: the HDEL (not `denyoom`) comes first so that, as in FINISH, Redis lets the
-- script write when it is over `maxmemory`: the jobs already queued can still be worked off (and free their images).
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'queued' or st == 'running' then
  redis.call('HDEL', KEYS[1], 'error')
  redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2], 'attempts', ARGV[3])
end
return st
"""

NOTE_ERROR = """
-- KEYS: job; ARGV: error json. Only a live, unfinished job is touched (never re-created after expiry).
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'queued' or st == 'running' then
  redis.call('HSET', KEYS[1], 'last_error', ARGV[1], 'status', 'queued')
end
return st
"""

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def new_job_id() -> str:
    return uuid.uuid4().hex


def job_fields(job_id: str, annotator: str, owner: str, instruction: str | None, threshold: float | None,
               outputs: list[str], mask_mode: str | None = None) -> dict[str, str]:
    return {"id": job_id, "status": "queued", "annotator": annotator, "owner": owner,
            "instruction": json.dumps(instruction), "threshold": json.dumps(threshold),
            "mask_mode": json.dumps(mask_mode),
            "outputs": json.dumps(outputs), "created_at": f"{time.time():.6f}", "attempts": "0",
            "completions": "0"}


def enqueue_args(keys: Keys, job_id: str, fields: dict[str, str], max_len: int, ttl_s: int
                 ) -> tuple[list[str], list[Any]]:
    """Keys and args of ENQUEUE; the caller SETs `keys.blob(job_id, part)` (EX ttl_s) in the same MULTI."""
    flat: list[Any] = []
    for k, v in fields.items():
        flat += [k, v]
    return ([keys.stream(fields["annotator"]), keys.job(job_id), keys.blob(job_id, "original"),
             keys.blob(job_id, "edited")], [max_len, ttl_s, job_id, *flat])


def finish_args(keys: Keys, job_id: str, status: str, result: dict | None, error: dict | None, ttl_s: int,
                worker: str) -> tuple[list[str], list[Any]]:
    return ([keys.job(job_id), keys.done(job_id), keys.blob(job_id, "original"), keys.blob(job_id, "edited")],
            [status, json.dumps(result) if result is not None else "", json.dumps(error) if error else "",
             f"{time.time():.6f}", ttl_s, worker, min(ttl_s, 600)])


def withdraw_args(keys: Keys, job_id: str, owner: str, annotator: str, ttl_s: int
                  ) -> tuple[list[str], list[Any]]:
    error = {"code": "withdrawn", "message": "the API answered 503 for this submission (Redis did not reply in "
             "time), so it was taken back; a retry is a new job"}
    return ([keys.job(job_id), keys.blob(job_id, "original"), keys.blob(job_id, "edited")],
            [json.dumps(error), f"{time.time():.6f}", ttl_s, job_id, owner, annotator])


def decode_hash(raw: dict) -> dict[str, str]:
    """A hash read from Redis as text. Field names too are decoded with replacement: one that was not UTF-8 (anyone
    who reaches Redis can HSET one into a heartbeat) raised UnicodeDecodeError, and /metrics and /readyz were 500."""
    def text(b: Any) -> Any:
        return b.decode("utf-8", "replace") if isinstance(b, bytes) else b

    return {text(k): text(v) for k, v in raw.items()}


def job_view(h: dict[str, str], include_result: bool = True) -> dict[str, Any]:
    """The public shape of a job (GET /v1/jobs/{id})."""
    def num(name: str) -> float | None:
        try:
            return float(h[name])
        except (KeyError, ValueError):
            return None

    created, started, finished = num("created_at"), num("started_at"), num("finished_at")
    timings: dict[str, float] = {}
    if created and started:
        timings["queued_ms"] = round((started - created) * 1000, 3)
    if created and finished:
        timings["total_ms"] = round((finished - created) * 1000, 3)
    out: dict[str, Any] = {
        "id": h.get("id"), "status": h.get("status"), "annotator": h.get("annotator"),
        "instruction": json.loads(h.get("instruction") or "null"),
        "created_at": created, "started_at": started, "finished_at": finished,
        "attempts": int(h.get("attempts") or 0), "timings_ms": timings,
        "result": None, "error": None,
    }
    if h.get("last_error") and h.get("status") not in ("done",):
        out["last_error"] = json.loads(h["last_error"])
    if include_result and h.get("result"):
        out["result"] = json.loads(h["result"])
    if h.get("error"):
        out["error"] = json.loads(h["error"])
    return out


class JobStore:
    """The worker's side (sync client): load, start, finish, fail jobs; record batch metrics."""

    def __init__(self, client: redis.Redis, keys: Keys, result_ttl_s: int):
        self.r = client
        self.keys = keys
        self.result_ttl_s = result_ttl_s
        self._finish = client.register_script(FINISH)
        self._start = client.register_script(START)
        self._note = client.register_script(NOTE_ERROR)

    def load(self, job_ids: list[str]) -> list[tuple[dict[str, str], bytes | None, bytes | None]]:
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
            pipe.get(self.keys.blob(job_id, "original"))
            pipe.get(self.keys.blob(job_id, "edited"))
        raw = pipe.execute()
        return [(decode_hash(raw[i]), raw[i + 1], raw[i + 2]) for i in range(0, len(raw), 3)]

    def start(self, job_id: str, worker: str, delivery: int = 1) -> str | None:
        out = self._start(keys=[self.keys.job(job_id)], args=[worker, f"{time.time():.6f}", delivery])
        return out.decode() if isinstance(out, bytes) else out

    def finish(self, job_id: str, status: str, worker: str, result: dict | None = None,
               error: dict | None = None) -> int:
        keys, args = finish_args(self.keys, job_id, status, result, error, self.result_ttl_s, worker)
        return int(self._finish(keys=keys, args=args))

    def note_error(self, job_id: str, error: dict) -> None:
        """Record a failed attempt; the job goes back to `queued` until its entry is redelivered."""
        self._note(keys=[self.keys.job(job_id)], args=[json.dumps(error)])

    def record_batch(self, annotator: str, batch_size: int, seconds: float) -> None:
        key = self.keys.metrics(annotator)
        pipe = self.r.pipeline(transaction=False)
        for le in BATCH_BUCKETS:
            if batch_size <= le:
                pipe.hincrby(key, f"batch_le_{le}", 1)
        pipe.hincrby(key, "batch_count", 1)
        pipe.hincrby(key, "batch_sum", batch_size)
        for le in LATENCY_BUCKETS:
            if seconds <= le:
                pipe.hincrby(key, f"infer_le_{le}", 1)
        pipe.hincrbyfloat(key, "infer_sum", seconds)
        pipe.hincrby(key, "infer_count", 1)
        pipe.hincrby(key, "jobs", batch_size)
        pipe.execute()

"""Idempotency-Key (IETF draft-ietf-httpapi-idempotency-key-header, the semantics Stripe popularised).

A key is scoped to its API key (owner) and stored with a digest of the request it was first used with:

- same key, same request → the same job (200 + `Idempotent-Replayed: true`); if that job is gone (deleted,
  or its result expired) the request is run again and the key now names the new job (202);
- same key, another request → 422 `idempotency_key_reused`, nothing queued;
- same key while its first request is still being enqueued → 409 `idempotency_key_in_use` + Retry-After.

"The same request" is what decides the result: the annotator, instruction, threshold, mask mode, the set of outputs and
the two images' bytes (sha256), whether they came as multipart or JSON; `wait` only affects how the answer
is delivered. The record is `P:idem:<len(owner)>:<owner>:<key>` = {digest, job, state}; a claim is held `pending` for
`CLAIM_TTL_S` and made durable (queue.job_ttl_s) once the job is enqueued, so an API that dies between the two
frees the key by itself.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

CLAIM_TTL_S = 30

CLAIM = """
-- KEYS: the idempotency record; ARGV: request digest, new job id, pending ttl, job key prefix.
-- Returns {outcome, job id}: new (claimed for ARGV[2]), replay, mismatch, pending.
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  -- a record from before digests were kept: replay while its job lives, else start afresh
  local old = redis.call('GET', KEYS[1])
  if redis.call('EXISTS', ARGV[4] .. old) == 1 then return {'replay', old} end
  redis.call('DEL', KEYS[1])
end
local cur = redis.call('HMGET', KEYS[1], 'digest', 'job', 'state')
if cur[1] then
  if cur[1] ~= ARGV[1] then return {'mismatch', cur[2]} end
  if cur[3] == 'pending' then
    -- the same claim sent again (the client library retries once after a lost reply) is still this request's
    if cur[2] == ARGV[2] then return {'new', ARGV[2]} end
    return {'pending', cur[2]}
  end
  if redis.call('EXISTS', ARGV[4] .. cur[2]) == 1 then return {'replay', cur[2]} end
end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'job', ARGV[2], 'state', 'pending')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {'new', ARGV[2]}
"""

COMMIT = """
-- KEYS: the record; ARGV: job id, ttl. The job is enqueued: the key names it for ttl seconds.
if redis.call('HGET', KEYS[1], 'job') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'created')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE = """
-- KEYS: the record; ARGV: job id. The request failed (answered 4xx/5xx; a job it may have queued is withdrawn):
-- free the key. Also when it is already committed: a COMMIT whose reply was lost did run, and a key left naming
-- the withdrawn job would replay it to the client's retry instead of queueing the retry.
if redis.call('HGET', KEYS[1], 'job') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def request_digest(annotator: str, instruction: str | None, threshold: float | None, outputs: list[str],
                   original: bytes, edited: bytes, mask_mode: str | None = None) -> str:
    """sha256 of what makes a request this request (hashing 2 x 25 MB releases the GIL: call it in a thread)."""
    fields: dict[str, Any] = {"annotator": annotator, "instruction": instruction, "threshold": threshold,
                              "mask_mode": mask_mode,
                              "outputs": sorted(set(outputs)), "original": hashlib.sha256(original).hexdigest(),
                              "edited": hashlib.sha256(edited).hexdigest()}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class Idempotency:
    """The three steps on a key's record, each one Lua script (atomic against concurrent requests)."""

    def __init__(self, client: Any, job_key_prefix: str, ttl_s: int):
        self.job_key_prefix = job_key_prefix
        self.ttl_s = ttl_s
        self._claim = client.register_script(CLAIM)
        self._commit = client.register_script(COMMIT)
        self._release = client.register_script(RELEASE)

    async def claim(self, key: str, digest: str, job_id: str) -> tuple[str, str]:
        outcome, job = await self._claim(keys=[key], args=[digest, job_id, CLAIM_TTL_S, self.job_key_prefix])
        return (outcome.decode() if isinstance(outcome, bytes) else outcome,
                job.decode() if isinstance(job, bytes) else job)

    async def commit(self, key: str, job_id: str) -> None:
        await self._commit(keys=[key], args=[job_id, self.ttl_s])

    async def release(self, key: str, job_id: str) -> None:
        await self._release(keys=[key], args=[job_id])

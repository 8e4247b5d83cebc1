"""The API's shared state and its dependency: settings, Redis clients and scripts, metrics, key checks.

Routes get it with `Depends(get_service)`; it is made once per app (`create_app`) and opened inside the
server's event loop (an asyncio Redis pool is bound to the loop that made it).
"""
from __future__ import annotations

import logging
import re
from typing import Any

import anyio
import redis
from fastapi import Request

from sigma.api.auth import KeyChecker, Principal
from sigma.api.budget import ByteBudget, charged_request, declared_length
from sigma.api.errors import ApiError
from sigma.api.idempotency import Idempotency, request_digest
from sigma.api.metrics import ApiMetrics, note_damage, number
from sigma.api.readiness import WorkerMemory
from sigma.api.requests import AnnotateOptions, Submission, parse_submission
from sigma.api.withdrawals import Withdrawals
from sigma.errors import SigmaError
from sigma.service.connections import async_client, sync_client
from sigma.service.heartbeats import heartbeat_pages_async
from sigma.service.jobs import ENQUEUE, FINISH, decode_hash, enqueue_args, job_fields, new_job_id
from sigma.service.keys import Keys
from sigma.service.settings import ServeConfig
from sigma.text import shown

log = logging.getLogger("sigma.api")
# matched whole (`fullmatch`): `$` matches before a trailing newline, so `/v1/jobs/<32 hex>%0A` passed as a job id and
# was looked up in Redis under a key with a newline (the answer: `no job <id>\n (finished jobs are kept ...)`)
JOB_ID = re.compile(r"[0-9a-f]{32}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


class Service:
    """State shared by the routes: settings, Redis clients and scripts, metrics."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.keys = Keys(cfg.redis.key_prefix)
        self.io_config = cfg.limits.io_config(cfg.api.align)
        self.metrics = ApiMetrics()
        self.auth = KeyChecker(cfg.auth)
        self.budget = ByteBudget(cfg.limits.max_bytes_in_flight, cfg.limits.retry_after_s)
        self.metrics.bytes_in_flight.set_function(lambda: self.budget.used)
        self.worker_memory = WorkerMemory(cfg.queue.heartbeat_ttl_ms / 1000)      # /readyz across a FLUSHALL
        self._sync: redis.Redis | None = None
        self._metrics_cut = False

    async def open(self) -> None:
        """Clients are made inside the server's event loop (an asyncio pool is bound to its loop)."""
        self.r = async_client(self.cfg.redis, self.cfg.redis.socket_timeout_s)
        # BLPOP holds its connection for the whole wait: a client whose socket timeout outlasts it.
        self.rb = async_client(self.cfg.redis, self.cfg.api.max_wait_timeout_s + self.cfg.redis.socket_timeout_s)
        self.enqueue_script = self.r.register_script(ENQUEUE)
        self.finish_script = self.r.register_script(FINISH)
        self.idempotency = Idempotency(self.r, self.keys.job(""), self.cfg.queue.job_ttl_s)
        self.withdrawals = Withdrawals(self.r, self.keys, self.cfg.queue.result_ttl_s, self.cfg.queue.job_ttl_s,
                                       on_done=self.metrics.withdrawn.inc)

    async def close(self) -> None:
        await self.withdrawals.close()
        await self.r.aclose()
        await self.rb.aclose()
        if self._sync is not None:
            self._sync.close()

    @property
    def sync_redis(self) -> redis.Redis:
        """One blocking client (thread-safe pool) for the batch routes, which run the fleet's sync code in
        worker threads: a status poll reuses its connection instead of connecting each time. Read it on the
        event loop, not in the threads, so only one is ever made."""
        if self._sync is None:
            self._sync = sync_client(self.cfg.redis)
        return self._sync

    # -- submitting ------------------------------------------------------------------------
    def annotator_for(self, options: AnnotateOptions) -> str:
        name = options.annotator or self.cfg.api.annotators[0]
        if name not in self.cfg.api.annotators:
            raise ApiError(422, "unknown_annotator", f"annotator {name!r} is not served here; "
                           f"served: {', '.join(self.cfg.api.annotators)}")
        return name

    async def check_room(self, annotator: str) -> None:
        """The annotator's own queue (limits are per annotator stream); ENQUEUE re-checks atomically."""
        if await self.r.xlen(self.keys.stream(annotator)) >= self.cfg.limits.max_queue_length:
            self.reject_full(annotator)

    async def check_any_room(self) -> None:
        """Cheap early 429 before the body is read: only when every served queue is full, since the body
        names the annotator (one full queue must not refuse a request for another)."""
        pipe = self.r.pipeline(transaction=False)
        for name in self.cfg.api.annotators:
            pipe.xlen(self.keys.stream(name))
        if all(n >= self.cfg.limits.max_queue_length for n in await pipe.execute()):
            self.reject_full(None)

    def reject_full(self, annotator: str | None) -> None:
        self.metrics.rejected.labels("queue_full").inc()
        which = f"the {annotator} queue holds" if annotator else "every queue holds"
        raise ApiError(429, "queue_full", f"{which} limits.max_queue_length="
                       f"{self.cfg.limits.max_queue_length} jobs; retry after "
                       f"{self.cfg.limits.retry_after_s} s", {"Retry-After": str(self.cfg.limits.retry_after_s)})

    async def validate(self, sub: Submission) -> None:
        from sigma.api.probe import check_pair

        try:
            await anyio.to_thread.run_sync(check_pair, sub.original, sub.edited, sub.options.instruction,
                                           self.io_config, self.cfg.api.upload_check == "full")
        except SigmaError:
            self.metrics.rejected.labels("invalid_input").inc()
            raise
        except Exception as exc:
            log.warning("decoder raised %s on an upload", type(exc).__name__)
            self.metrics.rejected.labels("invalid_input").inc()
            raise ApiError(422, "image_unreadable", f"an image could not be decoded ({type(exc).__name__})"
                           ) from exc

    async def submit(self, request: Request, principal: Principal, idempotency_key: str | None = None
                     ) -> tuple[str, bool, AnnotateOptions]:
        """Validate and enqueue; returns (job id, created, options). With an idempotency key, the same request
        replays its job (created=False) and another request under the key is refused (`idempotency.py`)."""
        if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise ApiError(422, "invalid_request", "Idempotency-Key must be 1-200 printable ASCII characters")
        if idempotency_key is not None and len(request.headers.getlist("idempotency-key")) > 1:
            # the route reads the first field line; a proxy may keep the last or join them (`a, b`): which request
            # the key names is ambiguous, as a JSON key named twice is (RFC 9110 5.3: one line for a singleton field)
            raise ApiError(422, "invalid_request", "Idempotency-Key given more than once: send it once")
        await self.check_any_room()
        limits = self.cfg.limits
        try:
            with self.budget.hold(declared_length(request)) as reservation:
                sub = await parse_submission(charged_request(request, reservation), limits.max_instruction_chars,
                                             self.cfg.api.multipart_spool_bytes, limits.max_bytes)
                annotator = self.annotator_for(sub.options)
                await self.check_room(annotator)
                await self.validate(sub)
                return await self._enqueue(sub, annotator, principal, idempotency_key)
        except ApiError as exc:
            if exc.code == "server_busy":
                self.metrics.rejected.labels("server_busy").inc()
            raise

    async def _enqueue(self, sub: Submission, annotator: str, principal: Principal, idempotency_key: str | None
                       ) -> tuple[str, bool, AnnotateOptions]:
        job_id = new_job_id()
        outputs = list(dict.fromkeys(sub.options.outputs))
        idem_key = None
        if idempotency_key is not None:
            idem_key = self.keys.idem(principal.name, idempotency_key)
            digest = await anyio.to_thread.run_sync(request_digest, annotator, sub.options.instruction,
                                                    sub.options.threshold, outputs, sub.original, sub.edited,
                                                    sub.options.mask_mode)
            outcome, existing = await self.idempotency.claim(idem_key, digest, job_id)
            if outcome == "replay":
                return existing, False, sub.options
            if outcome == "mismatch":
                raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with another request "
                               "(other images or options); use a new key for a new request")
            if outcome == "pending":
                raise ApiError(409, "idempotency_key_in_use", "a request with this Idempotency-Key is still being "
                               "queued; retry shortly", {"Retry-After": "1"})
        fields = job_fields(job_id, annotator, principal.name, sub.options.instruction, sub.options.threshold,
                            outputs, sub.options.mask_mode)
        ttl = self.cfg.queue.job_ttl_s
        keys, args = enqueue_args(self.keys, job_id, fields, self.cfg.limits.max_queue_length, ttl)
        try:
            pipe = self.r.pipeline(transaction=True)
            pipe.set(keys[2], sub.original, ex=ttl)
            pipe.set(keys[3], sub.edited, ex=ttl)
            await self.enqueue_script(keys=keys, args=args, client=pipe)
            queued = bool((await pipe.execute())[-1])
        except BaseException as exc:
            if not isinstance(exc, redis.ResponseError):    # a refused MULTI ran nothing; else it may yet run
                self.withdrawals.start(job_id, principal.name, annotator)
            if idem_key:
                await self._release_quietly(idem_key, job_id)
            raise
        if not queued:
            if idem_key:
                await self._release_quietly(idem_key, job_id)
            self.reject_full(annotator)
        if idem_key:
            try:
                await self.idempotency.commit(idem_key, job_id)
            except BaseException:
                # The job is queued but its key does not name it (Redis failed in between): answered 503 like a
                # lost MULTI reply, so it is taken back too, or it would run unseen and a retry would be a second job.
                self.withdrawals.start(job_id, principal.name, annotator)
                await self._release_quietly(idem_key, job_id)
                raise
        self.metrics.enqueued.labels(annotator).inc()
        return job_id, True, sub.options

    async def _release_quietly(self, idem_key: str, job_id: str) -> None:
        try:
            await self.idempotency.release(idem_key, job_id)
        except redis.RedisError:      # the claim expires by itself (CLAIM_TTL_S)
            log.warning("could not release idempotency claim %s", idem_key)

    # -- reading ---------------------------------------------------------------------------
    async def job(self, job_id: str, principal: Principal) -> dict[str, str]:
        if not JOB_ID.fullmatch(job_id):   # not a job id: said without echoing it (a 60 KB path came back whole)
            # an id in capitals (a client that normalises case) was told ids are "32 hex digits", which it was
            raise ApiError(404, "job_not_found", f"no job {shown(job_id)!r}: job ids are 32 hex digits, in lower "
                           "case, as POST /v1/jobs answers them")
        h = decode_hash(await self.r.hgetall(self.keys.job(job_id)))
        if not h or (h.get("owner") != principal.name and not principal.admin):
            # one answer for every way a job is not there, its owner's or not (no job's existence is told to another
            # key); it said only "(finished jobs are kept N s)", and a job Redis lost (FLUSHALL, a restart without
            # persistence) read as one that had expired
            raise ApiError(404, "job_not_found", f"no job {job_id} for this key: never made, deleted, expired "
                           f"(finished jobs are kept {self.cfg.queue.result_ttl_s} s, queued ones "
                           f"{self.cfg.queue.job_ttl_s} s), or lost by the queue's Redis (emptied, or restarted "
                           "without persistence); submit it again")
        return h

    async def wait(self, job_id: str, seconds: float) -> dict[str, str] | None:
        """The job's record after waiting up to `seconds` for it to finish; None when Redis failed or did not
        answer within `seconds` + `redis.socket_timeout_s`. The job is queued either way, so the caller answers
        with its id (202), never 503 (which says "not queued": a client would submit it again)."""
        try:
            with anyio.fail_after(seconds + self.cfg.redis.socket_timeout_s):
                if seconds > 0:
                    await self.rb.blpop([self.keys.done(job_id)], timeout=seconds)
                return decode_hash(await self.r.hgetall(self.keys.job(job_id)))
        except (redis.RedisError, OSError) as exc:      # OSError: anyio's TimeoutError too
            log.warning("waiting for queued job %s: redis did not answer (%s); answering 202", job_id,
                        type(exc).__name__)
            return None

    # -- health ----------------------------------------------------------------------------
    async def read_heartbeats(self, into: dict[str, tuple[float, dict[str, str]]]) -> None:
        """Every live worker heartbeat hash into `into`, as `worker name: (last beat, hash)`; the name is the key's,
        after `P:worker:`. The keys come from the heartbeat registry in one round trip (`sigma.service.heartbeats`:
        a SCAN MATCH walked every key, 200 round trips per scrape or /readyz over 200 000 job keys; it is the
        fallback only while no worker of this release registers), their hashes in one HGETALL pipeline per 1000
        (one HGETALL each, in sequence, made a scrape over a Redis 40 ms away last 6 s with 150 heartbeats). Filled
        page by page, so a caller whose deadline cuts the read keeps what was read.

        A key's name is unique, its `consumer` field is not (anyone who reaches Redis can write one): two hashes
        naming one consumer were two samples of one series, and Prometheus refuses such a scrape. Names that read
        alike (bytes that are not UTF-8, a key SCAN returns twice) keep the newest beat. A key under the pattern
        that is not a hash (WRONGTYPE: written by someone else) is skipped: it failed the whole read, and /readyz
        then said Redis was unreachable."""
        skip = len(self.keys.worker(""))
        async for found in heartbeat_pages_async(self.r, self.keys.worker_registry(), self.keys.worker_pattern()):
            pipe = self.r.pipeline(transaction=False)
            for key in found:
                pipe.hgetall(key)
            for key, answer in zip(found, await pipe.execute(raise_on_error=False)):
                name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
                if isinstance(answer, redis.ResponseError):
                    note_damage(f"{shown(name)!r} is not a heartbeat hash")
                    continue
                if isinstance(answer, Exception):
                    raise answer
                h = decode_hash(answer)
                beat = number(h.get("last_beat")) or 0.0
                if h and (name[skip:] not in into or beat >= into[name[skip:]][0]):
                    into[name[skip:]] = (beat, h)

    async def workers(self) -> list[dict[str, str]]:
        """Every worker heartbeat hash (`read_heartbeats`)."""
        found: dict[str, tuple[float, dict[str, str]]] = {}
        await self.read_heartbeats(found)
        return [h for _, h in found.values()]

    async def snapshot(self) -> dict[str, Any]:
        """What /metrics shows from Redis, read within `api.metrics_timeout_s`: a Redis that answers slowly (or a
        keyspace SCAN takes long to walk) made a scrape last past Prometheus' scrape timeout, and every timed-out
        scrape kept loading Redis. Cut there, the snapshot keeps what it read (`complete` False); `redis_up` is
        True once Redis answered, False when it could not be asked (a timeout, no connection, nothing back before
        the deadline). A key of the wrong type costs only its own series (`sigma.api.metrics`)."""
        snap: dict[str, Any] = {"redis_up": False, "complete": False, "queues": {}, "heartbeats": {},
                                "worker_metrics": {}, "annotators": list(self.cfg.api.annotators)}
        with anyio.move_on_after(self.cfg.api.metrics_timeout_s) as scope:
            try:
                await self._read_queues(snap)
                snap["redis_up"] = True
                await self.read_heartbeats(snap["heartbeats"])
                snap["complete"] = True
            except (redis.RedisError, OSError) as exc:
                snap["redis_up"] = False
                snap["error"] = f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught != self._metrics_cut:     # one line per change, not one per scrape
            self._metrics_cut = scope.cancelled_caught
            if scope.cancelled_caught:
                log.warning("metrics: Redis reads cut after api.metrics_timeout_s=%s s (%s); sigma_metrics_snapshot_"
                            "complete 0 until a scrape reads everything again", self.cfg.api.metrics_timeout_s,
                            "queues read" if snap["redis_up"] else "nothing read")
            else:
                log.info("metrics: Redis reads complete within api.metrics_timeout_s again")
        return snap

    async def _read_queues(self, snap: dict[str, Any]) -> None:
        """Depth, dead letters, pending and the worker histograms of every annotator: one pipeline, one round trip."""
        pipe = self.r.pipeline(transaction=False)
        names = self.cfg.api.annotators
        for name in names:
            pipe.xlen(self.keys.stream(name))
            pipe.xlen(self.keys.dead(name))
            pipe.xpending(self.keys.stream(name), self.cfg.queue.group)
            pipe.hgetall(self.keys.metrics(name))
        answers = await pipe.execute(raise_on_error=False)
        for answer in answers:
            if isinstance(answer, Exception) and not isinstance(answer, redis.ResponseError):
                raise answer
        for i, name in enumerate(names):
            depth, dead, pending, wm = answers[4 * i:4 * i + 4]
            if isinstance(depth, redis.ResponseError) or isinstance(dead, redis.ResponseError):
                note_damage(f"{self.keys.stream(name)} or {self.keys.dead(name)} is not a stream")
            else:
                # NOGROUP (no worker made the group yet): nothing is pending
                n = 0 if isinstance(pending, redis.ResponseError) else int(pending["pending"])
                snap["queues"][name] = {"depth": depth, "pending": n, "dead": dead}
            if isinstance(wm, redis.ResponseError):
                note_damage(f"{self.keys.metrics(name)} is not a hash")
                wm = {}
            snap["worker_metrics"][name] = decode_hash(wm)


def get_service(request: Request) -> Service:
    """The dependency every route takes: the app's one Service."""
    return request.app.state.service

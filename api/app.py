"""The HTTP front end: validate, enqueue on Redis Streams, wait for (or point to) the result.

The API never runs a model. It decodes both images once (with the service's limits) so a bad
upload is a 4xx with a stable code before anything is queued, stores the original bytes and a job
record in one Lua script, and either waits on the job's `done` list (POST /v1/annotate) or
answers 202 at once (POST /v1/jobs). Run it with `sigma serve api` or
`uvicorn --factory api.app:app_from_env`.
"""
from __future__ import annotations

import json
import logging
import re
import time
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis
import redis.asyncio as aredis
from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from sigma.api import errors
from sigma.api.auth import KeyChecker, Principal
from sigma.api.batches import install_batches
from sigma.api.errors import ApiError
from sigma.api.metrics import ApiMetrics, render
from sigma.api.middleware import BodyLimit, RequestMetrics
from sigma.api.requests import AnnotateJson, AnnotateOptions, Submission, parse_submission
from sigma.errors import SigmaError
from sigma.service.jobs import (
    ENQUEUE,
    FINISH,
    TERMINAL,
    decode_hash,
    enqueue_args,
    finish_args,
    job_fields,
    job_view,
    new_job_id,
)
from sigma.service.keys import Keys
from sigma.service.settings import ServeConfig, load_serve_config

log = logging.getLogger("sigma.api")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
WORKER_SIDE_FAILURES = ("dead_letter", "model_error", "worker_lost", "job_expired")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")

ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for status, text in [(400, "malformed body"), (401, "missing or unknown API key"), (403, "wrong scope"),
                         (404, "no such job"), (413, "upload too large"), (415, "unsupported media type"),
                         (422, "invalid input"), (429, "queue full (see Retry-After)"),
                         (503, "queue unreachable")]}


def _multipart_schema() -> dict[str, Any]:
    props: dict[str, Any] = {"original": {"type": "string", "format": "binary"},
                             "edited": {"type": "string", "format": "binary"}}
    for name, field in AnnotateOptions.model_fields.items():
        props[name] = {"type": "string", "description": field.description or name}
    return {"type": "object", "required": ["original", "edited"], "properties": props}


SUBMIT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": _multipart_schema()},
    "application/json": {"schema": AnnotateJson.model_json_schema()}}}}


def _client(cfg: ServeConfig, socket_timeout: float | None) -> aredis.Redis:
    return aredis.Redis.from_url(cfg.redis.url, socket_connect_timeout=cfg.redis.connect_timeout_s,
                                 socket_timeout=socket_timeout, max_connections=cfg.redis.max_connections,
                                 retry=AsyncRetry(NoBackoff(), 1), health_check_interval=5)


class Service:
    """State shared by the routes: settings, Redis clients and scripts, metrics."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.keys = Keys(cfg.redis.key_prefix)
        self.io_config = cfg.limits.io_config(cfg.api.align)
        self.metrics = ApiMetrics()
        self.auth = KeyChecker(cfg.auth)

    async def open(self) -> None:
        """Clients are made inside the server's event loop (an asyncio pool is bound to its loop)."""
        self.r = _client(self.cfg, self.cfg.redis.socket_timeout_s)
        # BLPOP holds its connection for the whole wait: a client whose socket timeout outlasts it.
        self.rb = _client(self.cfg, self.cfg.api.max_wait_timeout_s + self.cfg.redis.socket_timeout_s)
        self.enqueue_script = self.r.register_script(ENQUEUE)
        self.finish_script = self.r.register_script(FINISH)

    async def close(self) -> None:
        await self.r.aclose()
        await self.rb.aclose()

    # -- submitting ------------------------------------------------------------------------
    def annotator_for(self, options: AnnotateOptions) -> str:
        name = options.annotator or self.cfg.api.annotators[0]
        if name not in self.cfg.api.annotators:
            raise ApiError(422, "unknown_annotator", f"annotator {name!r} is not served here; "
                           f"served: {', '.join(self.cfg.api.annotators)}")
        return name

    async def check_room(self, annotator: str) -> None:
        """Cheap early 429 before the body is read and decoded; ENQUEUE re-checks atomically."""
        if await self.r.xlen(self.keys.stream(annotator)) >= self.cfg.limits.max_queue_length:
            self.reject_full()

    def reject_full(self) -> None:
        self.metrics.rejected.labels("queue_full").inc()
        raise ApiError(429, "queue_full", f"the queue holds limits.max_queue_length="
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
        """Validate and enqueue; returns (job id, created, options). An idempotency key replays the first job."""
        default = self.cfg.api.annotators[0]
        await self.check_room(default)
        sub = await parse_submission(request, self.cfg.limits.max_instruction_chars)
        annotator = self.annotator_for(sub.options)
        if annotator != default:
            await self.check_room(annotator)
        await self.validate(sub)
        job_id = new_job_id()
        idem_key = None
        if idempotency_key is not None:
            if not IDEMPOTENCY_KEY.match(idempotency_key):
                raise ApiError(422, "invalid_request", "Idempotency-Key must be 1-200 printable ASCII characters")
            idem_key = self.keys.idem(principal.name, idempotency_key)
            if not await self.r.set(idem_key, job_id, nx=True, ex=self.cfg.queue.job_ttl_s):
                existing = await self.r.get(idem_key)
                if existing:
                    return existing.decode(), False, sub.options
        fields = job_fields(job_id, annotator, principal.name, sub.options.instruction, sub.options.threshold,
                            list(dict.fromkeys(sub.options.outputs)))
        ttl = self.cfg.queue.job_ttl_s
        keys, args = enqueue_args(self.keys, job_id, fields, self.cfg.limits.max_queue_length, ttl)
        pipe = self.r.pipeline(transaction=True)
        pipe.set(keys[2], sub.original, ex=ttl)
        pipe.set(keys[3], sub.edited, ex=ttl)
        await self.enqueue_script(keys=keys, args=args, client=pipe)
        if not (await pipe.execute())[-1]:
            if idem_key:
                await self.r.delete(idem_key)
            self.reject_full()
        self.metrics.enqueued.labels(annotator).inc()
        return job_id, True, sub.options

    # -- reading ---------------------------------------------------------------------------
    async def job(self, job_id: str, principal: Principal) -> dict[str, str]:
        if not JOB_ID.match(job_id):
            raise ApiError(404, "job_not_found", f"no job {job_id!r}")
        h = decode_hash(await self.r.hgetall(self.keys.job(job_id)))
        if not h or (h.get("owner") != principal.name and not principal.admin):
            raise ApiError(404, "job_not_found", f"no job {job_id} (finished jobs are kept "
                           f"{self.cfg.queue.result_ttl_s} s)")
        return h

    async def wait(self, job_id: str, seconds: float) -> dict[str, str]:
        if seconds > 0:
            await self.rb.blpop([self.keys.done(job_id)], timeout=seconds)
        return decode_hash(await self.r.hgetall(self.keys.job(job_id)))

    # -- health ----------------------------------------------------------------------------
    async def workers(self) -> list[dict[str, str]]:
        found = []
        async for key in self.r.scan_iter(match=self.keys.worker_pattern(), count=200):
            h = decode_hash(await self.r.hgetall(key))
            if h:
                found.append(h)
        return found

    async def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = {"redis_up": False, "queues": {}, "workers": [], "worker_metrics": {}}
        try:
            for name in self.cfg.api.annotators:
                stream = self.keys.stream(name)
                pipe = self.r.pipeline(transaction=False)
                pipe.xlen(stream)
                pipe.xlen(self.keys.dead(name))
                pipe.hgetall(self.keys.metrics(name))
                depth, dead, wm = await pipe.execute()
                try:
                    pending = int((await self.r.xpending(stream, self.cfg.queue.group))["pending"])
                except redis.ResponseError:
                    pending = 0
                snap["queues"][name] = {"depth": depth, "pending": pending, "dead": dead}
                snap["worker_metrics"][name] = decode_hash(wm)
            snap["workers"] = await self.workers()
            snap["redis_up"] = True
        except (redis.RedisError, OSError) as exc:
            snap["error"] = f"{type(exc).__name__}: {exc}"
        return snap


def _job_response(h: dict[str, str], status_code: int = 200, headers: dict[str, str] | None = None
                  ) -> JSONResponse:
    return JSONResponse(job_view(h), status_code=status_code, headers=headers)


def _accepted(job_id: str, status: str = "queued") -> JSONResponse:
    url = f"/v1/jobs/{job_id}"
    return JSONResponse({"id": job_id, "status": status, "links": {"self": url, "mask": f"{url}/mask.png"}},
                        status_code=202, headers={"Location": url})


def create_app(cfg: ServeConfig) -> FastAPI:
    if not cfg.auth.keys and not cfg.auth.allow_anonymous:
        from sigma.errors import ConfigError

        raise ConfigError("no API keys configured: set SIGMA_API_KEYS (comma-separated) or auth.keys, or "
                          "auth.allow_anonymous=true for local use")
    svc = Service(cfg)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await svc.open()
        yield
        await svc.close()

    app = FastAPI(title="SIGMA annotation service", version="1",
                  description="Queue (original, edited, instruction) triples to GPU workers and get pixel "
                  "masks back (COCO RLE with SA-1B field names). Errors: {\"error\": {\"code\", \"message\"}}.",
                  lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.service = svc
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=cfg.limits.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=svc.metrics)
    annotate_scope = Depends(svc.auth.require("annotate"))
    metrics_scope = Depends(svc.auth.require("metrics"))
    install_batches(app, cfg, svc.auth.require("annotate"))

    @app.post("/v1/annotate", tags=["annotate"], openapi_extra=SUBMIT_BODY, summary="annotate one pair, waiting",
              responses={200: {"description": "the finished job with its result"},
                         202: {"description": "not finished within the wait; poll Location"}})
    async def annotate(request: Request, principal: Principal = annotate_scope):
        t0 = time.perf_counter()
        job_id, _, options = await svc.submit(request, principal)
        wait = svc.cfg.api.wait_timeout_s if options.wait is None else options.wait
        h = await svc.wait(job_id, min(wait, svc.cfg.api.max_wait_timeout_s))
        status = h.get("status")
        if status == "done":
            view = job_view(h)
            view["timings_ms"]["api_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            return JSONResponse(view)
        if status in ("failed", "cancelled"):
            err = json.loads(h.get("error") or "{}")
            code = err.get("code", "annotation_failed")
            if status == "cancelled":
                http, code = 409, "cancelled"
            elif code in WORKER_SIDE_FAILURES:
                http, code = 500, "annotation_failed"
            else:   # an input error only a full decode finds (a truncated JPEG): same codes as the API's
                http = errors.STATUS_BY_CODE.get(code, 422)
            return errors.error_response(http, code, err.get("message", "annotation failed"), job_id=job_id)
        return _accepted(job_id, status or "queued")

    @app.post("/v1/jobs", tags=["jobs"], openapi_extra=SUBMIT_BODY, status_code=202, summary="queue one pair")
    async def submit_job(request: Request, principal: Principal = annotate_scope,
                         idempotency_key: str | None = Header(None, alias="Idempotency-Key")):
        job_id, created, _ = await svc.submit(request, principal, idempotency_key)
        if created:
            return _accepted(job_id)
        h = await svc.job(job_id, principal)
        return _job_response(h, 200, {"Location": f"/v1/jobs/{job_id}", "Idempotent-Replayed": "true"})

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], summary="status and result of a job")
    async def get_job(job_id: str, principal: Principal = annotate_scope):
        return _job_response(await svc.job(job_id, principal))

    @app.get("/v1/jobs/{job_id}/mask.png", tags=["jobs"], summary="the mask as a 0/255 PNG",
             responses={200: {"content": {"image/png": {}}}})
    async def get_mask(job_id: str, principal: Principal = annotate_scope):
        from sigma.io import decode_rle, encode_png

        h = await svc.job(job_id, principal)
        if h.get("status") != "done":
            raise ApiError(409, "mask_not_available", f"job {job_id} is {h.get('status')}; the mask exists once "
                           "it is done")
        seg = json.loads(h["result"])["segmentation"]
        png = await anyio.to_thread.run_sync(lambda: encode_png(decode_rle(seg).astype("uint8") * 255))
        return Response(png, media_type="image/png")

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="cancel a queued job or delete a finished one")
    async def delete_job(job_id: str, principal: Principal = annotate_scope):
        h = await svc.job(job_id, principal)
        if h.get("status") in TERMINAL:
            await svc.r.delete(svc.keys.job(job_id), svc.keys.done(job_id))
            return {"id": job_id, "status": h.get("status"), "deleted": True}
        keys, args = finish_args(svc.keys, job_id, "cancelled", None,
                                 {"code": "cancelled", "message": f"cancelled by {principal.name}"},
                                 cfg.queue.result_ttl_s, "api")
        await svc.finish_script(keys=keys, args=args)
        return {"id": job_id, "status": "cancelled", "deleted": False}

    @app.get("/healthz", tags=["health"], summary="the process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Redis reachable, a worker alive, its model loaded")
    async def readyz():
        checks: dict[str, dict[str, Any]] = {}
        try:
            t = time.perf_counter()
            await svc.r.ping()
            checks["redis"] = {"ok": True, "ms": round((time.perf_counter() - t) * 1000, 2)}
            workers = await svc.workers()
            served = [w for w in workers if w.get("annotator") in cfg.api.annotators]
            checks["workers"] = {"ok": bool(served), "alive": len(served),
                                 "by_annotator": {a: sum(w.get("annotator") == a for w in served)
                                                  for a in cfg.api.annotators}}
            loaded = [w for w in served if w.get("model_loaded") == "1"]
            checks["model"] = {"ok": bool(loaded), "loaded": sorted({w.get("annotator", "") for w in loaded})}
        except (redis.RedisError, OSError) as exc:
            checks["redis"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            checks["workers"] = {"ok": False, "error": "unknown while Redis is unreachable"}
            checks["model"] = {"ok": False, "error": "unknown while Redis is unreachable"}
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                            status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", dependencies=[metrics_scope],
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics():
        snap = await svc.snapshot()
        return Response(render(svc.metrics, snap), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def app_from_env() -> FastAPI:
    """`uvicorn --factory api.app:app_from_env`: config file from SIGMA_SERVE_CONFIG, then env vars."""
    import os

    return create_app(load_serve_config(os.environ.get("SIGMA_SERVE_CONFIG")))

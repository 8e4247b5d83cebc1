"""Health and metrics: `/healthz` (alive), `/readyz` (Redis, a worker, its model), `/metrics` (Prometheus)."""
from __future__ import annotations

import collections
import logging
import time
from typing import Any

import anyio
import redis
import redis.exceptions as redis_errors
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from sigma.api.auth import require_scope
from sigma.api.metrics import render
from sigma.api.service import Service, get_service
from sigma.service.heartbeats import loading

log = logging.getLogger("sigma.api")
router = APIRouter()
SERVICE = Depends(get_service)
METRICS = Depends(require_scope("metrics"))


@router.get("/healthz", tags=["health"], summary="the process is alive")
async def healthz():
    return {"status": "ok"}

def redis_problem(exc: BaseException) -> str:
    """What a caller may read about a Redis failure: a phrase, never the address (that goes to the log)."""
    if isinstance(exc, redis_errors.OutOfMemoryError):
        return "out of memory"
    if isinstance(exc, redis.TimeoutError):
        return "not answering (timeout)"
    if isinstance(exc, redis_errors.BusyLoadingError):
        return "loading its data"
    if isinstance(exc, redis.ConnectionError):
        return "unreachable"
    if isinstance(exc, redis_errors.ReadOnlyError) or str(exc).startswith(("MISCONF", "READONLY")):
        return "refuses writes"
    return "error"


_last_problem: list[str | None] = [None]


def _log_change(problem: str | None, exc: BaseException | None = None) -> None:
    """One log line per change of Redis' state, not one per probe."""
    if problem != _last_problem[0]:
        if problem is None:
            log.info("readyz: redis is ok again")
        else:
            log.warning("readyz: redis %s (%s: %s)", problem, type(exc).__name__, exc)
        _last_problem[0] = problem


async def redis_check(svc: Service) -> dict[str, Any]:
    """PING, then a write probe: Redis still answers PING when it refuses every write (over `maxmemory` with
    noeviction, a failed RDB save, a read-only replica), and submissions then fail with 503."""
    t = time.perf_counter()
    try:
        await svc.r.ping()
        await svc.r.set(svc.keys.readiness_probe(), "1", px=10_000)
    except (redis.RedisError, OSError) as exc:
        problem = redis_problem(exc)
        _log_change(problem, exc)
        return {"ok": False, "error": problem}
    _log_change(None)
    return {"ok": True, "ms": round((time.perf_counter() - t) * 1000, 2)}


@router.get("/readyz", tags=["health"], summary="Redis reachable and writable, a worker alive, its model loaded")
async def readyz(svc: Service = SERVICE):
    """Bounded by `api.readyz_timeout_s`, as /metrics is by `api.metrics_timeout_s`: a Redis that answers slowly
    made a probe last as long as Redis took (a socket timeout per command), past the probe's own timeout. Cut
    there, the checks not done say so and the answer is 503."""
    bound = svc.cfg.api.readyz_timeout_s
    late = {"ok": False, "error": f"not read within api.readyz_timeout_s={bound} s"}
    checks: dict[str, dict[str, Any]] = {}
    with anyio.move_on_after(bound) as scope:
        checks["redis"] = await redis_check(svc)
        try:
            if checks["redis"].get("error") in ("unreachable", "not answering (timeout)"):
                raise redis.ConnectionError    # one wait for a frozen server is enough
            # across a loss of Redis' data (FLUSHALL) the workers seen before it count until their next beat
            workers, remembered = await svc.worker_memory.workers(svc)
            # a worker still loading its model (or waiting out memory, threads or a busy folder to load it) takes no
            # job: it is no worker for readiness, but named, with its annotator, under `loading` (it was absent)
            serving = [w for w in workers if w.get("annotator") in svc.cfg.api.annotators]
            served = [w for w in serving if not loading(w)]
            loading_by = dict(collections.Counter(w.get("annotator", "") for w in serving if loading(w)))
            by_annotator = {a: sum(w.get("annotator") == a for w in served) for a in svc.cfg.api.annotators}
            # ready while any served annotator has a worker (a 503 would take the API out of a load balancer and stop
            # the annotators that work too); those without one are named, so a probe or a person reading it sees
            # the degraded state (their jobs queue and wait), as `sigma_workers_alive == 0` alerts on it
            checks["workers"] = {"ok": bool(served), "alive": len(served), "by_annotator": by_annotator,
                                 "without_worker": sorted(a for a, n in by_annotator.items() if n == 0),
                                 "loading": loading_by, "remembered": remembered}
            loaded = [w for w in served if w.get("model_loaded") == "1"]
            checks["model"] = {"ok": bool(loaded), "loaded": sorted({w.get("annotator", "") for w in loaded})}
        except (redis.RedisError, OSError):
            checks["workers"] = {"ok": False, "error": "unknown while Redis is unreachable"}
            checks["model"] = {"ok": False, "error": "unknown while Redis is unreachable"}
    if scope.cancelled_caught:
        if "redis" not in checks:
            checks["redis"] = {"ok": False, "error": "not answering (timeout)"}
            _log_change("not answering (timeout)", TimeoutError(late["error"]))
        for name in ("workers", "model"):
            checks.setdefault(name, dict(late))
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics", dependencies=[METRICS],
         responses={200: {"content": {"text/plain": {}}}})
async def metrics(svc: Service = SERVICE):
    snap = await svc.snapshot()
    return Response(render(svc.metrics, snap), media_type="text/plain; version=0.0.4; charset=utf-8")


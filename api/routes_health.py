"""Health and metrics: `/healthz` (alive), `/readyz` (Redis, a worker, its model), `/metrics` (Prometheus)."""
from __future__ import annotations

import time
from typing import Any

import redis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from sigma.api.auth import require_scope
from sigma.api.metrics import render
from sigma.api.service import Service, get_service

router = APIRouter()
SERVICE = Depends(get_service)
METRICS = Depends(require_scope("metrics"))


@router.get("/healthz", tags=["health"], summary="the process is alive")
async def healthz():
    return {"status": "ok"}

@router.get("/readyz", tags=["health"], summary="Redis reachable, a worker alive, its model loaded")
async def readyz(svc: Service = SERVICE):
    checks: dict[str, dict[str, Any]] = {}
    try:
        t = time.perf_counter()
        await svc.r.ping()
        checks["redis"] = {"ok": True, "ms": round((time.perf_counter() - t) * 1000, 2)}
        workers = await svc.workers()
        served = [w for w in workers if w.get("annotator") in svc.cfg.api.annotators]
        checks["workers"] = {"ok": bool(served), "alive": len(served),
                             "by_annotator": {a: sum(w.get("annotator") == a for w in served)
                                              for a in svc.cfg.api.annotators}}
        loaded = [w for w in served if w.get("model_loaded") == "1"]
        checks["model"] = {"ok": bool(loaded), "loaded": sorted({w.get("annotator", "") for w in loaded})}
    except (redis.RedisError, OSError) as exc:
        checks["redis"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        checks["workers"] = {"ok": False, "error": "unknown while Redis is unreachable"}
        checks["model"] = {"ok": False, "error": "unknown while Redis is unreachable"}
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)

@router.get("/metrics", tags=["health"], summary="Prometheus metrics", dependencies=[METRICS],
         responses={200: {"content": {"text/plain": {}}}})
async def metrics(svc: Service = SERVICE):
    snap = await svc.snapshot()
    return Response(render(svc.metrics, snap), media_type="text/plain; version=0.0.4; charset=utf-8")


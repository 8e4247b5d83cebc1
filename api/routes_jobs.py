"""The job routes: submit a pair (waiting or not), read a job, its mask, cancel or delete it."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from sigma.api import errors
from sigma.api.auth import Principal, require_scope
from sigma.api.errors import ApiError
from sigma.api.metrics import PEER_EOF
from sigma.api.requests import AnnotateJson, AnnotateOptions
from sigma.api.responses import SafeJSONResponse
from sigma.api.service import Service, get_service
from sigma.service.jobs import TERMINAL, finish_args, job_view

router = APIRouter()
SERVICE = Depends(get_service)
ANNOTATE = Depends(require_scope("annotate"))

# failures of the worker or the model, never of the caller's input: 500 `annotation_failed` (`annotator_failed`: an
# output no JSON can hold, failed on its first delivery; it was answered as an unknown input code, 422)
WORKER_SIDE_FAILURES = ("dead_letter", "model_error", "worker_lost", "job_expired", "annotator_failed")

def _multipart_schema() -> dict[str, Any]:
    props: dict[str, Any] = {"original": {"type": "string", "format": "binary"},
                             "edited": {"type": "string", "format": "binary"}}
    for name, field in AnnotateOptions.model_fields.items():
        props[name] = {"type": "string", "description": field.description or name}
    return {"type": "object", "required": ["original", "edited"], "properties": props}


SUBMIT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": _multipart_schema()},
    "application/json": {"schema": AnnotateJson.model_json_schema()}}}}


def public_job_view(h: dict[str, str]) -> dict[str, Any]:
    """`job_view` with the worker's error texts (`error`, `last_error`) as an answer says them
    (`errors.public_job_error`: no server path, no holder's pid or host)."""
    view = job_view(h)
    for name in ("error", "last_error"):
        if view.get(name) is not None:
            view[name] = errors.public_job_error(view[name])
    return view


def _job_response(h: dict[str, str], status_code: int = 200, headers: dict[str, str] | None = None
                  ) -> SafeJSONResponse:
    return SafeJSONResponse(public_job_view(h), status_code=status_code, headers=headers)


def _accepted(job_id: str, status: str = "queued") -> SafeJSONResponse:
    url = f"/v1/jobs/{job_id}"
    return SafeJSONResponse({"id": job_id, "status": status, "links": {"self": url, "mask": f"{url}/mask.png"}},
                        status_code=202, headers={"Location": url})



async def _wait_while_connected(request: Request, svc: Service, job_id: str, seconds: float
                                ) -> dict[str, str] | None:
    """`svc.wait`, given up when the client hangs up: each wait holds a connection of the blocking Redis pool
    (BLPOP) for up to `seconds`, so clients that left (a short client timeout, a retry loop) kept theirs, and once
    `redis.max_connections` were held every live /v1/annotate was answered 202 at once, its wait refused
    (MaxConnectionsError logged as "redis did not answer"). The job stays queued and is done as any other; the
    request counts as 499 (client closed), not as the answer nobody read. A client that shuts down only its sending
    side (`PEER_EOF`: a FIN, which is also how most clients that leave end) ends the wait too, with None: it is
    answered 202 with the job's id at once, which it can still read, and the Redis connection is free."""
    found: dict[str, dict[str, str] | None] = {}
    half_closed = request.scope.setdefault(PEER_EOF, asyncio.Event())
    async with anyio.create_task_group() as group:
        async def wait() -> None:
            found["h"] = await svc.wait(job_id, seconds)
            group.cancel_scope.cancel()

        async def watch() -> None:   # the body is all read: the next message is the disconnect
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        async def watch_half_close() -> None:
            await half_closed.wait()
            found["h"] = None        # answered 202 now: the job's id, read by a client that only half-closed
            group.cancel_scope.cancel()
        group.start_soon(wait)
        group.start_soon(watch)
        group.start_soon(watch_half_close)
    if "h" not in found:
        raise ClientDisconnect()
    return found["h"]


@router.post("/v1/annotate", tags=["annotate"], openapi_extra=SUBMIT_BODY, summary="annotate one pair, waiting",
          responses={200: {"description": "the finished job with its result"},
                     202: {"description": "not finished within the wait; poll Location"}})
async def annotate(request: Request, principal: Principal = ANNOTATE, svc: Service = SERVICE):
    t0 = time.perf_counter()
    job_id, _, options = await svc.submit(request, principal)
    wait = svc.cfg.api.wait_timeout_s if options.wait is None else options.wait
    h = await _wait_while_connected(request, svc, job_id, min(wait, svc.cfg.api.max_wait_timeout_s))
    if h is None:       # Redis failed, or the client half-closed: the job is queued all the same, its id the answer
        return _accepted(job_id)
    status = h.get("status")
    if status == "done":
        view = public_job_view(h)
        view["timings_ms"]["api_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return SafeJSONResponse(view)
    if status in ("failed", "cancelled"):
        err = errors.public_job_error(json.loads(h.get("error") or "{}"))
        code = err.get("code", "annotation_failed")
        if status == "cancelled":
            http, code = 409, "cancelled"
        elif code in WORKER_SIDE_FAILURES:
            http, code = 500, "annotation_failed"
        else:   # an input error only a full decode finds (a truncated JPEG): same codes as the API's
            http = errors.STATUS_BY_CODE.get(code, 422)
        return errors.error_response(http, code, err.get("message", "annotation failed"),
                                     None if status == "cancelled" else errors.job_retry_after(err), job_id=job_id)
    return _accepted(job_id, status or "queued")

@router.post("/v1/jobs", tags=["jobs"], openapi_extra=SUBMIT_BODY, status_code=202, summary="queue one pair")
async def submit_job(request: Request, principal: Principal = ANNOTATE, svc: Service = SERVICE,
                     idempotency_key: str | None = Header(None, alias="Idempotency-Key")):
    job_id, created, _ = await svc.submit(request, principal, idempotency_key)
    if created:
        return _accepted(job_id)
    h = await svc.job(job_id, principal)
    return _job_response(h, 200, {"Location": f"/v1/jobs/{job_id}", "Idempotent-Replayed": "true"})

@router.get("/v1/jobs/{job_id}", tags=["jobs"], summary="status and result of a job")
async def get_job(job_id: str, principal: Principal = ANNOTATE, svc: Service = SERVICE):
    return _job_response(await svc.job(job_id, principal))

@router.get("/v1/jobs/{job_id}/mask.png", tags=["jobs"], summary="the mask as a 0/255 PNG",
         responses={200: {"content": {"image/png": {}}}})
async def get_mask(job_id: str, principal: Principal = ANNOTATE, svc: Service = SERVICE):
    from sigma.io import decode_rle, encode_png

    h = await svc.job(job_id, principal)
    if h.get("status") != "done":
        raise ApiError(409, "mask_not_available", f"job {job_id} is {h.get('status')}; the mask exists once "
                       "it is done")
    seg = json.loads(h["result"])["segmentation"]
    png = await anyio.to_thread.run_sync(lambda: encode_png(decode_rle(seg).astype("uint8") * 255))
    return Response(png, media_type="image/png")

@router.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="cancel a queued job or delete a finished one")
async def delete_job(job_id: str, principal: Principal = ANNOTATE, svc: Service = SERVICE):
    h = await svc.job(job_id, principal)
    if h.get("status") in TERMINAL:
        await svc.r.delete(svc.keys.job(job_id), svc.keys.done(job_id))
        return {"id": job_id, "status": h.get("status"), "deleted": True}
    keys, args = finish_args(svc.keys, job_id, "cancelled", None,
                             {"code": "cancelled", "message": f"cancelled by {principal.name}"},
                             svc.cfg.queue.result_ttl_s, "api")
    if int(await svc.finish_script(keys=keys, args=args)) == 1:
        return {"id": job_id, "status": "cancelled", "deleted": False}
    # it finished (or went) between the read above and the cancel, which FINISH then left alone: say what it is
    h = await svc.job(job_id, principal)
    return {"id": job_id, "status": h.get("status"), "deleted": False}


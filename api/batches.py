"""`POST /v1/batches`: queue a whole corpus that already sits on the server's storage for `sigma worker --batch`.

The API never reads pairs here: it plans the run (the same `submit_run` as `sigma batch submit`) and puts one
task per shard on `<key_prefix>:batch:tasks`, the stream the batch workers consume. Because the caller names
paths on the server, every path is resolved (realpath: symlinks and `..` followed) and must stay under
`api.batch_root`; with no root configured the routes answer `batches_disabled`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sigma.api.auth import require_scope
from sigma.api.errors import ApiError
from sigma.api.service import Service, get_service
from sigma.errors import SigmaError
from sigma.service.settings import ServeConfig


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(..., min_length=1, description="corpus path, relative to api.batch_root or absolute under it")
    out: str = Field(..., min_length=1, description="run folder, relative to api.batch_root or absolute under it")
    preset: str | None = Field(None, description="column names of a public corpus (see `sigma batch presets`)")
    format: str | None = Field(None, description="reader (default: auto-detected)")
    columns: dict[str, str] | None = Field(None, description="role=column overrides")
    shard_size: int | None = Field(None, ge=1, description="pairs per shard (default 1000)")
    annotator: str | None = Field(None, description="one of api.annotators; default: the first")
    options: dict[str, Any] | None = Field(None, description="annotator config overrides")
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    batch_size: int | None = Field(None, ge=1)


def resolve_under(root: str, path: str, what: str) -> Path:
    """realpath of `path` (relative paths are taken from `root`); refuse anything that escapes `root`."""
    real_root = os.path.realpath(root)
    candidate = path if os.path.isabs(path) else os.path.join(real_root, path)
    real = os.path.realpath(candidate)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ApiError(403, "path_outside_root", f"{what} {path!r} resolves outside the batch root")
    return Path(real)


def _root(cfg: ServeConfig) -> str:
    if cfg.api.batch_root is None:
        raise ApiError(404, "batches_disabled", "batch submission is disabled on this server (set api.batch_root)")
    if not os.path.isdir(cfg.api.batch_root):
        raise ApiError(503, "batches_disabled", "the configured batch root is not a readable folder")
    return cfg.api.batch_root


def _relative(root: str, path: Path) -> str:
    """Paths in answers are relative to the root: the server's layout outside it is nobody's business."""
    return os.path.relpath(path, os.path.realpath(root))


def build_batch_config(cfg: ServeConfig, body: BatchRequest, input_path: Path):
    from sigma.batch.config import BatchConfig
    from sigma.config.loader import load_config

    annotator = body.annotator or cfg.api.annotators[0]
    if annotator not in cfg.api.annotators:
        raise ApiError(422, "unknown_annotator", f"annotator {annotator!r} is not served here; "
                       f"choose one of {cfg.api.annotators}")
    overrides: dict[str, Any] = {"input.path": str(input_path), "annotator": annotator}
    flags = {"input.preset": body.preset, "input.format": body.format, "input.columns": body.columns,
             "input.shard_size": body.shard_size, "options": body.options, "threshold": body.threshold,
             "batch_size": body.batch_size}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(BatchConfig, None, overrides)


def _sigma_to_api(exc: SigmaError) -> ApiError:
    from sigma.api.errors import status_for

    if exc.code == "redis_unavailable":
        return ApiError(503, "queue_unavailable", f"{exc.message}; retry shortly", {"Retry-After": "1"})
    return ApiError(status_for(exc), exc.code, exc.message)


router = APIRouter()
ANNOTATE = Depends(require_scope("annotate"))
SERVICE = Depends(get_service)


@router.post("/v1/batches", tags=["batches"], status_code=202, summary="queue a corpus on the server's storage",
          responses={202: {"description": "shards queued for `sigma worker --batch`"}})
async def submit_batch(body: BatchRequest, _principal=ANNOTATE, svc: Service = SERVICE):
    cfg = svc.cfg
    from sigma.service.fleet import submit_run

    root = _root(cfg)
    input_path = resolve_under(root, body.input, "input")
    out_path = resolve_under(root, body.out, "out")
    if not input_path.exists():
        raise ApiError(404, "input_not_found", f"input {body.input!r} does not exist under the batch root")
    if out_path == Path(os.path.realpath(root)):
        raise ApiError(422, "invalid_request", "out must be a folder below the batch root, not the root itself")
    batch_cfg = build_batch_config(cfg, body, input_path)
    try:
        info = await anyio.to_thread.run_sync(submit_run, batch_cfg, out_path, cfg.redis)
    except SigmaError as exc:
        raise _sigma_to_api(exc) from exc
    return JSONResponse({"run_dir": _relative(root, out_path), **info}, status_code=202)

@router.get("/v1/batches/status", tags=["batches"], summary="the batch queue, and a run folder's progress")
async def batch_status(out: str | None = None, _principal=ANNOTATE, svc: Service = SERVICE):
    cfg = svc.cfg
    from sigma.batch.layout import RunDir
    from sigma.service.fleet import queue_status

    root = _root(cfg)
    answer: dict[str, Any] = {}
    if out is not None:
        out_path = resolve_under(root, out, "out")
        rundir = RunDir(out_path)
        if not rundir.exists():
            raise ApiError(404, "not_found", f"no batch run in {out!r}")
        answer["run"] = {**await anyio.to_thread.run_sync(rundir.summary), "run_dir": _relative(root, out_path)}
    try:
        answer["queue"] = await anyio.to_thread.run_sync(queue_status, cfg.redis)
    except SigmaError as exc:
        raise _sigma_to_api(exc) from exc
    return answer

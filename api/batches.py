"""`POST /v1/batches`: queue a whole corpus that already sits on the server's storage for `sigma worker --batch`.

The API never reads pairs here: it plans the run (the same `submit_run` as `sigma batch submit`) and puts one
task per shard on `<key_prefix>:batch:tasks`, the stream the batch workers consume. Because the caller names
paths on the server, every path is checked as text first (no NUL, no component over NAME_MAX, nothing over
PATH_MAX: 422 `invalid_path`), its `..` are resolved as text (so nothing outside the root is ever looked at),
then resolved with realpath (symlinks) and must stay under `api.batch_root`; with no root configured the
routes answer `batches_disabled`. Answers never name the server's folders: paths are relative to the root,
messages from the batch library are rewritten the same way, and the details go to the log.
"""
from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sigma.api.auth import require_scope
from sigma.api.errors import PATH_END, ApiError, retry_after, scrubbed, status_for, validation_message
from sigma.api.requests import media_type, plain_number, read_json_object, refuse_query
from sigma.api.responses import SafeJSONResponse
from sigma.api.service import Service, get_service
from sigma.batch.layout import DEAD_READ, MAX_DEAD_READ, MAX_FAILED_SHOWN, MAX_TASK_READ, TASK_READ
from sigma.config.schema import MAX_BATCH_SIZE, MAX_SHARD_SIZE, UnitInterval
from sigma.errors import SigmaError
from sigma.folderlock import LockWait
from sigma.service.settings import ServeConfig
from sigma.text import cut_long_values, shown

log = logging.getLogger("sigma.api")

MAX_BATCH_BODY_BYTES = 1024 * 1024      # a batch request names paths and options; it is never large
# the output folder as a refusal names it ("wait for it to finish or choose another ..."): an API caller has no --out
OUT_NAME = "output folder (the request's `out`)"


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = Field(..., min_length=1, description="corpus path, relative to api.batch_root or absolute under it")
    out: str = Field(..., min_length=1, description="run folder, relative to api.batch_root or absolute under it")
    preset: str | None = Field(None, description="column names of a public corpus (see `sigma batch presets`)")
    format: str | None = Field(None, description="reader (default: auto-detected)")
    columns: dict[str, str] | None = Field(None, description="role=column overrides")
    shard_size: int | None = Field(None, ge=1, le=MAX_SHARD_SIZE, description="pairs per shard (default 1000, "
                                   f"at most {MAX_SHARD_SIZE})")
    annotator: str | None = Field(None, min_length=1, description="one of api.annotators; default: the first")
    options: dict[str, Any] | None = Field(None, description="annotator config overrides (validated against "
                                           "the annotator's config model at submit: 422 invalid_config)")
    threshold: UnitInterval | None = Field(None, description="mask = prob > threshold (finite, in [0, 1])")
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE)

    @field_validator("shard_size", "batch_size", mode="before")
    @classmethod
    def _integral_number(cls, value: Any) -> Any:
        """JSON has one number type: 500.0 is the number 500 (what json.dumps writes for a Python float), taken as
        before strict validation (7bb4a21) took it; true, "10" and 2.5 stay refused."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


def _limits(root: str) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) of the root's filesystem, in bytes."""
    try:
        return os.pathconf(root, "PC_NAME_MAX"), os.pathconf(root, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_path_text(root: str, path: str, what: str) -> None:
    """Refuse, before any filesystem call, what the filesystem would choke on."""
    if "\x00" in path:
        raise ApiError(422, "invalid_path", f"{what} holds a NUL byte")
    name_max, path_max = _limits(root)
    if len(os.path.join(root, path).encode("utf-8", "surrogateescape")) >= path_max:
        raise ApiError(422, "invalid_path", f"{what} is longer than the server's path limit ({path_max} bytes)")
    if any(len(part.encode("utf-8", "surrogateescape")) > name_max for part in path.split("/")):
        raise ApiError(422, "invalid_path", f"{what} has a component longer than {name_max} bytes")


def resolve_under(root: str, path: str, what: str) -> Path:
    """The real path of `path` (relative paths are taken from `root`), refused when it leaves `root`.

    `..` is resolved as text first: a request cannot make the server look at (lstat, follow) anything outside
    the root, so the answer for an outside path never depends on what exists there. The message does not
    echo the path, so every outside path gets the same answer."""
    real_root = os.path.realpath(root)
    check_path_text(real_root, path, what)
    candidate = os.path.normpath(os.path.join(real_root, path))
    real = os.path.realpath(candidate) if _within(real_root, candidate) else candidate
    if not _within(real_root, real):
        raise ApiError(403, "path_outside_root", f"{what} resolves outside the batch root")
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


def scrub(message: str, root: str) -> str:
    """A library message with every path made relative to the batch root, any other absolute path hidden, the
    request's long values cut (an unknown preset or column of 1 MiB came back whole), and the process holding a run
    folder said as `another process`: its pid and host name (`run_locked`, `folder_busy`, a deferral's reason, a dead
    letter's `run_locked_too_long`) are the server's internals, as its folders are (`errors.scrubbed`, once the
    root's paths are relative). The root is the root only where its name ends (`_in_root`): a folder beside it whose
    name begins with the root's (`/srv/batches-private/x` beside `/srv/batches`) was answered `.-private/x`."""
    for prefix in sorted({os.path.realpath(root), os.path.abspath(root), root.rstrip("/")}, key=len, reverse=True):
        if prefix and prefix != "/":
            message = _in_root(prefix).sub(lambda m: "" if m.group(1) else ".", message)
    return cut_long_values(scrubbed(message))


def _in_root(prefix: str) -> re.Pattern[str]:
    """`prefix` followed by a slash (taken with it: the path is relative) or by no more of a path's name (said `.`):
    at most the punctuation that ends a path (`PATH_END`), then whitespace, a quote or the end (`/srv/batches.old`
    is another folder, `/srv/batches.` the root ending a sentence)."""
    return re.compile(rf"{re.escape(prefix)}(?:(/)|(?![{PATH_END}]*[^\s'\"{PATH_END}]))")


def build_batch_config(cfg: ServeConfig, body: BatchRequest, input_path: Path):
    from sigma.batch.config import BatchConfig
    from sigma.config.loader import load_config

    annotator = body.annotator or cfg.api.annotators[0]
    if annotator not in cfg.api.annotators:
        raise ApiError(422, "unknown_annotator", f"annotator {shown(annotator)!r} is not served here; "
                       f"choose one of {cfg.api.annotators}")
    # input.root: every file the corpus names must resolve under the batch root (decode refuses the rest)
    overrides: dict[str, Any] = {"input.path": str(input_path), "input.root": os.path.realpath(cfg.api.batch_root),
                                 "annotator": annotator}
    flags = {"input.preset": body.preset, "input.format": body.format, "input.columns": body.columns,
             "input.shard_size": body.shard_size, "options": body.options, "threshold": body.threshold,
             "batch_size": body.batch_size}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    return load_config(BatchConfig, None, overrides)


def plan_and_queue(cfg: ServeConfig, body: BatchRequest, input_path: Path, out_path: Path,
                   client: Any = None) -> dict[str, Any]:
    """In a worker thread: the config, the annotator's options checked (nothing loaded), the run planned and
    its shards queued. The annotator registry imports the model code, hence not on the event loop."""
    from sigma.registry import validate_annotator_options
    from sigma.service.fleet import submit_run

    options = dict(body.options or {})
    if body.threshold is not None:
        options["threshold"] = body.threshold
    # first: a file option outside the root is path_outside_root (403), not the option the config's validation of
    # the annotator's options refuses (`AnnotatorSpec.options_model`: pixel-diff has no `weights`)
    confine_file_options(options, os.path.realpath(_root(cfg)))
    batch_cfg = build_batch_config(cfg, body, input_path)
    validate_annotator_options(batch_cfg.annotator, options)
    # a bound on the shards, hence on the tasks put on Redis (the online service's Redis: shard_size=1 over a big
    # corpus put a task per pair there, and took the API seconds to minutes and a record of ~5 KB per shard)
    # the request's own wait for `out`'s commit lock: a stopped writer there held the request for all of the
    # commands' $SIGMA_FOLDER_LOCK_WAIT_S (120 s) before its 409 folder_busy
    return submit_run(batch_cfg, out_path, cfg.redis, client=client, max_shards=cfg.api.max_batch_shards,
                      max_tasks=cfg.api.max_batch_tasks, out_name=OUT_NAME,
                      lock_wait=LockWait(cfg.api.lock_wait_s, "api.lock_wait_s"))


# Option keys whose value names a file or folder the worker will read (weights, configs), at any depth.
FILE_OPTION_KEYS = frozenset({"weights", "backbone_weights", "native_config", "model", "path", "gguf_file"})
# of those, the keys whose bare value (no folder in it) is a name, never opened as a path in a working directory:
# `model` a preset name (checked against the registry), `gguf_file` a file name inside a folder named elsewhere
NAME_OPTION_KEYS = frozenset({"model", "gguf_file"})
# (parent key, key) whose loader takes a Hugging Face hub id (`resolve_hf_reference`), so `hf://owner/name` too:
# the DINOv2 backbone (feature-diff, the sigma models; None: at any depth) and gdino-sam2's detector / segmenter.
# `options.weights` is a saved SIGMA model (`load_model`): a local path only.
HUB_OPTION_KEYS = frozenset({(None, "backbone_weights"), ("detector", "weights"), ("segmenter", "weights")})


def confine_file_options(options: Any, root: str, where: str = "options", parent: str | None = None) -> None:
    """A run from the API may not make the API or a worker read a file outside the batch root through its
    options (`{"weights": "/etc/shadow"}` would be hashed at planning and loaded by the worker). A file-valued
    option is an absolute path that resolves under the root, or (`model`, `gguf_file`) a name without a folder,
    or (the keys of HUB_OPTION_KEYS) `hf://owner/name`, which every loader resolves as a hub id only, never as a
    path. Any other relative value is refused, a bare hub id (`owner/name`) included: every loader tries it as a
    local path first (`sigma.models.weights.resolve_hf_reference`, `load_model`), so a worker loaded `a/b` from its
    own working directory, outside the root; and whether `a/b` existed in the API's working directory decided 403
    or 202, an oracle on the server's files. The answer depends on the text alone. `parent`: the key holding
    `options` (which loader a `weights` goes to). `where`, the place a refusal names, says each key `shown`: a
    100 000-character key was answered whole (`options.kkk….weights`)."""
    if isinstance(options, dict):
        for key, value in options.items():
            if key in FILE_OPTION_KEYS and isinstance(value, str):
                hub = (None, key) in HUB_OPTION_KEYS or (parent, key) in HUB_OPTION_KEYS
                _check_file_value(value, root, f"{where}.{shown(key)}", key in NAME_OPTION_KEYS, hub)
            else:
                confine_file_options(value, root, f"{where}.{shown(key)}", key)
    elif isinstance(options, list):
        for n, value in enumerate(options):
            confine_file_options(value, root, f"{where}[{n}]", parent)


def _check_file_value(value: str, root: str, where: str, name_allowed: bool, hub_allowed: bool) -> None:
    """Text only, never a look at the server's files (but realpath of an absolute path, as every request path)."""
    from sigma.models.weights import HUB_PREFIX, hub_reference_problem

    if "\x00" in value:        # realpath's lstat raised ValueError on it: a 500 internal_error
        raise ApiError(422, "invalid_path", f"{where} holds a NUL byte")
    bare = "/" not in value and "\\" not in value and not value.startswith(("~", "."))
    if bare and name_allowed:
        return                                   # a preset or file name with no folder: nothing to escape with
    if value.startswith("hf:"):                  # the hub marker: the id checked by huggingface_hub's own rule
        problem = hub_reference_problem(value) or \
            (None if hub_allowed else "this option's loader reads a local path only, not a Hugging Face hub id")
        if problem is None:
            return
        raise ApiError(403, "path_outside_root", f"{where}: {problem}")
    if os.path.isabs(value) and os.path.commonpath([root, os.path.realpath(value)]) == root:
        return
    hub = f"; name a Hugging Face hub model as {HUB_PREFIX}owner/name" if hub_allowed else ""
    raise ApiError(403, "path_outside_root", f"{where}: files named in a batch's options must be absolute paths "
                   f"under the batch root{hub}. A relative path or a bare hub id (owner/name) is refused, as a "
                   "worker would look for it in its own working directory first")


_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                errno.ENOENT}
_DENIED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _to_api(exc: Exception, root: str) -> ApiError:
    """What the batch library raised → an answer with a code and a message naming no server folder."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, SigmaError):
        if exc.code == "redis_unavailable":
            log.warning("batch queue: %s", exc.message)
            return ApiError(503, "queue_unavailable", "the job queue is unreachable; retry shortly",
                            {"Retry-After": "1"})
        log.info("batch request refused [%s]: %s", exc.code, exc.message)
        # run_locked: another submission is planning the run, or a local `sigma batch run` holds it; folder_busy: a
        # writer stopped mid-commit holds the folder's commit lock: not the caller's input (a 422 said so), conflicts
        # that end by themselves (`retry_after`)
        # queue_full: the workers drain the stream; the same request later queues what is not queued yet
        headers = {"Retry-After": "30"} if exc.code == "queue_full" else retry_after(exc.code)
        return ApiError(status_for(exc), exc.code, scrub(exc.message, root), headers)
    if isinstance(exc, ImportError):
        log.warning("batch planning needs a module this install lacks: %s", exc)
        return ApiError(503, "missing_dependency", "this API install cannot plan batch runs (a module is "
                        "missing); install sigma-masks with its batch extra, torch included")
    if isinstance(exc, OSError):
        log.warning("batch request: filesystem error %s", exc)
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        if exc.errno in _DENIED_ERRNOS:
            return ApiError(403, "permission_denied", f"the server may not use that path ({reason})")
        if exc.errno in _PATH_ERRNOS:
            return ApiError(422, "invalid_path", f"a path of the request cannot be used ({reason})")
        return ApiError(503, "storage_unavailable", f"the batch storage failed ({reason}); retry later",
                        {"Retry-After": "5"})
    raise exc


def _check_out(out_path: Path, real_root: str) -> None:
    if str(out_path) == real_root:
        raise ApiError(422, "invalid_request", "out must be a folder below the batch root, not the root itself")
    probe = out_path
    while not os.path.lexists(probe) and str(probe) != real_root:
        probe = probe.parent
    if os.path.lexists(probe) and not os.path.isdir(probe):
        what = "is a file" if probe == out_path else "lies below a file"
        raise ApiError(409, "out_not_empty", f"out {what}, not a run folder; choose a new out")


router = APIRouter()
ANNOTATE = Depends(require_scope("annotate"))
SERVICE = Depends(get_service)
BATCH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": BatchRequest.model_json_schema()}}}}


async def _batch_request(request: Request) -> BatchRequest:
    ctype = media_type(request)
    if ctype not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type", f"content type {ctype!r}: send application/json")
    data = await read_json_object(request, MAX_BATCH_BODY_BYTES)
    try:
        return BatchRequest.model_validate(data, strict=True)    # JSON types as sent: `"shard_size": true` is no 1
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_message(exc)) from exc


@router.post("/v1/batches", tags=["batches"], status_code=202, summary="queue a corpus on the server's storage",
             openapi_extra=BATCH_BODY, responses={202: {"description": "shards queued for `sigma worker --batch`"}})
async def submit_batch(request: Request, _principal=ANNOTATE, svc: Service = SERVICE):
    cfg = svc.cfg
    root = _root(cfg)
    real_root = os.path.realpath(root)
    refuse_query(request, "the run's fields (input, out, ...) as JSON keys")
    body = await _batch_request(request)
    input_path = resolve_under(root, body.input, "input")
    out_path = resolve_under(root, body.out, "out")
    if not os.path.exists(input_path):
        raise ApiError(404, "input_not_found", f"input {_relative(root, input_path)!r} does not exist under the "
                       "batch root")
    _check_out(out_path, real_root)
    await svc.r.ping()      # Redis down: 503 now, before a run folder is planned (and the model code imported)
    try:
        info = await anyio.to_thread.run_sync(plan_and_queue, cfg, body, input_path, out_path, svc.sync_redis)
    except (SigmaError, OSError, ImportError) as exc:
        raise _to_api(exc, root) from exc
    return SafeJSONResponse({"run_dir": _relative(root, out_path), **info}, status_code=202)


def _checked_record(rundir) -> dict[str, Any]:
    """The run's record once its run.json holds to its run hash, as `sigma batch status` reads it: counts of a
    record edited since planning describe another run (409 run_modified, as a resubmission of it)."""
    from sigma.batch.record import verified_record

    record, _ = verified_record(rundir, "no status shown")
    return record


def run_warnings(record: dict[str, Any], run_file: Path, root: str) -> list[dict[str, str]]:
    """What `sigma batch status` says on stderr of a run it still counts, as `{"code", "message"}` objects: a run
    whose annotator options this sigma refuses now (`run_options_refused`) was answered 200 with nothing said, and
    the caller learnt it only when a resubmission failed 409. The message names run.json relative to the root. In a
    worker thread: asking the annotator's config imports its model code."""
    from sigma.batch.record import run_warnings as record_warnings

    return [{**w, "message": scrub(w["message"], root)} for w in record_warnings(record, _relative(root, run_file))]


STATUS_QUERY = ("out", "failed_limit", "dead_limit", "task_limit")


async def _one_of_each_known(request: Request) -> None:
    """GET /v1/batches/status's query names only its parameters, each once. FastAPI ignores any other and takes the
    last of two: `?outt=runs/a` (or `?out_dir=`) was answered with the queue alone, as if no run had been asked
    about, and `?out=a&out=b` with b's progress. 422 `invalid_request` naming what it got and what it takes. A limit
    is decimal digits (`plain_number`)."""
    names = [name for name, _ in request.query_params.multi_items()]
    unknown = sorted(set(names) - set(STATUS_QUERY))
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown query parameter {', '.join(map(repr, unknown[:5]))}: "
                       f"GET /v1/batches/status takes {', '.join(STATUS_QUERY)}")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ApiError(422, "invalid_request", f"query parameter {', '.join(map(repr, twice))} given more than "
                       "once: send it once")
    for name, value in request.query_params.multi_items():
        if name != "out":      # the limits: `?failed_limit=1_000` and `+5` were numbers (Python's int syntax)
            plain_number(name, value, integer=True)


@router.get("/v1/batches/status", tags=["batches"], summary="the batch queue, and a run folder's progress")
async def batch_status(out: str | None = None,
                       failed_limit: int | None = Query(None, ge=0, le=MAX_FAILED_SHOWN, description=(
                           "failed shards listed in run.failed_shards, first in run order (default 100); "
                           "run.failed counts them all, run.failed_shards_omitted the ones left out")),
                       dead_limit: int = Query(DEAD_READ, ge=0, le=MAX_DEAD_READ, description=(
                           "with out: dead letters read, newest first, to find the run's shards a worker gave up on "
                           "without writing their status (counted failed); queue.dead_read_all says whether that "
                           "was all of them")),
                       task_limit: int = Query(TASK_READ, ge=0, le=MAX_TASK_READ, description=(
                           "with out: task stream entries read, newest first, to find the run's tasks (the read stops "
                           "sooner once every pending shard has its task); queue.tasks_read_all is false when it "
                           "stopped short, queue.unchecked counts the pending shards not found")),
                       _principal=ANNOTATE, svc: Service = SERVICE, _query: None = Depends(_one_of_each_known)):
    cfg = svc.cfg
    from sigma.batch.layout import FAILED_SHOWN, RunDir
    from sigma.service.fleet import queue_status

    root = _root(cfg)
    answer: dict[str, Any] = {}
    rundir = record = None
    warnings: list[dict[str, str]] = []
    if out is not None:
        out_path = resolve_under(root, out, "out")
        rundir = RunDir(out_path)
        if not os.path.isfile(rundir.run_file):
            raise ApiError(404, "not_found", f"no batch run in {_relative(root, out_path)!r}")
        try:
            record = await anyio.to_thread.run_sync(lambda: _checked_record(rundir))
            warnings = await anyio.to_thread.run_sync(lambda: run_warnings(record, rundir.run_file, root))
        except (SigmaError, OSError) as exc:
            raise _to_api(exc, root) from exc
    # the queue first: the run's shards a worker dead-lettered without writing their status are failed in its counts
    dead_letters: dict[str, str] = {}
    try:
        client = svc.sync_redis
        answer["queue"] = await anyio.to_thread.run_sync(lambda: queue_status(
            cfg.redis, client=client, run=rundir, dead_letters=dead_letters, dead_limit=dead_limit,
            task_limit=task_limit, record=record))
    except (SigmaError, OSError) as exc:
        raise _to_api(exc, root) from exc
    if rundir is not None:
        try:
            limit = FAILED_SHOWN if failed_limit is None else failed_limit
            summary = await anyio.to_thread.run_sync(
                lambda: rundir.summary(failed_limit=limit, record=record, dead_letters=dead_letters))
        except (SigmaError, OSError) as exc:
            raise _to_api(exc, root) from exc
        for failed in summary.get("failed_shards", []):
            failed["error"] = scrub(str(failed.get("error", "")), root)
        answer = {"run": {**summary, "run_dir": _relative(root, out_path)}, **answer}      # run first, as before
    if "deferred_reason" in answer["queue"]:      # names the run folder and who holds it: paths under the root, no host
        answer["queue"]["deferred_reason"] = scrub(str(answer["queue"]["deferred_reason"]), root)
    answer["warnings"] = warnings        # always a list: [] when there is nothing to say (and without `out`)
    return answer

"""One error shape for every failure: `{"error": {"code", "message"}}` with a stable code.

SigmaError codes from `sigma.io` (the same ones the CLI prints) map to HTTP statuses here; FastAPI's
own validation errors, 404s and 405s are rewritten into the same shape so a client needs one parser.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sigma.api.responses import SafeJSONResponse
from sigma.errors import SigmaError
from sigma.folderlock import anonymised
from sigma.service.deferral import without_worker_names
from sigma.text import cut_long_values, shown

log = logging.getLogger("sigma.api")

# SigmaError code → HTTP status; anything else that is an InputError is a 422.
STATUS_BY_CODE = {
    "file_too_large": 413, "too_many_pixels": 413, "decompression_bomb": 413, "request_too_large": 413,
    "bad_request": 400, "bad_json": 400, "invalid_base64": 400, "malformed_multipart": 400, "missing_field": 400,
    "not_a_file": 400, "headers_too_large": 431, "invalid_request": 422, "unsupported_media_type": 415,
    "unsupported_content_encoding": 415,
    "unknown_annotator": 422, "unknown_name": 422,
    "missing_api_key": 401, "invalid_api_key": 401, "insufficient_scope": 403,
    "not_found": 404, "job_not_found": 404, "mask_not_available": 409, "method_not_allowed": 405,
    "queue_full": 429, "queue_unavailable": 503, "annotation_failed": 500, "internal_error": 500,
    "batches_disabled": 404, "path_outside_root": 403, "input_not_found": 404, "out_not_empty": 409,
    "invalid_config": 422, "no_pairs": 422, "unknown_preset": 422,
    "invalid_text": 422, "invalid_path": 422, "request_timeout": 408, "server_busy": 429,
    "idempotency_key_reused": 422, "idempotency_key_in_use": 409, "permission_denied": 403,
    "storage_unavailable": 503, "missing_dependency": 503,
    # a connection over api.max_connections (`sigma.api.server`): answered before its request is read, then closed
    "too_many_connections": 503,
    # a request line of another HTTP version (an HTTP/2 connection preface, `PRI * HTTP/2.0`; `sigma.api.server`):
    # answered at that line, then closed
    "http_version_not_supported": 505,
    # an `Expect` other than 100-continue (`sigma.api.server`): answered at the request's head, then closed
    "expectation_failed": 417,
    # codes of the batch library a submission can meet (sigma.io.corpora, sigma.batch): all the caller's input
    "unknown_format": 422, "file_not_found": 422, "bad_manifest": 422, "bad_dataset": 422, "bad_parquet": 422,
    "bad_tar": 422, "bad_columns": 422, "corpus_changed": 409, "not_a_run": 409, "bad_run": 409, "run_exists": 409,
    "run_locked": 409, "too_many_shards": 422, "link_outside_run": 409, "run_modified": 409, "run_too_large": 409,
    "plan_too_large": 422, "run_options_refused": 409,
    # a corpus, manifest or image path that names a FIFO, a folder or a device (/dev/zero): the caller's input
    "not_a_regular_file": 422,
    # a corpus given as `format: folder` that is a file, a FIFO or a device (`sigma.io.folders`): the caller's input
    "not_a_folder": 422,
    # a folder a `sigma synth --out` run was killed writing (its synth_unfinished.json mark): the folder's state, which
    # the same synth command run again ends, as corpus_changed is
    "unfinished_synth_set": 409,
    # a folder another process holds: a conflict that ends by itself (the holder finishes, or is resumed or ended),
    # answered with Retry-After (RETRY_AFTER_S), never the caller's input. folder_busy: a new run's `out` whose commit
    # lock a writer stopped mid-commit holds (`hold_folder`'s sweep). weights_busy: a saved model's folder a stopped
    # saver holds (the API loads no model today: mapped so that a path that ever does is not a 422)
    "folder_busy": 409, "weights_busy": 409,
    # the worker's machine gave no more memory to decode a job's images (sigma.io.images' `OutOfMemoryError`): a
    # shortage that ends, never the caller's input (/v1/annotate answered it 422 `image_unreadable`), answered with
    # Retry-After
    "out_of_memory": 503,
    # the worker's machine started no thread for a job's decode (`sigma.service.predictor.out_of_threads`: a pids
    # limit, or no memory for the threads' stacks): a shortage as out_of_memory, never the caller's input
    "out_of_threads": 503,
    # a batch's `out` the server cannot use as it is (its .lock a symbolic link, a folder it cannot make; a file):
    # the folder's state, as out_not_empty
    "bad_outdir": 409, "out_not_a_folder": 409,
    # the caller's choices: `out` inside another run's own files, a corpus row without its image, options naming
    # weights that are not there or unreadable, or a model over the size limit
    "out_is_run_file": 422, "missing_image": 422, "weights_not_found": 422, "weights_unreadable": 422,
    "model_too_large": 422,
    # the server's own weights are not the ones its release ships (a corrupt install): not the caller's fault
    "weights_mismatch": 500,
    # Redis unreachable while a batch is queued (answered as queue_unavailable by POST /v1/batches)
    "redis_unavailable": 503,
    # an upload the library refuses (`sigma.api.probe`, or a job's decode relayed by /v1/annotate): the caller's input
    "image_unreadable": 422, "image_empty": 422, "unsupported_format": 422, "aspect_mismatch": 422,
    "instruction_too_long": 422, "empty_instruction": 422, "invalid_instruction": 422, "invalid_input": 422,
}
# codes answered with Retry-After (seconds): a folder held by another process, a hold that ends by itself; their
# messages name the holder's pid and host and the server's folders, said as `another process` and `<server path>`
# (`scrubbed`, as every library message an answer carries)
RETRY_AFTER_S = {"run_locked": 5, "folder_busy": 5, "weights_busy": 5, "out_of_memory": 5,
                 "out_of_threads": 5}
# an absolute path left in a message (after POST /v1/batches made the batch root's paths relative): not preceded by a
# word, a dot, a colon or a slash (so `4/36`, `a/b`, `C:/x` and `redis://h:1/0` stay), up to whitespace or a quote,
# less the punctuation that ends it (`PATH_END`: a path with a colon or a parenthesis inside is hidden whole); nor this
# API's own routes, which messages name as the way to go on ("... or POST /v1/batches) to queue them"). Before, the
# path ran to the next space: `cannot open /srv/x.png: permission denied` read `cannot open <server path> permission
# denied`, and `at /srv/a, /srv/b.`, `(at /srv/x)` and `` `/srv/x` `` lost their comma, period, parenthesis and quote.
# It also begins after a URL's scheme when the URL has no host (`file:///srv/x`, `file:/srv/x`, `unix:///x.sock`,
# `file://localhost/x`: the scheme kept, `LOCAL_URL`) and at a home folder (`~/x`, `~user/x`: `HOME`); a URL with a
# host (`redis://h:1/0`, `http://h/x`) names another machine's path and stays, as a Windows path (`C:\x`), none of
# this POSIX server's, does. A path with a space in a folder's name runs on over each following word that holds a
# slash, after no punctuation and not a ratio (`/srv/my photos/x.png: ...`, the library's `{path}: ...`, hidden
# whole; `/srv/a, b/c` and `/srv/x 4/36` keep `b/c` and `4/36`); a quoted one (`QUOTED_PATH`) to its closing quote.
# These three were answered: `file:///srv/secret/x.png` and `~svc/models` whole, `'/srv/my photos/x.png'` (an
# OSError's text, Python's repr of a path) as `'<server path> photos/x.png'`. Still left: the words after a space in
# an unquoted path's last part (`/srv/data/my file.png: gone` reads `<server path> file.png: gone`), which nothing
# tells from the message's own words.
PATH_END = r":,.;!?)\]}>`"
LOCAL_URL = r"(?<![\w+.-])[A-Za-z][\w+.-]+:(?://(?:localhost)?(?=/)|(?!//))"
HOME = r"~(?:[A-Za-z_][\w.-]*)?(?=/)"
_ROUTE = rf"(?!v1/(?:batches|jobs)\b(?:/status)?[{PATH_END}]*(?![^\s'\"`]))"
_START = rf"(?P<scheme>{LOCAL_URL})?(?(scheme)|(?<![\w.:/~-]))(?:{HOME})?/{_ROUTE}"
_MORE_WORD = rf"(?<![{PATH_END}])[ ](?=(?!\d+/\d)[^\s'\"/]+/)"
SERVER_PATH = re.compile(rf"{_START}(?:[^\s'\"]|{_MORE_WORD})*[^\s'\"{PATH_END}]")
# a path right after a quote, its own quote closing it (a quote followed by no letter or digit): a backslash escapes
# the next character, as in a repr or a JSON string (`'/srv/it\'s'`, `"/srv/a\"b"`); on one line; `'/'` alone stays, as
# `/` does
QUOTED_PATH = re.compile(rf"(?P<quote>['\"`]){_START}(?!(?P=quote))(?:[^\n\\]|\\.)*?(?=(?P=quote)(?!\w))")


def _hidden(match: re.Match[str]) -> str:
    """The path of `match` said as `<server path>`, the quote before it and the scheme of its URL kept."""
    return (match.group("quote") if "quote" in match.re.groupindex else "") + (match.group("scheme") or "") \
        + "<server path>"


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for status, text in [(400, "malformed body"), (401, "missing or unknown API key"), (403, "wrong scope"),
                         (404, "no such job"), (413, "upload too large"), (415, "unsupported media type"),
                         (408, "request body too slow"), (409, "conflict"), (422, "invalid input"),
                         (431, "request headers too large"),
                         (429, "queue full or server busy (see Retry-After)"), (503, "queue unreachable")]}

HTTP_CODES = {400: "bad_request", 401: "missing_api_key", 403: "insufficient_scope", 404: "not_found",
              405: "method_not_allowed", 408: "request_timeout", 413: "request_too_large",
              415: "unsupported_media_type", 422: "invalid_request", 429: "queue_full", 503: "queue_unavailable"}
OTHER_HTTP_CODE = "http_error"     # an HTTP error status Starlette raises that HTTP_CODES does not name

# Every code an answer or a job record may carry, each in docs/service.md's table: the fuzz test asserts each
# error it meets is one, and tests/test_cli_foundation.py that each is documented and each code api/ writes is one.
KNOWN_CODES = frozenset(STATUS_BY_CODE) | frozenset(HTTP_CODES.values()) | {OTHER_HTTP_CODE} | {
    "image_empty", "image_unreadable", "unsupported_format", "aspect_mismatch", "instruction_too_long",
    "empty_instruction", "invalid_instruction", "limit_exceeded", "invalid_input", "job_expired",
    "dead_letter", "model_error", "worker_lost", "worker_hung", "cancelled", "withdrawn", "annotator_failed",
}


class ApiError(Exception):
    """A refusal of a route: its message is cut (`cut_long_values`) where it is made, for its answer and its log
    line alike. Messages built in api/ from the request's own text (an option's place `options.<key>.weights` from
    its keys, a multipart field's name, a content type) were not: a 100 000-character option key came back whole
    in a 403 `path_outside_root`; only the library's messages were cut (`batches.scrub`)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any):
        message = cut_long_values(message)
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> SafeJSONResponse:
    """Every error answer's one writer: its message cut as an ApiError's is (a cut message is left as it is), so no
    handler (a validation, a job's recorded error) answers a long value whole."""
    return SafeJSONResponse({"error": {"code": code, "message": cut_long_values(message), **extra}},
                            status_code=status, headers=headers)


def status_for(exc: SigmaError) -> int:
    return STATUS_BY_CODE.get(exc.code, 422)


def retry_after(code: str) -> dict[str, str] | None:
    """The Retry-After header of a transient conflict (`RETRY_AFTER_S`); None for any other code."""
    return {"Retry-After": str(RETRY_AFTER_S[code])} if code in RETRY_AFTER_S else None


def public_message(exc: SigmaError) -> str:
    """A library message as an answer says it, whatever its code: `scrubbed`. The message of `folder_busy` names the
    folder and the holder's pid: answered whole, it told any caller the server's layout and its processes. Only the
    busy codes (`RETRY_AFTER_S`) were scrubbed; every other library message reaching this handler was answered whole,
    and the library names the server's paths in most of them (`bad_outdir`: `/srv/.../out/.lock: is a symbolic
    link`, `out_not_a_folder`, `weights_not_found`): `POST /v1/batches` scrubs its own (`batches.scrub`),
    and no other route raises them today, but a route that ever did answered them whole."""
    return scrubbed(exc.message)


def scrubbed(text: str) -> str:
    """`text` with the holders of folders said as `another process`, the pids of `kill -CONT` as `PID`, the remedy
    for a shell on the server (`fg`, `kill -CONT`, the wait's variable) as `try again later` (`anonymised`), the
    batch workers a `run_too_large` task was offered to unnamed (`without_worker_names`: `HOST-PID` by default) and
    every absolute path as `<server path>`: the one rewrite of every library text an answer carries
    (`public_message`, `public_job_error`, and `batches.scrub` once the batch root's paths are relative)."""
    text = anonymised(without_worker_names(text))
    return SERVER_PATH.sub(_hidden, QUOTED_PATH.sub(_hidden, text))


def public_job_error(error: Any) -> Any:
    """A job record's `error` (or `last_error`) as an answer says it: every text in it `scrubbed`, at any depth (a
    dead letter's `last_error`), its codes (`code`) as recorded. Whatever the code: a worker records `Type: text` of
    whatever the model raised (its `trace` too), so a `weights_busy` a plugin's load met, a `FileNotFoundError` or a
    dead letter quoting either named the worker's folders and the holder's pid and host; `GET /v1/jobs/{id}` and
    `/v1/annotate` answered them whole."""
    if isinstance(error, dict):
        return {k: v if k == "code" else public_job_error(v) for k, v in error.items()}
    if isinstance(error, list):
        return [public_job_error(v) for v in error]
    return scrubbed(error) if isinstance(error, str) else error


def job_retry_after(error: dict[str, Any]) -> dict[str, str] | None:
    """The Retry-After of a failed job's answer: its code's (`retry_after`), else its last error's — a job
    dead-lettered because a model folder stayed held (`weights_busy` on every delivery) fails on a hold that ends
    by itself, and its 500 said nothing of when to try again."""
    last = error.get("last_error")
    return retry_after(str(error.get("code"))) or (retry_after(str(last.get("code"))) if isinstance(last, dict)
                                                   else None)


def validation_message(exc: RequestValidationError | ValidationError) -> str:
    """The first five problems of a pydantic validation, `loc: msg` each (FastAPI's `body` prefix dropped)."""
    parts = []
    for err in exc.errors()[:5]:
        # a key of the body is the caller's text (an unknown field, an option's name): cut, not echoed whole
        loc = ".".join(shown(p) for p in err.get("loc", ()) if p != "body") or "<body>"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


ALLOW_PROBES = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request) -> str:
    """The `Allow` of a 405: each method some route takes at the request's path, HEAD with GET (`HeadAsGet`).
    Starlette names only the first such route's methods, so PUT /v1/jobs/{id} said `Allow: GET` although DELETE is
    served there too (RFC 9110 15.5.6: the methods the target supports). Each method is tried on a fresh scope of the
    request's path, as the router itself would match it."""
    base = {key: request.scope[key] for key in ("type", "path", "raw_path", "root_path", "headers", "query_string")
            if key in request.scope}
    routes = request.app.router.routes
    methods = {method for method in ALLOW_PROBES
               if any(route.matches({**base, "method": method})[0] is Match.FULL for route in routes)}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> SafeJSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(SigmaError)
    async def _sigma_error(_: Request, exc: SigmaError) -> SafeJSONResponse:
        return error_response(status_for(exc), exc.code, public_message(exc), retry_after(exc.code))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> SafeJSONResponse:
        return error_response(422, "invalid_request", validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> SafeJSONResponse:
        code = HTTP_CODES.get(exc.status_code, OTHER_HTTP_CODE)
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": allowed_methods(request)}
        path = request.url.path
        if exc.status_code == 404 and "route" not in request.scope and len(path) > 1 and path.endswith("/"):
            message = f"Not Found: no route is {path!r}; paths take no trailing slash ({path.rstrip('/') or '/'!r})"
        return error_response(exc.status_code, code, message, headers)

    @app.exception_handler(redis.RedisError)
    async def _redis(_: Request, exc: redis.RedisError) -> SafeJSONResponse:
        log.warning("redis error: %s", exc)
        if isinstance(exc, redis.exceptions.OutOfMemoryError):   # maxmemory reached (noeviction): not a 500
            return error_response(503, "queue_unavailable", "the job queue is out of memory (Redis maxmemory); "
                                  "retry later", {"Retry-After": "5"})
        return error_response(503, "queue_unavailable", f"the job queue is unreachable ({type(exc).__name__}); "
                              "retry shortly", {"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> SafeJSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the API log")

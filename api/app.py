"""The HTTP front end: validate, enqueue on Redis Streams, wait for (or point to) the result.

The API never runs a model. It checks both images (with the service's limits) so a bad upload is a 4xx
with a stable code before anything is queued, stores the bytes and a job record in one Lua script, and
either waits on the job's `done` list (POST /v1/annotate) or answers 202 at once (POST /v1/jobs).
Routes live in `routes_jobs.py`, `routes_health.py` and `batches.py`; the state they share in
`service.py`. Run it with `sigma serve api` or `uvicorn --factory sigma.api.app:app_from_env`.
"""
from __future__ import annotations

import logging
import sys
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

from sigma.api import errors
from sigma.api.auth import require_key
from sigma.api.batches import router as batches_router
from sigma.api.errors import ERROR_RESPONSES
from sigma.api.middleware import BodyLimit, BodyTimeout, CatchAll, HeadAsGet, RequestMetrics, ServerTargets
from sigma.api.responses import SafeJSONResponse
from sigma.api.routes_health import router as health_router
from sigma.api.routes_jobs import router as jobs_router
from sigma.api.server import guard_uvicorn_config, return_large_buffers_to_os, uvicorn_loading
from sigma.api.service import Service
from sigma.errors import ConfigError, SigmaError
from sigma.service.settings import ServeConfig, load_serve_config


def create_app(cfg: ServeConfig) -> FastAPI:
    from sigma.registry import import_plugins

    if not cfg.auth.keys and not cfg.auth.allow_anonymous:
        raise ConfigError("no API keys configured: set SIGMA_API_KEYS (comma-separated) or auth.keys, or "
                          "auth.allow_anonymous=true for local use")
    # api.plugins before serving: POST /v1/batches validates a run's annotator (and its options) by registry name,
    # and a standalone API imported no plugin, so a plugin's annotator was 422 although its workers had it. A module
    # that cannot be imported is a ConfigError here (one line, exit 2), not a failure at the first request.
    import_plugins(cfg.api.plugins, "api.plugins")
    svc = Service(cfg)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        return_large_buffers_to_os()
        await svc.open()
        yield
        await svc.close()

    public = cfg.api.public_docs
    app = FastAPI(title="SIGMA annotation service", version="1",
                  description="Queue (original, edited, instruction) triples to GPU workers and get pixel "
                  "masks back (COCO RLE with SA-1B field names). Errors: {\"error\": {\"code\", \"message\"}}.",
                  lifespan=lifespan, responses=ERROR_RESPONSES, default_response_class=SafeJSONResponse,
                  openapi_url="/openapi.json" if public else None, docs_url="/docs" if public else None,
                  redoc_url="/redoc" if public else None,
                  # a path with a trailing slash (`POST /v1/jobs/`) was a 307 to the path without it, with no body and
                  # a Location built from the client's Host header (`Host: evil.example` -> http://evil.example/...,
                  # and http:// behind a TLS proxy): now a 404 `not_found` that names the path to use
                  redirect_slashes=False)
    app.state.service = svc
    errors.install(app)
    # outermost last: metrics see every answer; CatchAll answers what a route lets out without closing the
    # connection; the body limit and the body read timeout wrap `receive`; innermost, HEAD is served as GET
    app.add_middleware(HeadAsGet)
    app.add_middleware(ServerTargets)      # OPTIONS * and CONNECT, which name no route
    app.add_middleware(BodyTimeout, seconds=cfg.api.body_timeout_s, idle_seconds=cfg.api.body_idle_timeout_s,
                       min_rate=cfg.api.min_body_rate, rate_window=cfg.api.body_rate_window_s)
    app.add_middleware(BodyLimit, max_bytes=cfg.limits.max_request_bytes)
    app.add_middleware(CatchAll)
    app.add_middleware(RequestMetrics, metrics=svc.metrics)
    for router in (jobs_router, batches_router, health_router):
        app.include_router(router)
    if not public:
        _keyed_docs(app)
    return app


def _keyed_docs(app: FastAPI) -> None:
    """api.public_docs=false: the spec and its two viewers answer only a caller with a valid key (any scope)."""
    key = [Depends(require_key())]

    @app.get("/openapi.json", include_in_schema=False, dependencies=key)
    async def openapi():
        return SafeJSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=key)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False, dependencies=key)
    async def redoc():
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def app_from_env() -> FastAPI:
    """`uvicorn --factory sigma.api.app:app_from_env`: config file from SIGMA_SERVE_CONFIG, then env vars.

    Run so, uvicorn served the app with its own protocol, none of the guards `sigma serve api` installs (header
    limit and timeout, connection limit, no WebSocket, bad targets): they are now given to the `uvicorn.Config`
    that calls this factory (`guard_uvicorn_config`). Called by anything else (gunicorn's UvicornWorker, hypercorn,
    a script), nothing can be given: that is logged as an error, once, naming what is missing."""
    try:
        cfg = load_serve_config()
        app = create_app(cfg)
    except SigmaError as exc:
        # the one line and exit 2 of `sigma serve api`: uvicorn printed the ConfigError's traceback (a bad
        # SIGMA_API_KEYS scope, no key at all) and exited 1
        print(f"sigma: error [{exc.code}]: {exc.message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    config = uvicorn_loading(sys._getframe(1))
    if config is not None:
        guard_uvicorn_config(config, cfg)
    else:
        logging.getLogger("sigma.api").error(
            "the API app was made by app_from_env outside `uvicorn --factory` and `sigma serve api`: the server "
            "that runs it applies none of the API's connection guards (api.max_header_bytes, api.header_timeout_s, "
            "api.max_connections, api.keep_alive_timeout_s, the WebSocket and bad-target refusals); run "
            "`sigma serve api` or `uvicorn --factory sigma.api.app:app_from_env`")
    return app

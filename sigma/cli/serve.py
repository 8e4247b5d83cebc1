"""`sigma serve api|all` and `sigma worker`: run the annotation service without Docker.

Settings: `--config FILE` (else $SIGMA_SERVE_CONFIG, else built-in defaults; configs/serve.yaml is the
documented example), then environment variables (SIGMA_REDIS_URL, SIGMA_API_KEYS, SIGMA__SECTION__KEY),
then `--set key=value`. See docs/service.md.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from sigma.cli.common import add_config_args

SERVE_HELP = """Run the annotation service's HTTP API (and, with `all`, one worker beside it).

  api   the FastAPI front end only (workers run elsewhere: `sigma worker`)
  all   the API plus one worker process, against a Redis you already run
"""

EXAMPLES = """examples:
  export SIGMA_REDIS_URL=redis://127.0.0.1:6379/0 SIGMA_API_KEYS=change-me
  sigma serve all --port 8000
  sigma serve api --host 0.0.0.0 --port 8000 --config configs/serve.yaml
  sigma worker --annotator pixel-diff --set worker.max_batch_size=16
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the annotation service (HTTP API; `all` adds one worker)",
                       description=SERVE_HELP, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["api", "all"], help="api: the API only; all: API + one worker")
    p.add_argument("--host", help="bind address (default: api.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: api.port, 8000)")
    p.add_argument("--annotator", help="with `all`: the worker's annotator (default: worker.annotator)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs latency)")
    add_config_args(p)
    p.set_defaults(run=run)

    w = sub.add_parser("worker", help="run one annotation worker (consumes the Redis queue)",
                       description="A long-lived worker: loads the annotator once, consumes its Redis stream in "
                       "micro-batches, stores results, heartbeats; SIGTERM finishes the batch and exits.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--annotator", help="registry name (default: worker.annotator, pixel-diff)")
    w.add_argument("--consumer", help="consumer name in the group (default: <host>-<pid>)")
    w.add_argument("--max-batch-size", type=int, help="worker.max_batch_size")
    w.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first so the annotators it registers can serve (repeatable)")
    w.add_argument("--batch", action="store_true", help="fleet batch mode: consume the shard tasks of "
                   "`sigma batch submit` (stream <redis.key_prefix>:batch:tasks) instead of API jobs")
    add_config_args(w)
    w.set_defaults(run=run_worker_cmd)


def load(args: argparse.Namespace, **flags):
    """The service settings; a command's flags (dotted keys) are overrides applied before validation."""
    from sigma.service.settings import load_serve_config

    path = args.config or os.environ.get("SIGMA_SERVE_CONFIG") or None
    return load_serve_config(path, list(args.overrides), flags=flags)


def run_worker_cmd(args: argparse.Namespace) -> int:
    from sigma.workers.worker import run_worker

    if getattr(args, "batch", False):   # fleet batch mode (issue 7): the run's own config picks the annotator
        from sigma.workers.batch import run_batch_worker_from_serve_config

        return run_batch_worker_from_serve_config(load(args), consumer=args.consumer)
    plugins = [*load(args).worker.plugins, *args.plugin] if args.plugin else None   # --plugin adds to the list
    cfg = load(args, **{"worker.annotator": args.annotator, "worker.max_batch_size": args.max_batch_size,
                        "worker.plugins": plugins})
    return run_worker(cfg, consumer=args.consumer)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from sigma.api.app import create_app

    cfg = load(args, **{"api.host": args.host, "api.port": args.port})
    host, port = cfg.api.host, cfg.api.port
    app = create_app(cfg)      # fails here (exit 2) on a config error, before a worker is started
    worker = None
    if args.what == "all":
        cmd = [sys.executable, "-m", "sigma", "worker"]
        if args.config:
            cmd += ["--config", args.config]
        for item in args.overrides:
            cmd += ["--set", item]
        if args.annotator:
            cmd += ["--annotator", args.annotator]
        worker = subprocess.Popen(cmd)
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal to the handler that was
    # there before it; a no-op one lets us stop the worker and exit 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.run(app, host=host, port=port, log_level=args.log_level, access_log=args.access_log)
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=cfg.queue.block_ms / 1000 + 30)
            except subprocess.TimeoutExpired:
                worker.kill()
    return 0

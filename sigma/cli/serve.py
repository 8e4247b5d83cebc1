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
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sigma.cli.common import (
    add_config_args,
    add_plugin_arg,
    import_plugin_args,
    integer,
    refuse_unused,
    with_plugin_args,
)

if TYPE_CHECKING:
    from sigma.service.settings import WorkerSettings

# Set by `sigma serve all` in its worker child's environment: the supervisor's pid. The child dies with it (a
# SIGKILLed `serve all` runs no cleanup, and its worker lived on, orphaned, consuming with the old settings).
PARENT_ENV = "SIGMA_SERVE_PARENT_PID"

SERVE_HELP = """Run the annotation service's HTTP API (and, with `all`, one worker beside it).

  api   the FastAPI front end only (workers run elsewhere: `sigma worker`)
  all   the API plus one worker process, against a Redis you already run; a worker that dies is
        restarted (worker.restart_backoff_s, doubled per quick death); after worker.max_restarts deaths
        within worker.restart_window_s the server stops with exit status 1
"""

EXAMPLES = """examples:
  export SIGMA_REDIS_URL=redis://127.0.0.1:6379/0 SIGMA_API_KEYS=change-me
  sigma serve all --port 8000
  sigma serve api --host 0.0.0.0 --port 8000 --config configs/serve.yaml
  sigma worker --annotator pixel-diff --set worker.max_batch_size=16
"""


# keys of the service settings (configs/serve.yaml): the annotate/eval keys (io.*) are not among them
SET_EXAMPLE = "--set queue.lease_ms=5000 --set worker.max_wait_ms=5"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the annotation service (HTTP API; `all` adds one worker)",
                       description=SERVE_HELP, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["api", "all"], help="api: the API only; all: API + one worker")
    p.add_argument("--host", help="bind address (default: api.host, 127.0.0.1)")
    p.add_argument("--port", type=integer, help="port (default: api.port, 8000)")
    p.add_argument("--annotator", help="`all` only: the worker's annotator (default: worker.annotator); the API then "
                   "serves it too (api.annotators, when not set, becomes [NAME]). `api` refuses it: it starts no "
                   "worker")
    add_plugin_arg(p, "import MODULE in the API, so requests may name the annotators it registers (adds to "
                      "api.plugins); with `all` also in the worker (adds to worker.plugins). Repeatable")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs latency)")
    add_config_args(p, SET_EXAMPLE)
    # a service's stdout is a log (uvicorn's access log), not a result: closed (`>&-`, as daemons are started) it
    # loses nothing a caller waits for, so a SIGTERM's clean stop stays 0 (`sigma.cli._said_all`)
    p.set_defaults(run=run, config_of=serve_config_of, needs=("serve",), stdout_is_a_log=True)

    w = sub.add_parser("worker", help="run one annotation worker (consumes the Redis queue)",
                       description="A long-lived worker: loads the annotator once, consumes its Redis stream in "
                       "micro-batches,\nstores results, heartbeats. Redis outages (down, frozen, over maxmemory) are "
                       "waited out, also at\nstart-up: an unreachable Redis gets one line naming the URL (set it with "
                       "SIGMA_REDIS_URL or\n--set redis.url=...), then the worker waits for it; so does a model "
                       "folder a stopped saver holds\n(weights_busy: a line per try, then it loads again). "
                       "SIGTERM/SIGINT exit "
                       "with status 0: at once while\nloading or waiting, after finishing the batch in hand otherwise "
                       "(a second signal leaves the batch to be\nredelivered). With worker.max_rss_mb it stops "
                       "with status 75 once a batch (--batch: a shard)\nis stored and acknowledged with its "
                       "resident memory past that many MiB, for its supervisor to\nstart a fresh process (restart "
                       "it on failure or always; `sigma serve all` does).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--annotator", help="registry name (default: worker.annotator, pixel-diff); not with --batch")
    w.add_argument("--consumer", help="consumer name in the group (default: <host>-<pid>)")
    w.add_argument("--max-batch-size", type=integer, help="worker.max_batch_size; not with --batch")
    add_plugin_arg(w, "import MODULE first so the annotators it registers can serve (repeatable)")
    w.add_argument("--batch", action="store_true", help="fleet batch mode: consume the shard tasks of "
                   "`sigma batch submit` (stream <redis.key_prefix>:batch:tasks) instead of API jobs; each run's own "
                   "config names its annotator, options and batch size (`sigma batch submit --annotator "
                   "--batch-size`): --set worker.annotator / options / max_batch_size / max_wait_ms / restart_* are "
                   "refused with it, and said once on stderr when a config file or SIGMA__WORKER__* "
                   "sets them (docs/service.md)")
    add_config_args(w, SET_EXAMPLE)
    w.set_defaults(run=run_worker_cmd, config_of=worker_config_of, needs=("redis",), stdout_is_a_log=True)


def load(args: argparse.Namespace, *, runs_worker: bool = False, **flags):
    """The service settings; a command's flags (dotted keys) are overrides applied before validation.
    `runs_worker`: this process (or its child) builds worker.annotator, so worker.options are checked against it."""
    from sigma.service.settings import ServeConfig, WorkerServeConfig, load_serve_config

    if runs_worker:         # its plugins first: the annotator whose options are checked may be one they register
        _import_worker_plugins(args, flags)
    return load_serve_config(args.config, list(args.overrides), flags=flags,      # else $SIGMA_SERVE_CONFIG
                             model=WorkerServeConfig if runs_worker else ServeConfig)


def _import_worker_plugins(args: argparse.Namespace, flags: dict) -> None:
    """Import the worker's plugins (--plugin, then worker.plugins of the settings read without checking
    worker.options) before the options are checked against its annotator. A plugin's annotator was not registered
    yet when they were, so its options were checked only where it was built, after Redis was reached, said as
    `slow-diff: dealy_s: Extra inputs are not permitted` where a built-in's are `invalid ServeConfig:
    worker.options.dealy_s: ... (did you mean 'worker.options.delay_ms'?)`. Settings with other errors import
    none of worker.plugins: the check that follows says those errors (with any options it can check) at once."""
    from sigma.errors import ConfigError
    from sigma.registry import import_plugins
    from sigma.service.settings import load_serve_config

    import_plugin_args(args)
    try:
        shared = load_serve_config(args.config, list(args.overrides), flags=flags)
    except ConfigError:
        return
    import_plugins(shared.worker.plugins, "worker.plugins")


# What each mode never reads of the worker settings (worker.KEY), and why. Given on its command line (--set, or
# the flags) such a setting is refused; from a config file or SIGMA__WORKER__* (one file or environment may serve
# every process of a deployment) it is said once on stderr when it differs from its default, and the process starts.
RUN_OWN = ("each run's own config names its annotator, options and batch size (set them with `sigma batch submit "
           "--annotator NAME --batch-size N --set options.KEY=VALUE`)")
BATCH_PICKS_ITS_OWN = f"not with --batch, where {RUN_OWN}"
SUPERVISOR = "only `sigma serve all` restarts the worker it starts (worker.restart_*, worker.max_restarts)"
RUN_JSON = "only `sigma worker --batch` reads a run's run.json"
RESTARTS = ("restart_backoff_s", "restart_max_backoff_s", "max_restarts", "restart_window_s")


def unused_worker_settings(mode: str) -> dict[str, str]:
    """`mode` ("sigma worker", "sigma worker --batch", "sigma serve api", "sigma serve all"): the worker settings it
    never reads, each with why. A batch worker takes its annotator, options and batch size from each run and whole
    shards from its stream, and nobody restarts it; `sigma serve api` starts no worker."""
    from sigma.service.settings import WorkerSettings

    supervised = dict.fromkeys(RESTARTS, SUPERVISOR)
    return {
        "sigma worker": {"run_read_retry_s": RUN_JSON, "max_defer_s": RUN_JSON, **supervised},
        "sigma worker --batch": {**dict.fromkeys(("annotator", "options", "max_batch_size"), RUN_OWN),
                                 "max_wait_ms": "it takes whole shards, and gathers no API jobs into micro-batches",
                                 "decode_pool_retry_s": "it decodes shards as `sigma batch run` does, not on a "
                                                        "worker's image decode pool",
                                 "load_retry_s": "it loads no model at start-up: it builds each run's annotator as "
                                                 "it takes that run's tasks",
                                 **supervised},
        "sigma serve api": dict.fromkeys(WorkerSettings.model_fields, "it starts no worker (`sigma worker` and `sigma "
                                         "serve all` read worker.*)"),
        "sigma serve all": {"run_read_retry_s": RUN_JSON, "max_defer_s": RUN_JSON},
    }[mode]


# The API front end's settings (api.*, auth.*), which no worker reads, except api.align that `sigma worker` decodes
# its pairs with (the batch worker aligns as each run's own config says, io.align).
API_ONLY = "api.* and auth.* are the API's settings, read by `sigma serve api` and `sigma serve all` only"
RUN_ALIGNS = "each run's own config names io.align (`sigma batch submit --set io.align=true`)"
# The limits.* only one side reads: what the API admits (a body, a queue, bytes in flight), and how deep a result a
# worker writes. The image limits (max_pixels, max_bytes, max_instruction_chars, max_aspect_change) both read: the
# API checks them from the headers, `sigma worker` as it decodes. The batch worker reads none: each run's own do.
API_LIMITS = ("max_request_bytes", "max_queue_length", "retry_after_s", "max_bytes_in_flight")
API_LIMIT = ("limits.max_request_bytes, max_queue_length, retry_after_s and max_bytes_in_flight bound what the API "
             "admits, read by `sigma serve api` and `sigma serve all` only")
WORKER_LIMITS = ("max_json_depth",)
WORKER_LIMIT = ("limits.max_json_depth bounds the results a worker writes, read by `sigma worker` and `sigma serve "
                "all` only")
RUN_LIMITS = ("each run's own config names its limits (`sigma batch submit --set io.limits.KEY=VALUE`), "
              "the batch worker reads no limits.*")


def unused_settings(mode: str) -> dict[str, str]:
    """`mode`'s unused settings as dotted `section.KEY`, each with why: `unused_worker_settings`; for a worker every
    api.* and auth.* setting (the API front end's) but the api.align `sigma worker` reads, and the limits.* only the
    API reads (`API_LIMITS`; every limits.* for the batch worker); for `sigma serve api` the limits.* only a worker
    reads (`WORKER_LIMITS`)."""
    from sigma.service.settings import ApiSettings, AuthSettings, ServiceLimits

    out = {f"worker.{key}": why for key, why in unused_worker_settings(mode).items()}
    if mode.startswith("sigma worker"):
        out.update({f"api.{key}": API_ONLY for key in ApiSettings.model_fields if key != "align"})
        out.update({f"auth.{key}": API_ONLY for key in AuthSettings.model_fields})
        out.update({f"limits.{key}": API_LIMIT for key in API_LIMITS})
        if mode == "sigma worker --batch":
            out["api.align"] = RUN_ALIGNS
            out.update({f"limits.{key}": RUN_LIMITS for key in ServiceLimits.model_fields})
    elif mode == "sigma serve api":
        out.update({f"limits.{key}": WORKER_LIMIT for key in WORKER_LIMITS})
    return out


def _field_name(section: str, name: str) -> str:
    """The field a `--set section.NAME` sets: NAME, or the field NAME is another name of (limits.max_image_bytes
    sets limits.max_bytes)."""
    from pydantic import AliasChoices

    from sigma.service.settings import ServeConfig

    info = ServeConfig.model_fields.get(section)
    fields = getattr(info.annotation, "model_fields", {}) if info is not None else {}
    for field, spec in fields.items():
        alias = spec.validation_alias
        if isinstance(alias, AliasChoices) and name in alias.choices:
            return field
    return name


def refuse_unused_sets(mode: str, overrides: list[str], refused: str) -> None:
    """`--set worker.KEY=...` (or `--set 'worker={KEY: ...}'`) on `mode`'s command line for a KEY it never reads, and
    on a worker's `--set api.KEY=...` / `--set auth.KEY=...`, and the limits.* only the other side reads
    (`unused_settings`; a field's other name as the field): one bad_arguments line, 'REFUSED:
    why', whatever the value (`sigma.cli.common.refuse_unused`). A worker took them silently: `sigma worker --set
    api.wait_timeout_s=5` looked like it did something."""
    from sigma.config.loader import read_overrides

    unused = unused_settings(mode)
    given: dict[str, str] = {}
    for key, override in read_overrides(overrides).items():
        section, *rest = key.split(".")
        fields = (list(override.value) if not rest and isinstance(override.value, dict) else rest[:1])
        named = [f"{section}.{_field_name(section, str(field))}" for field in fields]
        whys = [unused[dotted] for dotted in named if dotted in unused]
        if whys:
            given[f"--set {key}"] = whys[0]
    refuse_unused(dict.fromkeys(given, True), f"{refused}: {'; '.join(dict.fromkeys(given.values()))}")


def warn_unused_settings(mode: str, cfg, path: str | None = None) -> None:
    """The worker settings `mode` never reads that differ from their defaults (from a config file or
    SIGMA__WORKER__*: its command line's were refused), said once on stderr; they may be right for another process
    of the deployment, so it starts. So are a worker's api.* settings (SIGMA__API__*) and each mode's unused
    limits.* (SIGMA__LIMITS__*), each section on a line of its own; not
    auth.*: keys are credentials, and one environment (SIGMA_API_KEYS) serving every process is no mistake to say.
    Each line names where its values came from (`setting_sources`: the file, `path` or $SIGMA_SERVE_CONFIG's, and the
    variables): "(from the config file or SIGMA__WORKER__*)" named neither the file nor the variable."""
    from sigma.service.settings import ServeConfig, setting_sources
    from sigma.text import shown

    default, unused = ServeConfig(), unused_settings(mode)
    sources_of = setting_sources(path)    # the file read once for every setting said, not once per setting
    for section in ("worker", "api", "limits"):
        now, before = getattr(cfg, section), getattr(default, section)
        said: dict[str, str] = {}
        sources: list[str] = []
        for dotted, why in unused.items():
            owner, key = dotted.split(".", 1)
            if owner == section and getattr(now, key) != getattr(before, key):
                # each value cut (shown): a deployment's worker.options may run to megabytes, said whole in one line
                said[f"{dotted}={shown(repr(getattr(now, key)), 80)}"] = why
                sources += sources_of(dotted)
        if said:
            named = list(dict.fromkeys(sources))
            where = (" and ".join([", ".join(named[:-1]), named[-1]] if len(named) > 1 else named) if named
                     else f"the config file or SIGMA__{section.upper()}__*")
            print(f"sigma: warning: {mode} does not use {', '.join(said)} (from {shown(where, 300)}): "
                  f"{'; '.join(dict.fromkeys(said.values()))}", file=sys.stderr, flush=True)


def worker_config_of(args: argparse.Namespace):
    """`sigma worker`'s settings, only read (the parser's `config_of`: `refused_said`): no unused-setting warning."""
    return load_worker(args, getattr(args, "batch", False), child=False, warn=False)


def load_worker(args: argparse.Namespace, batch: bool, child: bool, warn: bool = True):
    """`sigma worker [--batch]`'s settings. What it would take and never use is refused when this command line gives
    it (`--batch --annotator`, `--max-batch-size`, `--set worker.KEY=...`, `--set api.KEY=...`, `--set auth.KEY=...`,
    `--set limits.KEY=...` of the API's: one bad_arguments line, whatever the value), and said once on stderr when it
    comes from a config file or SIGMA__WORKER__* / SIGMA__API__* / SIGMA__LIMITS__* (settings the processes of a
    deployment may share, e.g. compose's SIGMA_ANNOTATOR): the worker then starts. Only values that differ from the
    defaults are said. `sigma serve all`'s worker (`child`) is not checked: its command line and settings are
    the server's, checked there (the restart settings it passes on are the server's to read)."""
    mode = "sigma worker --batch" if batch else "sigma worker"
    if batch:
        refuse_unused({"--annotator": args.annotator, "--max-batch-size": args.max_batch_size}, BATCH_PICKS_ITS_OWN)
    if not child:
        refuse_unused_sets(mode, args.overrides, "not with --batch" if batch else "not with `sigma worker`")
    # --consumer as the setting it stands for, checked with it (a name Redis cannot take was found at the first beat)
    cfg = load(args, **{"worker.consumer": args.consumer}) if batch else load(
        args, runs_worker=True, **{"worker.annotator": args.annotator, "worker.max_batch_size": args.max_batch_size,
                                   "worker.consumer": args.consumer})
    if not child and warn:
        warn_unused_settings(mode, cfg, args.config)
    from sigma.service.settings import check_heartbeat_fits

    check_heartbeat_fits(cfg.queue)         # before Redis: a lease its beats cannot keep hands work in progress over
    return cfg


def run_worker_cmd(args: argparse.Namespace) -> int:
    from sigma.workers.worker import run_worker

    parent = os.environ.pop(PARENT_ENV, "")
    if parent.isdigit():                     # `sigma serve all`'s child: never outlive the supervisor
        from sigma.lifeline import die_with_parent

        die_with_parent(int(parent))

    batch = getattr(args, "batch", False)   # fleet batch mode (issue 7): the run's own config picks the annotator
    cfg = load_worker(args, batch, child=parent.isdigit())
    cfg.worker.plugins = with_plugin_args(cfg.worker.plugins, args)     # --plugin adds to the configured list
    if batch:
        from sigma.workers.batch import run_batch_worker_from_serve_config

        return run_batch_worker_from_serve_config(cfg, consumer=args.consumer)
    return run_worker(cfg, consumer=args.consumer)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class WorkerSupervisor:
    """`sigma serve all`'s worker child, kept alive: a child that exits while the server runs (kill -9, a crash,
    the OOM killer) is restarted after a backoff (doubled after each quick death, capped), each restart said on
    stderr. After `max_restarts` deaths within `restart_window_s` it gives up and calls `on_give_up` (the
    server then stops with status 1): a worker that cannot start is a configuration to fix, not a loop to run.
    A child that recycled itself (past `worker.max_rss_mb`: `RECYCLE_EXIT_STATUS`) did its batch and is no death:
    it is started afresh at once, said on stderr, and counts towards nothing (a leaking model recycled every few
    batches stopped the server once it had done so `max_restarts` times within the window)."""

    def __init__(self, cmd: list[str], settings: WorkerSettings, on_give_up: Callable[[], None]):
        self.cmd = cmd
        self.settings = settings
        self.on_give_up = on_give_up
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.recycles = 0
        self.gave_up = False
        self._deaths: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sigma-worker-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        with self._lock:
            if not self._stop.is_set():
                self.proc = subprocess.Popen(self.cmd, env={**os.environ, PARENT_ENV: str(os.getpid())})

    def _run(self) -> None:
        """The supervising thread. It ended without a word on any exception (`subprocess.Popen` failing to start
        the child: EMFILE with every descriptor in use, EAGAIN/ENOMEM under a pids or memory limit): the API served
        on with no worker, never restarted, and the server did not stop either. A child that cannot be started is
        now a death like any other (said, backed off, counted towards worker.max_restarts); anything else ends the
        server with status 1 (`on_give_up`), said, rather than leaving it workerless."""
        try:
            self._supervise()
        except BaseException as exc:  # noqa: BLE001 - a dead supervisor left a server without a worker for good
            print(f"sigma serve all: the worker supervisor failed ({type(exc).__name__}: {exc}); stopping the "
                  "server", file=sys.stderr, flush=True)
            self.gave_up = True
            self.on_give_up()

    def _respawn(self) -> str | None:
        """`_spawn`, or why the child could not be started (an OSError: no descriptor, no process, no memory)."""
        try:
            self._spawn()
        except OSError as exc:
            return f"could not be started again ({type(exc).__name__}: {exc})"
        return None

    def _supervise(self) -> None:
        from sigma.workers.lifecycle import RECYCLE_EXIT_STATUS

        backoff = self.settings.restart_backoff_s
        unstarted: str | None = None       # why the last start failed; the child before it is long dead
        while not self._stop.is_set():
            proc = self.proc
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if self._stop.is_set():
                return
            now = time.monotonic()
            ran = now - started
            if code == RECYCLE_EXIT_STATUS and unstarted is None:
                self.recycles += 1
                print(f"sigma serve all: the worker (pid {proc.pid}) recycled itself after {ran:.1f} s (past "
                      f"worker.max_rss_mb, status {code}); starting a fresh one (recycle {self.recycles})",
                      file=sys.stderr, flush=True)
                unstarted = self._respawn()
                continue
            window = self.settings.restart_window_s
            if ran >= window and unstarted is None:
                backoff = self.settings.restart_backoff_s      # it had been healthy: start over
            self._deaths = [t for t in self._deaths if now - t < window] + [now]
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with status {code}"
            who = f"the worker (pid {proc.pid}) {how} after {ran:.1f} s"
            if unstarted is not None:
                who = f"the worker {unstarted}"
            if len(self._deaths) > self.settings.max_restarts:
                print(f"sigma serve all: {who}: {len(self._deaths)} "
                      f"deaths within {window:.15g} s (worker.max_restarts={self.settings.max_restarts}); giving up, "
                      "stopping the server", file=sys.stderr, flush=True)
                self.gave_up = True
                self.on_give_up()
                return
            self.restarts += 1
            print(f"sigma serve all: {who}; restarting it in "
                  f"{backoff:.1f} s (restart {self.restarts})", file=sys.stderr, flush=True)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.settings.restart_max_backoff_s)
            unstarted = self._respawn()

    def stop_supervising(self) -> None:
        """The server is shutting down (a signal that may have reached the child too): no more restarts."""
        self._stop.set()

    def stop(self, timeout: float) -> None:
        """Stop supervising, then SIGTERM the child (it finishes its batch) and wait; SIGKILL after `timeout`."""
        with self._lock:
            self._stop.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._thread.join(timeout=5)


def _serve_the_workers_annotator(cfg, annotator: str) -> None:
    """`sigma serve all`: the API must accept the one worker's annotator. `--annotator sigma-lite` started a
    sigma-lite worker behind an API that refused sigma-lite (422 unknown_annotator, api.annotators being
    [pixel-diff]) and queued pixel-diff jobs no worker took. api.annotators, when not set, is now [annotator];
    set without it, the two settings disagree and that is said before anything starts."""
    from sigma.errors import ConfigError

    if annotator in cfg.api.annotators:
        return
    if "annotators" not in cfg.api.model_fields_set:
        cfg.api.annotators = [annotator]
        return
    raise ConfigError(f"sigma serve all: its worker serves {annotator!r} (--annotator / worker.annotator), which "
                      f"api.annotators {cfg.api.annotators} does not name: the API would refuse its jobs and queue "
                      "others no worker takes; add it to api.annotators or start the worker with one of those")


def worker_argv(args: argparse.Namespace) -> list[str]:
    """`sigma serve all`'s command line as its worker child takes it. Each value goes as `--flag=VALUE`: given as
    `--flag VALUE`, one that starts with `-` (`--annotator=-x`, `--set=-k=1`, a config file named `-c.yaml`) was
    read by the child as another flag, `expected one argument`, and the child died and was restarted for good."""
    argv = [f"--config={args.config}"] if args.config else []
    argv += [f"--set={item}" for item in args.overrides]
    argv += [f"--annotator={args.annotator}"] if args.annotator else []
    return argv + [f"--plugin={module}" for module in args.plugin]


def _check_the_workers_start(cfg, args: argparse.Namespace) -> None:
    """What `sigma serve all`'s worker child builds, checked here before the API or the child starts: its plugins
    (worker.plugins and --plugin) import, its annotator is registered, its options are ones that annotator's
    config accepts. Left to the child, a bad one (`--set worker.annotator=nope`, `--set worker.options.dilate=2`)
    was the child's error on stderr after the API was up, the child restarted until worker.max_restarts, and the
    server exited 1 minutes later; now it is one line, exit 2, and no child is started."""
    from sigma.errors import ConfigError, SigmaError
    from sigma.registry import annotator_config_cls, import_plugins, validate_annotator_options
    from sigma.service.settings import check_heartbeat_fits

    check_heartbeat_fits(cfg.queue)
    import_plugins(with_plugin_args(cfg.worker.plugins, args), "worker.plugins")
    name = cfg.worker.annotator
    try:
        annotator_config_cls(name)                      # unknown_name, with the closest registered name
        validate_annotator_options(name, dict(cfg.worker.options))
    except SigmaError as exc:
        raise ConfigError(f"sigma serve all: its worker could not start: {exc.message} (--annotator / "
                        f"worker.annotator, worker.options)", code=exc.code) from exc


def serve_config_of(args: argparse.Namespace):
    """`sigma serve`'s settings, checked against the command line (also the parser's `config_of`: `refused_said`)."""
    from sigma.errors import InputError

    if args.what == "api" and args.annotator is not None:   # it named a worker's annotator: there is none here
        raise InputError("--annotator goes with `sigma serve all` (the annotator of the worker it starts); `sigma "
                         "serve api` starts no worker: the annotators its requests may name are api.annotators "
                         "(--set 'api.annotators=[NAME]'), served by `sigma worker --annotator NAME`",
                         code="bad_arguments")
    mode = f"sigma serve {args.what}"      # `api` reads no worker.*; `all` all but the batch worker's
    refuse_unused_sets(mode, args.overrides, f"not with `{mode}`")
    # said once, here, before the API starts: a worker child that cannot import it would die at each restart
    import_plugin_args(args)
    return load(args, runs_worker=args.what == "all",
                **{"api.host": args.host, "api.port": args.port, "worker.annotator": args.annotator})


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from sigma.api.app import create_app
    from sigma.api.server import uvicorn_options

    cfg = serve_config_of(args)
    mode = f"sigma serve {args.what}"
    warn_unused_settings(mode, cfg, args.config)
    if args.what == "all":
        _serve_the_workers_annotator(cfg, cfg.worker.annotator)
        _check_the_workers_start(cfg, args)
    # the API validates a batch's annotator by registry name: --plugin adds to api.plugins (create_app imports them)
    cfg.api.plugins = with_plugin_args(cfg.api.plugins, args)
    host, port = cfg.api.host, cfg.api.port
    app = create_app(cfg)      # fails here (exit 2) on a config error, before a worker is started
    supervisor: WorkerSupervisor | None = None

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if supervisor is not None:   # Ctrl-C reaches the worker too: its exit is not a death to restart
                supervisor.stop_supervising()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, host=host, port=port, log_level=args.log_level, access_log=args.access_log,
                                   **uvicorn_options(cfg)))
    if args.what == "all":
        cmd = [sys.executable, "-m", "sigma", "worker", *worker_argv(args)]

        def give_up() -> None:
            server.should_exit = True
        supervisor = WorkerSupervisor(cmd, cfg.worker, give_up)
        supervisor.start()
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal to the handler that was
    # there before it; a no-op one lets us stop the worker and exit 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    try:
        server.run()
    finally:
        if supervisor is not None:
            supervisor.stop(timeout=cfg.queue.block_ms / 1000 + 30)
    return 1 if supervisor is not None and supervisor.gave_up else 0

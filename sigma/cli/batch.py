"""`sigma batch run|submit|status|presets`: annotate a whole corpus into sharded parquet manifests."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sigma.cli.common import (
    add_config_args,
    add_plugin_arg,
    import_plugin_args,
    integer,
    path,
    said,
    with_plugin_args,
    within,
)
from sigma.errors import ConfigError

HELP = """Annotate a corpus of editing pairs into one parquet manifest per shard.

INPUT is a folder of pairs (<id>_original.* / <id>_edited.*, or original/ + edited/), a pairs.jsonl set
(or a folder of sets, e.g. ../shared/data/eval), a .jsonl/.csv manifest of paths, parquet files (the
Hugging Face layout), a datasets save_to_disk folder, or WebDataset .tar shards.

Each shard is written to OUT/shards/<shard>.<hash>.parquet by temp file + atomic rename, and its status to
OUT/status/; `--resume` continues an interrupted run and skips finished shards. A bad pair is a row
with status=error and its reason; the run goes on. One run at a time per OUT (a second exits 2, run_locked).

Paths: a corpus run from this command may name any file you can read (a manifest may point anywhere, symlinks
are followed). Runs submitted through the API (POST /v1/batches) are confined to api.batch_root: every file a
corpus names must resolve under it, or that pair fails with path_outside_root and nothing is read. The same
confinement is available here with --set input.root=DIR.
"""

EXAMPLES = """examples:
  sigma batch run ../shared/data/eval --out runs/eval --annotator pixel-diff
  sigma batch run magicbrush/data/ --preset magicbrush --out runs/mb --batch-size 16 --workers 4
  sigma batch run shards/ --format wds --columns original=src.jpg,edited=tgt.jpg --out runs/wds
  sigma batch run magicbrush/data/ --preset magicbrush --out runs/mb --resume
  sigma batch run magicbrush/data/ --preset magicbrush --out runs/mb --procs 4 --threads 1
  sigma batch run magicbrush/data/ --preset magicbrush --out /shared/runs/mb --backend ray --ray-address auto
  sigma batch status runs/mb
  sigma batch submit magicbrush/data/ --preset magicbrush --out /shared/runs/mb --redis redis://host:6379/0
"""

SUBMIT_EXAMPLES = """examples:
  sigma batch submit magicbrush/data/ --preset magicbrush --out /shared/runs/mb --redis redis://host:6379/0
  sigma worker --batch                 # on every machine that sees /shared (SIGMA_REDIS_URL=redis://host:6379/0)
  sigma batch status /shared/runs/mb --redis redis://host:6379/0
"""

STATUS_EXAMPLES = """examples:
  sigma batch status runs/mb
  sigma batch status runs/mb --json
  sigma batch status /shared/runs/mb --redis redis://host:6379/0   # with the fleet queue
"""


def parse_columns(text: str) -> dict[str, str]:
    """`--columns original=a,edited=b` as a mapping, checked here so that the flag is named (the same check as
    `input.columns:` in a config file: `sigma.io.corpora.presets.column_problem`). `--columns ''` was ignored and
    `--columns ','` replaced the config's mapping with nothing, without a word; `=x` and `original=` were a role or
    a column named ''; a role given twice kept the last."""
    from sigma.io.corpora.presets import column_problem
    from sigma.text import shown

    out: dict[str, str] = {}
    if not text.strip():
        raise ConfigError("--columns: empty; give role=column pairs separated by commas (e.g. original=source_img)")
    for part in text.split(","):
        if not part.strip():
            raise ConfigError(f"--columns {shown(text)!r}: an empty role=column between commas")
        if "=" not in part:
            raise ConfigError(f"--columns: {shown(part)!r} is not role=column (e.g. original=source_img)")
        role, col = (piece.strip() for piece in part.split("=", 1))
        if role in out:
            raise ConfigError(f"--columns: role {shown(role)!r} given twice ({role}={shown(out[role])}, "
                              f"{role}={shown(col)})")
        out[role] = col
    problem = column_problem(out)
    if problem:
        raise ConfigError(f"--columns: {problem}")
    return out


def _add_run_args(p: argparse.ArgumentParser) -> None:
    from sigma.io.corpora import PRESETS, formats

    p.add_argument("input", type=path, help="the corpus (see above)")
    p.add_argument("--out", required=True, type=path, help="run folder (created; holds run.json, shards/, status/)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="column names of a public corpus")
    p.add_argument("--format", help=f"reader: {', '.join(formats())} (default: auto-detected)")
    p.add_argument("--columns", help="role=column overrides: original=,edited=,instruction=,mask=,id=,edit_type= "
                                     "(tars: field names, alternatives separated by |)")
    p.add_argument("--shard-size", type=integer, help="pairs per shard (default 1000)")
    p.add_argument("--annotator", help="registry name (see `sigma models`)")
    p.add_argument("--threshold", type=float, help="mask = prob > T")
    p.add_argument("--batch-size", type=integer, help="pairs per predict() call (default 8)")
    p.add_argument("--workers", type=integer,
                   help="decode processes (default: 0 on <= 2 cores, else cores - 1, at most 8)")
    p.add_argument("--png-masks", action="store_true", help="also write OUT/masks/<shard>/<pair>.png")
    p.add_argument("--no-ground-truth", action="store_true",
                   help="do not score against the corpus's masks (skips decoding them)")
    p.add_argument("--backend", choices=("local", "ray"),
                   help="local (default) or ray (pip install 'sigma-masks[ray]')")
    add_plugin_arg(p, "import MODULE before building the annotator, in every process and actor (registers your "
                      "own annotators and corpus formats; repeatable; adds to the config's plugins)")
    add_config_args(p)


def _add_scale_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("processes and Ray (speed only: outputs are the same bytes whichever you choose)")
    g.add_argument("--procs", type=integer, help="local backend: inference processes fed whole shards (default: for a "
                                             "network on a machine without GPU, one per idle core = cores minus "
                                             "the load average; else 1)")
    g.add_argument("--threads", type=integer, help="torch threads per inference process or Ray actor (default: 1 with "
                                               "several processes and on CPU actors; the idle cores for one CPU "
                                               "process)")
    g.add_argument("--ray-address", metavar="ADDR", help="run on this Ray cluster (implies --backend ray): HOST:PORT "
                                                         "of its head, 'auto' (the one `ray start` runs here) or "
                                                         "ray://HOST:10001; default $RAY_ADDRESS, else a Ray on this "
                                                         "machine")
    g.add_argument("--actors", type=integer,
                   help="Ray shard actors (default: one per GPU, or per CPU on a CPU cluster)")
    g.add_argument("--actor-cpus", type=float, help="CPUs each Ray actor reserves (default 1)")
    g.add_argument("--actor-gpus", type=float, help="GPUs each Ray actor reserves; 0.5 packs two per GPU (default: 1 "
                                                    "on a cluster with GPUs, else 0)")


def _add_redis_args(p: argparse.ArgumentParser, redis_help: str | None = None) -> None:
    """The fleet's Redis settings: the same model (and environment) as `sigma worker --batch` reads."""
    p.add_argument("--redis", help=redis_help or "Redis URL (default: redis.url of the service settings: "
                   "$SIGMA_REDIS_URL, else redis://127.0.0.1:6379/0)")
    p.add_argument("--key-prefix", help="redis.key_prefix (default: the service settings', `sigma`); the tasks "
                   "go to <prefix>:batch:tasks, where `sigma worker --batch` with the same prefix reads them")
    p.add_argument("--serve-config", metavar="FILE", type=path,
                   help="service settings YAML (default: $SIGMA_SERVE_CONFIG)")


def _redis_settings(args: argparse.Namespace):

    from sigma.service.settings import load_serve_config

    overrides = []
    if args.redis:
        overrides.append(f"redis.url={args.redis}")
    if args.key_prefix:
        overrides.append(f"redis.key_prefix={args.key_prefix}")
    return load_serve_config(args.serve_config, overrides).redis


def _add_failed_limit(p: argparse.ArgumentParser, help_text: str) -> None:
    from sigma.batch.layout import MAX_FAILED_SHOWN

    p.add_argument("--failed-limit", type=integer, action=within(0, MAX_FAILED_SHOWN), default=None, metavar="N",
                   help=f"{help_text}; 0 .. {MAX_FAILED_SHOWN}, as the API's failed_limit")


def _add_dead_limit(p: argparse.ArgumentParser) -> None:
    from sigma.batch.layout import DEAD_READ, MAX_DEAD_READ

    p.add_argument("--dead-limit", type=integer, action=within(0, MAX_DEAD_READ), default=None, metavar="N",
                   help=f"with --redis: dead letters read, newest first, to find this run's shards a worker gave up on "
                   f"without writing their status (default {DEAD_READ}; 0 .. {MAX_DEAD_READ}, as the API's dead_limit)")


def _add_task_limit(p: argparse.ArgumentParser) -> None:
    from sigma.batch.layout import MAX_TASK_READ, TASK_READ

    p.add_argument("--task-limit", type=integer, action=within(0, MAX_TASK_READ), default=None, metavar="N",
                   help=f"with --redis: task stream entries read, newest first, to find this run's tasks; the read "
                   f"stops sooner once every pending shard has its task (default {TASK_READ}; 0 .. {MAX_TASK_READ}, as "
                   "the API's task_limit)")


def failed_limit(args: argparse.Namespace) -> int:
    """--failed-limit, or the default the API's `failed_limit` has too (FAILED_SHOWN)."""
    from sigma.batch.layout import FAILED_SHOWN

    return FAILED_SHOWN if args.failed_limit is None else args.failed_limit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="annotate a whole corpus (sharded, resumable; fleet mode on Redis)",
                       description=HELP, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    bsub = p.add_subparsers(dest="batch_command", metavar="SUBCOMMAND")

    r = bsub.add_parser("run", help="run (or --resume) a batch on this machine", description=HELP, epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(r)
    _add_scale_args(r)
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--json", action="store_true", help="print the run summary as JSON")
    _add_failed_limit(r, "failed shards the summary lists (stderr, --json and OUT/summary.json), first in run "
                         "order (default 100; `failed_now` counts them all, `sigma batch status` lists them), "
                         "and as many lost attempts (`retried`; `retried_omitted` counts the rest)")
    r.set_defaults(run=run_run, config_of=build_config, needs=("batch",), stdout_is_a_log=True)

    s = bsub.add_parser("submit", help="plan a run and put its shards on the Redis stream for `sigma worker --batch`",
                        epilog=SUBMIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_run_args(s)
    _add_redis_args(s)
    s.set_defaults(run=run_submit, config_of=build_config, needs=("batch", "redis"))

    st = bsub.add_parser("status", help="shards done/failed/pending of a run folder (and its queue, with --redis)",
                         epilog=STATUS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("out", type=path, help="run folder")
    _add_redis_args(st, "also show the fleet queue on this Redis URL")
    st.add_argument("--json", action="store_true")
    _add_failed_limit(st, "failed shards listed, first in run order (default 100; the count covers them all)")
    _add_dead_limit(st)
    _add_task_limit(st)
    st.set_defaults(run=run_status)

    pr = bsub.add_parser("presets", help="list the corpus presets and their columns",
                         epilog="examples:\n  sigma batch presets\n"
                                "  sigma batch run mb/ --preset magicbrush --out runs/mb\n",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    pr.set_defaults(run=run_presets)
    p.set_defaults(run=lambda args: (p.print_help(), 2)[1])


def build_config(args: argparse.Namespace):
    from sigma.batch.config import BatchConfig
    from sigma.config.loader import flags_named, load_config, read_overrides

    # first: --format may name a corpus format the plugin registers, checked as the config is validated (the run
    # imports them again where it builds its annotator); `sigma batch run --plugin M --format F` was invalid_config.
    # Said as `--plugin: ...` when one fails; those of the config file (or --set plugins=) are imported below,
    # where --plugin adds to them.
    import_plugin_args(args)
    overrides: dict[str, Any] = dict(read_overrides(args.overrides))
    # None: the INPUT given was refused at parsing (`''`, `empty_path`), said already; the config is checked with `.`
    # in its place (only read: `refused_said`), not refused again as `input.path: Input should be a valid string`
    overrides["input.path"] = args.input if args.input is not None else "."
    flags = {"input.preset": args.preset, "input.format": args.format, "input.shard_size": args.shard_size,
             "annotator": args.annotator, "threshold": args.threshold, "batch_size": args.batch_size,
             "workers": args.workers, "backend": args.backend}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.columns is not None:
        overrides["input.columns"] = parse_columns(args.columns)
    if args.png_masks:
        overrides["png_masks"] = True
    if args.no_ground_truth:
        overrides["ground_truth"] = False
    scale = {"procs": getattr(args, "procs", None), "threads": getattr(args, "threads", None),
             "ray.address": getattr(args, "ray_address", None), "ray.actors": getattr(args, "actors", None),
             "ray.num_cpus": getattr(args, "actor_cpus", None), "ray.num_gpus": getattr(args, "actor_gpus", None)}
    flag_names = {"ray.address": "--ray-address", "ray.actors": "--actors", "ray.num_cpus": "--actor-cpus",
                  "ray.num_gpus": "--actor-gpus"}
    ray_flags = [flag_names[k] for k, v in scale.items() if k in flag_names and v is not None]
    if ray_flags and args.backend is None:
        overrides["backend"] = "ray"          # --ray-address / --actors ... mean Ray
    elif ray_flags and args.backend == "local":
        raise ConfigError(f"{ray_flags[0]} is a Ray option; drop it or use --backend ray")
    overrides.update({k: v for k, v in scale.items() if v is not None})
    given = {**flags, "input.columns": args.columns, **scale}
    cfg = load_config(BatchConfig, args.config, overrides, flags=flags_named(given, flag_names),
                      before_validate=lambda tree: import_config_plugins(tree, args))
    if cfg.backend == "ray" and cfg.procs is not None:
        raise ConfigError("--procs is for the local backend; on Ray set the number of actors with --actors")
    return cfg


def import_config_plugins(tree: dict[str, Any], args: argparse.Namespace | None = None) -> None:
    """The run's `plugins` as the config will hold them (the config file's `plugins:`, or `--set plugins=`, then
    each --plugin module not already there: `with_plugin_args`), imported before the config is validated: its
    `input.format` may name a corpus format one of them registers. The config file's were imported only once the
    config was read, so a `format:` beside them was invalid_config, `Unknown corpus format`. A value that is no
    list of names is left to the validation to refuse."""
    from sigma.registry import import_plugins

    plugins = tree.get("plugins", [])
    if isinstance(plugins, list) and all(isinstance(module, str) for module in plugins):
        if args is not None and getattr(args, "plugin", None):
            plugins = tree["plugins"] = with_plugin_args(plugins, args)     # what run.json and the tasks record
        import_plugins(plugins, "plugins")


def continued_config(args: argparse.Namespace, continues: bool):
    """`build_config`, for a command that may continue the run in --out (`--resume`, a submission again). A run
    planned with annotator options this sigma no longer accepts, continued with the same options, failed on the
    command line's own options (`invalid_config`: `options.dilate: Extra inputs are not permitted`) with no word that
    the run itself cannot go on here: now `run_options_refused`, naming the record and what to do. Only for a
    record that holds to its run hash (an edited one is left to the run's own check: `run_modified`)."""
    try:
        return build_config(args)
    except ConfigError:
        if continues:
            _refuse_recorded_options(args.out)
        raise


def _refuse_recorded_options(out: str) -> None:
    from sigma.batch.layout import RunDir
    from sigma.batch.record import check_options, check_record
    from sigma.errors import SigmaError

    rundir = RunDir(out)
    try:
        record = rundir.load()
        check_record(record, record["run_hash"], rundir.run_file)
    except (SigmaError, OSError):
        return                  # no run there, or not one that holds to its hash: the config's own error stands
    check_options(record, rundir.run_file)


def run_run(args: argparse.Namespace) -> int:
    from sigma.batch.runner import run_batch

    limit = failed_limit(args)
    cfg = continued_config(args, args.resume)
    summary = run_batch(cfg, args.out, resume=args.resume, progress=not args.no_progress, failed_limit=limit)
    from sigma.text import printable

    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        st = summary.status
        if summary.skipped == summary.shards:
            print(f"{printable(summary.out)}: all {summary.shards} shards already done; nothing to do")
        else:
            print(f"{printable(summary.out)}: {summary.done_now} shard(s) written, {summary.skipped} skipped, "
                  f"{summary.failed_now} failed; {summary.pairs} pairs ({summary.errors} errors) in "
                  f"{summary.seconds:.1f} s = {summary.pairs_per_s:.1f} pairs/s")
        print(f"run {summary.run_hash}: {st['done']}/{st['shards']} shards done, {st['ok']} pairs annotated, "
              f"{st['errors']} bad pairs{_codes(st['error_codes'])}")
    for f in summary.failed:
        # the stored reason, cut to 2000 characters as a whole, printed a long path in it whole: its values cut
        line = said(f"shard {f['shard']} failed: {f['error']} (rerun with --resume)")
        print(f"sigma: error: {line}", file=sys.stderr)
    if summary.failed_shards_omitted:
        print("sigma: error: " + said(f"… and {summary.failed_shards_omitted} more failed shard(s): `sigma batch "
              f"status {summary.out} --failed-limit N` lists them, {summary.out}/status/<shard>.json holds each one's "
              "reason (rerun with --resume)"), file=sys.stderr)
    return 1 if summary.failed_now else 0


def run_submit(args: argparse.Namespace) -> int:
    from sigma.service.fleet import submit_run

    cfg = continued_config(args, True)
    info = submit_run(cfg, args.out, _redis_settings(args))
    from sigma.text import printable

    print(f"{printable(args.out)}: queued {info['queued']} shard task(s) on {info['stream']} ({info['skipped']} "
          "already done); start `sigma worker --batch` on each machine, follow with `sigma batch status`")
    return 0


def _codes(counts: dict[str, int] | None) -> str:
    """{'file_not_found': 2, 'bad_record': 1} -> ' (file_not_found x2, bad_record x1)' for people, not a dict repr."""
    if not counts:
        return ""
    return " (" + ", ".join(f"{code} x{n}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1])) + ")"


def run_status(args: argparse.Namespace) -> int:
    """The run's counts, once its run.json holds to its run hash (`sigma.batch.record.verified_record`; else
    run_modified, exit 2): counts of a record edited since planning describe another run. Checked on every poll:
    hashing the plan costs ~0.05 s per 10,000 planned shards, measured against ~1.3 s for the walk over their status
    files (1.8 s the whole command, 2 shared cores): under 5%, so no cheaper check, nor an unchecked answer."""
    from sigma.batch.layout import RunDir
    from sigma.batch.record import run_warnings, verified_record
    from sigma.cli.common import check_extras

    limit = failed_limit(args)
    if args.redis or args.key_prefix or args.serve_config:
        check_extras("batch status --redis", ("redis",))

    rundir = RunDir(args.out)
    record, _ = verified_record(rundir, "no status shown")
    warnings = run_warnings(record, rundir.run_file)
    from sigma.text import printable

    for warning in warnings:      # counted as recorded (read-only); continuing the run is what would refuse them
        print(printable(f"sigma: warning: {warning['message']}"), file=sys.stderr)
    queue, dead_letters = None, {}
    if args.redis or args.key_prefix or args.serve_config:
        from sigma.batch.layout import DEAD_READ, TASK_READ
        from sigma.service.fleet import queue_status

        # first: the shards a worker dead-lettered without writing their status are failed in the counts below. The
        # record read and checked above is handed on: run.json (up to $SIGMA_MAX_RUN_BYTES) is parsed once
        queue = queue_status(_redis_settings(args), run=rundir, dead_letters=dead_letters, record=record,
                             dead_limit=DEAD_READ if args.dead_limit is None else args.dead_limit,
                             task_limit=TASK_READ if args.task_limit is None else args.task_limit)
    status = rundir.summary(failed_limit=limit, record=record, dead_letters=dead_letters)
    if queue is not None:
        status["queue"] = queue
    if args.json:        # `warnings` as GET /v1/batches/status has it: always a list, [] when nothing to say
        print(json.dumps({**status, "warnings": warnings}, indent=2))
        return 0
    # the run folder's name is the user's: a control character in it escaped (`printable`), not obeyed
    print(f"{printable(args.out)}: run {status['run_hash']}: {status['done']}/{status['shards']} shards done, "
          f"{status['failed']} failed, {status['pending']} pending")
    planned = status.get("planned_pairs")
    print(f"pairs: {status['ok']} annotated, {status['errors']} bad"
          + (f" (of {planned} planned)" if planned else "") + _codes(status["error_codes"]))
    for f in status["failed_shards"]:
        print("  failed: " + said(f"{f['shard']}: {f['error']}"))
    if status["failed_shards_omitted"]:
        print(f"  … and {status['failed_shards_omitted']} more failed shard(s) (--failed-limit N lists more)")
    if "queue" in status:
        q = status["queue"]
        print("queue: " + ", ".join(f"{k}={v}" for k, v in q.items()))
        if q.get("unqueued"):
            print(f"  {q['unqueued']} pending shard(s) have no task on {q['stream']}: the queue lost them (Redis "
                  "restarted without its data, or was flushed); submit the run again (`sigma batch submit` with the "
                  "same input and options, or POST /v1/batches) to queue them")
        if not q.get("tasks_read_all", True):
            print(f"  read the newest {q['tasks_read']} of {q['queued']} entries on {q['stream']} (--task-limit) and "
                  f"found no task for {q['unchecked']} pending shard(s): their tasks may be further on (not counted "
                  "unqueued, nor looked for among the dead letters); --task-limit N reads more")
        if q.get("dead_lettered"):
            print(f"  {q['dead_lettered']} shard(s) counted failed from their dead letters on {q['stream']}:dead (the "
                  "worker could not write their status); fix the cause, then submit the run again to queue them")
        if not q.get("dead_read_all", True):
            print(f"  read the newest {q['dead_read']} of {q['dead']} dead letters (--dead-limit): this run's shards "
                  "dead-lettered before them show as pending (and unqueued)")
        if q.get("deferred"):
            print(f"  {q['deferred']} task(s) deferred for up to {q['deferred_s']:.0f} s, no shard written in the run "
                  f"folder for {q['deferred_idle_s']:.0f} s: {q['deferred_reason']}; they run once that folder is "
                  "free (run_too_large: once a worker whose $SIGMA_MAX_RUN_BYTES is above run.json's size takes them), "
                  "or are dead-lettered (run_locked_too_long; weights_busy for a model folder) once no shard has "
                  "been written for worker.max_defer_s (run_too_large: also once every live worker has refused them)")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from sigma.io.corpora import PRESETS

    for preset in PRESETS.values():
        cols = ", ".join(f"{r}={c}" for r, c in preset.columns.items())
        print(f"{preset.name:16s} {cols}\n{'':16s} {preset.description}")
    return 0

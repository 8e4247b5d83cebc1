"""`sigma batch run`: plan the shards once, skip the finished ones, run the rest through the pipeline."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sigma.batch.config import BatchConfig
from sigma.batch.layout import FAILED_SHOWN, RunDir, atomic_write_json, refuse_inside_run
from sigma.batch.pipeline import Pipeline
from sigma.batch.record import (
    FIX,
    MODIFIED,
    RUN_VERSION,
    check_options,
    check_record,
    corpus_problem,
    plan_dicts,
    plan_digest,
    record_version,
)
from sigma.config.loader import save_resolved
from sigma.errors import ConfigError, InputError
from sigma.io.corpora import Corpus, Shard, open_corpus
from sigma.io.corpora.base import planned_pairs, resolved_under, unique_keys
from sigma.registry import annotator_identity, build_annotator, import_plugins, named_annotator
from sigma.text import PATH_SHOWN, cut_long_values


@dataclass
class RunSummary:
    out: str
    run_hash: str
    shards: int
    skipped: int
    done_now: int
    failed_now: int
    pairs: int
    errors: int
    seconds: float
    pairs_per_s: float
    # the first `failed_limit` shards this run failed, in run order, reasons cut (`cut_long_values`) (`failed_now`
    # counts them all, `failed_shards_omitted` the ones left out; OUT/status/<shard>.json holds each whole reason)
    failed: list[dict[str, str]] = field(default_factory=list)
    failed_shards_omitted: int = 0
    status: dict[str, Any] = field(default_factory=dict)
    # attempts lost with their process or Ray actor (shard, attempt, worker, reason, action): the first
    # `failed_limit`, reasons cut (`cut_long_values`); `retried_omitted` counts the ones left out
    retried: list[dict[str, Any]] = field(default_factory=list)
    retried_omitted: int = 0
    backend: dict[str, Any] = field(default_factory=dict)         # how it ran: processes, actors, cluster

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".tar", ".tar.gz", ".tgz")


def check_confined(path: str | Path, root: str) -> None:
    """A confined run (from the API) must not read outside `root` through the corpus's own files: the input
    path, and any symlinked folder or data file (manifest, parquet, arrow, tar) inside it, must resolve under
    the root. Images a corpus names are checked one by one when they are read (`decode.confined`)."""
    real_root = os.path.realpath(root)

    def inside(p: str) -> bool:
        return resolved_under(p, real_root) is not None

    if not inside(str(path)):
        raise InputError("the input resolves outside the batch root", code="path_outside_root")
    if not os.path.isdir(path):
        return
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(folder, name)
            if os.path.islink(full) and (name in dirs or name.lower().endswith(DATA_SUFFIXES)) and not inside(full):
                rel = os.path.relpath(full, path)
                raise InputError(f"{rel}: a link out of the batch root; refused (nothing read)",
                                 code="path_outside_root")


def corpus_from_config(cfg: BatchConfig) -> Corpus:
    corpus = open_corpus(cfg.input.path, cfg.input.format, cfg.input.preset, cfg.input.columns,
                         cfg.input.shard_size)
    corpus.max_bytes = cfg.io.limits.max_bytes
    corpus.root = cfg.input.root
    return corpus


def with_default_annotator(cfg: BatchConfig) -> BatchConfig:
    """The annotator named (None: the default), and its options as its own config reads them
    (`sigma.registry.normalised_options`), before the run is hashed and recorded: `--set options.image_size=2.24e2`
    and `=224` are one run, recorded as 224. The run's plugins are imported first: one may register the annotator."""
    import_plugins(cfg.plugins)
    name, options = named_annotator(cfg.annotator, cfg.options)
    return cfg.model_copy(update={"annotator": name, "options": options})


def _other_run_message(rundir: RunDir, record: dict[str, Any], model: dict[str, Any], run_hash: str,
                       out_name: str = "--out") -> str:
    before = record.get("model") or {}
    if before and before != model:
        changed = ", ".join(f"{k} {before.get(k)} -> {model.get(k)}" for k in model if before.get(k) != model.get(k))
        return (f"{rundir.root} was annotated by another model ({changed}); continuing would mix two models under "
                f"one run. Use a new {out_name}, or run the same weights and package version to continue it")
    return (f"{rundir.root} holds another run (hash {record.get('run_hash')}, input "
            f"{record.get('corpus', {}).get('path')}); this one would be {run_hash}. Outputs are keyed by input, "
            f"config and model: use a new {out_name}, or the same input and options to continue that run")


def _resumed_hash(cfg: BatchConfig, corpus: Corpus, model: dict[str, Any], record: dict[str, Any],
                  rundir: RunDir, out_name: str = "--out") -> str:
    """The run hash of a run folder this command continues (`--resume`, a submission again), once its run.json is
    shown to be what the run was planned with (`sigma.batch.record`): its config, corpus, model and plan hash to
    its run hash, its input names its corpus, and this command's config with that plan hashes to the same run (else
    it is another run: invalid_config, as before). A version 1 record's plan is checked by planning the corpus
    again. A run.json edited between a first, partial run and its --resume made the rest of the run read other
    pairs (a shard's file pointed at another corpus) under the same hash: run_modified now, nothing run."""
    where = rundir.run_file
    version = record_version(record, where)
    identity = corpus.identity()
    digest = plan_digest(record["shards"]) if version >= 2 else None      # once: the record's check hashes it too
    run_hash = cfg.run_hash(identity, model, digest)
    check_record(record, record["run_hash"], where, compare=cfg.output_fields(identity, model), digest=digest)
    check_options(record, where)        # the run as planned, not this command's options: it cannot go on here
    if record["run_hash"] != run_hash:
        raise ConfigError(_other_run_message(rundir, record, model, run_hash, out_name))
    problem = corpus_problem(corpus, record)
    if problem:
        raise InputError(f"{where}: {problem}: the run cannot be continued safely. {FIX}", code=MODIFIED)
    return run_hash


def prepare_run(cfg: BatchConfig, out: str | Path, resume: bool = False, sweep: bool = True,
                max_shards: int | None = None, out_name: str = "--out",
                ) -> tuple[RunDir, Corpus, str, list[Shard], dict[str, Any]]:
    """Open the corpus and the run folder; plan shards on the first call, reuse the recorded plan after, once
    run.json is shown to hold to the run (`_resumed_hash`). `sweep`: remove the temporary shard files a killed run
    left, and its status and mask files (`RunDir.sweep_dead_writers`) — only by a caller that holds the folder
    exclusively (a fleet submission that shares it with working fleet workers would delete their files in the
    making). `max_shards`: a new plan of more shards is refused
    (too_many_shards) before its record is built or written. `out_name`: the output folder as a refusal names it
    (the CLI's --out; an API caller has none). Also returns the run record, as read (and checked) or
    written, for a caller that checks more of it (a fleet submission: its plugins) without reading run.json again
    (~15 MB for 50,000 shards)."""
    cfg = with_default_annotator(cfg)      # imports the run's plugins first
    if cfg.input.root is not None:      # checked when the run is planned (a walk of the tree), not per shard
        check_confined(cfg.input.path, cfg.input.root)
    corpus = corpus_from_config(cfg)
    model = annotator_identity(cfg.annotator, cfg.options)
    rundir = RunDir(out)
    if rundir.exists():
        record = rundir.load()
        run_hash = _resumed_hash(cfg, corpus, model, record, rundir, out_name)
        shards = [Shard.from_dict(s) for s in record["shards"]]
        for stale in rundir.own(rundir.root / "shards").glob(".*.tmp") if sweep else ():   # left by a killed run
            stale.unlink(missing_ok=True)
        pending = [s for s in shards if not rundir.is_done(s, run_hash)]
        if sweep:                     # its status and mask files too (status/, masks/<pending shard>/)
            rundir.sweep_dead_writers(pending)
        done = len(shards) - len(pending)
        started = any(rundir.status(s) for s in shards)   # nothing written yet (e.g. the model failed to load)
        if done < len(shards) and started and not resume:
            raise InputError(f"{rundir.root} holds an unfinished run ({done}/{len(shards)} shards done): pass --resume "
                             "to continue it", code="run_exists")
        return rundir, corpus, run_hash, shards, record
    refuse_inside_run(rundir.root, out_name)
    if not rundir.is_empty():
        raise InputError(f"{rundir.root}: not empty and not a batch run; choose a new {out_name}",
                         code="out_not_empty")
    shards = unique_keys(corpus.plan())
    if not shards or planned_pairs(shards) == 0:   # e.g. a tar of zero blocks: a readable, empty archive
        raise InputError(f"{cfg.input.path}: the corpus holds no pairs", code="no_pairs")
    if max_shards is not None and len(shards) > max_shards:
        raise InputError(f"{cfg.input.path}: {len(shards)} shards of {cfg.input.shard_size} pairs is more than the "
                         f"{max_shards} a run may have here; use a larger shard_size (at least "
                         f"{-(-planned_pairs(shards) // max_shards)})", code="too_many_shards")
    identity = corpus.identity()
    # the input as its identity says it (resolved): checkable against it on resume, and a fleet worker started in
    # another folder reads the same corpus (a relative path was read from the worker's own folder)
    cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"path": identity.get("path", cfg.input.path)})})
    plan = plan_dicts(shards)
    run_hash = cfg.run_hash(identity, model, plan_digest(plan))
    record = {"version": RUN_VERSION, "run_hash": run_hash, "config": cfg.model_dump(mode="json"),
              "model": model, "corpus": identity, "format": corpus.format,
              "planned_pairs": planned_pairs(shards), "shards": plan}
    rundir.write_run(record)
    save_resolved(cfg, rundir.root)
    return rundir, corpus, run_hash, shards, record


def build_annotator_for(cfg: BatchConfig):
    return build_annotator(with_default_annotator(cfg))      # which imports the run's plugins first


def make_progress(total: int | None, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="sigma batch", unit="pair", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True, smoothing=0.1)


def run_batch(cfg: BatchConfig, out: str | Path, resume: bool = False, progress: bool = True,
              annotator=None, max_shards: int | None = None, failed_limit: int | None = FAILED_SHOWN) -> RunSummary:
    """Run (or continue) a batch; finished shards are skipped, so a re-run of a finished run does nothing.
    `failed_limit`: failed shards the summary lists (None: all), as `sigma batch status --failed-limit`, and as
    many lost attempts (`retried`)."""
    cfg = with_default_annotator(cfg)
    with RunDir(out).locked():
        return finish(_run_locked(cfg, out, resume, progress, annotator, max_shards), RunDir(out), failed_limit)


def finish(summary: RunSummary, rundir: RunDir, failed_limit: int | None) -> RunSummary:
    """The summary as every backend ends it: the run's status, and the failed shards bounded as `sigma batch
    status` bounds them (a run whose thousands of shards failed printed a line for each and wrote all of them,
    whole, to summary.json); the lost attempts (`retried`) the same way — a child that dies on every shard (out
    of memory at each load) adds up to `attempts` records a shard; written to OUT/summary.json."""
    failed = summary.failed if failed_limit is None else summary.failed[:failed_limit]
    summary.failed_shards_omitted = len(summary.failed) - len(failed)
    summary.failed = [{"shard": f["shard"], "error": cut_long_values(f["error"], token_limit=PATH_SHOWN)}
                      for f in failed]
    retried = summary.retried if failed_limit is None else summary.retried[:failed_limit]
    summary.retried_omitted = len(summary.retried) - len(retried)
    summary.retried = [{**r, "reason": cut_long_values(str(r.get("reason", "")), token_limit=PATH_SHOWN)}
                       for r in retried]
    summary.status = rundir.summary(failed_limit=failed_limit)
    atomic_write_json(rundir.root / "summary.json", summary.to_dict(), stream=False)
    return summary


def _run_locked(cfg: BatchConfig, out: str | Path, resume: bool, progress: bool, annotator,
                max_shards: int | None) -> RunSummary:
    rundir, corpus, run_hash, shards, _ = prepare_run(cfg, out, resume)
    pending = [s for s in shards if not rundir.is_done(s, run_hash, verify=True)]
    if max_shards is not None:
        pending = pending[:max_shards]
    start = time.perf_counter()
    failed_now = done_now = pairs = errors = 0
    failed: list[dict[str, str]] = []
    backend: dict[str, Any] = {}
    if pending:
        if cfg.backend == "ray":
            from sigma.batch.ray_backend import run_with_ray

            return run_with_ray(cfg, rundir, run_hash, pending, len(shards), progress)
        from sigma.batch.procs import inference_procs, inference_threads, run_with_procs
        from sigma.batch.shard_runner import thread_limit

        if annotator is None and inference_procs(cfg, len(pending)) > 1:
            return run_with_procs(cfg, rundir, run_hash, pending, len(shards), progress)
        total = planned_pairs(pending)
        threads = inference_threads(cfg, 1) if annotator is None else cfg.threads
        backend = {"backend": "local", "procs": 1, "threads": threads}
        with thread_limit(threads), Pipeline(cfg, annotator) as pipeline, make_progress(total, progress) as bar:
            stats = pipeline.run(corpus, pending, rundir, run_hash, progress=bar)
        pairs, errors = stats.pairs, stats.errors
        done_now = sum(r.status == "done" for r in stats.shards)
        failed_now = sum(r.status == "failed" for r in stats.shards)
        failed = [{"shard": r.shard.key, "error": r.error or ""} for r in stats.shards if r.status == "failed"]
    seconds = time.perf_counter() - start
    return RunSummary(out=str(rundir.root), run_hash=run_hash, shards=len(shards),
                      skipped=len(shards) - len(pending), done_now=done_now, failed_now=failed_now, pairs=pairs,
                      errors=errors, seconds=round(seconds, 3),
                      pairs_per_s=round(pairs / seconds, 3) if seconds > 0 and pairs else 0.0,
                      failed=failed, backend=backend)

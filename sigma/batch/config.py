"""The batch run's config: what to read, which annotator, how to batch. Its hash names every output."""
from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from sigma.config.loader import config_hash
from sigma.config.schema import (
    MAX_BATCH_SIZE,
    MAX_PROCESSES,
    MAX_SHARD_SIZE,
    MAX_THREADS,
    AnnotatorSpec,
    IOConfig,
    Modules,
    Seconds,
    Strict,
)
from sigma.io.corpora import CORPUS_READERS
from sigma.io.corpora.presets import column_problem
from sigma.registry import options_model, registered


class InputConfig(Strict):
    path: str = Field(..., description="corpus: a folder, a .jsonl/.csv manifest, parquet, save_to_disk folder, tars")
    format: Annotated[str, registered(CORPUS_READERS, also=("auto",))] = Field(
        "auto", description="a registered corpus reader, or auto (detected from the path)")
    preset: str | None = Field(None, description="column names of a public corpus (magicbrush, instructpix2pix, "
                                                 "ultraedit, anyedit, omniedit, generic)")
    columns: dict[str, str] = Field(default_factory=dict, description="role=column overrides on top of the preset")
    root: str | None = Field(None, description="confine every file the corpus names (manifest paths, symlinks) to "
                             "this folder, resolved; set by POST /v1/batches to api.batch_root. None (the CLI's "
                             "default): the corpus may name any file the user can read")
    shard_size: int = Field(1000, ge=1, le=MAX_SHARD_SIZE,
                            description="pairs per shard (parquet/Arrow: whole row groups/batches accumulated up to "
                                        "at least this many rows; tars: one per tar)")

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, value: dict[str, str]) -> dict[str, str]:
        """The check `--columns` gets (`sigma.io.corpora.presets.column_problem`), for the mapping a config file,
        `--set input.columns...` or POST /v1/batches gives: an unknown role was taken by a tar set without a word,
        and `original: ""` was a column named ''."""
        problem = column_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("shard_size", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        """A number past the maximum is said as such: 1e300 (or 10**40) was 'exceeded maximum size' at best."""
        if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_SHARD_SIZE:
            raise ValueError(f"at most {MAX_SHARD_SIZE} pairs per shard (MAX_SHARD_SIZE: a shard's rows are held in "
                             "memory until its parquet is written)")
        return value


class RayConfig(Strict):
    """`--backend ray`: where the cluster is and what each shard actor asks of it (never part of the run hash)."""

    address: str | None = Field(None, description="an existing cluster: host:port of its head, 'auto' (the one "
                                "`ray start` runs on this machine) or ray://host:10001; None = $RAY_ADDRESS, else "
                                "a one-machine Ray started for this run")
    actors: int | None = Field(None, ge=1, le=MAX_PROCESSES, description="shard actors (Ray Data's "
                               "`concurrency`); None = as many as fit: GPUs / num_gpus on a GPU cluster, else CPUs "
                               "/ num_cpus; never more than the pending shards")
    num_cpus: float = Field(1.0, gt=0, description="CPUs each actor reserves")
    num_gpus: float | None = Field(None, ge=0, description="GPUs each actor reserves; fractions pack actors "
                                   "(0.5: two per GPU); None = 1 on a cluster with GPUs, else 0")
    connect_timeout_s: Seconds = Field(10.0, gt=0, description="how long to wait for the cluster's address to answer")
    actor_timeout_s: Seconds = Field(600.0, gt=0, description="no live actor for this long while shards remain "
                                   "(none could be placed): the remaining shards are failed")


# the most tries `start_retry.tries` may set (a wait is a time: at most 30 days, as every time setting)
START_RETRY_MAX_TRIES = 1000


class StartRetryConfig(Strict):
    """`--procs N`: how a replacement inference process that could not be started (fork or spawn refused, or it
    failed before it was ready) is tried again. Were module constants (`sigma.batch.procs`): a machine whose limits
    clear slowly (a pids cgroup, memory freed by another job) could not wait longer, nor a test shorter."""

    first_s: Seconds = Field(0.5, gt=0, description="the wait after a first failed "
                             "start; doubled after each failure in a row")
    max_s: Seconds = Field(10.0, gt=0, description="the longest wait between two tries "
                           "(the cap: below first_s, every wait is max_s)")
    tries: int = Field(8, ge=1, le=START_RETRY_MAX_TRIES, description="with no inference process left: failed "
                       "starts in a row before the shards left are failed (for --resume)")


# Options that change speed or placement, never a byte of output: outside the run hash.
NOT_HASHED = {"workers", "backend", "input", "procs", "threads", "attempts", "stall_s", "plugins", "ray",
              "start_retry"}


class BatchConfig(AnnotatorSpec):
    options_model = staticmethod(options_model)        # the options validated with the rest
    input: InputConfig
    batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE, description="pairs per predict() call; batches never "
                            "cross shards")
    workers: int | None = Field(None, ge=0, le=MAX_PROCESSES, description="decode processes (0: decode in the "
                                "reading thread); None = 0 on <= 2 cores, else one per core but one, at most 8")
    png_masks: bool = Field(False, description="also write masks/<shard>/<pair>.png")
    ground_truth: bool = Field(True, description="score masks against the corpus's ground truth when it has one "
                               "(gt_* columns, the review page's metrics); false skips decoding it")
    backend: Literal["local", "ray"] = "local"
    procs: int | None = Field(None, ge=1, le=MAX_PROCESSES, description="local backend: inference processes "
                              "fed whole shards, each with `threads` torch threads; None = for a network on a "
                              "machine without a GPU one per idle core (cores - load average), else 1")
    threads: int | None = Field(None, ge=1, le=MAX_THREADS, description="torch intra-op threads per inference "
                                "process or Ray actor; None = 1 with several processes and for CPU actors, the "
                                "idle cores for a single CPU process running a network, else torch's default")
    stall_s: Seconds = Field(900.0, gt=0, description="--procs and --backend ray: an inference process or actor "
                           "that holds a shard and reports no progress for this long is taken as hung (a deadlock, "
                           "a stopped process): it is killed and its shard goes to another; --workers: a decode "
                           "chunk with no result for this long replaces the decode pool and fails the shards it held "
                           "(under `sigma worker --batch` at most half of worker.batch_timeout_s, so the pool "
                           "recovers before the worker is taken for hung)")
    start_retry: StartRetryConfig = StartRetryConfig()
    attempts: int = Field(3, ge=1, description="a shard whose process or Ray actor dies is run again by another "
                          "one, up to this many tries in all; then it is failed (rerun with --resume)")
    plugins: Modules = Field(default_factory=list, description="modules imported before the annotator is built, "
                               "in every process and actor (to register your own annotators)")
    ray: RayConfig = RayConfig()
    io: IOConfig = IOConfig()

    def decode_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        cores = os.cpu_count() or 2
        # measured on 2 shared cores: a decode process costs more in IPC than it wins (bench/bench_batch.py)
        return 0 if cores <= 2 else min(8, cores - 1)

    def output_fields(self, corpus_identity: dict[str, Any], model_identity: dict[str, Any],
                      plan: str | None = None) -> dict[str, Any]:
        """Everything an output byte depends on: the corpus, the config, the model that runs (its weights' sha256
        and the package version) and the shard plan (`sigma.batch.record.plan_digest`: which pairs each shard file
        holds; None for a run recorded before the plan was hashed); workers, processes, backend and placement
        change speed only."""
        data = self.model_dump(mode="json", exclude=NOT_HASHED)
        return {"corpus": corpus_identity, "model": model_identity, **data, **({"plan": plan} if plan else {})}

    def run_hash(self, corpus_identity: dict[str, Any], model_identity: dict[str, Any],
                 plan: str | None = None) -> str:
        return config_hash(self.output_fields(corpus_identity, model_identity, plan))

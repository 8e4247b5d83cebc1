"""One inference process's share of a run: the annotator loaded once, whole shards through the ordinary pipeline.

The `--procs` children and the Ray shard actors are both this object in another process. A shard is the
unit of work everywhere, so whichever process runs it, its output is the file the single-process run
writes, byte for byte, and a shard lost with its process is simply run again.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sigma.batch.config import BatchConfig
from sigma.batch.layout import RunDir
from sigma.io.corpora.base import Shard


@dataclass
class ShardOutcome:
    """What a finished shard reports back to the driver (small and plain: it crosses process boundaries)."""

    shard: str
    status: str                 # "done" | "failed"
    pairs: int = 0
    errors: int = 0
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""            # pid (and node for Ray) that ran it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def limit_threads(threads: int | None) -> None:
    """Intra-op threads for torch, OpenMP/BLAS and OpenCV in this process. On a shared CPU, N processes x 1
    thread beat one process x N threads: OpenMP threads stall on each other at every op
    (bench/bench_scaleout.py). Before torch is imported the environment is enough (and a pixel-diff run
    never pays for importing torch); after, torch is told directly."""
    if not threads:
        return
    import sys

    import cv2

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    cv2.setNumThreads(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def thread_limit(threads: int | None) -> Iterator[None]:
    """`limit_threads` for the length of a run in the caller's own process, then the settings it had."""
    if not threads:
        yield
        return
    import sys

    import cv2

    env = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    cv2_threads = cv2.getNumThreads()
    torch_before = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    limit_threads(threads)
    try:
        yield
    finally:
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        cv2.setNumThreads(cv2_threads)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(torch_before or available_cores())   # imported during the run: its default


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class Progress:
    """A tqdm-shaped sink (`update`, `set_postfix`) the pipeline ticks; the driver reads `pairs`/`errors`."""

    def __init__(self):
        self.pairs = 0
        self.errors = 0
        self.lock = threading.Lock()

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.pairs += n

    def set_postfix(self, errors: int = 0, **_: Any) -> None:
        with self.lock:
            self.errors = errors

    def take(self) -> tuple[int, int]:
        with self.lock:
            return self.pairs, self.errors


class ShardRunner:
    """Holds the run's corpus and one `Pipeline` (so the model loads once) for as many shards as it is given.
    `config` and `run_hash` are the driver's, from the run.json it read and held to its hash (`prepare_run`): the
    outputs are made with that config and named by that hash. Each child read run.json again for the hash alone
    (one more parse of up to ~15 MB a process, at every respawn) and checked nothing: a run.json replaced
    meanwhile had the driver's config written under another run's hash."""

    def __init__(self, config: dict[str, Any], run_dir: str, run_hash: str, threads: int | None = None,
                 workers: int | None = None, worker_name: str | None = None):
        from sigma.batch.pipeline import Pipeline
        from sigma.batch.runner import corpus_from_config
        from sigma.registry import import_plugins

        limit_threads(threads)
        # the run's plugins first: a corpus format or an annotator a plugin registers is validated by name, and a
        # spawned process (a --procs child, a Ray actor) has not imported them (the child could not start)
        import_plugins(config.get("plugins") or ())
        self.cfg = BatchConfig.model_validate(config)
        self.rundir = RunDir(run_dir)
        self.run_hash = run_hash
        self.corpus = corpus_from_config(self.cfg)
        self.pipeline = Pipeline(self.cfg, workers=workers)
        limit_threads(threads)       # again: building the annotator may have imported torch
        self.worker = worker_name or f"pid {os.getpid()}"
        self.current: str | None = None
        self.progress = Progress()

    def run(self, shard: Shard | dict[str, Any], progress: Any = None) -> ShardOutcome:
        shard = shard if isinstance(shard, Shard) else Shard.from_dict(shard)
        self.current = shard.key
        start = time.perf_counter()
        try:
            stats = self.pipeline.run(self.corpus, [shard], self.rundir, self.run_hash,
                                      progress=progress if progress is not None else self.progress)
        finally:
            self.current = None
        seconds = round(time.perf_counter() - start, 4)
        result = stats.shards[0] if stats.shards else None
        if result is None:
            # failed like any other shard: in its status file, with the reason (it showed as pending, the reason
            # nowhere but this run's summary); `--resume` runs it again. A shard done meanwhile stays done
            error = "no result from the pipeline"
            if not self.rundir.mark_failed(shard, self.run_hash, error, worker=self.worker):
                return ShardOutcome(shard.key, "done", stats.pairs, stats.errors, None, seconds, self.worker)
            return ShardOutcome(shard.key, "failed", stats.pairs, stats.errors, error, seconds, self.worker)
        return ShardOutcome(shard.key, result.status, stats.pairs, stats.errors, result.error, seconds, self.worker)

    def close(self) -> None:
        self.pipeline.close()


def absolute_config(cfg: BatchConfig) -> dict[str, Any]:
    """The config as another process needs it: the corpus path made absolute (a Ray worker's cwd is not ours)."""
    data = cfg.model_dump(mode="json")
    data["input"]["path"] = str(Path(cfg.input.path).expanduser().resolve())
    return data

"""`--backend ray`: the same shards, scheduled by Ray Data over a cluster's GPUs.

Ray Data maps shard descriptors (not pairs) through an actor class that holds one annotator and the
ordinary pipeline (`map_batches(ShardActor, batch_size=1, concurrency=k, num_gpus=1)`), so each shard's
output is the same file, byte for byte, that the local backend writes, status files included, and
`--resume`, exports and the review page work unchanged. A per-pair `read_parquet → map_batches →
write_parquet` graph would have lost that contract: Ray names and splits its output blocks itself.
Optional: `pip install 'sigma-masks[ray]'`.
"""
from __future__ import annotations

import time
from typing import Any

from sigma.batch.config import BatchConfig
from sigma.batch.layout import RunDir, atomic_write_json
from sigma.errors import ConfigError
from sigma.io.corpora.base import Corpus, Shard


class ShardActor:
    """One per Ray worker: builds the annotator once and runs whole shards through the local pipeline."""

    def __init__(self, config: dict[str, Any], run_dir: str):
        from sigma.batch.pipeline import Pipeline
        from sigma.batch.runner import corpus_from_config

        self.cfg = BatchConfig.model_validate(config)
        self.rundir = RunDir(run_dir)
        self.run_hash = self.rundir.load()["run_hash"]
        self.corpus = corpus_from_config(self.cfg)
        self.pipeline = Pipeline(self.cfg)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import json

        statuses, pairs = [], []
        for text in batch["shard"]:
            shard = Shard.from_dict(json.loads(text))
            stats = self.pipeline.run(self.corpus, [shard], self.rundir, self.run_hash)
            statuses.append(stats.shards[0].status if stats.shards else "failed")
            pairs.append(stats.pairs)
        return {"shard": list(batch["shard"]), "status": statuses, "pairs": pairs}


def run_with_ray(cfg: BatchConfig, rundir: RunDir, corpus: Corpus, run_hash: str, pending: list[Shard],
                 concurrency: int | None = None):
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("--backend ray needs Ray: pip install 'sigma-masks[ray]' (or use the local backend, or "
                          "fleet mode: sigma batch submit + sigma worker --batch)") from exc
    import json

    from sigma.batch.runner import RunSummary

    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:  # pragma: no cover - torch is a core dependency
        gpus = 0
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False)
    concurrency = concurrency or max(1, gpus)
    start = time.perf_counter()
    ds = ray.data.from_items([{"shard": json.dumps(s.to_dict())} for s in pending])
    ds = ds.map_batches(ShardActor, batch_size=1, concurrency=concurrency, num_gpus=1 if gpus else 0,
                        fn_constructor_kwargs={"config": cfg.model_dump(mode="json"), "run_dir": str(rundir.root)})
    rows = ds.take_all()
    seconds = time.perf_counter() - start
    pairs = sum(int(r["pairs"]) for r in rows)
    failed = [{"shard": json.loads(r["shard"])["key"], "error": "see status/"} for r in rows if r["status"] != "done"]
    status = rundir.summary()
    summary = RunSummary(out=str(rundir.root), run_hash=run_hash, shards=status["shards"],
                         skipped=status["shards"] - len(pending), done_now=len(rows) - len(failed),
                         failed_now=len(failed), pairs=pairs, errors=0, seconds=round(seconds, 3),
                         pairs_per_s=round(pairs / seconds, 3) if seconds > 0 and pairs else 0.0, failed=failed,
                         status=status)
    atomic_write_json(rundir.root / "summary.json", summary.to_dict())
    return summary

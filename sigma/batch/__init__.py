"""Batch annotation of editing corpora: sharded, resumable runs whose outputs are pure functions of
(input, shard, config hash). Front end over `sigma.io.corpora` (reading) and the annotator registry."""
from sigma.batch.config import BatchConfig, InputConfig
from sigma.batch.layout import RunDir
from sigma.batch.runner import RunSummary, run_batch

__all__ = ["BatchConfig", "InputConfig", "RunDir", "RunSummary", "run_batch"]

"""The batch run's config: what to read, which annotator, how to batch. Its hash names every output."""
from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import Field

from sigma.config.loader import config_hash
from sigma.config.schema import AnnotatorSpec, IOConfig, Strict
from sigma.io.corpora import CORPUS_READERS
from sigma.registry import registered


class InputConfig(Strict):
    path: str = Field(..., description="corpus: a folder, a .jsonl/.csv manifest, parquet, save_to_disk folder, tars")
    format: Annotated[str, registered(CORPUS_READERS, also=("auto",))] = Field(
        "auto", description="a registered corpus reader, or auto (detected from the path)")
    preset: str | None = Field(None, description="column names of a public corpus (magicbrush, instructpix2pix, "
                                                 "ultraedit, anyedit, omniedit, generic)")
    columns: dict[str, str] = Field(default_factory=dict, description="role=column overrides on top of the preset")
    shard_size: int = Field(1000, ge=1, description="pairs per shard (parquet/Arrow: whole row groups/batches "
                                                    "accumulated up to at least this many rows; tars: one per tar)")


class BatchConfig(AnnotatorSpec):
    input: InputConfig
    batch_size: int = Field(8, ge=1, description="pairs per predict() call; batches never cross shards")
    workers: int | None = Field(None, ge=0, description="decode processes (0: decode in the reading thread); "
                                "None = 0 on <= 2 cores, else one per core but one, at most 8")
    png_masks: bool = Field(False, description="also write masks/<shard>/<pair>.png")
    ground_truth: bool = Field(True, description="score masks against the corpus's ground truth when it has one "
                               "(gt_* columns, the review page's metrics); false skips decoding it")
    backend: Literal["local", "ray"] = "local"
    io: IOConfig = IOConfig()

    def decode_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        cores = os.cpu_count() or 2
        # measured on 2 shared cores: a decode process costs more in IPC than it wins (bench/bench_batch.py)
        return 0 if cores <= 2 else min(8, cores - 1)

    def output_fields(self, corpus_identity: dict[str, Any], model_identity: dict[str, Any]) -> dict[str, Any]:
        """Everything an output byte depends on: the corpus, the config, and the model that runs (its
        weights' sha256 and the package version); `workers` and `backend` change speed, not results."""
        data = self.model_dump(mode="json", exclude={"workers", "backend", "input"})
        return {"corpus": corpus_identity, "model": model_identity, **data}

    def run_hash(self, corpus_identity: dict[str, Any], model_identity: dict[str, Any]) -> str:
        return config_hash(self.output_fields(corpus_identity, model_identity))

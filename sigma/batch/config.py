"""The batch run's config: what to read, which annotator, how to batch. Its hash names every output."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sigma.config.loader import config_hash
from sigma.config.schema import IOConfig, Strict


class InputConfig(Strict):
    path: str = Field(..., description="corpus: a folder, a .jsonl/.csv manifest, parquet, save_to_disk folder, tars")
    format: Literal["auto", "folder", "jsonl", "csv", "parquet", "hf", "wds"] = "auto"
    preset: str | None = Field(None, description="column names of a public corpus (magicbrush, instructpix2pix, "
                                                 "ultraedit, anyedit, omniedit, generic)")
    columns: dict[str, str] = Field(default_factory=dict, description="role=column overrides on top of the preset")
    shard_size: int = Field(1000, ge=1, description="pairs per shard (parquet/Arrow: whole row groups/batches "
                                                    "accumulated up to at least this many rows; tars: one per tar)")


class BatchConfig(Strict):
    input: InputConfig
    annotator: str | None = Field(None, description="registry name; None = the embedded default")
    options: dict[str, Any] = Field(default_factory=dict, description="annotator config overrides")
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, description="pairs per predict() call; batches never cross shards")
    workers: int = Field(2, ge=0, description="decode processes (0: decode in the reading thread)")
    png_masks: bool = Field(False, description="also write masks/<shard>/<pair>.png")
    backend: Literal["local", "ray"] = "local"
    io: IOConfig = IOConfig()

    def output_fields(self, corpus_identity: dict[str, Any]) -> dict[str, Any]:
        """Everything an output byte depends on; `workers` and `backend` change speed, not results."""
        data = self.model_dump(mode="json", exclude={"workers", "backend", "input"})
        return {"corpus": corpus_identity, **data}

    def run_hash(self, corpus_identity: dict[str, Any]) -> str:
        return config_hash(self.output_fields(corpus_identity))

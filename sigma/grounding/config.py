"""Grounding configuration: which detector, which segmenter, which thresholds."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from sigma.config.schema import MAX_BATCH_SIZE, MAX_WORKING_SIZE, Strict, UnitInterval
from sigma.grounding.registry import GROUNDERS, SEGMENTERS, ensure_grounders, ensure_segmenters
from sigma.registry import registered


class DetectorConfig(Strict):
    weights: str = Field("IDEA-Research/grounding-dino-tiny",
                         description="local save_pretrained folder or HF repo id (HF cache, local_files_only)")
    box_threshold: UnitInterval = Field(0.35, description="minimum box score kept")
    text_threshold: UnitInterval = Field(0.25, description="minimum token score for a label")
    max_detections: int = Field(5, ge=1, le=100, description="boxes kept per image, best first")
    image_size: int | None = Field(None, ge=32, le=MAX_WORKING_SIZE, description="shortest edge the detector sees "
                                   "(None = the checkpoint's own, 800 for IDEA-Research)")
    batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE)


class SegmenterConfig(Strict):
    kind: Annotated[str, registered(SEGMENTERS, ensure_segmenters)] = Field(
        "sam2", description="sam2 = transformers Sam2Model; box = filled boxes (no segmenter); "
                            "native-sam2 = the facebookresearch `sam2` package (optional, not installed by default)")
    weights: str = Field("facebook/sam2.1-hiera-tiny", description="folder / HF repo id (sam2), or a .pt "
                         "checkpoint (native-sam2)")
    native_config: str = Field("configs/sam2.1/sam2.1_hiera_t.yaml", description="native-sam2 model config")
    mask_threshold: UnitInterval | None = Field(None, description="binarise masks at this "
                                         "probability; None keeps SAM's soft masks")
    batch_size: int = Field(8, ge=1, le=MAX_BATCH_SIZE, description="images encoded at once")


class GroundingConfig(Strict):
    backend: Annotated[str, registered(GROUNDERS, ensure_grounders)] = Field(
        "none", description="a registered grounding backend (none, gdino-sam2, or a plugin's)")
    detector: DetectorConfig = DetectorConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    device: str | None = Field(None, description="cuda / cpu / None = cuda when available")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    allow_download: bool = False

    def check_files(self, where: str, skip: frozenset[str] | set[str] = frozenset()) -> None:
        """The checkpoints gdino-sam2 would load, checked at a fleet submission without loading them
        (`sigma.models.weights.check_weights_reference`; a plugin backend's are its own): a missing
        `detector.weights` folder was queued and every shard dead-lettered when the workers built the grounder.
        `where`: the option these were given as; `skip`: parts handed in built (`detector`, `segmenter`)."""
        from sigma.errors import WeightsNotFoundError
        from sigma.models.weights import check_weights_reference

        if self.backend != "gdino-sam2":
            return
        if "detector" not in skip:
            check_weights_reference(self.detector.weights, f"{where}.detector.weights")
        if "segmenter" in skip:
            return
        if self.segmenter.kind == "sam2":
            check_weights_reference(self.segmenter.weights, f"{where}.segmenter.weights")
        elif self.segmenter.kind == "native-sam2":      # the native package reads a .pt file at that path only
            from pathlib import Path

            weights = self.segmenter.weights
            if weights.startswith("hf:") or not Path(weights).expanduser().is_file():
                raise WeightsNotFoundError(f"{where}.segmenter.weights: {self.segmenter.weights} is no file (the "
                                           "native sam2 package reads a .pt checkpoint at that path only)")

"""`grounding-only`: the instruction prior alone, thresholded (METHOD §7 baseline). It finds what the
instruction names and nothing else: no side effects, nothing without an instruction."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from sigma.annotators.base import Annotator, AnnotatorConfig
from sigma.annotators.guidance import Guide
from sigma.annotators.mask_extras import confidence
from sigma.registry import ANNOTATORS
from sigma.types import Pair

DEFAULT_GROUNDING = "gdino-sam2"


class GroundingOnlyConfig(AnnotatorConfig):
    parser: str = "rules"
    grounding: str = Field(DEFAULT_GROUNDING, description="grounding backend (see docs/grounding.md)")
    grounding_options: dict[str, Any] = Field(default_factory=dict)

    def check_files(self) -> None:
        """The grounding checkpoints, checked at a fleet submission (`check_grounding_files`): a missing
        `detector.weights` folder was queued and every shard dead-lettered."""
        from sigma.annotators.model_annotator import check_grounding_files

        check_grounding_files(self.grounding, self.grounding_options)


class GroundingOnly(Annotator):
    name: ClassVar[str] = "grounding-only"
    config_cls = GroundingOnlyConfig

    def __init__(self, config: GroundingOnlyConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        cfg: GroundingOnlyConfig = self.config
        self.guide = Guide(cfg.parser, cfg.grounding, cfg.grounding_options)

    def _predict_batch(self, pairs: list[Pair]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        out = []
        for pair, g in zip(pairs, self.guide(pairs), strict=True):
            # an uninformative prior (0.5) is not a detection: it must give an empty mask, not a full one
            prob = g.prior if g.informative else np.zeros(pair.size, np.float32)
            out.append((prob, {**g.extra, "timings_ms": dict(g.timings_ms)}))
        return out

    def derive(self, pair_size: tuple[int, int], prob: np.ndarray, mask: np.ndarray, threshold: float,
               context: dict[str, Any]) -> dict[str, Any]:
        return {"confidence": confidence(prob, mask, threshold)}


def _status() -> str:
    from sigma.grounding.base import weights_status

    return f"grounding {DEFAULT_GROUNDING}: {weights_status(DEFAULT_GROUNDING)}"


@ANNOTATORS.register("grounding-only", "the instruction's grounded prior alone, thresholded (baseline)", _status)
def build_grounding_only(**overrides: Any) -> GroundingOnly:
    return GroundingOnly(**overrides)

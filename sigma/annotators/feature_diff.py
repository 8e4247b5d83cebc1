"""`feature-diff`: the training-free baseline of METHOD §2 — 1 − cos between a frozen backbone's patch
features of the two images, upsampled. Semantic-ish (robust to small photometric drift), blocky (1/14)."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from sigma.annotators.base import Prediction
from sigma.annotators.model_annotator import backbone_status
from sigma.annotators.torch_base import TorchAnnotator, TorchAnnotatorConfig
from sigma.config.schema import MAX_WORKING_SIZE
from sigma.registry import ANNOTATORS
from sigma.types import Pair

DEFAULT_BACKBONE = "facebook/dinov2-base"


class FeatureDiffConfig(TorchAnnotatorConfig):
    backbone_weights: str = Field(DEFAULT_BACKBONE, description="DINOv2 weights: local path or HF repo id "
                                  "(looked up in the local HF cache; never downloaded unless allowed)")
    allow_download: bool = False
    hf_config: dict[str, Any] | None = Field(None, description="architecture override (tiny test models)")
    random_init: bool = Field(False, description="explicit opt-in to a random backbone: tests only")
    taps: list[int] | None = Field(None, description="hidden_states indices averaged; None = the last layer")
    image_size: int = Field(518, ge=14, le=MAX_WORKING_SIZE)
    scale: float = Field(0.5, gt=0, description="prob = clip((1 - cos) / scale, 0, 1)")

    def check_files(self) -> None:
        """`backbone_weights` as the backbone's load would find it, nothing read (`check_weights_reference`), at a
        fleet submission: a missing path was queued and every shard dead-lettered when the workers loaded it.
        Not read by random_init with hf_config set (a random backbone of that architecture)."""
        from sigma.models.weights import check_weights_reference

        if not (self.random_init and self.hf_config is not None):
            check_weights_reference(self.backbone_weights, "options.backbone_weights", files=(".safetensors",),
                                    config_beside=self.hf_config is None)


class FeatureDiff(TorchAnnotator):
    name: ClassVar[str] = "feature-diff"
    config_cls = FeatureDiffConfig
    default_batch_size: ClassVar[dict[str, int]] = {"cuda": 8, "cpu": 8}

    def __init__(self, config: FeatureDiffConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        from sigma.models.backbones import Dinov2Backbone
        from sigma.models.config import Dinov2BackboneConfig

        cfg: FeatureDiffConfig = self.config
        taps = cfg.taps
        if taps is None:
            n_layers = (cfg.hf_config or {}).get("num_hidden_layers")
            taps = [n_layers] if n_layers else [-1]
        bcfg = Dinov2BackboneConfig(weights=cfg.backbone_weights, hf_config=cfg.hf_config,
                                    taps=[max(t, 0) for t in taps])
        self.backbone = Dinov2Backbone(bcfg, pretrained=not cfg.random_init, allow_download=cfg.allow_download)
        if taps == [-1]:          # the last layer, known only once the architecture is
            self.backbone.taps = [self.backbone.model.config.num_hidden_layers]
        self._setup_runtime()
        self.backbone.to(self.device).eval()
        patch = self.backbone.patch
        self.size = max(patch, round(cfg.image_size / patch) * patch)

    def working_size(self, pair: Pair) -> tuple[int, int]:
        return self.size, self.size

    def _forward(self, original, edited, pairs: list[Pair], contexts: list[Any]):
        torch = self.torch
        n = original.shape[0]
        feats = self.backbone.features(torch.cat([original, edited]))
        return torch.stack([1.0 - torch.nn.functional.cosine_similarity(f[:n].float(), f[n:].float(), dim=1)
                            for f in feats]).mean(0)[:, None]

    def _to_prob(self, score):
        cfg: FeatureDiffConfig = self.config
        return score.div_(cfg.scale).clamp_(0, 1)

    def _extra(self, pair: Pair, context: Any, hw: tuple[int, int], model_ms: float) -> Prediction:
        return Prediction(np.empty(0), {"taps": list(self.backbone.taps), "timings_ms": {"model": model_ms}})


@ANNOTATORS.register("feature-diff", "training-free 1 - cos of frozen DINOv2 patch features (upsampled)",
                     lambda: backbone_status(DEFAULT_BACKBONE))
def build_feature_diff(**overrides: Any) -> FeatureDiff:
    return FeatureDiff(**overrides)

"""`feature-diff`: the training-free baseline of METHOD §2 — 1 − cos between a frozen backbone's patch
features of the two images, upsampled. Semantic-ish (robust to small photometric drift), blocky (1/14)."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from sigma.annotators.base import Annotator, AnnotatorConfig
from sigma.annotators.model_annotator import backbone_status, resize_image
from sigma.models.device import pick_device
from sigma.registry import ANNOTATORS
from sigma.types import Pair

DEFAULT_BACKBONE = "facebook/dinov2-base"


class FeatureDiffConfig(AnnotatorConfig):
    backbone_weights: str = Field(DEFAULT_BACKBONE, description="DINOv2 weights: local path or HF repo id "
                                  "(looked up in the local HF cache; never downloaded unless allowed)")
    allow_download: bool = False
    hf_config: dict[str, Any] | None = Field(None, description="architecture override (tiny test models)")
    random_init: bool = Field(False, description="explicit opt-in to a random backbone: tests only")
    taps: list[int] | None = Field(None, description="hidden_states indices averaged; None = the last layer")
    image_size: int = Field(518, ge=14)
    scale: float = Field(0.5, gt=0, description="prob = clip((1 - cos) / scale, 0, 1)")
    device: str = "auto"
    batch_size: int = Field(8, ge=1)


class FeatureDiff(Annotator):
    name: ClassVar[str] = "feature-diff"
    config_cls = FeatureDiffConfig

    def __init__(self, config: FeatureDiffConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        import torch

        from sigma.models.backbones import Dinov2Backbone
        from sigma.models.config import Dinov2BackboneConfig

        cfg: FeatureDiffConfig = self.config
        self.torch = torch
        taps = cfg.taps
        if taps is None:
            n_layers = (cfg.hf_config or {}).get("num_hidden_layers")
            taps = [n_layers] if n_layers else [-1]
        bcfg = Dinov2BackboneConfig(weights=cfg.backbone_weights, hf_config=cfg.hf_config,
                                    taps=[max(t, 0) for t in taps])
        self.backbone = Dinov2Backbone(bcfg, pretrained=not cfg.random_init, allow_download=cfg.allow_download)
        if taps == [-1]:          # the last layer, known only once the architecture is
            self.backbone.taps = [self.backbone.model.config.num_hidden_layers]
        self.device = pick_device(cfg.device)
        self.backbone.to(self.device).eval()
        patch = self.backbone.patch
        self.size = max(patch, round(cfg.image_size / patch) * patch)

    def _predict_batch(self, pairs: list[Pair]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        torch = self.torch
        cfg: FeatureDiffConfig = self.config
        hw = (self.size, self.size)
        out = []
        for start in range(0, len(pairs), cfg.batch_size):
            chunk = pairs[start:start + cfg.batch_size]
            imgs = [resize_image(p.original, hw) for p in chunk] + [resize_image(p.edited, hw) for p in chunk]
            x = torch.from_numpy(np.stack(imgs).astype(np.float32) / 255.0).permute(0, 3, 1, 2).to(self.device)
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                        enabled=self.device.type == "cuda"):
                feats = self.backbone.features(x)
            n = len(chunk)
            dist = torch.stack([1.0 - torch.nn.functional.cosine_similarity(f[:n].float(), f[n:].float(), dim=1)
                                for f in feats]).mean(0)[:, None]
            for i, pair in enumerate(chunk):
                up = torch.nn.functional.interpolate(dist[i:i + 1], size=pair.size, mode="bilinear",
                                                     align_corners=False)
                prob = (up[0, 0] / cfg.scale).clamp(0, 1).cpu().numpy()
                out.append((prob, {"taps": list(self.backbone.taps)}))
        return out


@ANNOTATORS.register("feature-diff", "training-free 1 - cos of frozen DINOv2 patch features (upsampled)",
                     lambda: backbone_status(DEFAULT_BACKBONE))
def build_feature_diff(**overrides: Any) -> FeatureDiff:
    return FeatureDiff(**overrides)

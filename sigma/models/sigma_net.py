"""SigmaNet: siamese backbone → semantic difference → edit/noise split → refinement with the prior and
instruction tokens → decoder. Pure tensors in and out; no files, no HTTP."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sigma.models.backbones import build_backbone
from sigma.models.config import SigmaNetConfig
from sigma.models.decoder import Decoder, SplitHeads
from sigma.models.difference import DifferenceBranch, PixelStem
from sigma.models.refine import Refinement, Regions, edit_type_ids

UNINFORMATIVE_PRIOR = 0.5


@dataclass
class SigmaOutput:
    logits: torch.Tensor       # [B, 1, H, W] at the input size
    edit_feat: torch.Tensor    # [B, D, h, w] edit part of the fused difference (before refinement)
    noise_feat: torch.Tensor   # [B, D, h, w] noise part
    noise_pred: torch.Tensor   # [B, 1, h, w] regression of the low-passed VAE residual


class SigmaNet(nn.Module):
    def __init__(self, config: SigmaNetConfig, *, pretrained: bool = True, allow_download: bool = False):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone, pretrained=pretrained, allow_download=allow_download)
        skip_dims = list(config.skip_dims)
        self.stem = PixelStem(skip_dims) if config.pixel_stem else None
        self.difference = DifferenceBranch(self.backbone.channels, self.backbone.strides, config.dim,
                                           config.token_stride, skip_dims, use_fine_taps=self.stem is None)
        if self.stem is None:
            skip_dims = skip_dims[:len(self.difference.fine_idx)]
        self.heads = SplitHeads(config.dim)
        self.refine = Refinement(config.dim, config.refine_blocks, config.refine_heads, config.ffn_ratio,
                                 config.max_regions)
        self.decoder = Decoder(config.dim, skip_dims, config.full_res_head)

    def _prior_grid(self, prior: torch.Tensor | None, batch: int, grid: tuple[int, int],
                    like: torch.Tensor) -> torch.Tensor:
        if prior is None:
            return torch.full((batch, 1, *grid), UNINFORMATIVE_PRIOR, device=like.device, dtype=like.dtype)
        if prior.dim() == 3:
            prior = prior[:, None]
        if prior.dim() != 4 or prior.shape[0] != batch or prior.shape[1] != 1:
            raise ValueError(f"prior must be [B, 1, H, W] or [B, H, W] with B={batch}, got {tuple(prior.shape)}")
        return F.adaptive_avg_pool2d(prior.to(device=like.device, dtype=like.dtype), grid)

    def forward(self, original: torch.Tensor, edited: torch.Tensor, prior: torch.Tensor | None = None,
                edit_type: Any = None, regions: Regions | Sequence[Sequence[dict]] | None = None) -> SigmaOutput:
        if original.shape != edited.shape or original.dim() != 4 or original.shape[1] != 3:
            raise ValueError(f"original/edited must both be [B, 3, H, W], got {tuple(original.shape)} and "
                             f"{tuple(edited.shape)}")
        b, _, h, w = original.shape
        feats = self.backbone.features(torch.cat([original, edited], dim=0))
        fa = [f[:b] for f in feats]
        fb = [f[b:] for f in feats]
        fused, skips = self.difference(fa, fb)
        if self.stem is not None:
            skips = self.stem(original, edited)
        edit_feat, noise_feat, noise_pred = self.heads(fused)
        grid = tuple(edit_feat.shape[-2:])
        prior_g = self._prior_grid(prior, b, grid, edit_feat)
        if regions is not None and not isinstance(regions, Regions):
            regions = Regions.from_lists(regions, self.config.max_regions, device=original.device)
        type_ids = edit_type_ids(edit_type, b, original.device)
        refined = self.refine(edit_feat, prior_g, type_ids, regions)
        logits = self.decoder(refined, skips, (h, w), images=(original, edited))
        return SigmaOutput(logits=logits, edit_feat=edit_feat, noise_feat=noise_feat, noise_pred=noise_pred)

"""Semantic-difference branch (METHOD §2): per tap [|a−b|, a⊙b, 1−cos(a,b)] → 1x1 conv to a common width.

Taps at the token stride or coarser are summed into the token grid the refinement attends over; finer
taps become decoder skips that carry boundary detail.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sigma.models.backbones import ConvBNAct, InvertedResidual


def difference_features(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[|a−b|, a⊙b, 1−cos] along channels: 2C+1 channels. The cosine channel is scale-free, so a global
    brightness or contrast drift (which scales features) barely moves it while a semantic change does."""
    cos = F.cosine_similarity(a, b, dim=1, eps=1e-6).unsqueeze(1)
    return torch.cat([(a - b).abs(), a * b, 1.0 - cos], dim=1)


class TapProjection(nn.Module):
    def __init__(self, channels: int, out: int):
        super().__init__()
        self.proj = ConvBNAct(2 * channels + 1, out, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.proj(difference_features(a, b))


class DifferenceBranch(nn.Module):
    def __init__(self, channels: list[int], strides: list[int], dim: int, token_stride: int,
                 skip_dims: list[int], use_fine_taps: bool):
        super().__init__()
        self.coarse_idx = [i for i, s in enumerate(strides) if s >= token_stride]
        if not self.coarse_idx:
            raise ValueError(f"no backbone tap at stride >= token_stride {token_stride} (taps: {strides})")
        fine = [i for i, s in enumerate(strides) if s < token_stride] if use_fine_taps else []
        self.fine_idx = sorted(fine, key=lambda i: -strides[i])          # coarse → fine
        if len(self.fine_idx) > len(skip_dims):
            raise ValueError(f"{len(self.fine_idx)} fine taps but only {len(skip_dims)} skip_dims")
        self.coarse = nn.ModuleList(TapProjection(channels[i], dim) for i in self.coarse_idx)
        self.fine = nn.ModuleList(TapProjection(channels[i], d) for i, d in zip(self.fine_idx, skip_dims))
        self.mix = InvertedResidual(dim, 2)   # some spatial context on the fused grid (attention has none)

    def forward(self, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        grid = max((feats_a[i].shape[-2:] for i in self.coarse_idx), key=lambda s: s[0] * s[1])
        fused = None
        for i, proj in zip(self.coarse_idx, self.coarse):
            y = proj(feats_a[i], feats_b[i])
            if y.shape[-2:] != grid:
                y = F.interpolate(y, size=grid, mode="bilinear", align_corners=False)
            fused = y if fused is None else fused + y
        skips = [proj(feats_a[i], feats_b[i]) for i, proj in zip(self.fine_idx, self.fine)]
        return self.mix(fused), skips


class PixelStem(nn.Module):
    """Strided convs over (I_o, I_e, |I_o−I_e|): high-frequency detail a ViT's 1/14 grid lacks."""

    def __init__(self, skip_dims: list[int]):
        super().__init__()
        widths = list(reversed(skip_dims))            # fine → coarse, finest at stride 4
        first = max(8, widths[0] // 2)
        self.first = ConvBNAct(9, first, 3, stride=2)
        layers, cin = [], first
        for w in widths:
            layers.append(ConvBNAct(cin, w, 3, stride=2))
            cin = w
        self.levels = nn.ModuleList(layers)

    def forward(self, original: torch.Tensor, edited: torch.Tensor) -> list[torch.Tensor]:
        x = self.first(torch.cat([original, edited, (original - edited).abs()], dim=1))
        outs = []
        for layer in self.levels:
            x = layer(x)
            outs.append(x)
        return outs[::-1]                              # coarse → fine

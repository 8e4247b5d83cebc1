"""Edit/noise heads (METHOD §6) and the progressive-upsampling decoder (METHOD §5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sigma.models.backbones import ConvBNAct


class SplitHeads(nn.Module):
    """Two heads over the fused difference tokens: an edit part (the mask is decoded from it alone) and
    a noise part (regresses the low-passed VAE residual). Both end linearly, so the disentanglement loss
    can push the edit part to exactly zero on noise-only pairs."""

    def __init__(self, dim: int):
        super().__init__()
        self.edit = nn.Sequential(ConvBNAct(dim, dim, 1), nn.Conv2d(dim, dim, 1))
        self.noise = nn.Sequential(ConvBNAct(dim, dim, 1), nn.Conv2d(dim, dim, 1))
        self.noise_out = nn.Conv2d(dim, 1, 1)

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        edit = self.edit(fused)
        noise = self.noise(fused)
        return edit, noise, self.noise_out(noise)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.reduce = ConvBNAct(cin + cskip, cout, 1)
        self.conv = ConvBNAct(cout, cout, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(self.reduce(torch.cat([x, skip], dim=1)))


class Decoder(nn.Module):
    """Upsample the refined tokens through each skip (coarse → fine), then a 1x1 conv to one logit."""

    def __init__(self, dim: int, skip_dims: list[int]):
        super().__init__()
        blocks, cin = [], dim
        for c in skip_dims:
            blocks.append(UpBlock(cin, c, c))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(cin, 1, 1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        for block, skip in zip(self.blocks, skips, strict=True):
            x = block(x, skip)
        return F.interpolate(self.out(x), size=size, mode="bilinear", align_corners=False)

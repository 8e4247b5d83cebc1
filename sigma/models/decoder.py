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


class FullResHead(nn.Module):
    """Logits at the full working resolution (issue 14: edits under 2 % of the image are a few pixels
    wide at the decoder's finest level, and a one-pixel error there is two at the input).

    A residual correction of the upsampled coarse logit from a few cheap convs over the pair itself
    (original, edited, |original − edited| at full resolution) and the decoder's finest features: the
    coarse logit says where, the pixels say exactly which. `zero_init_()` makes it add nothing, so a
    trained model grown with this head predicts exactly as before until it is trained."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.pix = ConvBNAct(9, width, 3)
        self.reduce = ConvBNAct(cin, width, 1)
        self.fuse = ConvBNAct(2 * width + 1, width, 3)
        self.out = nn.Conv2d(width, 1, 1)

    def zero_init_(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feat: torch.Tensor, logit: torch.Tensor, original: torch.Tensor,
                edited: torch.Tensor) -> torch.Tensor:
        size = original.shape[-2:]
        coarse = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
        f = F.interpolate(self.reduce(feat), size=size, mode="bilinear", align_corners=False)
        p = self.pix(torch.cat([original, edited, (original - edited).abs()], dim=1))
        return coarse + self.out(self.fuse(torch.cat([f, p, coarse], dim=1)))


class Decoder(nn.Module):
    """Upsample the refined tokens through each skip (coarse → fine), then a 1x1 conv to one logit;
    with `full_res` > 0 a `FullResHead` of that width refines it at the input resolution."""

    def __init__(self, dim: int, skip_dims: list[int], full_res: int = 0):
        super().__init__()
        blocks, cin = [], dim
        for c in skip_dims:
            blocks.append(UpBlock(cin, c, c))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(cin, 1, 1)
        self.full = FullResHead(cin, full_res) if full_res > 0 else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], size: tuple[int, int],
                images: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        for block, skip in zip(self.blocks, skips, strict=True):
            x = block(x, skip)
        logit = self.out(x)
        if self.full is not None and images is not None:   # images are at `size`: the network's input
            return self.full(x, logit, images[0], images[1])
        return F.interpolate(logit, size=size, mode="bilinear", align_corners=False)

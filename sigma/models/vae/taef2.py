"""Our own TAEF2 module: the tiny FLUX.2-latent autoencoder, written from the layout in
`../shared/weights/taef2/README.md` so its two state dicts load *strictly* (no silent random layers).

Why a tiny VAE at all: diffusion editors decode the whole image through a VAE, which perturbs every
pixel. TAEF2 reproduces that kind of perturbation cheaply, for training (Stage II calibration, latent
edits) and for the `vae` robustness condition of `sigma eval`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sigma.regular import open_regular


def _conv(cin: int, cout: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """relu(convs(x') + x'), x' = x + pool(x) when the block has a `pool` branch."""

    def __init__(self, ch: int = 64, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(ch, ch), nn.ReLU(), _conv(ch, ch), nn.ReLU(), _conv(ch, ch))
        self.pool = (nn.Sequential(nn.Conv2d(ch, 256, 1, bias=False), nn.GroupNorm(4, 256), nn.ReLU(),
                                   nn.Conv2d(256, ch, 1, bias=False)) if pool else None)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.act(self.conv(x) + x)


class TanhClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x / 3.0)


def build_encoder() -> nn.Sequential:
    return nn.Sequential(
        _conv(3, 64), Block(),
        _conv(64, 64, 2, bias=False), Block(), Block(), Block(),
        _conv(64, 64, 2, bias=False), Block(), Block(), Block(),
        _conv(64, 64, 2, bias=False), Block(pool=True), Block(pool=True), Block(pool=True),
        _conv(64, 32),
    )


def build_decoder() -> nn.Sequential:
    return nn.Sequential(
        TanhClamp(), _conv(32, 64), nn.ReLU(),
        Block(pool=True), Block(pool=True), Block(pool=True),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), Block(), Block(), Block(),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), Block(), Block(), Block(),
        nn.Upsample(scale_factor=2), _conv(64, 64, bias=False), Block(),
        _conv(64, 3),
    )


class TAEF2(nn.Module):
    """encode: [B,3,H,W] in [0,1] (H, W multiples of 8) → [B,32,H/8,W/8]; decode: back, clamped to [0,1]."""

    latent_channels = 32
    scale = 8

    def __init__(self) -> None:
        super().__init__()
        self.encoder = build_encoder()
        self.decoder = build_decoder()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @classmethod
    def from_dir(cls, directory: str | Path) -> TAEF2:
        directory = Path(directory)
        model = cls()
        for part, module in (("encoder", model.encoder), ("decoder", model.decoder)):
            path = directory / f"taef2_{part}.pth"
            try:
                with open_regular(path) as handle:    # a FIFO put there after the check: refused, not waited on
                    state = torch.load(handle, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                raise
            except Exception as exc:  # a truncated or foreign file: said with its path
                from sigma.models.weights import WeightsUnreadableError

                raise WeightsUnreadableError(f"{path}: not a readable TAEF2 weights file ({exc})") from exc
            module.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)

"""VAE backends behind one small interface (`VAE`): TAEF2 (offline default) and diffusers' AutoencoderKL.

Used for the `vae` perturbation of `sigma eval`, for Stage II noise calibration and for latent edits
in the synthetic-edit engine. Weights are never downloaded: TAEF2 is looked up at an explicit path or
`$SIGMA_SHARED/weights/taef2` (default: `../shared` beside the repository); a missing file raises
`WeightsNotFoundError` with the places that were tried.

A real editor's VAE (e.g. SD-1.5 or FLUX) can be used through `AutoencoderKLBackend` when the user has
`diffusers` installed and the weights on disk (`pip install diffusers`; not a dependency of SIGMA).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sigma.errors import ConfigError, WeightsNotFoundError

from .taef2 import TAEF2

__all__ = ["VAE", "TAEF2Backend", "AutoencoderKLBackend", "TAEF2", "find_taef2_dir", "load_default_vae",
           "load_vae"]

_FILES = ("taef2_encoder.pth", "taef2_decoder.pth")


def shared_dir() -> Path:
    env = os.environ.get("SIGMA_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared"


def find_taef2_dir(path: str | Path | None = None) -> Path:
    candidates = [Path(path)] if path else []
    if not path:
        if os.environ.get("SIGMA_TAEF2"):
            candidates.append(Path(os.environ["SIGMA_TAEF2"]))
        candidates.append(shared_dir() / "weights" / "taef2")
        candidates.append(Path.cwd().parent / "shared" / "weights" / "taef2")
    for cand in candidates:
        if all((cand / f).is_file() for f in _FILES):
            return cand
    tried = ", ".join(str(c) for c in candidates)
    raise WeightsNotFoundError(
        f"TAEF2 weights ({' + '.join(_FILES)}) not found; tried: {tried}. "
        "Set SIGMA_SHARED to the folder holding weights/taef2, or pass the weights folder explicitly.")


class VAE:
    """Common surface: tensors in [0,1] NCHW for encode/decode, uint8 HxWx3 for roundtrip_uint8."""

    scale = 8

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1], any H, W: reflect-pad to multiples of 8, encode, decode, crop back."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.scale, (-w) % self.scale
        xp = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
        return self.decode(self.encode(xp))[..., :h, :w]

    @torch.no_grad()
    def roundtrip_uint8(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"roundtrip_uint8 wants uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
        x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float().div(255.0).to(self.device)
        y = self.roundtrip(x)[0].permute(1, 2, 0).clamp(0, 1).mul(255.0).round().byte().cpu().numpy()
        return y


class TAEF2Backend(VAE):
    def __init__(self, weights_dir: str | Path | None = None, device: str | torch.device = "cpu"):
        super().__init__(device)
        self.weights_dir = find_taef2_dir(weights_dir)
        self.model = TAEF2.from_dir(self.weights_dir).to(self.device)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z.to(self.device))


class AutoencoderKLBackend(VAE):
    """An editor's own VAE through diffusers (lazy import; diffusers is an optional, user-side install)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", subfolder: str | None = None):
        super().__init__(device)
        try:
            from diffusers import AutoencoderKL  # type: ignore
        except ImportError as exc:
            raise ConfigError("the 'diffusers' VAE backend needs `pip install diffusers` "
                              "(not installed; SIGMA does not depend on it)") from exc
        try:
            self.model = AutoencoderKL.from_pretrained(str(path), subfolder=subfolder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WeightsNotFoundError(f"AutoencoderKL weights not found at {path}: {exc}") from exc
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.sf = float(getattr(self.model.config, "scaling_factor", 1.0) or 1.0)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        dist = self.model.encode(x.to(self.device) * 2.0 - 1.0).latent_dist
        return dist.mean * self.sf

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (self.model.decode(z / self.sf).sample * 0.5 + 0.5).clamp(0.0, 1.0)


def load_vae(backend: str = "taef2", path: str | Path | None = None, device: str = "cpu") -> VAE:
    if backend == "taef2":
        return TAEF2Backend(path, device)
    if backend in ("diffusers", "autoencoderkl"):
        if path is None:
            raise ConfigError("the diffusers VAE backend needs a local weights path")
        return AutoencoderKLBackend(path, device)
    raise ConfigError(f"unknown VAE backend {backend!r}; choose 'taef2' or 'diffusers'")


_DEFAULT: dict[str, VAE] = {}


def load_default_vae(device: str = "cpu") -> VAE:
    """The offline default (TAEF2), loaded once per process."""
    if device not in _DEFAULT:
        _DEFAULT[device] = TAEF2Backend(None, device)
    return _DEFAULT[device]

"""The one device and dtype policy for every torch model SIGMA runs (networks, grounding, parsers)."""
from __future__ import annotations

from typing import Any

from sigma.errors import ConfigError


def pick_device(name: Any = "auto"):
    """auto (or None) → CUDA when present, else CPU; an explicit device that does not exist is a config
    error, never a silent fallback."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use device=auto or cpu")
    return device


def pick_dtype(dtype: str, device: Any):
    """auto → bf16 on a CUDA device that supports it, else fp32."""
    import torch

    if dtype == "auto":
        on_cuda = torch.device(device).type == "cuda"
        return torch.bfloat16 if on_cuda and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ConfigError(f"dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None

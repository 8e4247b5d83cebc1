"""Atomic checkpoints (temp file + rename): a kill at any moment leaves the previous checkpoint intact."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

CKPT = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    target = run_dir / CKPT
    tmp = run_dir / (CKPT + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    return target


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CKPT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)

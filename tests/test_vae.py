"""TAEF2: strict loading of the shared state dicts and a real roundtrip (skipped without ../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sigma.errors import WeightsNotFoundError
from sigma.models.vae import TAEF2, find_taef2_dir, load_vae

SHARED = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
WEIGHTS = SHARED / "weights" / "taef2"
needs_weights = pytest.mark.skipif(not (WEIGHTS / "taef2_encoder.pth").is_file(), reason="no ../shared TAEF2")


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="taef2_encoder.pth"):
        find_taef2_dir(tmp_path)


@needs_weights
def test_state_dicts_load_strictly_and_cover_every_parameter():
    model = TAEF2()
    for part, module in (("encoder", model.encoder), ("decoder", model.decoder)):
        state = torch.load(WEIGHTS / f"taef2_{part}.pth", map_location="cpu", weights_only=True)
        missing, unexpected = module.load_state_dict(state, strict=True)
        assert not missing and not unexpected
        assert set(state) == set(module.state_dict())


@needs_weights
def test_roundtrip_of_a_photo_is_close_and_keeps_odd_sizes():
    from PIL import Image

    torch.set_num_threads(1)
    photo = sorted((SHARED / "data" / "photos").rglob("*.png"))[0]
    img = np.asarray(Image.open(photo).convert("RGB"))[:123, :117].copy()   # not multiples of 8
    vae = load_vae("taef2", WEIGHTS)
    out = vae.roundtrip_uint8(img)
    assert out.shape == img.shape and out.dtype == np.uint8
    mse = float(((out / 255.0 - img / 255.0) ** 2).mean())
    assert 1e-5 < mse < 5e-3        # ≈ 1e-3 for photos: a real perturbation, not an identity or garbage
    z = vae.encode(torch.from_numpy(img[:120, :112].copy()).permute(2, 0, 1)[None].float() / 255)
    assert z.shape == (1, 32, 15, 14)

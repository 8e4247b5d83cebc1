"""Named model configurations, as data. `build_model(name)` validates one into a SigmaNetConfig."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TINY_DINOV2 = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
               "patch_size": 14, "image_size": 56}

PRESETS: dict[str, dict[str, Any]] = {
    # compact backbone trained from scratch; refinement attends at 1/16 (32x32 tokens at 512 px)
    # issue 14: one more block at strides 8, 16, 32 and a full-resolution head (1.37x the FLOPs of the
    # first file: 8.4 against 6.2 GFLOPs per 512² pair)
    "sigma-lite": {
        "backbone": {"kind": "compact", "widths": [16, 32, 64, 128, 256], "depths": [0, 1, 2, 3, 3],
                     "expansion": 3},
        "image_size": 512, "size_multiple": 32, "keep_aspect": True,
        "dim": 128, "token_stride": 16, "skip_dims": [64, 32, 16], "full_res_head": 8,
        "refine_blocks": 2, "refine_heads": 4, "ffn_ratio": 2.0, "max_regions": 8,
    },
    # the paper's model: frozen DINOv2-B/14 at 518 px (37x37 tokens), taps = blocks 2, 5, 11
    "sigma-b": {
        "backbone": {"kind": "dinov2", "weights": "facebook/dinov2-base", "taps": [3, 6, 12]},
        "image_size": 518, "size_multiple": 14, "keep_aspect": False,
        "dim": 256, "token_stride": 14, "skip_dims": [64, 32], "pixel_stem": True,
        "refine_blocks": 2, "refine_heads": 8, "ffn_ratio": 2.0, "max_regions": 8,
    },
    "sigma-s": {
        "backbone": {"kind": "dinov2", "weights": "facebook/dinov2-small", "taps": [3, 6, 12]},
        "image_size": 518, "size_multiple": 14, "keep_aspect": False,
        "dim": 192, "token_stride": 14, "skip_dims": [64, 32], "pixel_stem": True,
        "refine_blocks": 2, "refine_heads": 6, "ffn_ratio": 2.0, "max_regions": 8,
    },
    # tiny test configurations: build offline in milliseconds
    "tiny-dinov2": {
        "backbone": {"kind": "dinov2", "weights": "tiny-dinov2 (random)", "hf_config": TINY_DINOV2,
                     "taps": [1, 2, 4]},
        "image_size": 56, "size_multiple": 14, "keep_aspect": False,
        "dim": 32, "token_stride": 14, "skip_dims": [16, 8], "pixel_stem": True,
        "refine_blocks": 2, "refine_heads": 2, "ffn_ratio": 2.0, "max_regions": 4,
    },
    "tiny-lite": {
        "backbone": {"kind": "compact", "widths": [8, 16, 16, 32, 32], "depths": [0, 1, 0, 1, 1],
                     "expansion": 2},
        "image_size": 64, "size_multiple": 32, "keep_aspect": True,
        "dim": 32, "token_stride": 16, "skip_dims": [16, 16, 8], "full_res_head": 4,
        "refine_blocks": 2, "refine_heads": 2, "ffn_ratio": 2.0, "max_regions": 4,
    },
}


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a preset's trained weights come from, kept next to its architecture (timm's pretrained_cfg):
    a file shipped in the package (`sigma/weights/<file>` + its `.json` config) or a Hub id, the sha256 the
    file must have (checked at load: a corrupt or swapped file is refused, never trusted), and the input size
    it was trained for."""

    file: str | None = None
    hub_id: str | None = None
    sha256: str | None = None
    input_size: int | None = None
    notes: str = ""


# Presets without an entry ship no weights: pass options.weights=PATH. sha256=None: the file is not verified.
PRETRAINED: dict[str, PretrainedCfg] = {
    "sigma-lite": PretrainedCfg(
        file="sigma-lite.safetensors",
        sha256="436914f1d931bce0ed93baa968c14fd35f59ebc508095c2f4ece068dfe59eb5a",
        input_size=512, notes="trained from scratch on the 2-core CPU; model card in docs/training.md"),
    # no trained heads released yet: a file trained with `sigma train` and dropped here is picked up (unverified)
    "sigma-b": PretrainedCfg(file="sigma-b.safetensors", input_size=518, notes="not released; train on a GPU"),
    "sigma-s": PretrainedCfg(file="sigma-s.safetensors", input_size=518, notes="not released; train on a GPU"),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)

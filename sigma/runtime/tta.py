"""Flip averaging: the network sees the pair and its left-right mirror, and the two logit maps (the mirror's
mirrored back) are averaged.

Why: a small network's score near a thin or faint edit wobbles with where the edit falls on its patch grid and
on which side its context lies; the mirror is a second, equally valid look at the same pair, and the mean of two
looks has less of that wobble. It costs a second forward pass and nothing else: no weights, no training. Mirroring
is an exact permutation of pixels, so nothing is resampled, and the network was trained on mirrored pairs (the
data engine flips), so the mirror is in distribution. Works with any runner (torch or ONNX Runtime): it only
touches the inputs and the output.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

TTA = Literal["none", "flip"]


def mirror_regions(regions: list[list[dict[str, Any]]] | None) -> list[list[dict[str, Any]]] | None:
    """Normalised boxes [x0, y0, x1, y1] in [0, 1] → the same boxes in the mirrored image."""
    if regions is None:
        return None
    return [[{**r, "box": [1.0 - r["box"][2], r["box"][1], 1.0 - r["box"][0], r["box"][3]]} for r in per_pair]
            for per_pair in regions]


def flip_mean(call: Callable[..., torch.Tensor], original: torch.Tensor, edited: torch.Tensor,
              prior: torch.Tensor | None = None, regions: list[list[dict[str, Any]]] | None = None,
              **kwargs: Any) -> torch.Tensor:
    """`call(original, edited, prior, regions=..., **kwargs) -> logits [B,1,H,W]`, averaged with its mirror."""
    def mirror(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.flip(-1)

    straight = call(original, edited, prior, regions=regions, **kwargs)
    mirrored = call(mirror(original), mirror(edited), mirror(prior), regions=mirror_regions(regions), **kwargs)
    return (straight + mirrored.flip(-1)) * 0.5


class FlipAveraged:
    """A runner (same call signature) that runs its inner runner on the pair and its mirror and averages."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name = getattr(inner, "name", "runner")

    def __call__(self, original: torch.Tensor, edited: torch.Tensor, prior: torch.Tensor, edit_type: Any,
                 regions: Any = None) -> torch.Tensor:
        return flip_mean(lambda o, e, p, regions: self.inner(o, e, p, edit_type, regions),
                         original, edited, prior, regions)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "tta": "flip"}

"""Regions -> a dense prior in [0, 1], and the two priors that carry no location."""
from __future__ import annotations

import numpy as np

from sigma.grounding.types import UNINFORMATIVE, Region


def constant_prior(size: tuple[int, int], value: float) -> np.ndarray:
    """One value everywhere, as a read-only [H, W] float32 view of a single number (stride 0).

    A prior that carries no location (no instruction, nothing found, a global edit: most pairs of a corpus) was a
    full-resolution float map, 64 MB at 16 Mpx, allocated, clipped into a second one and area-resized per pair, for
    a constant. A view costs nothing; `is_constant` lets its users skip the copies, and `resized_prior` resizes it
    once per (size, value, working size), to the very floats the full map gave."""
    return np.broadcast_to(np.float32(value), (int(size[0]), int(size[1])))


def is_constant(prior: np.ndarray) -> bool:
    """A `constant_prior` view (both strides 0); its one value is `prior.flat[0]`."""
    return prior.ndim == 2 and prior.size > 0 and prior.strides == (0, 0)


def uninformative_prior(size: tuple[int, int]) -> np.ndarray:
    return constant_prior(size, UNINFORMATIVE)


def full_prior(size: tuple[int, int]) -> np.ndarray:
    return constant_prior(size, 1.0)


def compose_prior(regions: list[Region], size: tuple[int, int], floor: float = 0.0) -> np.ndarray:
    """Score-weighted union: pi = max(floor, 1 - prod_i (1 - s_i * m_i)).

    A noisy-OR rather than a max, so two weak detections that agree (the source in the original
    and the target in the edited image over the same place) say more than either alone; it stays
    in [0, 1] and equals s * m for a single region. The regions of every edit of an instruction go
    into the one union. `floor` is the least value anywhere: 0.5 (uninformative) when one of the
    instruction's edits was not located, since that edit may be anywhere. A floor, not a noisy-OR
    term, so `pi > 0.5` still marks exactly the confident detections (SAM's soft masks are rarely 0).
    """
    keep = np.ones(size, np.float64)
    for region in regions:
        if region.mask is None:
            continue
        if region.mask.shape != tuple(size):
            raise ValueError(f"region mask {region.mask.shape} does not match the pair size {size}")
        keep *= 1.0 - np.clip(region.score, 0.0, 1.0) * np.clip(region.mask, 0.0, 1.0)
    return np.maximum(1.0 - keep, float(np.clip(floor, 0.0, 1.0))).astype(np.float32)

"""The two values that cross every boundary: a `Pair` in, an `Annotation` out."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

# Which of a result's two masks is *the* mask (docs/masks.md); the API validates requests against it.
MaskMode = Literal["auto", "semantic", "footprint"]
MASK_MODES: tuple[str, ...] = get_args(MaskMode)


def check_mask_mode(mode: str) -> str:
    if mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {', '.join(MASK_MODES)}, got {mode!r}")
    return mode


def finite_number(value: Any) -> float | None:
    """`value` as a finite float, or None: NaN, inf, text that is no number, and integers too large for a float
    (10**400: OverflowError in `float()`) included."""
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def confidence_value(value: Any) -> float | None:
    """A result's `confidence` as every reader of it takes it: a finite number, or None (no confidence). An
    annotator's extras are its own (a plugin's NaN, inf, 10**400 or "high"), and a manifest row holds what its
    file holds: `float()` raised OverflowError on 10**400 (a traceback in `sigma eval`), and NaN or inf passed
    `--min-confidence` (NaN < c is False) and sorted anywhere, so a pair without a confidence was exported as
    the most confident. What is None here fails every confidence bound and sorts last (docs/batch.md)."""
    return finite_number(value)


@dataclass
class Pair:
    """An (original, edited, instruction) triple, already decoded and size-synchronised.

    Images are uint8 RGB arrays of identical shape [H, W, 3]; `io.load_pair` guarantees it and
    records what it had to do (alpha, EXIF, resize, shift) in `preprocess`.
    """

    original: np.ndarray
    edited: np.ndarray
    instruction: str | None = None
    pair_id: str = "pair"
    preprocess: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("original", "edited"):
            img = getattr(self, name)
            if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"Pair.{name} must be a uint8 [H, W, 3] array, got "
                                 f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}")
            if img.shape[0] == 0 or img.shape[1] == 0:   # every annotator divided by its pixel count
                raise ValueError(f"Pair.{name} is empty ({img.shape}): an image needs at least one pixel")
        if self.original.shape != self.edited.shape:
            raise ValueError(f"Pair images differ in shape: {self.original.shape} vs {self.edited.shape}; "
                             "use sigma.io.load_pair or sigma.io.sync_size first")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the original, the size every output is given at."""
        return self.original.shape[0], self.original.shape[1]


@dataclass
class Annotation:
    """What an annotator says about one pair, at the original's resolution."""

    pair_id: str
    prob: np.ndarray            # float32 [H, W] in [0, 1]
    mask: np.ndarray            # bool [H, W]
    threshold: float
    annotator: str
    config_hash: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)   # parser output, prior flags, confidence, ...
    preprocess: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None   # the trained weights that made it (None: an annotator without weights)
    # Two masks (sigma.annotators.footprint): `mask` is the one `mask_mode` chose; under a mask_mode the
    # semantic mask, the synthesised footprint (None: not a composite) and the composite evidence ride along.
    semantic_mask: np.ndarray | None = None     # bool [H, W]
    footprint_mask: np.ndarray | None = None    # bool [H, W]
    composite: dict[str, Any] | None = None     # {"is_composite": bool, "tier", "tolerance", ...}
    mask_mode: str | None = None                # auto | semantic | footprint; None: no composite test ran
    mask_source: str | None = None              # semantic | footprint: what `mask` is
    # what the annotator needs to re-derive the mask-dependent fields at another threshold; never serialised
    context: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def rle(self) -> dict:
        from sigma.rle import encode_rle

        return encode_rle(self.mask)

    def bbox(self) -> list[int]:
        from sigma.rle import mask_bbox

        return mask_bbox(self.mask)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record with SA-1B field names (`segmentation{size,counts}`, `area`, `bbox`)."""
        return {
            "pair_id": self.pair_id,
            "annotator": self.annotator,
            "config_hash": self.config_hash,
            "weights_sha256": self.weights_sha256,
            "sigma_version": _version(),
            "threshold": self.threshold,
            "segmentation": self.rle(),
            "area": self.area,
            "bbox": self.bbox(),
            "area_fraction": round(self.area_fraction, 6),
            "size": [int(self.mask.shape[0]), int(self.mask.shape[1])],
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "preprocess": self.preprocess,
            **self.mask_fields(),
            **self.extra,
        }

    def mask_fields(self) -> dict[str, Any]:
        """Both masks as RLE + the composite evidence (empty when no composite test ran)."""
        if self.mask_mode is None:
            return {}
        from sigma.rle import encode_rle

        return {"mask_mode": self.mask_mode, "mask_source": self.mask_source,
                "semantic_segmentation": encode_rle(self.semantic_mask) if self.semantic_mask is not None else None,
                "footprint_segmentation": encode_rle(self.footprint_mask) if self.footprint_mask is not None else None,
                "composite": self.composite}


def _version() -> str:
    from sigma import version

    return version.__version__

"""What `sigma annotate` leaves on disk for one pair: mask, probability, overlay and a JSON record."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sigma.io.images import replace_atomically, write_png
from sigma.text import dumps_finite
from sigma.types import Annotation

TINT_RGB = (255, 32, 32)


def overlay_image(edited: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The edited image with the mask tinted and outlined, so a reviewer sees both at a glance."""
    out = edited.astype(np.float32).copy()
    tint = np.array(TINT_RGB, np.float32)
    out[mask] = out[mask] * (1 - alpha) + tint * alpha
    out = np.clip(out, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(mask.shape) / 400))
    cv2.drawContours(out, contours, -1, TINT_RGB, thickness)
    return out


def write_json(data: Any, path: str | Path) -> Path:
    text = dumps_finite(data, indent=2, default=_json_default)   # NaN -> null
    return replace_atomically(Path(path), text.encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_annotation(annotation: Annotation, edited: np.ndarray, outdir: str | Path,
                     record_extra: dict[str, Any] | None = None) -> dict[str, Path]:
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {
        "mask": write_png(annotation.mask.astype(np.uint8) * 255, outdir / "mask.png"),
        "prob": write_png(np.round(annotation.prob * 255).astype(np.uint8), outdir / "prob.png"),
        "overlay": write_png(overlay_image(edited, annotation.mask), outdir / "overlay.png"),
    }
    # the two masks (docs/masks.md) when the annotator ran the composite test: mask.png is the chosen one
    if annotation.mask_mode is not None and annotation.semantic_mask is not None:
        paths["semantic_mask"] = write_png(annotation.semantic_mask.astype(np.uint8) * 255, outdir / "mask_semantic.png")
    if annotation.mask_mode is not None and annotation.footprint_mask is not None:
        paths["footprint_mask"] = write_png(annotation.footprint_mask.astype(np.uint8) * 255,
                                            outdir / "mask_footprint.png")
    # an earlier result in this folder (a composite before, a pair that is not one now; sigma-lite, then
    # pixel-diff) left its other masks here, beside a result.json that says there are none
    for key, name in (("semantic_mask", "mask_semantic.png"), ("footprint_mask", "mask_footprint.png")):
        if key not in paths:
            (outdir / name).unlink(missing_ok=True)
    record = annotation.to_dict()
    record.update(record_extra or {})
    record["files"] = {k: p.name for k, p in paths.items()}
    paths["result"] = write_json(record, outdir / "result.json")
    return paths

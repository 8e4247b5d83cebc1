"""What `sigma annotate` leaves on disk for one pair: mask, probability, overlay and a JSON record."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sigma.folderlock import busy_as_error, folder_lock_wait_s
from sigma.io.images import encode_png
from sigma.tempfiles import replace_atomically, replace_together
from sigma.text import MAX_JSON_DEPTH, dumps_finite, json_ready, surrogates_escaped
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


def json_record(data: Any, max_depth: int = MAX_JSON_DEPTH) -> bytes:
    """A JSON file we write (result.json, metrics.json), indented: `sigma.text.json_ready`, the one conversion batch
    rows and service results use, so a plugin's extras read the same in all three (a set as a sorted list, bytes as
    `{"bytes": n}`, a map-sized array as its shape). This file had its own `default=`, which raised TypeError on a
    set, bytes, any other object or a tuple key, and recursed until RecursionError on a dict that contains itself:
    `sigma annotate` ended with a traceback and left the masks without their result.json. Raises `NotWritable` (a
    ValueError saying where) for what cannot be written, nested past `max_depth` (io.limits.max_json_depth) too.
    Text holding lone surrogates (names from non-UTF-8 file names) is written escaped (`surrogates_escaped`)."""
    return dumps_finite(surrogates_escaped(json_ready(data, max_depth=max_depth)), indent=2).encode()


def write_json(data: Any, path: str | Path) -> Path:
    return replace_atomically(Path(path), json_record(data))


def write_annotation(annotation: Annotation, edited: np.ndarray, outdir: str | Path,
                     record_extra: dict[str, Any] | None = None,
                     max_json_depth: int = MAX_JSON_DEPTH,
                     companions: dict[str, bytes] | None = None) -> dict[str, Path]:
    """mask.png, prob.png, overlay.png (and the two masks of a composite test), any `companions` (name → bytes:
    the resolved config.yaml) and result.json in `outdir`, as one set (`replace_together`, result.json last): a
    kill at any point leaves the old set, or new files without a result.json, never new masks or a new config
    beside an old result.json. The record is made JSON first: extras that cannot be written (`NotWritable`)
    leave the folder as it was. Another process holding the folder's commit lock for all of
    `$SIGMA_FOLDER_LOCK_WAIT_S` (a writer stopped or hung mid-commit) is `folder_busy`, not a wait for ever."""
    outdir = Path(outdir)
    images = {"mask.png": annotation.mask.astype(np.uint8) * 255,
              "prob.png": np.round(annotation.prob * 255).astype(np.uint8),
              "overlay.png": overlay_image(edited, annotation.mask)}
    names = {"mask": "mask.png", "prob": "prob.png", "overlay": "overlay.png"}
    # the two masks (docs/masks.md) when the annotator ran the composite test: mask.png is the chosen one
    if annotation.mask_mode is not None and annotation.semantic_mask is not None:
        images["mask_semantic.png"] = annotation.semantic_mask.astype(np.uint8) * 255
        names["semantic_mask"] = "mask_semantic.png"
    if annotation.mask_mode is not None and annotation.footprint_mask is not None:
        images["mask_footprint.png"] = annotation.footprint_mask.astype(np.uint8) * 255
        names["footprint_mask"] = "mask_footprint.png"
    record = annotation.to_dict()
    record.update(record_extra or {})
    record["files"] = dict(names)
    text = json_record(record, max_json_depth)                       # raises NotWritable before any file is written
    files = [(outdir / name, encode_png(images[name])) for name in names.values()]
    files += [(outdir / name, data) for name, data in (companions or {}).items()]
    outdir.mkdir(parents=True, exist_ok=True)
    # an earlier result in this folder (a composite before, a pair that is not one now; sigma-lite, then
    # pixel-diff) left its other masks here: they go with its result.json, not beside the new one
    stale = [outdir / name for key, name in (("semantic_mask", "mask_semantic.png"),
                                             ("footprint_mask", "mask_footprint.png")) if key not in names]
    # bounded (`folder_busy`): a writer of this folder stopped mid-commit (Ctrl-Z, SIGSTOP) kept annotate waiting
    wait_s = folder_lock_wait_s()
    with busy_as_error("write the result into", wait_s):
        replace_together([*files, (outdir / "result.json", text)], remove=stale, timeout_s=wait_s)
    paths = {key: outdir / name for key, name in names.items()}
    paths.update({name: outdir / name for name in companions or {}})
    paths["result"] = outdir / "result.json"
    return paths

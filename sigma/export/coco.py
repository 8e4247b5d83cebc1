"""COCO-style JSON: one image per kept pair, one annotation per non-empty mask, segmentation as RLE.

Masks come straight from the manifests (no pixels needed); `images_dir` also writes the edited images
under the `file_name`s the JSON names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sigma.batch.layout import atomic_write_bytes, is_stream, refuse_images_dir, refuse_run_file
from sigma.export.select import (
    RowFilter,
    UniqueNames,
    checked_before_writing,
    iter_pairs,
    iter_rows,
    nothing_to_export,
    order_key,
    row_mask_counts,
)
from sigma.io.images import write_png
from sigma.rle import decode_rle, mask_bbox
from sigma.tempfiles import make_folders_durably, sweep_dead_writers_of, sync_folder
from sigma.text import dumps_finite

CATEGORY = {"id": 1, "name": "edited", "supercategory": "manipulation"}


def _rle(row: dict, counts: str | None) -> dict | None:
    return None if counts is None else {"size": [row["height"], row["width"]], "counts": counts}


def _write_image(edited: np.ndarray, path: Path, first: bool) -> None:
    """One edited image of `--images`, its bytes fsynced before its rename (`write_png(durable=True)`); `first`:
    the folder (and any parent) made here is synced by name first (`make_folders_durably`). Before, the images
    were only renamed from the page cache while the JSON naming them was fsynced: a power cut after the export
    said it was done could leave a JSON listing images empty, cut short or missing. The folder itself is synced
    after the last one, before the JSON (`export_coco`)."""
    if first:
        make_folders_durably(path.parent)
    write_png(edited, path, durable=True)


def export_coco(run_dir: str | Path, out: str | Path, row_filter: RowFilter | None = None,
                images_dir: str | Path | None = None, mask: str = "chosen", order: str = "corpus") -> dict[str, Any]:
    """One image per kept pair, one annotation per non-empty mask. `segmentation` is the `mask` asked for
    (chosen = the run's mask_mode; semantic; footprint, which skips pairs that are not composites); every
    annotation also carries both masks (`semantic_segmentation`, `footprint_segmentation`: RLE or null)
    and the composite evidence. `order`: images in corpus order or by confidence."""
    refuse_run_file(out)
    run = checked_before_writing(run_dir, corpus=False)      # the corpus too, below, when its images are written
    if images_dir is not None:
        refuse_images_dir(images_dir, run.record["corpus"].get("path"))
        run.corpus()
        # the folder is held by no one (two exports, or the user's own writers, may work in it at once): only the
        # temporary images of writers that are dead go (an earlier export killed mid-write), never a live one's
        sweep_dead_writers_of(Path(images_dir), (".png",))
    if not is_stream(out):
        # the same for the temporary files of `out` itself (`.FILE.json.PID.RANDOM.tmp`) an export killed while
        # writing it left beside it: only that name, only of dead writers (the folder is anyone's)
        sweep_dead_writers_of(Path(out).parent, names={Path(out).name})
    key = order_key(order)
    names = UniqueNames()
    kept: list[tuple[dict, dict | None, float | None]] = []
    kept_images = 0
    skipped: list[dict[str, str]] = []
    if images_dir is not None:
        source = ((row, pair, err) for row, pair, err in iter_pairs(run, row_filter))
    else:
        source = ((row, None, None) for _, rows in iter_rows(run, row_filter) for row in rows)
    for row, pair, error in source:
        counts = row_mask_counts(row, mask)
        if counts is None:
            skipped.append({"pair_id": row["pair_id"], "reason": f"no {mask} mask (not a composite)"})
            continue
        if images_dir is not None and pair is None:
            skipped.append({"pair_id": row["pair_id"], "reason": error or "unreadable"})
            continue
        name = names(row)
        file_name = f"{name}.png"
        if pair is not None:
            _write_image(pair.edited, Path(images_dir) / file_name, first=not kept_images)
            kept_images += 1
        image = {"file_name": file_name, "height": row["height"], "width": row["width"], "pair_id": row["pair_id"],
                 "source": row["source"], "instruction": row["instruction"], "edit_type": row["edit_type"]}
        if mask == "chosen":
            area, bbox = int(row["area"]), [int(v) for v in row["bbox"]]
        else:
            decoded = decode_rle(_rle(row, counts))
            area, bbox = int(decoded.sum()), [int(v) for v in mask_bbox(decoded)]
        annotation = None
        if area:
            annotation = {
                "category_id": CATEGORY["id"], "segmentation": _rle(row, counts), "area": area, "bbox": bbox,
                "iscrowd": 0, "score": row["confidence"], "annotator": row["annotator"],
                "config_hash": row["config_hash"], "mask": mask, "mask_mode": row.get("mask_mode"),
                "mask_source": row.get("mask_source") if mask == "chosen" else mask,
                "semantic_segmentation": _rle(row, row_mask_counts(row, "semantic")),
                "footprint_segmentation": _rle(row, row_mask_counts(row, "footprint")),
                "composite": json.loads(row["composite"]) if row.get("composite") else None}
        kept.append((image, annotation, row["confidence"]))
    if not kept:
        raise nothing_to_export(skipped)
    if key is not None:
        kept.sort(key=lambda t: key({"confidence": t[2]}))
    images: list[dict] = []
    annotations: list[dict] = []
    for image, annotation, _ in kept:
        images.append({"id": len(images) + 1, **image})
        if annotation is not None:
            annotations.append({"id": len(annotations) + 1, "image_id": len(images), **annotation})
    data = {"info": {"description": f"SIGMA batch run {run.rundir.root.resolve()}", "mask": mask, "order": order},
            "images": images, "annotations": annotations, "categories": [CATEGORY]}
    out = Path(out)
    if kept_images:
        sync_folder(Path(images_dir))    # the images' names on disk before the JSON that lists them
    # finite: a plugin's NaN confidence or evidence would make the file JSON that strict readers refuse
    atomic_write_bytes(out, dumps_finite(data).encode())
    if not is_stream(out):
        sync_folder(out.parent)          # the JSON's own name: "done" is said once it is on disk
    return {"out": str(out), "images": len(images), "annotations": len(annotations), "mask": mask, "order": order,
            "skipped": skipped}

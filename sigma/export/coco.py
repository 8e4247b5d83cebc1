"""COCO-style JSON: one image per kept pair, one annotation per non-empty mask, segmentation as RLE.

Masks come straight from the manifests (no pixels needed); `images_dir` also writes the edited images
under the `file_name`s the JSON names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sigma.batch.layout import atomic_write_bytes
from sigma.export.select import RowFilter, UniqueNames, iter_pairs, iter_rows
from sigma.io.images import write_png

CATEGORY = {"id": 1, "name": "edited", "supercategory": "manipulation"}


def export_coco(run_dir: str | Path, out: str | Path, row_filter: RowFilter | None = None,
                images_dir: str | Path | None = None) -> dict[str, Any]:
    names = UniqueNames()
    images: list[dict] = []
    annotations: list[dict] = []
    skipped: list[dict[str, str]] = []
    if images_dir is not None:
        source = ((row, pair, err) for row, pair, err in iter_pairs(run_dir, row_filter))
    else:
        source = ((row, None, None) for _, rows in iter_rows(run_dir, row_filter) for row in rows)
    for row, pair, error in source:
        if images_dir is not None and pair is None:
            skipped.append({"pair_id": row["pair_id"], "reason": error or "unreadable"})
            continue
        name = names(row)
        image_id = len(images) + 1
        file_name = f"{name}.png"
        if pair is not None:
            write_png(pair.edited, Path(images_dir) / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": row["height"], "width": row["width"],
                       "pair_id": row["pair_id"], "source": row["source"], "instruction": row["instruction"],
                       "edit_type": row["edit_type"]})
        if row["area"]:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": CATEGORY["id"],
                "segmentation": {"size": [row["height"], row["width"]], "counts": row["rle_counts"]},
                "area": int(row["area"]), "bbox": [int(v) for v in row["bbox"]], "iscrowd": 0,
                "score": row["confidence"], "annotator": row["annotator"], "config_hash": row["config_hash"]})
    data = {"info": {"description": f"SIGMA batch run {Path(run_dir).resolve()}"}, "images": images,
            "annotations": annotations, "categories": [CATEGORY]}
    out = Path(out)
    atomic_write_bytes(out, json.dumps(data).encode())
    return {"out": str(out), "images": len(images), "annotations": len(annotations), "skipped": skipped}

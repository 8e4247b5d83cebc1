"""COCO-style JSON: one image per kept pair, one annotation per non-empty mask, segmentation as RLE.

Masks come straight from the manifests (no pixels needed); `images_dir` also writes the edited images
under the `file_name`s the JSON names.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sigma.batch.layout import atomic_write_bytes, is_stream, refuse_images_dir, refuse_run_file
from sigma.export.placing import PlacedFiles
from sigma.export.select import (
    CheckedRun,
    RowFilter,
    UniqueNames,
    checked_before_writing,
    iter_pairs,
    iter_rows,
    nothing_to_export,
    order_key,
    row_mask_counts,
)
from sigma.io.images import encode_png
from sigma.rle import decode_rle, mask_bbox
from sigma.tempfiles import sweep_dead_writers_of, sync_folder
from sigma.text import dumps_finite

CATEGORY = {"id": 1, "name": "edited", "supercategory": "manipulation"}


def _rle(row: dict, counts: str | None) -> dict | None:
    return None if counts is None else {"size": [row["height"], row["width"]], "counts": counts}


def export_coco(run_dir: str | Path, out: str | Path, row_filter: RowFilter | None = None,
                images_dir: str | Path | None = None, mask: str = "chosen", order: str = "corpus",
                overwrite: bool = False) -> dict[str, Any]:
    """One image per kept pair, one annotation per non-empty mask. `segmentation` is the `mask` asked for
    (chosen = the run's mask_mode; semantic; footprint, which skips pairs that are not composites); every
    annotation also carries both masks (`semantic_segmentation`, `footprint_segmentation`: RLE or null)
    and the composite evidence. `order`: images in corpus order or by confidence. `images_dir` is no folder of the
    export's own (`PlacedFiles`): a name there holding other bytes (another export's image) refuses the export
    before any image is put in place, unless `overwrite`; the same bytes are left as they are."""
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
    images = PlacedFiles(Path(images_dir), overwrite) if images_dir is not None else None
    try:
        return _export(run, Path(out), row_filter, images, mask, order)
    finally:
        if images is not None:
            images.discard()       # a refusal, a failure: the staged images not placed go


def _export(run: CheckedRun, out: Path, row_filter: RowFilter | None, images_out: PlacedFiles | None, mask: str,
            order: str) -> dict[str, Any]:
    key = order_key(order)
    names = UniqueNames()
    kept: list[tuple[dict, dict | None, float | None]] = []
    kept_images = 0
    skipped: list[dict[str, str]] = []
    if images_out is not None:
        source = ((row, pair, err) for row, pair, err in iter_pairs(run, row_filter))
    else:
        source = ((row, None, None) for _, rows in iter_rows(run, row_filter) for row in rows)
    for row, pair, error in source:
        counts = row_mask_counts(row, mask)
        if counts is None:
            skipped.append({"pair_id": row["pair_id"], "reason": f"no {mask} mask (not a composite)"})
            continue
        if images_out is not None and pair is None:
            skipped.append({"pair_id": row["pair_id"], "reason": error or "unreadable"})
            continue
        name = names(row)
        file_name = f"{name}.png"
        if images_out is not None and pair is not None:
            images_out.stage(file_name, encode_png(pair.edited))      # refused here if DIR holds other bytes
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
    if images_out is not None and kept_images:
        images_out.place()
        sync_folder(images_out.folder)   # the images' names on disk before the JSON that lists them
    # finite: a plugin's NaN confidence or evidence would make the file JSON that strict readers refuse
    atomic_write_bytes(out, dumps_finite(data).encode())
    if not is_stream(out):
        sync_folder(out.parent)          # the JSON's own name: "done" is said once it is on disk
    return {"out": str(out), "images": len(images), "annotations": len(annotations), "mask": mask, "order": order,
            "skipped": skipped}

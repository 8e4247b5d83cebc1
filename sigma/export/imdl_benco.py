"""IMDL-BenCo training data: `Tp/<name>.png` (the edited image at the mask's size), `Gt/<name>.png` (0/255)
and the JSON list its JsonDataset reads, `[[tp, gt], ...]` with "Negative" for an empty mask.

A negative still gets an all-black Gt file so the Tp/ and Gt/ folders stay pairwise aligned for
IMDL-BenCo's ManiDataset, which pairs the two folders by sorted name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sigma.batch.layout import atomic_write_bytes
from sigma.export.select import RowFilter, UniqueNames, iter_pairs
from sigma.io.images import write_png
from sigma.rle import decode_rle


def export_imdl_benco(run_dir: str | Path, out: str | Path, row_filter: RowFilter | None = None,
                      relative: bool = False, json_name: str = "imdl_benco.json") -> dict[str, Any]:
    out = Path(out).resolve()
    (out / "Tp").mkdir(parents=True, exist_ok=True)
    (out / "Gt").mkdir(parents=True, exist_ok=True)
    names = UniqueNames()
    entries: list[list[str]] = []
    skipped: list[dict[str, str]] = []
    positives = 0
    for row, pair, error in iter_pairs(run_dir, row_filter):
        if pair is None:
            skipped.append({"pair_id": row["pair_id"], "reason": error or "unreadable"})
            continue
        name = names(row)
        mask = decode_rle({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
        tp = write_png(pair.edited, out / "Tp" / f"{name}.png")
        gt = write_png(mask.astype(np.uint8) * 255, out / "Gt" / f"{name}.png")
        tp_ref = str(tp.relative_to(out)) if relative else str(tp)
        gt_ref = str(gt.relative_to(out)) if relative else str(gt)
        if mask.any():
            positives += 1
            entries.append([tp_ref, gt_ref])
        else:
            entries.append([tp_ref, "Negative"])
    atomic_write_bytes(out / json_name, json.dumps(entries, indent=1).encode())
    return {"out": str(out), "json": str(out / json_name), "pairs": len(entries), "positives": positives,
            "negatives": len(entries) - positives, "skipped": skipped}

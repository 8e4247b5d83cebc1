"""Collect what the review page shows: the lowest-confidence pairs with their overlays, per-set metrics
(through `sigma.eval.metrics`, when the corpus had ground truth) and the bad pairs with their reasons."""
from __future__ import annotations

import base64
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sigma.batch.layout import atomic_write_bytes, is_stream, refuse_run_file
from sigma.eval.metrics import ImageScore, MetricAccumulator
from sigma.eval.runner import set_group
from sigma.export.select import RowFilter, checked_before_writing, iter_pairs, load_rows, without_confidence
from sigma.io.outputs import overlay_image
from sigma.report.page import render_page
from sigma.rle import decode_rle
from sigma.tempfiles import sweep_dead_writers_of
from sigma.text import escape_surrogates, printable
from sigma.types import confidence_value


def _sort_key(row: dict, descending: bool = False) -> tuple:
    conf = confidence_value(row.get("confidence"))     # NaN, inf: no confidence, last
    value = conf if conf is not None else 0.0
    return (conf is None, -value if descending else value, row["shard"], row["index"])


def thumbnail_b64(rgb: np.ndarray, max_side: int) -> str:
    img = Image.fromarray(rgb)
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def set_metrics(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per set, the metrics `sigma eval` prints, from the rows' ground-truth scores. Each score carries the row's
    confidence, which `conf_rho` (Spearman's rho between confidence and F1) reads: without it every set's rho was
    null, "undefined", for a run whose confidences rank its masks, where `sigma eval` on the same pairs says +0.77."""
    acc = MetricAccumulator()
    for r in rows:
        if r["status"] != "ok" or r["gt_f1"] is None:
            continue
        score = ImageScore(pair_id=r["pair_id"], manipulated=bool(r["gt_fraction"]), f1=r["gt_f1"], iou=r["gt_iou"],
                           auc=r["gt_auc"] if r["gt_auc"] is not None else float("nan"),
                           gt_fraction=r["gt_fraction"], pred_fraction=r["area_fraction"], tp=r["gt_tp"],
                           fp=r["gt_fp"], fn=r["gt_fn"], confidence=confidence_value(r.get("confidence")))
        acc.add(score, set_group(r["subset"] or "(all)"))     # a set named "overall" keeps its own row
    tables = acc.summaries()
    if len(tables) == 2:      # one set: its row and "overall" say the same
        tables.pop("overall")
    return tables


class _Chosen:
    def __init__(self, keys: set[tuple[str, int]]):
        self.keys = keys

    def keep(self, row: dict) -> bool:
        return (row["shard"], row["index"]) in self.keys


def build_report(run_dir: str | Path, out: str | Path | None = None, limit: int = 300,
                 thumb: int = 192, min_confidence: float | None = None, max_confidence: float | None = None,
                 sort: str = "confidence-asc") -> dict[str, Any]:
    """The gallery shows `limit` pairs within the confidence bounds, lowest confidence first (the ones to
    check) or, with sort="confidence", highest first (what an export at that cut would keep)."""
    if sort not in ("confidence-asc", "confidence"):
        raise ValueError(f"sort must be confidence-asc or confidence, got {sort!r}")
    out = Path(out) if out else Path(run_dir) / "report.html"
    refuse_run_file(out)
    run = checked_before_writing(run_dir)
    rundir, record = run.rundir, run.record
    rows = load_rows(run, RowFilter(include_errors=True))
    bounds = RowFilter(min_confidence=min_confidence, max_confidence=max_confidence)
    ok = sorted((r for r in rows if r["status"] == "ok" and bounds.keep(r)),
                key=lambda r: _sort_key(r, descending=sort == "confidence"))
    errors = [r for r in rows if r["status"] != "ok"]
    good = bounds.seen["ok"]
    if good and not ok:
        # the export at these bounds is `no_results`; the page was written empty with exit 0, its summary saying
        # pairs_ok 0 of a run of good pairs, and nothing said why (an annotator without confidence, pixel-diff)
        why = without_confidence(bounds) or f"no pair's confidence is within {min_confidence} .. {max_confidence}"
        print(printable(f"sigma: warning: the gallery is empty: {why}"), file=sys.stderr)
    chosen = ok[:limit]
    keys = {(r["shard"], r["index"]) for r in chosen}
    thumbs: dict[tuple[str, int], dict[str, str]] = {}
    unreadable = 0
    for row, pair, _ in iter_pairs(run, _Chosen(keys)):
        if pair is None:
            unreadable += 1
            continue
        mask = decode_rle({"size": [row["height"], row["width"]], "counts": row["rle_counts"]})
        thumbs[(row["shard"], row["index"])] = {"original": thumbnail_b64(pair.original, thumb),
                                                "overlay": thumbnail_b64(overlay_image(pair.edited, mask), thumb)}
    items = []
    for r in chosen:
        items.append({**{k: r[k] for k in ("pair_id", "source", "subset", "instruction", "edit_type",
                                           "area_fraction", "gt_f1", "gt_iou", "annotator")},
                      "confidence": confidence_value(r.get("confidence")),
                      "mask_source": r.get("mask_source"), "is_composite": r.get("is_composite"),
                      "images": thumbs.get((r["shard"], r["index"]))})
    status = rundir.summary(record=record)
    page = render_page(
        title=f"SIGMA review: {Path(run_dir).resolve().name}",
        run={"run_dir": str(Path(run_dir).resolve()), "run_hash": record["run_hash"],
             "annotator": record["config"].get("annotator"), "input": record["config"]["input"]["path"],
             "format": record.get("format"), **{k: status[k] for k in ("shards", "done", "failed", "pending")},
             "pairs_ok": good, "pairs_in_bounds": len(ok), "pairs_bad": len(errors), "shown": len(items),
             "order": sort,
             "confidence_bounds": [min_confidence, max_confidence]},
        metrics=set_metrics(rows), items=items,
        errors=[{k: r[k] for k in ("pair_id", "source", "error_code", "error")} for r in errors[:500]])
    if not is_stream(out):
        # the page's temporary files (`.report.html.PID.RANDOM.tmp`, megabytes of inlined thumbnails) a report killed
        # while writing left beside it, one per kill: only that name, only of dead writers (the folder is anyone's)
        sweep_dead_writers_of(out.parent, names={out.name})
    # a run folder or corpus path of non-UTF-8 bytes (lone surrogates in Python) made encode() fail: the report was
    # `invalid_text` quoting the page's first 200 characters; such names are shown escaped (`\udcff`), as in JSON
    atomic_write_bytes(out, escape_surrogates(page).encode("utf-8"))
    return {"out": str(out), "items": len(items), "pairs_ok": good, "pairs_in_bounds": len(ok),
            "pairs_bad": len(errors),
            "metric_sets": len(set_metrics(rows)), "unreadable": unreadable}

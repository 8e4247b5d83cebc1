"""Collect what the review page shows: the lowest-confidence pairs with their overlays, per-set metrics
(through `sigma.eval.metrics`, when the corpus had ground truth) and the bad pairs with their reasons."""
from __future__ import annotations

import base64
import heapq
import io
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sigma.batch.layout import atomic_write_bytes, is_stream, refuse_run_file
from sigma.eval.metrics import ImageScore, ScoreColumns
from sigma.eval.runner import set_group
from sigma.export.select import RowFilter, checked_before_writing, iter_pairs, iter_rows, without_confidence
from sigma.io.outputs import overlay_image
from sigma.report.page import render_page
from sigma.rle import decode_rle
from sigma.tempfiles import sweep_dead_writers_of
from sigma.text import escape_name, escape_surrogates, printable
from sigma.types import confidence_value

#: the bad pairs the page lists (all are counted)
MAX_ERRORS_SHOWN = 500


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


class SetMetrics:
    """Per set, the metrics `sigma eval` prints, from the rows' ground-truth scores, a row at a time (`add`): a
    report reads the run shard by shard and keeps each row's numbers only (no pair id, mask or text). Each score
    carries the row's confidence, which `conf_rho` (Spearman's rho between confidence and F1) reads: without it every
    set's rho was null, "undefined", for a run whose confidences rank its masks, where `sigma eval` on the same pairs
    says +0.77."""

    def __init__(self) -> None:
        self.groups: dict[str, ScoreColumns] = {}

    def add(self, r: dict) -> None:
        if r["status"] != "ok" or r["gt_f1"] is None:
            return
        score = ImageScore(pair_id="", manipulated=bool(r["gt_fraction"]), f1=r["gt_f1"], iou=r["gt_iou"],
                           auc=r["gt_auc"] if r["gt_auc"] is not None else float("nan"),
                           gt_fraction=r["gt_fraction"], pred_fraction=r["area_fraction"], tp=r["gt_tp"],
                           fp=r["gt_fp"], fn=r["gt_fn"], confidence=confidence_value(r.get("confidence")))
        for group in (set_group(r["subset"] or "(all)"), "overall"):    # a set named "overall" keeps its own row
            self.groups.setdefault(group, ScoreColumns()).add(score)

    def tables(self) -> dict[str, dict[str, Any]]:
        """Every set, "overall" last (`MetricAccumulator.summaries`' order)."""
        names = [g for g in self.groups if g != "overall"] + (["overall"] if "overall" in self.groups else [])
        tables = {g: self.groups[g].summary() for g in names}
        if len(tables) == 2:      # one set: its row and "overall" say the same
            tables.pop("overall")
        return tables


def set_metrics(rows: Iterable[dict]) -> dict[str, dict[str, Any]]:
    """`SetMetrics` of `rows`, whole."""
    metrics = SetMetrics()
    for r in rows:
        metrics.add(r)
    return metrics.tables()


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
    bounds = RowFilter(min_confidence=min_confidence, max_confidence=max_confidence)
    metrics = SetMetrics()
    errors: list[dict] = []          # the first MAX_ERRORS_SHOWN bad pairs, for the page; all of them counted
    counts = {"bad": 0, "in_bounds": 0}

    def in_bounds() -> Iterator[dict]:
        """The run's rows a shard at a time (every row of a run held at once was ~4 KB a row: 1 GB for 200k rows),
        counting the bad ones and scoring the good ones on the way; the good ones within the bounds yielded."""
        for _, shard_rows in iter_rows(run, RowFilter(include_errors=True)):
            for r in shard_rows:
                if r["status"] != "ok":
                    counts["bad"] += 1
                    if len(errors) < MAX_ERRORS_SHOWN:
                        errors.append({k: r[k] for k in ("pair_id", "source", "error_code", "error")})
                    continue
                metrics.add(r)
                if bounds.keep(r):
                    counts["in_bounds"] += 1
                    yield r

    # the gallery's `limit` rows, as sorted() then [:limit] gave them (the key ends in shard and index: no ties)
    chosen = heapq.nsmallest(limit, in_bounds(), key=lambda r: _sort_key(r, descending=sort == "confidence"))
    good = bounds.seen["ok"]
    if good and not chosen:
        # the export at these bounds is `no_results`; the page was written empty with exit 0, its summary saying
        # pairs_ok 0 of a run of good pairs, and nothing said why (an annotator without confidence, pixel-diff)
        why = without_confidence(bounds) or f"no pair's confidence is within {min_confidence} .. {max_confidence}"
        print(printable(f"sigma: warning: the gallery is empty: {why}"), file=sys.stderr)
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
    tables = metrics.tables()
    status = rundir.summary(record=record)
    page = render_page(
        # the paths as the run's names are (`escape_name`): `escape_surrogates` of the page alone showed the folder
        # `d\xff` and one named in plain text `d\udcff` as one
        title=f"SIGMA review: {escape_name(Path(run_dir).resolve().name)}",
        run={"run_dir": escape_name(str(Path(run_dir).resolve())), "run_hash": record["run_hash"],
             "annotator": record["config"].get("annotator"),
             "input": escape_name(str(record["config"]["input"]["path"])),
             "format": record.get("format"), **{k: status[k] for k in ("shards", "done", "failed", "pending")},
             "pairs_ok": good, "pairs_in_bounds": counts["in_bounds"], "pairs_bad": counts["bad"], "shown": len(items),
             "order": sort,
             "confidence_bounds": [min_confidence, max_confidence]},
        metrics=tables, items=items, errors=errors)
    if not is_stream(out):
        # the page's temporary files (`.report.html.PID.RANDOM.tmp`, megabytes of inlined thumbnails) a report killed
        # while writing left beside it, one per kill: only that name, only of dead writers (the folder is anyone's)
        sweep_dead_writers_of(out.parent, names={out.name})
    # a run folder or corpus path of non-UTF-8 bytes (lone surrogates in Python) made encode() fail: the report was
    # `invalid_text` quoting the page's first 200 characters; such names are shown escaped (`\udcff`), as in JSON
    atomic_write_bytes(out, escape_surrogates(page).encode("utf-8"))
    return {"out": str(out), "items": len(items), "pairs_ok": good, "pairs_in_bounds": counts["in_bounds"],
            "pairs_bad": counts["bad"], "metric_sets": len(tables), "unreadable": unreadable,
            # the page of an unfinished run was said on stderr only, as the exports' once were (their summaries say it)
            "unfinished_shards": run.unfinished_shards()}

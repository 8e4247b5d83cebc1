"""`sigma eval`: score an annotator on the pair layout, as is and under whole-image perturbations."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigma.annotators.base import Annotator
from sigma.config.schema import IOConfig
from sigma.errors import InputError, SigmaError
from sigma.eval import perturb
from sigma.eval.metrics import ImageScore, MetricAccumulator, score_image
from sigma.io.images import read_mask
from sigma.io.pairs import load_pair
from sigma.io.pairs_jsonl import EvalRecord, find_sets, read_set

TINY_FRACTION = 0.02


@dataclass
class EvalResult:
    # scores[perturbation] = list of (record, score)
    scores: dict[str, list[tuple[EvalRecord, ImageScore]]] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)

    def accumulator(self, perturbation: str) -> MetricAccumulator:
        """Per set, then the aggregates people quote: editing sets, whole-image-change sets, tiny, all."""
        rows = self.scores.get(perturbation, [])
        # A set is a change-detection set when every pair in it is a whole-image change (aerial photos
        # years apart); editing sets may hold a few regenerated images and still count as editing.
        by_set: dict[str, list[bool]] = {}
        for rec, _ in rows:
            by_set.setdefault(rec.set_name, []).append(rec.whole_image_changed)
        changed_sets = {name for name, flags in by_set.items() if all(flags)}
        split = bool(changed_sets) and len(changed_sets) < len(by_set)
        acc = MetricAccumulator()
        for rec, _ in rows:            # the per-set rows first, in set order
            acc.groups.setdefault(rec.set_name, [])
        for rec, score in rows:
            groups = [rec.set_name]
            if split:
                groups.append("whole-image-change sets" if rec.set_name in changed_sets
                              else "editing (all but whole-image-change sets)")
            if rec.set_name not in changed_sets and 0 < score.gt_fraction < TINY_FRACTION:
                groups.append(f"tiny edits (<{TINY_FRACTION:.0%} of the image)")
            acc.add(score, *groups)
        return acc

    def groups(self, perturbation: str) -> dict[str, list[ImageScore]]:
        return self.accumulator(perturbation).groups

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {p: self.accumulator(p).summaries() for p in self.scores}

    def to_dict(self) -> dict[str, Any]:
        return {
            "tables": self.tables(),
            "per_pair": {p: [{"set": r.set_name, "id": r.pair_id, "f1": s.f1, "iou": s.iou, "auc": s.auc,
                              "gt_fraction": s.gt_fraction, "pred_fraction": s.pred_fraction}
                             for r, s in rows] for p, rows in self.scores.items()},
            "errors": self.errors,
        }


def evaluate(annotator: Annotator, data: str | Path, perturbations: list[str], io_config: IOConfig | None = None,
             batch_size: int = 4, progress: Callable[[int, int], None] | None = None,
             limit: int | None = None) -> EvalResult:
    io_config = io_config or IOConfig()
    perturbations = perturb.expand(perturbations)
    records = [rec for set_dir in find_sets(data) for rec in read_set(set_dir)]
    if limit:
        records = records[:limit]
    if not records:
        raise InputError(f"{data}: the pairs.jsonl files hold no pairs", code="no_pairs")
    result = EvalResult()
    total = len(records) * len(perturbations)
    done = 0
    if progress:
        progress(0, total)            # the bar shows at once, before the perturbations' models load
    perturb.prepare(perturbations)
    for name in perturbations:
        rows = result.scores.setdefault(name, [])
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            pairs, gts, kept = [], [], []
            for rec in chunk:
                try:
                    pair = load_pair(rec.original, rec.edited, rec.instruction, io_config, pair_id=rec.pair_id)
                    gt = read_mask(rec.mask, io_config.limits)
                    if gt.shape != pair.size:
                        raise InputError(f"{rec.mask}: mask {gt.shape} differs from original {pair.size}",
                                         code="mask_size_mismatch")
                    pair.edited = perturb.apply(name, pair.edited, rec.pair_id)
                except SigmaError as exc:
                    result.errors.append({"set": rec.set_name, "id": rec.pair_id, "perturbation": name,
                                          **exc.to_dict()})
                    continue
                pairs.append(pair)
                gts.append(gt)
                kept.append(rec)
            for rec, gt, ann in zip(kept, gts, annotator.predict(pairs), strict=True):
                rows.append((rec, score_image(rec.pair_id, ann.mask, ann.prob, gt)))
            done += len(chunk)
            if progress:
                progress(done, total)
    return result


def format_tables(result: EvalResult) -> str:
    lines = []
    for name, table in result.tables().items():
        lines.append(f"\n== perturbation: {name} ==")
        lines.append(f"{'set':<46} {'pairs':>5} {'manip':>5} {'F1':>6} {'IoU':>6} {'AUC':>6} "
                     f"{'pF1':>6} {'cIoU':>6} {'gIoU':>6}")
        for group, row in table.items():
            def pct(v: float) -> str:
                return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.1f}"
            lines.append(f"{group[:46]:<46} {row['pairs']:>5} {row['manipulated']:>5} {pct(row['f1'])} "
                         f"{pct(row['iou'])} {pct(row['auc'])} {pct(row['pooled_f1'])} {pct(row['ciou'])} "
                         f"{pct(row['giou'])}")
    return "\n".join(lines)

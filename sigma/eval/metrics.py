"""The one metrics module: training validation, `sigma eval` and benchmarks all score through it.

Primary numbers follow IMDL-BenCo: per-image pixel F1, IoU and AUC at threshold 0.5, averaged over
manipulated images (ground truth with at least one positive pixel). Secondary: pooled F1, PIXAR's
cumulative IoU (cIoU) and mean per-image IoU (gIoU), averaged over all images.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np


def _counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    pred = pred.astype(bool).ravel()
    gt = gt.astype(bool).ravel()
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    tn = pred.size - tp - fp - fn
    return tp, fp, fn, tn


def f1_score(pred: np.ndarray, gt: np.ndarray) -> float:
    tp, fp, fn, _ = _counts(pred, gt)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def iou_score(pred: np.ndarray, gt: np.ndarray) -> float:
    tp, fp, fn, _ = _counts(pred, gt)
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def auc_score(prob: np.ndarray, gt: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula with average ranks for ties; nan if one class."""
    scores = prob.astype(np.float64).ravel()
    labels = gt.astype(bool).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = (average_ranks(scores) + 1.0)[labels].sum()      # 1-based ranks
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass
class ImageScore:
    pair_id: str
    manipulated: bool
    f1: float
    iou: float
    auc: float
    gt_fraction: float
    pred_fraction: float
    tp: int
    fp: int
    fn: int
    confidence: float | None = None     # the annotator's own quality score, when it gives one


def score_image(pair_id: str, pred: np.ndarray, prob: np.ndarray, gt: np.ndarray, auc: float | None = None
                ) -> ImageScore:
    """`auc`: already known for this (prob, gt) — another mask from the same map — so the full sort that
    AUC costs (seconds at 16 Mpx) is not paid again."""
    if pred.shape != gt.shape or prob.shape != gt.shape:
        raise ValueError(f"{pair_id}: prediction {pred.shape}/{prob.shape} vs ground truth {gt.shape}")
    tp, fp, fn, _ = _counts(pred, gt)
    manipulated = bool(gt.any())
    return ImageScore(pair_id=pair_id, manipulated=manipulated, f1=f1_score(pred, gt), iou=iou_score(pred, gt),
                      auc=auc_score(prob, gt) if auc is None else auc, gt_fraction=float(gt.mean()),
                      pred_fraction=float(pred.mean()),
                      tp=tp, fp=fp, fn=fn)


class MetricAccumulator:
    """The one accumulator `sigma eval`, training validation and the batch review page score through:
    `update()` (or `add()` of a ready score) per image, into any number of named groups (a set, "editing",
    "tiny", ...; every image also lands in "overall"), then `summaries()` — the lifecycle IMDL-BenCo's
    evaluators share, so every image counts once per group however the caller batches."""

    def __init__(self) -> None:
        self.groups: dict[str, list[ImageScore]] = {}

    def add(self, score: ImageScore, *groups: str) -> ImageScore:
        for group in dict.fromkeys((*groups, "overall")):
            self.groups.setdefault(group, []).append(score)
        return score

    def update(self, pair_id: str, pred: np.ndarray, prob: np.ndarray, gt: np.ndarray, *groups: str) -> ImageScore:
        return self.add(score_image(pair_id, pred, prob, gt), *groups)

    def extend(self, other: MetricAccumulator) -> None:
        """Merge another accumulator's groups (e.g. one per process or per batch)."""
        for group, scores in other.groups.items():
            self.groups.setdefault(group, []).extend(scores)

    def scores(self, group: str = "overall") -> list[ImageScore]:
        return self.groups.get(group, [])

    def summary(self, group: str = "overall") -> dict[str, float | int]:
        return summarize(self.scores(group))

    def summaries(self) -> dict[str, dict[str, float | int]]:
        """Every group, "overall" last (the order tables print in)."""
        names = [g for g in self.groups if g != "overall"] + (["overall"] if "overall" in self.groups else [])
        return {g: summarize(self.groups[g]) for g in names}


def summarize(scores: list[ImageScore]) -> dict[str, float | int]:
    columns = ScoreColumns()
    for score in scores:
        columns.add(score)
    return columns.summary()


class ScoreColumns:
    """The numbers `summarize` reads of each score, as columns: 8 numbers (~60 bytes) a score where an ImageScore
    object is ~600. A review page of a 200k-row run scores every row (`sigma.report.build.SetMetrics`); held as
    objects they were 100+ MB. `summary()` is `summarize`'s, which is built on it: one computation for both."""

    def __init__(self) -> None:
        self.manipulated, self.f1, self.iou, self.auc = array("b"), array("d"), array("d"), array("d")
        self.tp, self.fp, self.fn = array("q"), array("q"), array("q")
        self.confidence = array("d")      # NaN: none (confidence_value gives only finite ones)

    def add(self, score: ImageScore) -> None:
        self.manipulated.append(bool(score.manipulated))
        self.f1.append(score.f1)
        self.iou.append(score.iou)
        self.auc.append(score.auc)
        self.tp.append(score.tp)
        self.fp.append(score.fp)
        self.fn.append(score.fn)
        self.confidence.append(float("nan") if score.confidence is None else score.confidence)

    def summary(self) -> dict[str, float | int]:
        n = len(self.f1)
        manipulated = np.frombuffer(self.manipulated, dtype=np.int8).astype(bool) if n else np.zeros(0, bool)
        f1, iou, auc, conf = (np.frombuffer(c, dtype=np.float64) if n else np.zeros(0)
                              for c in (self.f1, self.iou, self.auc, self.confidence))
        aucs = auc[manipulated]
        aucs = aucs[~np.isnan(aucs)]
        tp, fp, fn = sum(self.tp), sum(self.fp), sum(self.fn)
        nan = float("nan")
        rated = manipulated & ~np.isnan(conf)
        count = int(manipulated.sum())
        return {
            "pairs": n,
            "manipulated": count,
            "f1": float(np.mean(f1[manipulated])) if count else nan,
            "iou": float(np.mean(iou[manipulated])) if count else nan,
            "auc": float(np.mean(aucs)) if aucs.size else nan,
            "pooled_f1": (2 * tp / (2 * tp + fp + fn)) if (tp + fp + fn) else nan,
            "ciou": (tp / (tp + fp + fn)) if (tp + fp + fn) else nan,
            "giou": float(np.mean(iou)) if n else nan,
            # does the annotator's confidence rank its masks by quality? Spearman ρ(confidence, F1)
            "conf_rho": spearman(conf[rated], f1[rated]) if int(rated.sum()) >= 3 else nan,
        }


def spearman(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); nan below 3 pairs or when either side is constant."""
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"spearman: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3:
        return float("nan")
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def average_ranks(v: np.ndarray) -> np.ndarray:
    """0-based ranks, ties sharing the mean of their ranks (what both AUC and Spearman need)."""
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    boundaries = np.flatnonzero(np.diff(sorted_v)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [v.size]))
    ranks = np.empty(v.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks


def confidence_curve(confidences: list[float], f1s: list[float], keep: tuple[float, ...] = (1.0, 0.9, 0.75, 0.5, 0.25)
                     ) -> list[dict[str, float | int]]:
    """"Keep pairs with confidence >= c -> mean F1 x": per kept share, the cut c (the confidence of the
    last pair kept, most confident first) and the mean F1 of the kept pairs. Ties at c are all kept."""
    conf = np.asarray(confidences, dtype=np.float64)
    f1 = np.asarray(f1s, dtype=np.float64)
    ok = np.isfinite(conf) & np.isfinite(f1)
    conf, f1 = conf[ok], f1[ok]
    if conf.size == 0:
        return []
    order = np.argsort(-conf, kind="mergesort")
    rows = []
    for share in keep:
        n = max(1, int(round(share * conf.size)))
        cut = float(conf[order[n - 1]])
        kept = conf >= cut
        rows.append({"keep": share, "min_confidence": cut, "pairs": int(kept.sum()),
                     "f1": float(f1[kept].mean())})
    return rows

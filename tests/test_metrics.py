"""The one metrics module, against hand-computed fixtures and scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score as sk_f1
from sklearn.metrics import jaccard_score as sk_jaccard
from sklearn.metrics import roc_auc_score as sk_auc

from sigma.eval.metrics import MetricAccumulator, auc_score, f1_score, iou_score, score_image, summarize

PRED = np.array([[1, 1, 0], [0, 0, 0]], bool)
GT = np.array([[1, 0, 0], [1, 0, 0]], bool)


def test_hand_computed_f1_iou():
    # tp = 1, fp = 1, fn = 1, tn = 3
    assert f1_score(PRED, GT) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert iou_score(PRED, GT) == pytest.approx(1 / 3)
    assert f1_score(GT, GT) == 1.0 and iou_score(GT, GT) == 1.0
    assert f1_score(~GT, GT) == 0.0 and iou_score(~GT, GT) == 0.0
    empty = np.zeros_like(GT)
    assert f1_score(empty, empty) == 1.0 and iou_score(empty, empty) == 1.0   # nothing to find, nothing found
    assert f1_score(PRED, empty) == 0.0


def test_hand_computed_auc_with_ties():
    prob = np.array([0.9, 0.5, 0.5, 0.1])
    gt = np.array([1, 1, 0, 0], bool)
    # positive/negative pairs: (0.9,0.5)=1 (0.9,0.1)=1 (0.5,0.5)=1/2 (0.5,0.1)=1 -> 3.5 / 4
    assert auc_score(prob, gt) == pytest.approx(0.875)
    assert auc_score(np.full(4, 0.3), gt) == pytest.approx(0.5)                # all tied
    assert auc_score(1 - prob, gt) == pytest.approx(0.125)
    assert math.isnan(auc_score(prob, np.zeros(4, bool)))
    assert math.isnan(auc_score(prob, np.ones(4, bool)))


@pytest.mark.parametrize("seed", range(6))
def test_against_sklearn_on_random_masks_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((17, 23)) < rng.uniform(0.05, 0.6)
    prob = np.round(np.clip(gt * 0.3 + rng.random(gt.shape) * 0.8, 0, 1), 1)   # 11 levels: many ties
    pred = prob > 0.5
    assert f1_score(pred, gt) == pytest.approx(sk_f1(gt.ravel(), pred.ravel(), zero_division=1.0))
    assert iou_score(pred, gt) == pytest.approx(sk_jaccard(gt.ravel(), pred.ravel(), zero_division=1.0))
    assert auc_score(prob, gt) == pytest.approx(sk_auc(gt.ravel(), prob.ravel()))
    assert auc_score(prob.astype(np.float32), gt) == pytest.approx(sk_auc(gt.ravel(), prob.ravel()))


def test_score_image_counts_and_shape_check():
    s = score_image("a", PRED, PRED.astype(np.float32), GT)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1) and s.manipulated
    assert s.gt_fraction == pytest.approx(2 / 6) and s.pred_fraction == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="a: prediction"):
        score_image("a", PRED[:1], PRED.astype(np.float32), GT)


def test_summary_averages_over_manipulated_images_and_pools_secondaries():
    acc = MetricAccumulator()
    a = acc.update("a", PRED, PRED.astype(np.float32), GT)                      # f1 .5, iou 1/3
    b = acc.update("b", GT, GT.astype(np.float32), GT)                          # perfect
    clean = np.zeros_like(GT)
    c = acc.update("c", PRED, PRED.astype(np.float32), clean)                   # authentic, 2 false positives
    d = acc.update("d", clean, clean.astype(np.float32), clean)                 # authentic, nothing marked
    out = acc.summary()
    assert out["pairs"] == 4 and out["manipulated"] == 2
    assert out["f1"] == pytest.approx((0.5 + 1.0) / 2)                          # IMDL-BenCo: manipulated only
    assert out["iou"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert out["auc"] == pytest.approx((a.auc + b.auc) / 2)
    tp, fp, fn = 1 + 2 + 0 + 0, 1 + 0 + 2 + 0, 1 + 0 + 0 + 0
    assert out["pooled_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert out["ciou"] == pytest.approx(tp / (tp + fp + fn))                   # PIXAR cIoU
    assert out["giou"] == pytest.approx((1 / 3 + 1.0 + 0.0 + 1.0) / 4)           # PIXAR gIoU: all images
    assert c.iou == 0.0 and d.iou == 1.0


def test_summary_of_nothing_is_nan_not_an_exception():
    out = summarize([])
    assert out["pairs"] == 0 and all(math.isnan(out[k]) for k in ("f1", "iou", "auc", "pooled_f1", "ciou", "giou"))
    acc, other = MetricAccumulator(), MetricAccumulator()
    other.update("x", GT, GT.astype(np.float32), GT)
    acc.extend(other)
    assert acc.summary()["f1"] == 1.0


def test_auc_is_nan_safe_in_the_mean():
    acc = MetricAccumulator()
    full = np.ones((2, 3), bool)
    acc.update("all-changed", full, full.astype(np.float32), full)     # one class only: AUC undefined
    acc.update("a", PRED, PRED.astype(np.float32), GT)
    out = acc.summary()
    assert out["manipulated"] == 2 and out["auc"] == pytest.approx(auc_score(PRED.astype(np.float32), GT))

"""One binarize step: whatever threshold a caller asks for, every field derived from the mask agrees with it."""
from __future__ import annotations

import numpy as np
import pytest

from sigma.registry import create_annotator
from sigma.types import Pair

pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair() -> Pair:
    rng = np.random.default_rng(3)
    o = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    e = o.copy()
    e[20:60, 30:90] = 255 - e[20:60, 30:90]
    return Pair(o, e, "remove the box", "p")


def _consistent(record: dict, threshold: float) -> None:
    comps = record["components"]
    total = sum(c["area"] for key in ("intended", "side_effect", "unassigned") for c in comps[key])
    assert record["threshold"] == threshold
    assert record["area"] == total, "components must come from the same mask as area"


@pytest.fixture(scope="module")
def annotator():
    # the test pair is a composite: under the default mask_mode=auto *the* mask would be its footprint,
    # which does not move with the threshold; the semantic mask is what the threshold cuts
    return create_annotator("sigma-lite", model="tiny-lite", random_init=True, weights=None, mask_mode="semantic")


def test_predict_with_a_threshold_rederives_everything(annotator):
    pair = _pair()
    records = {}
    for t in (0.05, 0.5, 0.95):
        [ann] = annotator.predict([pair], threshold=t)
        rec = ann.to_dict()
        _consistent(rec, t)
        assert rec["area"] == int((ann.prob > t).sum())
        records[t] = rec
    assert len({r["area"] for r in records.values()}) > 1
    assert len({r["confidence"] for r in records.values()}) > 1


def test_per_pair_thresholds_in_one_batch(annotator):
    pair = _pair()
    anns = annotator.predict([pair, pair], threshold=[0.2, 0.8])
    assert [a.threshold for a in anns] == [0.2, 0.8]
    for ann in anns:
        _consistent(ann.to_dict(), ann.threshold)


def test_serving_predictor_threshold_override_is_consistent():
    from sigma.io import encode_png
    from sigma.service.predictor import Predictor

    pair = _pair()
    pred = Predictor("sigma-lite", {"model": "tiny-lite", "random_init": True, "mask_mode": "semantic"})
    items = [{"id": f"j{t}", "original": encode_png(pair.original), "edited": encode_png(pair.edited),
              "instruction": pair.instruction, "threshold": t} for t in (0.05, 0.95)]
    out = pred(items)
    areas = set()
    for res, t in zip(out, (0.05, 0.95)):
        assert res["ok"], res
        _consistent(res["result"], t)
        areas.add(res["result"]["area"])
    assert len(areas) == 2

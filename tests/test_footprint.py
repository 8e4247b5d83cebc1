"""Composite test + synthesised footprint (sigma.annotators.footprint), mask_mode, result.json, eval's two
masks and confidence rho, and the batch/export side of the two masks.

Composites are made here with known footprints on textured images (real PNG/JPEG files where the
format matters): bit-identical paste-backs must be recovered exactly, JPEG re-saved ones must still be
found, a whole-image filter or a TAEF2 roundtrip must not count as a composite.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from sigma.annotators.base import Annotator
from sigma.annotators.footprint import FootprintConfig, choose, composite_test, synthesise_footprint
from sigma.eval.metrics import confidence_curve, spearman
from sigma.types import Pair

SHARED = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def textured(h: int = 192, w: int = 256, seed: int = 0) -> np.ndarray:
    """A photo-like image: smooth colour fields, fine texture and a few hard edges."""
    rng = np.random.default_rng(seed)
    low = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 18, (h, w, 3)).astype(np.float32), (0, 0), 0.8)
    img = np.clip(low.astype(np.float32) + fine, 0, 255)
    for _ in range(6):
        x, y = (int(v) for v in rng.integers(0, [w - 40, h - 40]))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 40)), y + int(rng.integers(10, 40))),
                      tuple(float(c) for c in rng.integers(0, 256, 3)), -1)
    return img.astype(np.uint8)


def copy_move(img: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Paste an elliptic patch of the same image elsewhere; every pasted pixel differs from what was there."""
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    gt = np.zeros((h, w), np.uint8)
    cy, cx = int(h * 0.55), int(w * 0.4)
    cv2.ellipse(gt, (cx, cy), (30, 20), float(rng.uniform(0, 180)), 0, 360, 1, -1)
    gt = gt.astype(bool)
    src = np.roll(img, (-int(h * 0.3), int(w * 0.35)), axis=(0, 1))
    edited = img.copy()
    edited[gt] = src[gt]
    same = gt & (edited == img).all(axis=2)
    edited[same] = (img[same].astype(np.int16) + 17).clip(0, 255).astype(np.uint8) ^ 1
    assert (edited[gt] != img[gt]).any(axis=1).all() and (edited[~gt] == img[~gt]).all()
    return edited, gt


def semantic_of(gt: np.ndarray, spill: int = 0, shrink: int = 0, blob: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in model output: the core of the edit (shrunk), or spilling past it, optionally with a false
    positive blob on untouched pixels. Returns (prob, mask at 0.5)."""
    m = gt.astype(np.uint8)
    if shrink:
        m = cv2.erode(m, np.ones((2 * shrink + 1,) * 2, np.uint8))
    if spill:
        m = cv2.dilate(m, np.ones((2 * spill + 1,) * 2, np.uint8))
    if blob:
        cv2.circle(m, (20, 20), 6, 1, -1)
    prob = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.0)
    prob = np.where(m > 0, np.maximum(prob, 0.9), np.minimum(prob, 0.1)).astype(np.float32)
    return prob, prob > 0.5


def jpeg_file(img: np.ndarray, path: Path, quality: int) -> np.ndarray:
    Image.fromarray(img).save(path, format="JPEG", quality=quality)
    return np.asarray(Image.open(path).convert("RGB"))


def f1(pred: np.ndarray, gt: np.ndarray) -> float:
    tp = np.count_nonzero(pred & gt)
    return 2 * tp / max(1, 2 * tp + np.count_nonzero(pred & ~gt) + np.count_nonzero(~pred & gt))


@pytest.fixture(scope="module")
def scene():
    img = textured()
    edited, gt = copy_move(img)
    return img, edited, gt


# ------------------------------------------------------------------------------------------ composite test

def test_bit_identical_composite_is_recovered_exactly(scene):
    img, edited, gt = scene
    for spill, shrink in ((0, 6), (4, 0)):            # a model that sees only the core, or spills past it
        prob, sem = semantic_of(gt, spill=spill, shrink=shrink, blob=True)
        test = composite_test(img, edited, prob)
        assert test.is_composite and test.exact and test.tolerance == 0
        assert (test.evidence["tier"] == "exact"
                and test.evidence["untouched_fraction"] == pytest.approx(1 - gt.mean(), abs=1e-4))
        fp = synthesise_footprint(test, sem)
        assert np.array_equal(fp, gt), f"spill={spill} shrink={shrink}: {int((fp ^ gt).sum())} pixels off"
    # without refutation the footprint keeps the whole semantic mask (spill and false blob included)
    cfg = FootprintConfig(refute_explained=False)
    prob, sem = semantic_of(gt, spill=4, blob=True)
    fp = synthesise_footprint(composite_test(img, edited, prob, cfg), sem, cfg)
    assert (fp >= sem).all() and (fp >= gt).all()


def test_semantic_core_is_always_inside_the_footprint(scene, tmp_path):
    img, edited, gt = scene
    noisy = ((edited.astype(np.int16) + np.random.default_rng(5).integers(-3, 4, edited.shape))
             .clip(0, 255).astype(np.uint8))
    cases = [edited, noisy, jpeg_file(edited, tmp_path / "e.jpg", 80)]
    for e in cases:
        for kwargs in ({"shrink": 6}, {"spill": 3, "blob": True}, {}):
            prob, sem = semantic_of(gt, **kwargs)
            test = composite_test(img, e, prob)
            assert test.is_composite
            fp = synthesise_footprint(test, sem)
            unexplained = test.residual > test.tolerance
            if test.block > 1:
                from sigma.annotators.footprint import _blockify
                unexplained = _blockify(unexplained, test.block)
            core = sem & (fp | unexplained)
            assert (fp >= core).all()
            assert (fp >= (sem & gt)).all() or test.block > 1   # every semantic pixel that really changed


@pytest.mark.parametrize("quality", [75, 90])
def test_jpeg_resaved_composite_is_still_detected(scene, tmp_path, quality):
    img, edited, gt = scene
    Image.fromarray(img).save(tmp_path / "o.png")
    jpeg_file(edited, tmp_path / "e.jpg", quality)
    from sigma.io.pairs import load_pair

    pair = load_pair(tmp_path / "o.png", tmp_path / "e.jpg", None)
    prob, sem = semantic_of(gt, shrink=4)
    test = composite_test(pair.original, pair.edited, prob)
    ev = test.evidence
    assert test.is_composite and ev["reference"] == "jpeg" and ev["jpeg_quality"] == quality, ev
    assert ev["jpeg_subsampling"] == "4:2:0" and test.tolerance <= 1
    fp = synthesise_footprint(test, sem)
    assert f1(fp, gt) > 0.9 and f1(fp, gt) > f1(sem, gt)


def test_both_images_jpeg_composite(scene, tmp_path):
    """The original is itself a JPEG; the composite made from it is re-saved at another quality."""
    img, _, gt = scene
    base = jpeg_file(img, tmp_path / "o.jpg", 92)
    edited = base.copy()
    edited[gt] = np.roll(base, (-57, 90), axis=(0, 1))[gt] ^ 8
    edited = jpeg_file(edited, tmp_path / "e.jpg", 83)
    prob, sem = semantic_of(gt, shrink=4)
    test = composite_test(base, edited, prob)
    assert test.is_composite and test.evidence["jpeg_quality"] == 83
    assert f1(synthesise_footprint(test, sem), gt) > 0.9


def test_noisy_paste_back_is_near_exact(scene):
    img, edited, gt = scene
    noisy = ((edited.astype(np.int16) + np.random.default_rng(2).integers(-3, 4, edited.shape))
             .clip(0, 255).astype(np.uint8))
    prob, sem = semantic_of(gt, shrink=5)
    test = composite_test(img, noisy, prob)
    assert test.is_composite and test.evidence["tier"] == "near-exact" and 2 <= test.tolerance <= 4
    assert f1(synthesise_footprint(test, sem), gt) > 0.95


@pytest.mark.parametrize("name", ["blur", "resample", "colour"])
def test_whole_image_processing_is_not_a_composite(scene, name):
    img, edited, gt = scene
    from sigma.eval.perturb import color_drift, resample

    processed = {"blur": lambda e: cv2.GaussianBlur(e, (0, 0), 1.0),
                 "resample": lambda e: resample(e, 0.6),
                 "colour": lambda e: color_drift(e, 1.05, np.array([1.03, 0.98, 1.0], np.float32))}[name](edited)
    prob, sem = semantic_of(gt)
    test = composite_test(img, processed, prob)
    assert not test.is_composite, test.evidence
    assert test.evidence["tier"] == "none" and test.evidence["reason"]
    auto = choose("auto", sem, test)
    assert auto.chosen == "semantic" and auto.footprint is None and np.array_equal(auto.mask, sem)
    forced = choose("footprint", sem, test)
    assert forced.chosen == "footprint" and forced.footprint is not None and not forced.composite["is_composite"]


def test_taef2_roundtrip_is_not_a_composite(scene):
    weights = SHARED / "weights" / "taef2"
    if not (weights / "taef2_decoder.pth").is_file():
        pytest.skip("../shared/weights/taef2 not present")
    pytest.importorskip("torch")
    from sigma.models.vae import load_vae

    img, edited, gt = scene
    vae = load_vae("taef2", weights)
    rt = vae.roundtrip_uint8(edited)
    prob, sem = semantic_of(gt)
    test = composite_test(img, rt, prob)
    assert not test.is_composite, test.evidence


def test_mask_modes_and_validation(scene):
    img, edited, gt = scene
    prob, sem = semantic_of(gt, shrink=6)
    test = composite_test(img, edited, prob)
    auto, semantic, footprint = (choose(m, sem, test) for m in ("auto", "semantic", "footprint"))
    assert auto.chosen == "footprint" and np.array_equal(auto.mask, gt)
    assert semantic.chosen == "semantic" and np.array_equal(semantic.mask, sem)
    assert np.array_equal(semantic.footprint, gt), "semantic mode still reports the footprint"
    assert footprint.chosen == "footprint" and auto.composite["is_composite"] is True
    with pytest.raises(ValueError, match="mask_mode"):
        choose("both", sem, test)
    with pytest.raises(ValueError, match="shape"):
        composite_test(img, edited[:-1], prob)


# ---------------------------------------------------------------------------------- annotator integration

class FixedProb(Annotator):
    """A real annotator whose probability map is a stand-in model output (the core of the edit)."""

    name = "fixed-prob"
    default_mask_mode = "auto"

    def __init__(self, probs: dict[str, np.ndarray], **overrides: Any):
        super().__init__(**overrides)
        self.probs = probs

    def _predict_batch(self, pairs: list[Pair]):
        return [(self.probs[p.pair_id], {}) for p in pairs]

    def derive(self, pair_size, prob, mask, threshold, context):
        from sigma.annotators.mask_extras import confidence

        return {"confidence": confidence(prob, mask, threshold), "derived_area": int(mask.sum())}


def test_annotator_mask_mode_result_json_and_rethreshold(scene, tmp_path):
    from sigma.io.outputs import write_annotation
    from sigma.rle import decode_rle

    img, edited, gt = scene
    prob, sem = semantic_of(gt, shrink=6)
    pair = Pair(img, edited, None, "p")
    auto = FixedProb({"p": prob})
    [ann] = auto.predict([pair])
    assert ann.mask_mode == "auto" and ann.mask_source == "footprint" and np.array_equal(ann.mask, gt)
    assert np.array_equal(ann.semantic_mask, sem) and "composite_test" in ann.timings_ms
    # mask-derived fields follow *the* mask; the confidence stays the model's own (of the semantic mask)
    from sigma.annotators.mask_extras import confidence

    assert ann.extra["derived_area"] == ann.area == int(gt.sum())
    assert ann.extra["confidence"] == confidence(prob, sem, auto.threshold)
    paths = write_annotation(ann, edited, tmp_path / "out")
    rec = json.loads(paths["result"].read_text())
    assert rec["mask_mode"] == "auto" and rec["mask_source"] == "footprint"
    assert rec["composite"]["is_composite"] is True and rec["composite"]["tier"] == "exact"
    assert np.array_equal(decode_rle(rec["segmentation"]), gt) and rec["area"] == int(gt.sum())
    assert np.array_equal(decode_rle(rec["semantic_segmentation"]), sem)
    assert np.array_equal(decode_rle(rec["footprint_segmentation"]), gt)
    mask_png = np.asarray(Image.open(paths["mask"])) > 0
    assert np.array_equal(mask_png, gt), "mask.png is the chosen mask"
    assert (rec["files"]["semantic_mask"] == "mask_semantic.png"
            and rec["files"]["footprint_mask"] == "mask_footprint.png")
    assert np.array_equal(np.asarray(Image.open(paths["semantic_mask"])) > 0, sem)
    assert np.array_equal(np.asarray(Image.open(paths["footprint_mask"])) > 0, gt)
    # another threshold re-derives the semantic mask; the footprint (its core inside) follows
    again = auto.rethreshold(ann, 0.05)
    assert again.semantic_mask.sum() > sem.sum() and (again.footprint_mask >= (again.semantic_mask & gt)).all()
    # semantic mode: the semantic mask is the mask, the footprint still reported
    [s] = FixedProb({"p": prob}, mask_mode="semantic").predict([pair])
    assert s.mask_source == "semantic" and np.array_equal(s.mask, sem) and np.array_equal(s.footprint_mask, gt)
    # the baselines keep their own mask unless asked
    from sigma.registry import create_annotator

    [pd] = create_annotator("pixel-diff").predict([pair])
    assert pd.mask_mode is None and "mask_mode" not in pd.to_dict()
    [pd] = create_annotator("pixel-diff", mask_mode="footprint").predict([pair])
    assert pd.mask_source == "footprint" and np.array_equal(pd.mask, gt)
    with pytest.raises(Exception, match="mask_mode"):
        create_annotator("pixel-diff", mask_mode="both")


def test_per_pair_mask_modes_in_one_batch(scene):
    """A request's own mask_mode (the API's field) rides with its pair, as a per-pair threshold does."""
    img, edited, gt = scene
    prob, sem = semantic_of(gt, shrink=6)
    pairs = [Pair(img, edited, None, "p"), Pair(img, edited, None, "p"), Pair(img, edited, None, "p")]
    ann = FixedProb({"p": prob})
    own, forced_semantic, forced_footprint = ann.predict(pairs, mask_mode=[None, "semantic", "footprint"])
    assert own.mask_mode == "auto" and own.mask_source == "footprint"
    assert forced_semantic.mask_mode == "semantic" and np.array_equal(forced_semantic.mask, sem)
    assert forced_footprint.mask_source == "footprint" and np.array_equal(forced_footprint.mask, gt)
    # rethreshold keeps the pair's own mode, not the annotator's
    assert ann.rethreshold(forced_semantic, 0.3).mask_source == "semantic"
    # a baseline asked for a mode per pair runs the composite test for that pair only
    from sigma.registry import create_annotator

    plain, asked = create_annotator("pixel-diff").predict(pairs[:2], mask_mode=[None, "footprint"])
    assert plain.mask_mode is None and "composite_test" not in plain.timings_ms
    assert asked.mask_source == "footprint" and np.array_equal(asked.mask, gt)
    with pytest.raises(ValueError, match="mask_mode"):
        ann.predict(pairs[:1], mask_mode=["both"])
    with pytest.raises(ValueError, match="2 mask modes for 1 pairs"):
        ann.predict(pairs[:1], mask_mode=["auto", "auto"])


# ------------------------------------------------------------------------------------ eval, rho, exports

def test_spearman_and_confidence_curve():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)   # ties: average ranks
    assert np.isnan(spearman([1, 2], [1, 2])) and np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    curve = confidence_curve([0.9, 0.5, 0.8, 0.2], [1.0, 0.4, 0.8, 0.0], keep=(1.0, 0.5))
    assert curve[0] == {"keep": 1.0, "min_confidence": 0.2, "pairs": 4, "f1": pytest.approx(0.55)}
    assert curve[1]["min_confidence"] == 0.8 and curve[1]["pairs"] == 2 and curve[1]["f1"] == pytest.approx(0.9)


def test_eval_reports_both_masks_and_rho(tmp_path):
    from sigma.eval.runner import evaluate, format_tables

    root = tmp_path / "eval" / "composites"
    root.mkdir(parents=True)
    lines = []
    probs = {}
    for i in range(4):
        img = textured(seed=10 + i)
        edited, gt = copy_move(img, seed=i)
        Image.fromarray(img).save(root / f"c{i}_o.png")
        Image.fromarray(edited).save(root / f"c{i}_e.png")
        Image.fromarray(gt.astype(np.uint8) * 255).save(root / f"c{i}_m.png")
        probs[f"c{i}"] = semantic_of(gt, shrink=2 + 2 * i)[0]
        lines.append(json.dumps({"id": f"c{i}", "original": f"c{i}_o.png", "edited": f"c{i}_e.png",
                                 "mask": f"c{i}_m.png"}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")

    class Graded(FixedProb):
        def _predict_batch(self, pairs):   # confidence falls as the semantic core shrinks
            return [(self.probs[p.pair_id], {"confidence": 1.0 - 0.1 * int(p.pair_id[1:])}) for p in pairs]

        def derive(self, pair_size, prob, mask, threshold, context):
            return {}

    result = evaluate(Graded(probs, mask_mode="semantic"), tmp_path / "eval", ["none"])
    row = result.mask_tables()["none"]["composites"]
    assert row["composites"] == 4 and row["footprint_pairs"] == 4 and row["footprint_f1"] == pytest.approx(1.0)
    assert row["semantic_f1"] < 0.95 and row["f1"] == pytest.approx(row["semantic_f1"])
    assert row["rho_confidence_f1"] == pytest.approx(1.0)          # the most confident are the best
    text = format_tables(result)
    assert "rho" in text and "+1.00" in text and "keep the most confident" in text
    first = text.split("\n-- ")[0].splitlines()
    header = next(line for line in first if "ρconf" in line)
    row_line = next(line for line in first if line.startswith("composites"))
    assert len(row_line.split()) == len(header.split()) and row_line.split()[-1] == "+1.00", row_line
    data = result.to_dict()
    assert data["masks"]["none"]["overall"]["rho_confidence_f1"] == pytest.approx(1.0)
    assert data["per_pair"]["none"][0]["footprint_f1"] == pytest.approx(1.0)
    assert data["confidence"]["none"]["overall"][0]["pairs"] == 4


def test_batch_rows_and_footprint_export(tmp_path):
    from sigma.batch import BatchConfig, run_batch
    from sigma.cli import main
    from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

    write_pairs_jsonl(tmp_path / "corpus", synthetic_pairs(3, size=48))
    cfg = BatchConfig.model_validate({"input": {"path": str(tmp_path / "corpus")}, "annotator": "pixel-diff",
                                      "options": {"mask_mode": "auto"}, "workers": 0})
    run_batch(cfg, tmp_path / "run", progress=False)
    from sigma.export.select import load_rows

    rows = load_rows(tmp_path / "run")
    assert len(rows) == 3 and all(r["is_composite"] and r["mask_source"] == "footprint" for r in rows)
    assert all(r["semantic_rle"] and r["footprint_rle"] and json.loads(r["composite"])["tier"] for r in rows)
    out = tmp_path / "coco.json"
    assert main(["export", "coco", str(tmp_path / "run"), "--out", str(out), "--mask", "footprint",
                 "--sort", "confidence"]) == 0
    coco = json.loads(out.read_text())
    ann = coco["annotations"][0]
    assert ann["mask"] == "footprint" and ann["segmentation"] == ann["footprint_segmentation"]
    assert ann["semantic_segmentation"]["counts"] and ann["composite"]["is_composite"] is True
    benco = tmp_path / "benco"
    assert main(["export", "imdl-benco", str(tmp_path / "run"), "--out", str(benco), "--mask", "semantic",
                 "--composite", "exclude"]) == 2          # every pair is a composite: nothing to export
    assert not benco.exists()
    import pyarrow.parquet as pq

    hf = tmp_path / "hf"
    assert main(["export", "hf", str(tmp_path / "run"), str(hf), "--mask", "footprint"]) == 0
    rows = pq.read_table(next((hf / "data").glob("*.parquet"))).to_pylist()
    assert len(rows) == 3 and all(r["is_composite"] and r["mask_source"] == "footprint" for r in rows)
    assert all(r["mask_rle"]["counts"] == r["footprint_rle"]["counts"] and r["semantic_rle"] for r in rows)
    assert "synthesised footprint" in (hf / "README.md").read_text()


def _fill_holes_whole_image(mask: np.ndarray, max_area: int) -> np.ndarray:
    """The footprint's hole filling as it was: every background region of the whole image labelled."""
    if max_area <= 0 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    if n <= 1:
        return mask
    h, w = mask.shape
    x, y, ww, hh, area = (stats[:, i] for i in range(5))
    fill = ~((x == 0) | (y == 0) | (x + ww >= w) | (y + hh >= h)) & (area <= max_area)
    fill[0] = False
    return mask | fill[labels]


def test_hole_filling_inside_the_masks_box_fills_what_the_whole_image_labelling_filled(monkeypatch):
    """`_fill_holes` labels only the mask's bounding box grown by a pixel (17 ms a pair at 1.5 Mpx was the whole
    image's labelling, for an edit of a few per cent of it): the same pixels filled, on masks at every edge and corner
    of the image, rings, nested holes, holes of every size around `max_area`, noise, full and one-pixel masks."""
    from sigma.annotators.footprint import _fill_holes

    rng = np.random.default_rng(11)
    masks = [np.ones((9, 7), bool), np.zeros((9, 7), bool)]
    one = np.zeros((9, 7), bool)
    one[4, 3] = True
    masks.append(one)
    for _ in range(300):
        h, w = int(rng.integers(3, 80)), int(rng.integers(3, 80))
        mask = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(1, 5))):             # rings (a hole each), some cut by the image's edge
            cy, cx = int(rng.integers(-5, h + 5)), int(rng.integers(-5, w + 5))
            r_out, r_in = int(rng.integers(2, 25)), int(rng.integers(0, 12))
            yy, xx = np.ogrid[:h, :w]
            d = (yy - cy) ** 2 + (xx - cx) ** 2
            mask |= (d <= r_out ** 2) & (d > r_in ** 2)
        if rng.random() < 0.3:
            mask |= rng.random((h, w)) < rng.random() * 0.6     # noise: many small pockets
        if rng.random() < 0.2:
            mask[:, : int(rng.integers(1, w))] = True           # reaching an edge over its whole length
        masks.append(mask)
    filled = 0
    for mask in masks:
        for max_area in (0, 1, 4, 30, 200, 10 ** 6):
            got, expected = _fill_holes(mask.copy(), max_area), _fill_holes_whole_image(mask.copy(), max_area)
            assert got.dtype == bool and np.array_equal(got, expected)
            filled += int(expected.sum() > mask.sum())
    assert filled > 300        # the cases fill something, not only pass masks through
    labelled = []
    real = cv2.connectedComponentsWithStats
    monkeypatch.setattr(cv2, "connectedComponentsWithStats",
                        lambda img, **kw: labelled.append(img.shape) or real(img, **kw))
    ring = np.zeros((1000, 1500), bool)
    ring[400:450, 600:700] = True
    ring[410:440, 620:680] = False
    assert _fill_holes(ring, 10 ** 6)[400:450, 600:700].all() and labelled == [(52, 102)]


def _identical_blocks_float(original: np.ndarray, edited: np.ndarray, block: int = 8, min_std: float = 2.0):
    """The composite test's 8x8 blocks as they were: float32 `std` over the blocks' strided axes."""
    from sigma.annotators.footprint import residual_map

    h, w = original.shape[:2]
    hb, wb = h // block, w // block
    crop = (slice(0, hb * block), slice(0, wb * block))
    same = (residual_map(original[crop], edited[crop]) == 0).reshape(hb, block, wb, block).all(axis=(1, 3))
    grey = cv2.cvtColor(original[crop], cv2.COLOR_RGB2GRAY).astype(np.float32).reshape(hb, block, wb, block)
    textured = grey.std(axis=(1, 3)) >= min_std
    return same & textured, textured


def test_identical_blocks_in_integers_decide_every_block_as_the_float_std_did():
    """`identical_blocks` decides "textured" as n*sum(x^2) - sum(x)^2 >= (n*2)^2 in integers (twice as fast as float32
    std over strided axes): the same decision on every block, flat, noisy, near the bound (variance 4 exactly and one
    level either side) and strongly textured, and the same bit-identical blocks; odd sizes crop as before."""
    from sigma.annotators.footprint import identical_blocks

    rng = np.random.default_rng(21)
    near = 0
    for _ in range(60):
        h, w = int(rng.integers(8, 120)), int(rng.integers(8, 120))
        base = rng.integers(0, 256, (h, w), dtype=np.int32)
        grey = np.where(rng.random((h, w)) < rng.random(), base, int(rng.integers(0, 256)))   # flat and textured cells
        grey = np.clip(grey + rng.integers(-3, 4, (h, w)) * (rng.random((h, w)) < 0.2), 0, 255)
        original = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
        original[..., 1] = np.clip(original[..., 1].astype(int) + rng.integers(-2, 3, (h, w)), 0, 255)
        edited = original.copy()
        edited[rng.random((h, w)) < 0.01] ^= 1
        got, expected = identical_blocks(original, edited), _identical_blocks_float(original, edited)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    for k in range(0, 64):            # 8x8 blocks of 0/4 steps: variance around 4 = the bound, exactly and near it
        cell = np.zeros(64, np.uint8)
        cell[:k] = 4
        for extra in (0, 1, 2):
            c = cell.copy()
            c[-1] = min(255, int(c[-1]) + extra)
            img = np.repeat(c.reshape(8, 8)[..., None], 3, axis=2)
            got, expected = identical_blocks(img, img), _identical_blocks_float(img, img)
            assert np.array_equal(got[1], expected[1]), (k, extra)
            near += int(abs(float(c.astype(np.float32).std()) - 2.0) < 0.2)
    assert near > 5


def _real_masks(limit: int = 60) -> list[np.ndarray]:
    """Ground-truth and inpainting masks of ../shared/data/eval (photographs' edits, 0.1-3 Mpx), as bool maps."""
    masks = []
    for path in sorted((SHARED / "data" / "eval").rglob("*mask*.png"))[:limit]:
        m = np.asarray(Image.open(path).convert("L")) > 127
        if m.any() and not m.all():
            masks.append(m)
    return masks


def _blob_masks(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Random discs, rings, noise and strips of random images, some at the image's edges and corners."""
    masks = []
    for _ in range(count):
        h, w = int(rng.integers(2, 160)), int(rng.integers(2, 160))
        mask = np.zeros((h, w), bool)
        yy, xx = np.ogrid[:h, :w]
        for _ in range(int(rng.integers(1, 6))):
            cy, cx = int(rng.integers(-10, h + 10)), int(rng.integers(-10, w + 10))
            d = (yy - cy) ** 2 + (xx - cx) ** 2
            mask |= (d <= int(rng.integers(0, 30)) ** 2) & (d > int(rng.integers(0, 8)) ** 2)
        if rng.random() < 0.3:
            mask |= rng.random((h, w)) < rng.random() * 0.1
        if rng.random() < 0.1:
            mask[:, int(rng.integers(0, w))] = True
        masks.append(mask)
    return masks


def test_background_from_the_regions_box_is_the_whole_image_distance_transform(monkeypatch):
    """The composite test's background (pixels more than a radius from the model's region) is the chamfer distance
    transform of the region's box grown by radius / 0.95 + 2, not of the whole image (8 ms a pair at 1.5 Mpx): the
    same pixels for every radius on real edit masks and on random ones at every edge; the transform sees the box."""
    from sigma.annotators.footprint import _far_from

    rng = np.random.default_rng(5)
    real = _real_masks()
    cases = [(m, r) for m in real for r in (1, 7, round(0.02 * float(np.hypot(*m.shape))), 90)]
    cases += [(m, int(rng.integers(1, 60))) for m in _blob_masks(rng, 400) if m.any()]
    for region, radius in cases:
        expected = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, 3) > radius
        assert np.array_equal(_far_from(region, radius), expected), (region.shape, radius)
    assert len(cases) > 400 and (not SHARED.is_dir() or len(real) > 20)
    seen = []
    dt = cv2.distanceTransform
    monkeypatch.setattr(cv2, "distanceTransform", lambda img, *a: seen.append(img.shape) or dt(img, *a))
    region = np.zeros((1000, 1500), bool)
    region[400:450, 600:700] = True
    _far_from(region, 36)
    assert seen == [(50 + 2 * 40, 100 + 2 * 40)]


def _footprint_whole_image(test, semantic: np.ndarray, cfg: FootprintConfig) -> np.ndarray:
    """synthesise_footprint as it was: the changed pixels labelled over the whole image."""
    from sigma.annotators.footprint import _blockify, _disk, _fill_holes, semantic_core

    h, w = test.residual.shape
    tol = test.tolerance
    support = test.residual > tol
    if test.block > 1:
        support = _blockify(support, test.block)
    excess = (test.original_residual.astype(np.float32) - cfg.jpeg_noise_factor * test.floor
              if test.floor is not None else test.residual.astype(np.float32))
    weak = support & (excess > tol)
    seed = cv2.dilate(semantic.astype(np.uint8), _disk(2)) > 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(weak.astype(np.uint8), connectivity=8)
    if n > 1:
        area = stats[:, cv2.CC_STAT_AREA]
        touches_seed = np.bincount(labels[seed], minlength=n) > 0
        if test.exact:
            keep = touches_seed | (area >= 4)
        else:
            mean = (np.bincount(labels.ravel(), weights=excess.ravel().astype(np.float64), minlength=n)
                    / np.maximum(area, 1))
            keep = touches_seed | ((mean > tol + max(2, tol)) & (area >= max(16, round(cfg.min_component * h * w))))
        keep[0] = False
        footprint = keep[labels]
    else:
        footprint = np.zeros((h, w), bool)
    if footprint.any():
        radius = round(cfg.close_radius * float(np.hypot(h, w)))
        if radius > 0 and not test.exact:
            footprint = cv2.morphologyEx(footprint.astype(np.uint8), cv2.MORPH_CLOSE, _disk(radius)) > 0
        footprint = _fill_holes(footprint, round(cfg.max_hole * h * w))
        if test.block > 1:
            footprint &= support
    return footprint | semantic_core(test, semantic, footprint, support, cfg)


def test_footprint_labelled_in_the_changed_pixels_box_is_the_whole_image_footprint(monkeypatch):
    """The footprint labels the changed pixels inside their box (9.7 ms a pair at 1.5 Mpx was the whole image's
    labelling): the same footprint on exact, noisy and JPEG-reference composites built from real edit masks and
    random ones (regions kept by seed contact, by area, by mean residual, with float JPEG excess); the labelling sees
    the box."""
    from sigma.annotators.footprint import CompositeTest

    rng = np.random.default_rng(9)
    cfg = FootprintConfig()
    masks = _real_masks(30) + [m for m in _blob_masks(rng, 250) if m.shape[0] > 8 and m.shape[1] > 8]
    kept = 0
    for i, edit in enumerate(masks):
        h, w = edit.shape
        residual = np.where(edit, rng.integers(0, 40, (h, w)), 0)
        residual = residual + (rng.random((h, w)) < rng.random() * 0.01) * rng.integers(0, 30, (h, w))
        residual = np.clip(residual + rng.integers(0, int(rng.integers(1, 5)), (h, w)), 0, 255).astype(np.uint8)
        tol = int(rng.integers(0, 6))
        jpeg = i % 3 == 2
        extras = {"original_residual": np.clip(residual.astype(int) + rng.integers(0, 3, (h, w)), 0, 255)
                  .astype(np.uint8), "floor": (rng.random((h, w)) * 3).astype(np.float32), "block": 8} if jpeg else {}
        test = CompositeTest(is_composite=bool(i % 5), residual=residual, tolerance=tol,
                             evidence={"tier": "exact" if i % 2 and not jpeg else "near-exact"}, **extras)
        semantic = np.roll(edit, int(rng.integers(-6, 7)), axis=int(rng.integers(0, 2))) & (rng.random((h, w)) < 0.98)
        got, expected = synthesise_footprint(test, semantic, cfg), _footprint_whole_image(test, semantic, cfg)
        assert got.dtype == bool and np.array_equal(got, expected), i
        kept += int((expected & ~semantic).any())
    assert kept > 100
    labelled = []
    real = cv2.connectedComponentsWithStats
    monkeypatch.setattr(cv2, "connectedComponentsWithStats",
                        lambda img, **kw: labelled.append(img.shape) or real(img, **kw))
    residual = np.zeros((1000, 1500), np.uint8)
    residual[400:450, 600:700] = 50
    test = CompositeTest(is_composite=True, residual=residual, tolerance=0, evidence={"tier": "exact"})
    assert synthesise_footprint(test, residual > 0, cfg).sum() == 5000 and labelled[0] == (50, 100)


def test_composite_test_makes_one_residual_map_and_the_same_shares(scene, monkeypatch):
    """The composite test hands its residual map to the 8x8 block test (it made a second one, 2.3 ms a pair at
    1.5 Mpx), decides 'bit-identical block' by the block's uint8 maximum, reads the background's whole blocks along
    contiguous rows and takes shares of pixels by counting (`mean` of a bool map made a float64 pass): the same
    blocks, shares bit for bit, the same evidence."""
    from sigma.annotators import footprint
    from sigma.annotators.footprint import _block_share, _share, identical_blocks, residual_map

    rng = np.random.default_rng(17)
    for _ in range(300):
        h, w = int(rng.integers(1, 200)), int(rng.integers(1, 200))
        mask = rng.random((h, w)) < rng.random()
        assert _share(mask) == float(mask.mean())
        hb, wb = h // 8, w // 8
        if hb and wb:
            textured = rng.random((hb, wb)) < 0.7
            same = rng.random((hb, wb)) < 0.5
            background = ~mask if rng.random() < 0.5 else rng.random((h, w)) < 0.995
            inside = background[:hb * 8, :wb * 8].reshape(hb, 8, wb, 8).all(axis=(1, 3)) & textured
            assert _block_share(background, same, textured) == (float(same[inside].mean()) if inside.any() else 0.0)
        original = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        edited = original.copy()
        edited[rng.random((h, w)) < rng.random() * 0.02] ^= np.uint8(rng.integers(1, 256))
        got = identical_blocks(original, edited, residual=residual_map(original, edited))
        assert all(np.array_equal(a, b) for a, b in zip(got, identical_blocks(original, edited), strict=True))
        if hb and wb:
            assert all(np.array_equal(a, b) for a, b in zip(got, _identical_blocks_float(original, edited),
                                                             strict=True))
    big = rng.random((1000, 1500)) < 0.37
    assert _share(big) == float(big.mean())
    img, edited, gt = scene
    prob, _ = semantic_of(gt, spill=2, blob=True)
    made = []
    real = footprint.residual_map
    monkeypatch.setattr(footprint, "residual_map", lambda a, b: made.append(a.shape) or real(a, b))
    test = composite_test(img, edited, prob)
    assert test.exact and made == [img.shape]
    assert test.evidence["identical_fraction"] == round(float(np.mean(residual_map(img, edited) == 0)), 4)

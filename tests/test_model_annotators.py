"""Every model annotator in the registry on tiny configs: prediction shapes and extras, the
where-I-looked errors instead of random weights, embedded-weight discovery, and the per-pair extras."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sigma.annotators import model_annotator
from sigma.annotators.mask_extras import confidence, split_components
from sigma.annotators.model_annotator import working_size
from sigma.errors import SigmaError, WeightsNotFoundError
from sigma.models import build_model, save_model
from sigma.models.presets import TINY_DINOV2
from sigma.registry import create_annotator, list_annotators
from sigma.types import Pair

pytest.importorskip("transformers")


# Tiny tensors: one intra-op thread (the shared fixture in conftest.py says why).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Tiny offline options for every registered annotator; the tests below are parametrized over the registry
# itself, so a newly registered annotator without an entry here fails instead of going untested.
TINY_OPTIONS = {
    "pixel-diff": {},
    "sigma-lite": {"model": "tiny-lite", "random_init": True},
    "sigma-b": {"model": "tiny-dinov2", "random_init": True},
    "sigma-s": {"model": "tiny-dinov2", "random_init": True},
    "feature-diff": {"hf_config": TINY_DINOV2, "random_init": True, "image_size": 56},
    "grounding-only": {"grounding": "none"},
}


def _pairs() -> list[Pair]:
    rng = np.random.default_rng(0)
    out = []
    for pid, (h, w), text in [("a", (70, 90), "remove the boat"), ("b", (48, 40), None),
                              ("c", (70, 90), "make it snowy")]:
        o = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        e = o.copy()
        e[h // 4:h // 2, w // 4:w // 2] = 255 - e[h // 4:h // 2, w // 4:w // 2]
        out.append(Pair(o, e, text, pid))
    return out


@pytest.fixture
def no_embedded(tmp_path, monkeypatch):
    """An install without shipped weights, whatever this checkout holds."""
    monkeypatch.setattr(model_annotator, "WEIGHTS_DIR", tmp_path / "weights")
    return tmp_path / "weights"


REGISTERED = sorted(e.name for e in list_annotators())


def test_every_registered_annotator_has_tiny_options():
    assert set(REGISTERED) <= set(TINY_OPTIONS), f"add tiny options for {set(REGISTERED) - set(TINY_OPTIONS)}"
    assert set(TINY_OPTIONS) <= set(REGISTERED), f"stale entries: {set(TINY_OPTIONS) - set(REGISTERED)}"


@pytest.mark.parametrize("name", REGISTERED)
def test_predict_shapes_and_extras(name, no_embedded):
    if name not in TINY_OPTIONS:
        pytest.fail(f"{name} is registered but has no tiny options in TINY_OPTIONS")
    ann = create_annotator(name, **TINY_OPTIONS[name])
    pairs = _pairs()
    results = ann.predict(pairs)
    assert [r.pair_id for r in results] == ["a", "b", "c"]
    for pair, res in zip(pairs, results):
        assert res.prob.shape == pair.size and res.mask.shape == pair.size
        assert np.isfinite(res.prob).all() and res.prob.min() >= 0 and res.prob.max() <= 1
        record = json.loads(json.dumps(res.to_dict()))      # result.json must serialise
        assert record["annotator"] == name and record["config_hash"] == ann.config_hash
        # every annotator honours a per-pair threshold through the one binarize step
        again = ann.rethreshold(res, 0.0)
        semantic = again.mask if again.mask_mode is None else again.semantic_mask
        assert again.threshold == 0.0 and int(semantic.sum()) == int((res.prob > 0.0).sum())
        if again.mask_source == "footprint":   # a composite under mask_mode=auto: the footprint is the mask
            assert (again.mask == again.footprint_mask).all() and record["composite"]["is_composite"]
    if name.startswith("sigma-"):
        a, b, c = (r.extra for r in results)
        assert a["parse"]["edit_type"] == "remove" and a["parse"]["source"] == "boat"
        assert b["parse"]["edit_type"] is None and b["grounding"]["flag"] == "no_instruction"
        assert c["parse"]["edit_type"] == "global" and c["grounding"]["flag"] == "global_edit"
        assert a["grounding"]["flag"] == "grounding_disabled"          # grounding=none by default
        assert c["components"]["split"] == "by_prior" and b["components"]["split"] == "no_prior"
        for extra in (a, b, c):
            assert 0.0 <= extra["confidence"] <= 1.0
            assert set(extra["components"]) >= {"intended", "side_effect", "split"}
            assert "model" in results[0].timings_ms
        assert a["working_size"] != b["working_size"] or name != "sigma-lite"


def test_grounding_only_without_grounding_is_empty_not_full():
    res = create_annotator("grounding-only", grounding="none").predict(_pairs())
    assert res[0].area == 0 and res[1].area == 0
    assert res[2].mask.all(), "a global edit's prior is the whole image"


@pytest.mark.parametrize("name", ["sigma-lite", "sigma-b", "sigma-s"])
def test_missing_trained_weights_say_where_they_looked(name, no_embedded):
    with pytest.raises(WeightsNotFoundError) as err:
        create_annotator(name)
    msg = err.value.message
    assert str(no_embedded / f"{name}.safetensors") in msg and "options.weights" in msg
    entry = {e.name: e for e in list_annotators()}[name]
    assert entry.weights_status().startswith("missing")


def test_feature_diff_needs_backbone_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsNotFoundError, match="facebook/dinov2-base"):
        create_annotator("feature-diff")


def test_feature_diff_from_a_local_backbone_folder(tmp_path):
    import transformers

    transformers.Dinov2Model(transformers.Dinov2Config(**TINY_DINOV2)).save_pretrained(tmp_path / "dino")
    ann = create_annotator("feature-diff", backbone_weights=str(tmp_path / "dino"), image_size=56)
    same = _pairs()[0]
    same = Pair(same.original, same.original.copy(), None, "same")
    res_same, res_diff = ann.predict([same, _pairs()[0]])
    assert res_same.prob.max() < 1e-4, "identical images: cosine distance 0 everywhere"
    assert res_diff.prob.max() > res_same.prob.max()


def test_embedded_and_explicit_weights_are_loaded_exactly(no_embedded, tmp_path, monkeypatch):
    torch.manual_seed(1)
    model = build_model("tiny-lite")
    save_model(model, tmp_path / "saved")
    # explicit path
    ann = create_annotator("sigma-lite", model="tiny-lite", weights=str(tmp_path / "saved"), fuse_batchnorm=False,
                           runtime="torch")   # loading is under test here; runtimes are in test_runtime.py
    assert ann.weights_source.startswith("file")
    assert all(torch.equal(v, ann.model.state_dict()[k]) for k, v in model.state_dict().items())
    # the embedded layout: sigma/weights/<preset>.safetensors + <preset>.json, named by the preset's pretrained
    # config; this stand-in file is not the released one, so its digest check is off (sha256=None)
    from sigma.models import presets
    monkeypatch.setitem(presets.PRETRAINED, "sigma-lite", presets.PretrainedCfg(file="sigma-lite.safetensors"))
    no_embedded.mkdir()
    (tmp_path / "saved" / "model.safetensors").rename(no_embedded / "sigma-lite.safetensors")
    (tmp_path / "saved" / "config.json").rename(no_embedded / "sigma-lite.json")
    entry = {e.name: e for e in list_annotators()}["sigma-lite"]
    assert entry.weights_status() == "embedded (sigma/weights/sigma-lite.safetensors)"
    ann = create_annotator("sigma-lite", fuse_batchnorm=False, runtime="torch")
    assert ann.weights_source == "embedded sigma-lite.safetensors"
    assert all(torch.equal(v, ann.model.state_dict()[k]) for k, v in model.state_dict().items())
    prob = ann.predict(_pairs()[:1])[0].prob
    assert prob.shape == (70, 90)
    fused = create_annotator("sigma-lite", runtime="torch")   # BatchNorm folded by default: same answer
    assert np.allclose(fused.predict(_pairs()[:1])[0].prob, prob, atol=1e-4)


def test_working_size():
    assert working_size(1000, 500, 512, 32, True, False) == (512, 256)
    assert working_size(500, 1000, 512, 32, True, False) == (256, 512)
    assert working_size(100, 60, 512, 32, True, False) == (96, 64)       # no upscaling by default
    assert working_size(100, 60, 512, 32, True, True) == (512, 320)
    assert working_size(100, 2000, 512, 32, True, False) == (32, 512)    # never below one multiple
    assert working_size(300, 700, 518, 14, False, False) == (518, 518)



def test_embedded_sigma_lite_runs_each_pair_at_its_own_resolution_up_to_its_cap():
    """The shipped preset's image_size is a cap, not a resize target: a pair below it keeps its own pixels,
    a larger one is brought down to it keeping its shape, and options.image_size moves the cap."""
    rng = np.random.default_rng(3)

    def pair(h: int, w: int) -> Pair:
        o = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        e = o.copy()
        e[h // 4:h // 2, w // 4:w // 2] = 255 - e[h // 4:h // 2, w // 4:w // 2]
        return Pair(o, e, None, f"{h}x{w}")

    ann = create_annotator("sigma-lite", runtime="torch", parser=None)
    sizes = {(512, 512): [512, 512], (768, 1024): [384, 512], (700, 1400): [256, 512], (200, 300): [192, 288]}
    pairs = [pair(*hw) for hw in sizes]
    for p, res in zip(pairs, ann.predict(pairs), strict=True):
        assert res.extra["working_size"] == sizes[p.size], p.pair_id
        assert res.prob.shape == p.size and res.mask.shape == p.size
    native = create_annotator("sigma-lite", runtime="torch", parser=None, image_size=1024)
    assert [r.extra["working_size"] for r in native.predict(pairs[1:3])] == [[768, 1024], [512, 1024]]


def test_confidence_and_components():
    prob = np.zeros((40, 40), np.float32)
    prob[2:10, 2:10] = 1.0       # inside the prior: intended
    prob[25:35, 25:38] = 1.0     # outside: a side effect
    mask = prob > 0.5
    assert confidence(prob, mask, 0.5) == 1.0
    assert confidence(np.full((4, 4), 0.5, np.float32), np.zeros((4, 4), bool), 0.5) == 0.0
    prior = np.zeros((40, 40), np.float32)
    prior[0:12, 0:12] = 1.0
    comps = split_components(mask, prior, True)
    assert comps["split"] == "by_prior" and comps["count"] == 2
    assert [c["bbox"] for c in comps["intended"]] == [[2, 2, 8, 8]]
    assert [c["area"] for c in comps["side_effect"]] == [130] and comps["side_effect_area"] == 130
    blind = split_components(mask, prior, False)
    assert blind["split"] == "no_prior" and len(blind["unassigned"]) == 2 and not blind["intended"]
    capped = split_components(mask, prior, True, max_components=1)
    assert capped["count"] == 2 and len(capped["intended"]) + len(capped["side_effect"]) == 1


@pytest.fixture(scope="module")
def tiny_grounding(tmp_path_factory):
    """save_pretrained folders of a tiny random Grounding DINO and SAM 2 (the real loading path)."""
    from sigma.grounding.tiny import tiny_grounding_dino, tiny_sam2

    root = tmp_path_factory.mktemp("grounding")
    tiny_grounding_dino(root / "gdino")
    tiny_sam2(root / "sam2")
    return {"detector": {"weights": str(root / "gdino"), "box_threshold": 0.0, "max_detections": 3},
            "segmenter": {"weights": str(root / "sam2")}, "device": "cpu"}


def test_grounded_pipeline_feeds_regions_and_prior(tiny_grounding, no_embedded):
    """parser → tiny Grounding DINO → tiny SAM 2 → prior + region tokens → tiny SigmaNet → extras."""
    ann = create_annotator("sigma-lite", model="tiny-lite", random_init=True, grounding="gdino-sam2",
                           grounding_options=tiny_grounding)
    a, b, c = ann.predict(_pairs())
    g = a.extra["grounding"]
    assert a.extra["parse"]["source"] == "boat"
    assert g["flag"] is None and g["informative"] and len(g["regions"]) >= 1     # threshold 0: boxes found
    assert all(r["image"] == "original" for r in g["regions"])                    # remove: source in original
    assert a.extra["components"]["split"] == "by_prior"
    assert b.extra["grounding"]["flag"] == "no_instruction" and c.extra["grounding"]["flag"] == "global_edit"
    assert "ground" in a.timings_ms and a.prob.shape == (70, 90)
    only = create_annotator("grounding-only", grounding="gdino-sam2", grounding_options=tiny_grounding)
    res = only.predict(_pairs()[:1])[0]
    assert res.prob.shape == (70, 90) and res.prob.min() >= 0.0 and res.prob.max() <= 1.0


def test_grounding_only_default_needs_grounding_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(WeightsNotFoundError):
        create_annotator("grounding-only")
    entry = {e.name: e for e in list_annotators()}["grounding-only"]
    assert "missing" in entry.weights_status()


def test_unavailable_device_is_a_config_error():
    from sigma.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("CUDA exists here")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        create_annotator("sigma-lite", model="tiny-lite", random_init=True, device="cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        create_annotator("sigma-lite", model="tiny-lite", random_init=True, device="gpu0")


def _edited_pair(pair_id: str = "p") -> Pair:
    original = np.zeros((24, 32, 3), np.uint8)
    edited = original.copy()
    edited[4:10, 4:12] = 200
    return Pair(original, edited, "remove the box", pair_id=pair_id)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.5, -0.1, "0.3", True, [0.2, float("nan")]])
def test_predict_refuses_a_threshold_the_config_would_refuse(bad):
    """predict(threshold=...) and rethreshold took any float: NaN (prob > NaN is False) gave an empty mask with
    threshold NaN in the record, -0.1 a full one, each said as a result; a numpy float32 was a TypeError."""
    annotator = create_annotator("pixel-diff")
    pairs = [_edited_pair("a"), _edited_pair("b")]
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
        annotator.predict(pairs, threshold=bad)
    if not isinstance(bad, list):
        with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
            annotator.rethreshold(annotator.predict(pairs)[0], bad)


def test_predict_takes_numpy_scalar_thresholds():
    annotator = create_annotator("pixel-diff")
    plain = annotator.predict([_edited_pair()], threshold=0.25)[0]
    for t in (np.float32(0.25), np.float64(0.25), np.array(0.25), [np.float32(0.25)]):
        ann = annotator.predict([_edited_pair()], threshold=t)[0]
        assert ann.area == plain.area == 48 and abs(ann.threshold - 0.25) < 1e-6


def test_a_non_finite_probability_map_is_an_error_not_an_empty_mask():
    """A plugin model that returned NaN for a pair (a diverged network, a 0/0) had it clipped (NaN stays NaN) and
    thresholded (NaN > t is False): an empty mask, status ok, scored as a miss in a batch run."""
    from sigma.annotators.pixel_diff import PixelDiff

    class NanMap(PixelDiff):
        name = "nan-map"

        def _predict_batch(self, pairs):
            maps = [np.full(p.size, 0.9, np.float32) for p in pairs]
            for pair, prob in zip(pairs, maps, strict=True):
                prob[0, 0] = {"bad": np.nan, "inf": np.inf}.get(pair.pair_id, 0.9)
            return [(prob, {}) for prob in maps]

    annotator = NanMap()
    assert annotator.predict([_edited_pair("good")])[0].mask.all()
    with pytest.raises(SigmaError, match="non-finite"):
        annotator.predict([_edited_pair("good"), _edited_pair("bad")])
    with pytest.raises(SigmaError, match="1 non-finite values"):
        annotator.predict([_edited_pair("inf")])


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 5, 3), (5, 0, 3)])
def test_an_empty_image_is_refused_when_the_pair_is_made(shape):
    """Pair took a (0, 0, 3) image; predict then failed inside the annotator (pixel-diff: AttributeError
    'NoneType' object has no attribute 'mean', sigma-lite: ZeroDivisionError) instead of a clear error."""
    with pytest.raises(ValueError, match="is empty"):
        Pair(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8))
    ann = create_annotator("pixel-diff").predict([Pair(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1, 3), np.uint8))])
    assert ann[0].mask.shape == (1, 1)


def test_a_constant_prior_is_no_full_resolution_map_and_resizes_to_the_same_floats():
    """Most pairs carry no location (no instruction, grounding off, a global edit): their prior was a float map at the
    pair's full size, allocated, clipped into a second one and area-resized, per pair, for a constant. Now it is a
    stride-0 view of one number, and `resized_prior` gives bit for bit the floats the full map gave (an area resize of
    a constant is not exactly that constant, hence the sizes below: so the network sees the same input)."""
    from sigma.annotators.guidance import Guide, resized_prior
    from sigma.annotators.torch_base import resize_image
    from sigma.grounding.prior import constant_prior

    rng = np.random.default_rng(3)
    o = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    guides = Guide()([Pair(o, o.copy(), instruction=t) for t in ("remove the dog", "make it snowy", None)])
    for g, value in zip(guides, (0.5, 1.0, 0.5), strict=True):
        assert g.prior.shape == (90, 70) and g.prior.strides == (0, 0) and np.all(g.prior == value)
    for size in [(1578, 1723), (2095, 1991), (1125, 1500), (60, 40)]:
        for hw in [(83, 531), (830, 622), (384, 512), (96, 64)]:
            for value in (0.5, 1.0):
                expected = resize_image(np.full(size, value, np.float32), hw)
                got = resized_prior(constant_prior(size, value), hw)
                assert got.dtype == np.float32 and np.array_equal(got, expected), (size, hw, value)
    informative = rng.random((50, 70)).astype(np.float32)
    np.testing.assert_array_equal(resized_prior(informative, (25, 35)), resize_image(informative, (25, 35)))


def _split_components_whole_image(mask: np.ndarray, prior: np.ndarray | None, informative: bool,
                                  max_components: int = 64) -> dict:
    """split_components as it was: the whole image labelled."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))
    inside = prior >= 0.5 if (informative and prior is not None) else None
    out = {"split": "by_prior" if inside is not None else "no_prior", "intended": [], "side_effect": [],
           "unassigned": [], "count": len(order), "intended_area": 0, "side_effect_area": 0}
    for rank, i in enumerate(order):
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        comp = {"bbox": [x, y, w, h], "area": area}
        if inside is None:
            key = "unassigned"
        else:
            overlap = float(inside[y:y + h, x:x + w][labels[y:y + h, x:x + w] == i].mean())
            comp["prior_overlap"] = round(overlap, 4)
            key = "intended" if overlap >= 0.1 else "side_effect"
            out[f"{key}_area"] += area
        if rank < max_components:
            out[key].append(comp)
    return out


def test_components_labelled_in_the_masks_box_are_the_whole_image_components(monkeypatch):
    """split_components labels the mask's box from even coordinates (6.7 ms a pair at 1.5 Mpx was the whole image's
    labelling): the same list, in the same order where areas tie (many equal dots at odd and even offsets), the same
    boxes and prior overlaps, on real edit masks and random ones, with and without a prior, and with a cap."""
    import os
    from pathlib import Path

    import cv2
    from PIL import Image
    shared = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
    rng = np.random.default_rng(3)
    masks = [np.asarray(Image.open(p).convert("L")) > 127
             for p in sorted((shared / "data" / "eval").rglob("*mask*.png"))[:60]]
    assert not shared.is_dir() or len(masks) > 20
    masks += [np.zeros((7, 9), bool), np.ones((7, 9), bool)]
    for _ in range(300):
        h, w = int(rng.integers(1, 120)), int(rng.integers(1, 120))
        mask = rng.random((h, w)) < rng.random() * 0.3                      # dots: many components of equal area
        if rng.random() < 0.5:
            mask = np.zeros((h, w), bool)
            step = int(rng.integers(2, 6))
            mask[int(rng.integers(0, 3))::step, int(rng.integers(0, 3))::step] = True   # a grid of equal dots
            mask &= rng.random((h, w)) < 0.9
        masks.append(mask)
    ties = 0
    for mask in masks:
        prior = rng.random(mask.shape).astype(np.float32)
        for informative, cap in ((False, 64), (True, 5), (True, 64)):
            got = split_components(mask, prior, informative, max_components=cap)
            assert got == _split_components_whole_image(mask, prior, informative, cap)
        areas = [c["area"] for c in got["intended"] + got["side_effect"]]
        ties += len(areas) - len(set(areas))
    assert ties > 3000
    labelled = []
    real = cv2.connectedComponentsWithStats
    monkeypatch.setattr(cv2, "connectedComponentsWithStats",
                        lambda img, **kw: labelled.append(img.shape) or real(img, **kw))
    mask = np.zeros((1000, 1500), bool)
    mask[401:450, 601:700] = True
    assert split_components(mask, None, False)["unassigned"] == [{"bbox": [601, 401, 99, 49], "area": 99 * 49}]
    assert labelled == [(50, 100)]

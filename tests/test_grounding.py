"""Grounding on tiny random Grounding DINO / SAM 2 saved to disk and loaded through the real path."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file

from sigma.errors import ConfigError, UnknownNameError, WeightsNotFoundError
from sigma.grounding import (
    FLAG_GLOBAL,
    FLAG_NO_GROUNDING,
    FLAG_NO_INSTRUCTION,
    FLAG_NOTHING_FOUND,
    Region,
    build_grounder,
    compose_prior,
)
from sigma.grounding.config import DetectorConfig, SegmenterConfig
from sigma.grounding.detector import GroundingDinoDetector, concept_prompt
from sigma.grounding.segmenter import BoxSegmenter, NativeSam2Segmenter, Sam2Segmenter
from sigma.grounding.tiny import tiny_grounding_dino, tiny_sam2
from sigma.models.weights import WeightsMismatchError
from sigma.parse import parse_instruction


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding")
    gd, sam = root / "gdino", root / "sam2"
    tiny_grounding_dino(gd)
    tiny_sam2(sam)
    return gd, sam


@pytest.fixture(scope="module")
def grounder(tiny_dirs):
    gd, sam = tiny_dirs
    # thresholds at 0: a random detector must still produce boxes so the whole path runs
    return build_grounder("gdino-sam2", detector={"weights": str(gd), "box_threshold": 0.0, "text_threshold": 0.0,
                                                  "max_detections": 3},
                          segmenter={"weights": str(sam)}, device="cpu")


def _pair(h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_end_to_end_parser_boxes_masks_prior(grounder):
    o1, e1 = _pair(64, 96, 0)
    o2, e2 = _pair(80, 72, 1)
    texts = ["replace the cat with a dog", "remove the car", "add a hat on the man", "make it snowy", None]
    parses = [parse_instruction(t) for t in texts]
    originals = [o1, o2, o1, o2, o1]
    edited = [e1, e2, e1, e2, e1]
    results = grounder.ground_batch(originals, edited, parses)
    assert len(results) == 5
    for res, img in zip(results, originals):
        assert res.prior.shape == img.shape[:2] and res.prior.dtype == np.float32
        assert np.isfinite(res.prior).all() and res.prior.min() >= 0.0 and res.prior.max() <= 1.0
    replace, remove, add, glob, empty = results
    # METHOD §3: source in the original, target in the edited image
    assert {r.image for r in replace.regions} == {"original", "edited"}
    assert {r.concept for r in replace.regions if r.image == "original"} == {"cat"}
    assert {r.concept for r in replace.regions if r.image == "edited"} == {"dog"}
    assert {r.image for r in remove.regions} == {"original"}
    assert {r.image for r in add.regions} == {"edited"} and {r.concept for r in add.regions} == {"hat"}
    for res in (replace, remove, add):
        assert res.flag is None and res.informative and 1 <= len(res.regions) <= 6
        for region in res.regions:
            assert region.mask.shape == res.prior.shape
            x0, y0, x1, y1 = region.box
            assert 0 <= x0 < x1 <= res.prior.shape[1] and 0 <= y0 < y1 <= res.prior.shape[0]
        np.testing.assert_allclose(res.prior, compose_prior(res.regions, res.prior.shape), atol=1e-6)
        assert res.timings_ms["detect"] > 0 and res.timings_ms["segment"] > 0
    assert glob.flag == FLAG_GLOBAL and np.all(glob.prior == 1.0) and not glob.regions
    assert empty.flag == FLAG_NO_INSTRUCTION and np.all(empty.prior == 0.5)
    extra = replace.to_extra()
    assert extra["parse"]["edit_type"] == "replace" and extra["grounding"]["informative"] is True
    assert len(extra["grounding"]["regions"]) == len(replace.regions)


def test_nothing_found_gives_uninformative_prior_and_flag(grounder):
    strict = GroundingDinoDetector(DetectorConfig(box_threshold=1.0), model=grounder.detector.model,
                                   processor=grounder.detector.processor, device="cpu")
    g = build_grounder("gdino-sam2", detector_obj=strict, segmenter_obj=grounder.segmenter)
    o, e = _pair()
    res = g.ground(o, e, parse_instruction("remove the dog"))
    assert res.flag == FLAG_NOTHING_FOUND and not res.regions and np.all(res.prior == 0.5)


def test_none_backend_flags_every_local_edit():
    g = build_grounder("none")
    o, e = _pair(40, 30)
    local, glob, empty = g.ground_batch([o] * 3, [e] * 3,
                                        [parse_instruction(t) for t in ("remove the dog", "make it snowy", "")])
    assert local.flag == FLAG_NO_GROUNDING and np.all(local.prior == 0.5) and local.prior.shape == (40, 30)
    assert glob.flag == FLAG_GLOBAL and np.all(glob.prior == 1.0)
    assert empty.flag == FLAG_NO_INSTRUCTION


def test_save_reload_through_the_real_loading_path_is_exact(tiny_dirs):
    gd, sam = tiny_dirs
    reference_gd, _ = tiny_grounding_dino(None)          # same seed -> same random weights as on disk
    reference_sam = tiny_sam2(None)
    det = GroundingDinoDetector(DetectorConfig(weights=str(gd)), device="cpu")
    seg = Sam2Segmenter(SegmenterConfig(weights=str(sam)), device="cpu")
    for loaded, ref in ((det.model, reference_gd), (seg.model, reference_sam)):
        a, b = loaded.state_dict(), ref.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and bool((a[key] == b[key]).all()), key


def test_missing_weights_say_where_they_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsNotFoundError) as err:
        GroundingDinoDetector(DetectorConfig(weights="IDEA-Research/grounding-dino-tiny"), device="cpu")
    msg = err.value.message
    assert "Hugging Face cache" in msg and str(tmp_path / "hf") in msg and "downloads are off" in msg
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        Sam2Segmenter(SegmenterConfig(weights=str(tmp_path / "nowhere")), device="cpu")


def test_strict_loading_refuses_a_checkpoint_with_a_missing_key(tiny_dirs, tmp_path):
    import shutil

    _, sam = tiny_dirs
    broken = tmp_path / "broken"
    shutil.copytree(sam, broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights.pop(sorted(weights)[0])
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(WeightsMismatchError, match="missing_keys"):
        Sam2Segmenter(SegmenterConfig(weights=str(broken)), device="cpu")


def test_box_segmenter_and_prior_composition():
    img = np.zeros((20, 30, 3), np.uint8)
    (masks,) = BoxSegmenter().segment([img], [np.array([[2, 3, 12, 8], [10, 5, 30, 20]], np.float32)])
    assert masks.shape == (2, 20, 30) and masks[0].sum() == 10 * 5 and masks[0][3, 2] == 1 and masks[0][8, 12] == 0
    regions = [Region((2, 3, 12, 8), 0.5, "a", "original", masks[0]),
               Region((10, 5, 30, 20), 0.8, "b", "edited", masks[1])]
    prior = compose_prior(regions, (20, 30))
    assert prior[4, 3] == pytest.approx(0.5) and prior[15, 20] == pytest.approx(0.8)
    assert prior[6, 11] == pytest.approx(1 - 0.5 * 0.2)          # overlap: noisy-OR
    assert prior[0, 0] == 0.0
    with pytest.raises(ValueError, match="does not match"):
        compose_prior(regions, (10, 10))


def test_native_sam2_adapter_without_the_package_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("sam2") is not None:
        pytest.skip("the native sam2 package is installed here")
    with pytest.raises(ConfigError, match="needs the `sam2` package"):
        NativeSam2Segmenter(SegmenterConfig(kind="native-sam2", weights="x.pt"))


def test_config_errors():
    with pytest.raises(UnknownNameError, match="Did you mean 'gdino-sam2'"):
        build_grounder("gdino-sam")
    with pytest.raises(ConfigError):
        build_grounder("none", detector={"box_threshold": 2.0})
    o, e = _pair()
    with pytest.raises(ValueError, match="differ in shape"):
        build_grounder("none").ground(o, e[:10], parse_instruction("remove the dog"))


def test_concept_prompt_form():
    assert concept_prompt("Table and flower vase") == "table . flower vase ."
    assert concept_prompt("cat") == "cat ."

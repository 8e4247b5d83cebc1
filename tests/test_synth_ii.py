"""Issue 14, item 2: the data engine's new families, deterministic in (seed, index).

Each family is checked for what makes it useful: tiny areas really occur, copy-move copies the same photo
(rotated / scaled), a generative-inpainting label covers the whole re-made region (not only the object),
regenerators and illumination are unlabelled whole-image changes, aerial tiles get building-like edits,
and the shared perturbation primitives keep shape and dtype.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from test_synth import make_photos

from sigma.data import perturb as K
from sigma.data.synth import edits as E
from sigma.data.synth import masks as M
from sigma.data.synth import perturb as P
from sigma.data.synth.engine import SynthConfig, SynthEngine

FAMILY = dict(crop=64, scale_range=(0.8, 1.0), mix={"copymove": 1, "inpaint": 1, "remove": 1, "none": 0.3},
              small_p=0.5, small_range=(0.0005, 0.02), multi_p=0.3, multi_max=5, irregular_p=0.5,
              perturb={"mode": "stack", "stack": (1, 3), "jpeg": 1, "webp": 1, "chroma": 1, "texture": 1,
                       "dither": 1, "median": 1, "resample": 1, "illum": {"p": 0.5, "aerial_p": 1.0}},
              aerial={"struct_p": 1.0, "pattern": "rsscn7"})


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = make_photos(tmp_path_factory.mktemp("photos"), n=4, size=(80, 96))
    # two of them named like the aerial tiles of ../shared/data/photos
    (folder / "p2.png").rename(folder / "rsscn7_resident_f001.png")
    (folder / "p3.png").rename(folder / "rsscn7_industry_c009.png")
    return folder


def test_new_families_are_deterministic_and_labelled_by_region(photos):
    eng = SynthEngine(SynthConfig(photos=str(photos), **FAMILY), seed=5)
    again = SynthEngine(SynthConfig(photos=str(photos), **FAMILY), seed=5)
    samples = [eng.sample(i) for i in range(60)]
    for i in (0, 7, 33):
        a, b = samples[i], again.sample(i)
        assert np.array_equal(a.edited, b.edited) and np.array_equal(a.mask, b.mask)
    kinds = {s.kind for s in samples}
    assert {"copymove", "inpaint", "none"} <= kinds
    fractions = [s.mask.mean() for s in samples if s.mask.any()]
    assert min(fractions) < 0.01                                  # tiny edits occur
    assert all(not s.mask.any() for s in samples if s.kind == "none")
    assert any(s.meta["aerial"] and s.meta["kind"] in ("splice", "remove", "attribute") for s in samples)
    names = {n for s in samples for n in s.meta["perturb"]}
    assert {"webp", "chroma", "texture"} & names and {"relight", "shadow", "haze", "season", "transfer"} & names


def test_inpaint_label_is_the_whole_remade_region_with_faint_changes_around_the_object(photos):
    eng = SynthEngine(SynthConfig(photos=str(photos), **{**FAMILY, "mix": {"inpaint": 1}, "small_p": 0.0,
                                                          "perturb": {"mode": "stack", "stack_p": 0.0}}), seed=1)
    found = 0
    for i in range(20):
        s = eng.sample(i)
        if s.kind != "inpaint":
            continue
        diff = np.abs(s.edited.astype(int) - s.original.astype(int)).mean(2)
        assert diff[~s.mask].mean() < 1.0                        # outside the region: untouched
        # inside: nearly every pixel re-made (a few levels at least), an object edit somewhere in it
        inner = diff[s.mask]
        assert (inner >= 1.0).mean() > 0.8 and inner.max() > np.median(inner) + 5
        assert s.meta["inpaint"]["object"] in ("remove", "splice", "attribute")
        found += 1
    assert found >= 5


def test_copymove_pastes_a_transformed_patch_of_the_same_photo():
    rng = np.random.default_rng(0)
    img = (np.random.default_rng(1).uniform(0, 255, (64, 64, 3))).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:30, 24:36] = True
    p = {"dy": 15.0, "dx": -10.0, "angle": 0.0, "scale": 1.0, "flip": False, "feather": 0.0, "harmonise": 0.0}
    out = E.apply_copymove(img, img, mask, p)
    assert np.array_equal(out[20:30, 24:36], img[5:15, 34:46])   # the patch 15 up, 10 right of its place
    assert np.array_equal(out[~mask], img[~mask])
    rot = E.apply_copymove(img, img, mask, {**p, "angle": 30.0, "scale": 1.3})
    assert not np.array_equal(rot[mask], out[mask]) and np.array_equal(rot[~mask], img[~mask])
    assert E.sample_copymove(rng, 64, 64)["scale"] > 0


def test_irregular_boundaries_keep_the_object():
    rng = np.random.default_rng(2)
    m = M.ellipse(rng, 96, 96, 0.1)
    r = M.irregular(rng, m, 0.35)
    inter = (m & r).sum() / m.sum()
    assert inter > 0.6 and not np.array_equal(m, r)


@pytest.mark.parametrize("name", sorted(P.REGENERATORS))
def test_each_regenerator_is_a_same_size_uint8_change(name):
    rng = np.random.default_rng(4)
    img = (np.random.default_rng(3).uniform(0, 255, (48, 64, 3))).astype(np.uint8)
    cfg = P.PerturbConfig()
    out = P.apply(img, [(name, P._params(name, rng, cfg))])
    assert out.shape == img.shape and out.dtype == np.uint8


def test_illumination_changes_every_pixel_a_little_and_is_unlabelled(photos):
    cfg = P.IllumConfig(p=1.0, transfer=1.0, relight=1.0, shadow=1.0, haze=1.0, season=1.0)
    img = (np.random.default_rng(3).uniform(40, 220, (48, 64, 3))).astype(np.uint8)
    donor = (np.random.default_rng(4).uniform(0, 120, (48, 64, 3))).astype(np.uint8)
    chain = P.sample_illum(np.random.default_rng(0), cfg, 1.0, donor)
    assert [n for n, _ in chain] == ["transfer", "relight", "shadow", "haze", "season"]
    out = P.apply(img, chain)
    assert out.shape == img.shape and np.abs(out.astype(int) - img.astype(int)).mean() > 3
    assert P.sample_illum(np.random.default_rng(0), cfg, 0.0, donor) == []


def test_shared_primitives_match_what_eval_applies():
    from sigma.eval import perturb as EP

    img = (np.random.default_rng(3).uniform(0, 255, (40, 56, 3))).astype(np.uint8)
    assert np.array_equal(EP.apply("jpeg75", img, "x"), K.jpeg(img, 75))
    assert EP.apply("resize", img, "x").shape == img.shape
    assert K.webp(img, 50).shape == img.shape and K.chroma_subsample(img, 2).shape == img.shape


def test_inpaint_under_regeneration_labels_only_the_semantic_core(photos):
    """METHOD §10: after a whole-image regenerator the faint re-rendering of the region is not
    recoverable; the label is the object the editor drew or removed, not the whole region."""
    eng = SynthEngine(SynthConfig(photos=str(photos), **{**FAMILY, "mix": {"inpaint": 1}, "small_p": 0.0,
                                                          "inpaint_composite_p": 0.0,
                                                          "perturb": {"mode": "stack", "stack_p": 1.0,
                                                                      "jpeg": 1, "resample": 1}}), seed=1)
    labels = [eng.sample(i).meta["inpaint"]["label"] for i in range(12)
              if eng.sample(i).kind == "inpaint"]
    assert labels and set(labels) == {"object"}
    composite = SynthEngine(eng.cfg.model_copy(update={"inpaint_composite_p": 1.0}), seed=1)
    kept = [s for s in (composite.sample(i) for i in range(12)) if s.kind == "inpaint"]
    assert kept and all(s.meta["inpaint"]["label"] == "region" and not s.meta["perturb"] for s in kept)


def test_inpaint_margin_regions_follow_the_object_and_stay_labelled_under_regeneration(photos):
    """`inpaint_margin_p`: the region is the object dilated by a thin band (how object-removal tools build
    it), and it stays the label after a regenerator — unlike a hand-brushed region, the band is predictable
    from the object alone. The label covers the object plus a band no wider than 4 % of the crop."""
    import cv2

    cfg = SynthConfig(photos=str(photos), **{**FAMILY, "mix": {"inpaint": 1}, "inpaint_composite_p": 0.0,
                                             "inpaint_margin_p": 1.0, "small_p": 0.0, "multi_p": 0.0,
                                             "perturb": {"mode": "stack", "stack_p": 1.0, "jpeg": 1}})
    eng = SynthEngine(cfg, seed=4)
    kept = [s for s in (eng.sample(i) for i in range(16)) if s.kind == "inpaint"]
    assert len(kept) >= 8
    band = max(1, round(0.04 * cfg.crop))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
    for s in kept:
        info = s.meta["inpaint"]
        assert info["margin"] and info["label"] == "region" and s.meta["perturb"]
        assert s.meta["shape"].endswith("+margin")
        # the label is a dilation: eroding it by the widest band leaves something, and the label holds no
        # pixel farther than the band from that core
        core = cv2.erode(s.mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))).astype(bool)
        assert core.any()
        grown = cv2.dilate(core.astype(np.uint8), disk).astype(bool)
        assert not (s.mask & ~grown).any()
    # off by default: the same seed without the knob draws hand-brushed regions, labelled with the object
    plain = SynthEngine(cfg.model_copy(update={"inpaint_margin_p": 0.0}), seed=4)
    labels = {s.meta["inpaint"]["label"] for s in (plain.sample(i) for i in range(16)) if s.kind == "inpaint"}
    assert labels == {"object"}


def test_inpaint_margin_boxes_are_grown_rectangles_around_the_object_labelled_whole(photos):
    """`inpaint_margin_box_p`: the region is the object's bounding box grown by the margin (a rectangle drawn
    around it, a patch pasted over it), labelled whole under a regenerator like the dilated band; the object
    lies inside it, and each part of the label is a filled rectangle. Off (0), the margin stream is unchanged."""
    import cv2

    base = {**FAMILY, "mix": {"inpaint": 1}, "inpaint_composite_p": 0.0, "inpaint_margin_p": 1.0, "small_p": 0.0,
            "multi_p": 0.0, "perturb": {"mode": "stack", "stack_p": 1.0, "jpeg": 1}}
    cfg = SynthConfig(photos=str(photos), **{**base, "inpaint_margin_box_p": 1.0})
    kept = [s for s in (SynthEngine(cfg, seed=4).sample(i) for i in range(16)) if s.kind == "inpaint"]
    assert len(kept) >= 8
    for s in kept:
        info = s.meta["inpaint"]
        assert info["margin"] and info["label"] == "region" and s.meta["perturb"]
        assert s.meta["shape"].endswith("+box")
        n, labels, stats, _ = cv2.connectedComponentsWithStats(s.mask.astype(np.uint8), connectivity=4)
        assert n >= 2
        for k in range(1, n):     # every part of the label fills its own bounding rectangle
            x, y, w, h, area = stats[k]
            assert area == w * h, (s.meta["shape"], stats[k])
    # the knob at 0 draws exactly the dilated-band stream the margin test checks (no extra random draw)
    off = SynthConfig(photos=str(photos), **base)
    with_zero = SynthConfig(photos=str(photos), **{**base, "inpaint_margin_box_p": 0.0})
    for i in range(6):
        a, b = SynthEngine(off, seed=4).sample(i), SynthEngine(with_zero, seed=4).sample(i)
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.edited, b.edited)
        assert not a.meta["shape"].endswith("+box")


def _mean_change(sample, where: np.ndarray) -> float:
    """Mean over `where` of the largest per-channel |edited − original| (0–255)."""
    delta = np.abs(sample.edited.astype(np.int16) - sample.original.astype(np.int16)).max(-1)
    return float(delta[where].mean())


def test_inpaint_margin_fill_removes_the_whole_region_band_included(photos):
    """`inpaint_margin_fill_p`: a removal inside a margin region fills the whole region from the surroundings,
    as LaMa / MI-GAN fill the mask they are handed, so the band around the object is re-made too (without it the
    band is the photo re-rendered, within a few levels of the original). The label is the region; at 0 the
    stream is the margin stream, draw for draw."""
    import cv2

    base = {**FAMILY, "crop": 128, "mix": {"inpaint": 1}, "inpaint_composite_p": 1.0, "inpaint_margin_p": 1.0,
            "small_p": 0.0, "multi_p": 0.0}
    filled = SynthConfig(photos=str(photos), **{**base, "inpaint_margin_fill_p": 1.0})
    plain = SynthConfig(photos=str(photos), **base)
    fills, kept = [], []
    for i in range(32):
        s = SynthEngine(filled, seed=5).sample(i)
        if s.kind != "inpaint" or s.meta["inpaint"]["object"] != "remove":
            continue
        assert s.meta["shape"].endswith("+fill") and s.meta["inpaint"]["label"] == "region"
        t = SynthEngine(plain, seed=5).sample(i)
        # the same region (the fill's one extra draw may move the half-of-all-pairs mirror flip that follows)
        assert np.array_equal(s.mask, t.mask) or np.array_equal(s.mask, t.mask[:, ::-1])
        assert not t.meta["shape"].endswith("+fill")
        # the label's outer pixel ring: inside the band (the margin is >= 1 px), outside the object
        band = s.mask & ~cv2.erode(s.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        fills.append(_mean_change(s, band))
        kept.append(_mean_change(t, band))
    assert len(fills) >= 3
    assert np.mean(fills) > 2 * np.mean(kept) + 2, (fills, kept)
    # off (0): exactly the margin stream (no extra random draw)
    zero = SynthConfig(photos=str(photos), **{**base, "inpaint_margin_fill_p": 0.0})
    for i in range(6):
        a, b = SynthEngine(plain, seed=5).sample(i), SynthEngine(zero, seed=5).sample(i)
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.edited, b.edited)


def test_a_drawn_roof_fills_the_footprint_and_casts_an_unlabelled_shadow_beside_it():
    """Aerial change labels mark building footprints: the roof repaints every pixel of the mask in one
    roof colour (a gable splits it in two tones), its shadow darkens ground outside the mask, and pixels
    away from both are untouched."""
    img = np.full((64, 64, 3), 120, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[20:32, 16:40] = True
    p = {**E.sample_roof(np.random.default_rng(0), 64, 64), "colour": 1, "jitter": [0.0, 0.0, 0.0],
         "gable": 0.2, "grain": 1.0, "shadow": 0.5, "sun": np.pi / 2, "reach": 3.0, "feather": 0.0}
    out = E.apply_roof(img, mask, p).astype(int)
    roof = out[mask].mean(1)
    assert abs(roof.mean() - 203) < 12 and roof.std() > 10          # the palette's light grey, two tones
    shadow = out[32:35, 16:40]                                        # the sun at 90°: the shadow falls below
    assert (shadow == 60).all()
    assert (out[45:, :] == 120).all() and (out[:, 50:] == 120).all()


def _aerial_engine(photos, landcover_p: float) -> SynthEngine:
    cfg = SynthConfig(photos=str(photos), crop=64, scale_range=(0.8, 1.0), mix={"splice": 1}, multi_p=0.0,
                      perturb={"mode": "stack", "stack_p": 0.0, "vae": 0.0, "illum": {"p": 0.0, "aerial_p": 0.0}},
                      aerial={"struct_p": 1.0, "roof_p": 0.5, "landcover_p": landcover_p,
                              "landcover_area": (0.4, 0.8), "pattern": "rsscn7"})
    return SynthEngine(cfg, seed=9)


def test_landcover_change_is_unlabelled_and_goes_around_the_labelled_building(photos):
    """Bi-temporal labels leave a ploughed field or a cleared lot out: the land-cover change re-textures a
    large part of an aerial crop with no label, and never touches the labelled building (nor its 2 px
    ring): the same draw without it has the same edit, pixel for pixel, inside the label."""
    with_lc, without = _aerial_engine(photos, 1.0), _aerial_engine(photos, 0.0)
    seen = 0
    for i in range(40):
        a, b = with_lc.sample(i), without.sample(i)
        if not a.meta["aerial"]:
            assert "landcover" not in a.meta and np.array_equal(a.edited, b.edited)
            continue
        assert "landcover" in a.meta and "landcover" not in b.meta
        bm, be, bo = (b.mask, b.edited, b.original) if np.array_equal(a.original, b.original) else \
            (b.mask[:, ::-1], b.edited[:, ::-1], b.original[:, ::-1])       # the last draw (a flip) may differ
        assert np.array_equal(a.mask, bm) and a.mask.any()                  # the label: the building only
        assert np.array_equal(a.edited[a.mask], be[a.mask])
        outside = np.abs(a.edited.astype(int) - bo.astype(int)).max(2)[~a.mask]
        assert (outside > 0).mean() > 0.2                                   # a large unlabelled change
        seen += 1
    assert seen >= 8
    kinds = {tuple(sorted(s.meta["params"])) for s in (with_lc.sample(i) for i in range(40)) if s.meta["aerial"]}
    assert any("gable" in k for k in kinds) and any("harmonise" in k for k in kinds)   # roofs and spliced texture


@pytest.mark.parametrize("override, says", [
    ("area_range=[-1,2]", "0 < low <= high"), ("small_range=[0.1,0.01]", "0 < low <= high"),
    ("scale_range=[0,1]", "0 < low <= high"), ("aerial.landcover_area=[0.5,1.5]", "0 < low <= high"),
    ("area_range=[.nan,0.5]", "area_range.0: Input should be a finite number")])
def test_a_range_the_sampler_cannot_draw_from_is_refused_at_load(override, says, tmp_path, capsys):
    """A negative area (log → NaN), a reversed or empty range: one clean config error and no output, not
    a NaN or an empty crop inside a training run's data worker. NaN is refused by the field itself (every config's
    floats are finite, `sigma.config.schema.Strict`), named at its item."""
    from sigma.cli import main

    rc = main(["synth", "--out", str(tmp_path / "out"), "-n", "1", "--photos", str(tmp_path), override])
    err = capsys.readouterr().err
    assert rc == 2 and "[invalid_config]" in err and says in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override", ["mix={splice: 0}", "mix={splice: -1, none: 1}", "mix={paint: 1}",
                                      "shapes={blob: 0}", "shapes={star: 1}", "perturb.stack=[3,1]",
                                      "perturb.jpeg_quality=[0,95]", "mix={remove: 1e308, splice: 1e308}"])
def test_weights_and_integer_ranges_the_sampler_cannot_use_are_refused_at_load(override, tmp_path, capsys):
    """All-zero or negative weights (NaN probabilities in numpy's choice), weights whose sum overflows to inf (a
    ValueError traceback from numpy's choice), unknown kinds or shapes, a reversed regenerator count: a config
    error naming the key, before any pair is drawn."""
    from sigma.cli import main

    rc = main(["synth", "--out", str(tmp_path / "out"), "-n", "1", "--photos", str(tmp_path), override])
    err = capsys.readouterr().err
    key = override.split("=")[0].split(".")[-1]
    assert rc == 2 and "[invalid_config]" in err and key in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


_TAEF2 = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "taef2"


@pytest.mark.skipif(not (_TAEF2 / "taef2_encoder.pth").is_file(), reason="no ../shared TAEF2 weights")
def test_online_vae_puts_the_edit_itself_through_the_roundtrip(photos, tmp_path):
    """`perturb.vae_online`: a regenerator re-makes the edited image, edit included. The cached path edits the
    photo's roundtrip, so the edit's own pixels and borders never saw the VAE; online they do: the edited crop
    is exactly TAEF2(edit(photo)), and outside the edit it matches the cached roundtrip to within the VAE's
    own crop-border effects."""
    from sigma.data.synth.cache import build_cache, roundtrip_at
    from sigma.models.vae import load_default_vae
    vae = load_default_vae()
    cache = build_cache(photos, tmp_path / "cache", vae=vae, scales=(1.0,), latent_edits=0, log=None)
    cfg = SynthConfig(cache=str(cache), crop=64, scale_range=(1.0, 1.0), mix={"attribute": 1}, small_p=0.0,
                      area_range=(0.1, 0.3), multi_p=0.0, irregular_p=0.0, aerial={"struct_p": 0.0},
                      perturb={"mode": "stack", "stack_p": 0.0, "vae": 1.0, "vae_online": 1.0,
                               "illum": {"p": 0.0, "aerial_p": 0.0}})
    eng, again = SynthEngine(cfg, seed=3), SynthEngine(cfg, seed=3)
    checked = 0
    for i in range(12):
        s = eng.sample(i)
        assert s.meta.get("vae_online") and s.meta["vae"] == "rt100"
        assert np.array_equal(s.edited, again.sample(i).edited)              # deterministic in (seed, index)
        flip = (lambda a: a[:, ::-1]) if s.meta.get("flipped") else (lambda a: a)
        orig, mask, edited = (np.ascontiguousarray(flip(a)) for a in (s.original, s.mask, s.edited))
        expected = roundtrip_at(vae, E.apply_attribute(orig, orig, mask, s.meta["params"]), 1.0)[0]
        if s.meta["params"]["kind"] != "texture":                             # texture draws its own noise
            assert np.array_equal(edited, expected)
            checked += 1
        # the whole crop is regenerated: no pixel is the photo's own, and the edit differs from the photo
        diff = np.abs(edited.astype(int) - orig.astype(int)).mean(2)
        assert diff[~mask].mean() > 0.5 and diff[mask].mean() > diff[~mask].mean()
    assert checked >= 6



@pytest.mark.skipif(not (_TAEF2 / "taef2_encoder.pth").is_file(), reason="no ../shared TAEF2 weights")
def test_without_online_vae_the_edit_is_made_on_the_cached_roundtrip(photos, tmp_path):
    """The knob off (the default): the crop is the cached roundtrip and the edit is made on it, so outside the
    edit every pixel is the roundtrip's own, bit for bit (and the generator is not drawn for the knob)."""
    from sigma.data.synth.cache import build_cache
    from sigma.data.synth.engine import _crop
    from sigma.models.vae import load_default_vae
    cache = build_cache(photos, tmp_path / "cache", vae=load_default_vae(), scales=(1.0,), latent_edits=0,
                        log=None)
    cfg = SynthConfig(cache=str(cache), crop=64, scale_range=(1.0, 1.0), mix={"attribute": 1}, small_p=0.0,
                      area_range=(0.1, 0.3), multi_p=0.0, irregular_p=0.0, aerial={"struct_p": 0.0},
                      perturb={"mode": "stack", "stack_p": 0.0, "vae": 1.0, "illum": {"p": 0.0, "aerial_p": 0.0}})
    eng = SynthEngine(cfg, seed=3)
    for i in range(8):
        s = eng.sample(i)
        assert "vae_online" not in s.meta and s.meta["vae"] == "rt100"
        flip = (lambda a: a[:, ::-1]) if s.meta.get("flipped") else (lambda a: a)
        edited, mask = flip(s.edited), flip(s.mask)
        ent = eng.bank.get(s.meta["photo"])
        h, w = ent["img"].shape[:2]
        # scale_range 1.0 and a 64 px crop: find the window by matching the photo crop
        orig = np.ascontiguousarray(flip(s.original))
        hits = [(y, x) for y in range(h - 63) for x in range(w - 63)
                if np.array_equal(ent["img"][y:y + 64, x:x + 64], orig)]
        assert hits
        y, x = hits[0]
        rt = _crop(ent["rt100"], (y, x, 64), 64)
        far = ~cv2.dilate(mask.astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool)   # past the feather
        assert far.sum() > 500 and np.array_equal(edited[far], rt[far])
        assert not np.array_equal(edited[far], orig[far])

"""Composite test and synthesised footprint: the second mask a SIGMA result carries.

The semantic mask says what changed in meaning; it is the only honest answer when the editor regenerated
the whole image. But many editing pipelines paste their output back (inpainting, object removal,
copy-move, cut-and-paste): every pixel outside the edit is then bit-identical to the original, or within
a few levels of it after a JPEG re-save. On such a *composite* the exact set of pixels the editor re-made
is recoverable from the pixels themselves, and that is the label a forensic localisation detector wants.

Two steps, pure numpy/OpenCV (no torch), both at the original resolution:

1. `composite_test(original, edited, prob)` explains the untouched background. The reference is the
   original, or, when that leaves the background unexplained, the original re-encoded as JPEG at the
   quality and chroma subsampling that best explain the edited image (a JPEG-ghost search, Farid 2009),
   so a composite re-saved as JPEG 75 still has a background that matches its reference exactly. The
   tolerance is the smallest number of levels (<= `max_tolerance`, "within a few levels") above which
   the background, taken away from the model's semantic region, holds only scattered noise; a solid
   changed region (an edit the model missed) is set aside, so it does not inflate the tolerance. A
   composite has a tolerance and either most pixels within it, or textured 8x8 blocks bit-identical to
   the original, which no whole-image process leaves (proof of a paste-back, e.g. a large regenerated
   background around a kept object). A VAE roundtrip or a resampling of the whole image leaves tens of
   levels on every textured region: no small tolerance explains it, so the test says no.
2. `synthesise_footprint(test, semantic)` cuts the changed pixels out of the residual: connected
   regions above the tolerance, kept when they touch the semantic mask, or, away from it, when they are
   solid and well above the noise (on a bit-identical background every change is kept: there is no
   noise). Under a JPEG reference a change re-quantises whole 8x8 blocks, so inside those blocks a pixel
   counts only when it differs from the original by more than twice the local re-quantisation noise. A
   small closing (noisy backgrounds) and the filling of small enclosed pockets (pixels an inpainter
   happened to reproduce exactly) follow, then the semantic core: the semantic mask less the pixels the
   composite explains as untouched.

`mask_mode` picks which mask is *the* mask: `auto` (the default) = the footprint on composites, the
semantic mask elsewhere. Why: on a composite the footprint is exact where the semantic mask can only be
approximate (the model marks the object that appeared or vanished, not the whole region the editor
re-synthesised, and its mask is upsampled from a 512 px working size), and the footprint contains the
semantic core; off composites pixel differences are everywhere, and only the semantic mask means
anything. `semantic` and `footprint` force one or the other (`footprint` off a composite uses the
background's own tolerance and is rarely what anyone wants; the evidence says so).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from sigma.config.schema import Strict

# PIL's (libjpeg's IJG tables) encode -> decode: the path nearly every tool that re-saves a JPEG takes
from sigma.data.perturb import jpeg as jpeg_roundtrip
from sigma.rle import mask_extent
from sigma.types import MASK_MODES, MaskMode, check_mask_mode  # noqa: F401  (MASK_MODES: re-exported)


class FootprintConfig(Strict):
    """Knobs of the composite test and the footprint; the defaults are the documented product behaviour."""

    max_tolerance: int = Field(6, ge=0, le=64, description="largest background residual (grey levels, "
                               "max over RGB) a composite may have after its best reference: 'within a few "
                               "levels'. A JPEG re-save explained by the JPEG search leaves 0-2, a noisy "
                               "paste-back 3-5, a VAE roundtrip or a resampling tens")
    min_identical_blocks: float = Field(0.01, ge=0.0, le=1.0, description="fraction of the image in "
                                        "textured 8x8 blocks bit-identical to the original that proves a "
                                        "paste-back even when most pixels changed: a regenerated image has none")
    min_identical_share: float = Field(0.9, ge=0.0, le=1.0, description="share of the background's "
                                       "textured 8x8 blocks that must be bit-identical for the exact tier "
                                       "(tolerance 0) without a tolerance search; a partly idempotent JPEG "
                                       "re-save leaves fewer")
    max_missed: float = Field(0.25, ge=0.0, le=1.0, description="largest share of the background a solid "
                              "changed region may cover and still count as an edit the model missed rather "
                              "than a re-rendered background")
    max_structure: float = Field(0.6, ge=-1.0, le=1.0, description="on a noisy background (tolerance > 0, "
                                 "no JPEG reference), the largest correlation between the residual and the "
                                 "original's fine detail that still reads as noise; above it the whole image "
                                 "went through a filter")
    min_untouched: float = Field(0.5, ge=0.0, le=1.0, description="fraction of all pixels within the "
                                 "tolerance for the pair to count as a composite ('most pixels untouched')")
    noise_rate: float = Field(0.005, gt=0.0, lt=0.5, description="fraction of background pixels allowed "
                              "above the tolerance as scattered noise")
    jpeg_search: bool = Field(True, description="also try the original re-encoded as JPEG (qualities "
                              "36-100, 4:2:0 and 4:4:4) as the reference, so JPEG re-saved composites are "
                              "recognised; costs a few small encodes per pair")
    background_prob: float = Field(0.3, ge=0.0, le=1.0, description="semantic probability from which a "
                                   "pixel is kept out of the background statistics (before dilation)")
    background_dilate: float = Field(0.02, ge=0.0, le=0.5, description="dilation of that region, as a "
                                     "fraction of the image diagonal")
    min_component: float = Field(5e-5, ge=0.0, le=0.1, description="smallest changed region kept away "
                                 "from the semantic mask, as a fraction of the image (at least 16 px); "
                                 "on bit-identical composites 4 px")
    close_radius: float = Field(0.002, ge=0.0, le=0.05, description="closing radius as a fraction of "
                                "the image diagonal, noisy composites only (0 = none): fills pinholes "
                                "where the edit's residual fell inside the tolerance")
    refute_explained: bool = Field(True, description="on a composite, leave out of the footprint the "
                                   "semantic pixels the composite explains as untouched (within the tolerance "
                                   "of the reference, outside the changed regions); off: footprint = changed "
                                   "regions ∪ the whole semantic mask")
    jpeg_noise_factor: float = Field(2.0, ge=0.0, le=20.0, description="inside the 8x8 blocks a JPEG "
                                     "reference cannot explain, a pixel is re-made when it differs from the "
                                     "original by more than this many times the local re-quantisation noise")
    max_hole: float = Field(0.0005, ge=0.0, le=1.0, description="largest enclosed hole filled, as a "
                            "fraction of the image")


@dataclass
class CompositeTest:
    """The threshold-independent half: what explains the background, and the maps to cut the footprint from."""

    is_composite: bool
    residual: np.ndarray            # uint8 [H, W]: max over RGB of |reference - edited|
    tolerance: int                  # levels; on non-composites the tolerance a forced footprint uses
    evidence: dict[str, Any] = field(default_factory=dict)
    original_residual: np.ndarray | None = None   # |original - edited| when the reference is a JPEG re-encode
    floor: np.ndarray | None = None  # float32 [H, W]: local re-quantisation noise (JPEG reference only)
    block: int = 1                  # 8 when the reference is a JPEG: a change re-quantises whole 8x8 blocks

    @property
    def exact(self) -> bool:
        """Bit-identical background (exact tier): every unchanged pixel is proven untouched, nothing is noise."""
        return self.is_composite and self.evidence.get("tier") == "exact"


@dataclass
class FootprintResult:
    """Both masks, the one chosen by `mask_mode`, and the evidence for the choice."""

    mask: np.ndarray                # bool [H, W]: the mask mask_mode picked
    chosen: Literal["semantic", "footprint"]
    semantic: np.ndarray            # bool [H, W]
    footprint: np.ndarray | None    # bool [H, W]; None when not a composite and mode is not `footprint`
    mask_mode: str
    composite: dict[str, Any]       # {"is_composite": bool, ...evidence}


# ---------------------------------------------------------------------------------------------- residuals

def residual_map(reference: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """max over RGB of |reference - edited| as uint8: a colour-only change counts as much as a grey one."""
    d = cv2.absdiff(reference, edited)
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])


def _probe_strip(original: np.ndarray, edited: np.ndarray, background: np.ndarray, size: int = 128,
                 count: int = 4) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to `count` MCU-aligned background windows with the most texture, side by side in one strip
    (one encode per candidate instead of one per window). JPEG qualities differ most on texture, and a
    window aligned to the 16 px grid quantises exactly as it does inside the whole image."""
    h, w = background.shape
    size = min(size, (h // 16) * 16, (w // 16) * 16)
    if size < 48:
        return None
    grey = cv2.cvtColor(original, cv2.COLOR_RGB2GRAY)
    scored = []
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            if background[y:y + size, x:x + size].mean() >= 0.98:
                scored.append((float(grey[y:y + size, x:x + size].std()), y, x))
    if not scored:
        return None
    scored.sort(reverse=True)
    picks = [(y, x) for _, y, x in scored[:count]]
    strip_o = np.concatenate([original[y:y + size, x:x + size] for y, x in picks], axis=1)
    strip_e = np.concatenate([edited[y:y + size, x:x + size] for y, x in picks], axis=1)
    return strip_o, strip_e


def _strip_error(reference: np.ndarray, edited: np.ndarray) -> float:
    """Mean residual over the strip's window interiors (8 px in from each side: chroma upsampling reads across)."""
    size = reference.shape[0]
    res = residual_map(reference, edited)
    inner = np.zeros(res.shape, bool)
    for x in range(0, res.shape[1], size):
        inner[8:size - 8, x + 8:x + size - 8] = True
    return float(res[inner].mean())


def best_reference(original: np.ndarray, edited: np.ndarray, background: np.ndarray, jpeg_search: bool
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """The original, or its JPEG re-encode that best explains the edited image's background (JPEG ghost)."""
    identity_info: dict[str, Any] = {"reference": "original"}
    if not jpeg_search:
        return original, identity_info
    strip = _probe_strip(original, edited, background)
    if strip is None:
        return original, identity_info
    strip_o, strip_e = strip
    base = _strip_error(strip_o, strip_e)
    if base < 0.05:          # already bit-identical where it matters: nothing for a JPEG to explain
        return original, identity_info
    errors: dict[tuple[int, int], float] = {}

    def err(q: int, ss: int) -> float:
        if (q, ss) not in errors:
            errors[(q, ss)] = _strip_error(jpeg_roundtrip(strip_o, q, ss), strip_e)
        return errors[(q, ss)]

    # The error dips sharply at the exact quality only (a neighbour is already ~1 level off), so: a
    # coarse pass in 4:2:0 (what nearly every tool writes), every quality around the two best coarse
    # ones, then 4:4:4 at the best.
    for q in range(40, 101, 5):
        err(q, 2)
    for q0 in sorted(errors, key=errors.get)[:2]:
        for q in range(max(1, q0[0] - 4), min(100, q0[0] + 4) + 1):
            err(q, 2)
    q1 = min(errors, key=errors.get)[0]
    err(q1, 0)                                # and 4:4:4 at that quality
    (q, ss), best = min(errors.items(), key=lambda kv: kv[1])
    if best >= 0.5 * base:   # a JPEG does not explain the background much better than the original does
        return original, {**identity_info, "jpeg_probe_error": round(best, 3), "original_probe_error": round(base, 3)}
    info = {"reference": "jpeg", "jpeg_quality": q, "jpeg_subsampling": {2: "4:2:0", 0: "4:4:4"}[ss],
            "jpeg_probe_error": round(best, 3), "original_probe_error": round(base, 3)}
    return jpeg_roundtrip(original, q, ss), info


# ------------------------------------------------------------------------------------------ composite test

def _disk(radius: int) -> np.ndarray:
    r = max(0, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _background(prob: np.ndarray, cfg: FootprintConfig) -> np.ndarray:
    """Pixels far from anything the model calls changed: where a composite's background statistics live."""
    h, w = prob.shape
    region = prob >= cfg.background_prob
    radius = round(cfg.background_dilate * float(np.hypot(h, w)))
    if radius > 0 and region.any():   # a dilation by a disk, in O(pixels) whatever the radius
        background = _far_from(region, radius)
    else:
        background = ~region
    if _share(background) >= 0.2:
        return background
    # the model marks most of the image (a regenerated background around a kept object): judge on what
    # it leaves out, undilated, or on the whole image when that is next to nothing
    return ~region if _share(~region) >= 0.02 else np.ones_like(background)


def _far_from(region: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose 3x3 chamfer distance (OpenCV's DIST_L2, mask 3) to `region` exceeds `radius`.

    The distance transform runs on the region's bounding box grown by `radius / 0.95 + 2` pixels, not on the whole
    image: a pixel outside that box is more than radius / 0.955 steps from every region pixel along one axis, and a
    chamfer step costs at least 0.955, so it is far; inside the box the chamfer distance to the nearest region pixel
    is reached by a monotone path within the rectangle of the two pixels, which the box holds, so it is the same
    float the whole-image transform gives. Same pixels, for the cost of the box (an edit is a few per cent of a
    photo: 9.3 -> 1.7 ms a pair at 1.5 Mpx, measured)."""
    h, w = region.shape
    top, bottom, left, right = mask_extent(region)   # the caller has checked region.any()
    margin = int(np.ceil(radius / 0.95)) + 2
    y0, y1 = max(top - margin, 0), min(bottom + margin + 1, h)
    x0, x1 = max(left - margin, 0), min(right + margin + 1, w)
    far = np.ones((h, w), bool)
    crop = region[y0:y1, x0:x1]
    far[y0:y1, x0:x1] = cv2.distanceTransform((~crop).astype(np.uint8), cv2.DIST_L2, 3) > radius
    return far


def _share(mask: np.ndarray) -> float:
    """Fraction of True pixels: the same float as `mask.mean()` (an exact count over the size, rounded once) without
    the float64 pass over every pixel that `mean` makes (1.5 ms at 1.5 Mpx, several times a pair)."""
    return np.count_nonzero(mask) / mask.size if mask.size else float("nan")


def identical_blocks(original: np.ndarray, edited: np.ndarray, block: int = 8, min_std: float = 2.0,
                     residual: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per 8x8 block of the image grid: (textured and bit-identical in both images, textured).

    No whole-image process (a VAE roundtrip, resampling, a JPEG re-save at another quality, a colour
    change) leaves a textured block exactly as it was: these blocks are proof of a paste-back. Flat
    blocks are left out because a JPEG re-save or a resize can reproduce a flat patch exactly.
    `residual`: `residual_map(original, edited)` when the caller has it (the composite test does), not made again.
    """
    h, w = original.shape[:2]
    hb, wb = h // block, w // block
    if hb == 0 or wb == 0:
        return np.zeros((0, 0), bool), np.zeros((0, 0), bool)
    crop = (slice(0, hb * block), slice(0, wb * block))
    residual = residual_map(original[crop], edited[crop]) if residual is None else residual[crop]
    # a block is bit-identical when its largest residual is 0, in uint8 along contiguous rows first (it was an int32
    # copy of the map and a block sum == 0: the same decision, as the residual is never negative)
    same = residual.reshape(hb, block, wb * block).max(axis=1).reshape(hb, wb, block).max(axis=2) == 0
    # std >= min_std in integers: n * sum(x^2) - sum(x)^2 >= (n * min_std)^2, n = block^2. It was float32 `std` over
    # the blocks' two strided axes, twice as slow; same decision (at a variance near 4 every square and sum of that
    # float32 arithmetic is exact, so it rounded nothing that could cross the bound)
    n = block * block
    grey = cv2.cvtColor(original[crop], cv2.COLOR_RGB2GRAY).astype(np.int32 if n * n * 255 ** 2 < 2 ** 31 else np.int64)
    sums, squares = _block_sums(grey, hb, wb, block), _block_sums(grey * grey, hb, wb, block)
    textured = n * squares - sums * sums >= (n * min_std) ** 2
    return same & textured, textured


def _block_sums(values: np.ndarray, hb: int, wb: int, block: int) -> np.ndarray:
    """Sum over each block x block cell of an [hb * block, wb * block] integer map, along contiguous rows first."""
    rows = values.reshape(hb, block, wb * block).sum(axis=1)
    return rows.reshape(hb, wb, block).sum(axis=2)


def _block_share(background: np.ndarray, same: np.ndarray, textured: np.ndarray, block: int = 8) -> float:
    """Share of the textured blocks lying wholly in the background that are bit-identical (1.0 if none)."""
    hb, wb = textured.shape
    if hb == 0:
        return 0.0
    rows = background[:hb * block, :wb * block].reshape(hb, block, wb * block).all(axis=1)   # contiguous rows first
    inside = rows.reshape(hb, wb, block).all(axis=2) & textured
    return float(same[inside].mean()) if inside.any() else 0.0


def _scattered_fraction(residual: np.ndarray, t: int, background: np.ndarray, max_solid: float) -> float:
    """Share of the background above tolerance `t` once changed regions (an edit, or the part of one the
    model missed) are set aside; 1.0 when those regions are themselves too large a share of the background
    to be a missed edit (dense noise, or a re-rendered image whose whole texture changed).

    A changed region is a connected run of 16 or more pixels above `t` whose mean residual is well above
    it (2t + 2): sparse noise does not form such runs, and the tail of a structured noise (a foreign
    encoder, sensor noise along edges) that does is barely above the tolerance, where an edit is not.
    """
    exceed = residual > t
    n, labels, stats, _ = cv2.connectedComponentsWithStats(exceed.astype(np.uint8), connectivity=8)
    area = stats[:, cv2.CC_STAT_AREA]
    mean = np.bincount(labels.ravel(), weights=residual.ravel().astype(np.float64), minlength=n) / np.maximum(area, 1)
    solid_label = (area >= 16) & (mean > 2 * t + 2)
    solid_label[0] = False
    solid = solid_label[labels]
    n_bg = max(int(background.sum()), 1)
    if (solid & background).sum() / n_bg > max_solid:
        return 1.0
    return float((exceed & ~solid & background).sum() / n_bg)


def _requantisation_floor(original: np.ndarray, edited: np.ndarray, ref_info: dict[str, Any]) -> np.ndarray:
    """Local noise a JPEG re-save leaves in a re-quantised block, per pixel.

    Inside a block the edit touched, an untouched pixel still differs from the original by the block's
    quantisation noise, and that noise grows with the block's new content (a pasted edge rings through
    the whole block). Two estimates, the larger wins: what the re-save does to the original there, and
    what it does to the edited content on a grid shifted by half a block (re-encoding on its own grid
    would be near-idempotent and show nothing).
    """
    q = int(ref_info["jpeg_quality"])
    ss = 2 if ref_info["jpeg_subsampling"] == "4:2:0" else 0
    of_original = residual_map(jpeg_roundtrip(original, q, ss), original)
    shifted = np.ascontiguousarray(edited[4:, 4:])
    of_edited = np.zeros_like(of_original)
    of_edited[4:, 4:] = residual_map(jpeg_roundtrip(shifted, q, ss), shifted)
    noise = np.maximum(of_original, of_edited).astype(np.float32)
    return cv2.blur(noise, (9, 9))


def residual_structure(original: np.ndarray, residual: np.ndarray, background: np.ndarray) -> float:
    """Pearson correlation, over the background, between the residual and the original's fine detail.

    Noise a paste-back picked up (sensor noise, dithering, a re-save by a foreign encoder) does not care
    where the edges are (about 0); a whole-image filter (resampling, blur, a VAE) errs in proportion to
    the detail it loses (0.75-0.98 measured on resampled and blurred photographs).
    """
    grey = cv2.cvtColor(original, cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 1.0))[background]
    res = residual[background].astype(np.float32)
    if res.size < 2 or res.std() == 0 or detail.std() == 0:
        return 0.0
    return float(np.corrcoef(res, detail)[0, 1])


def _tolerance(residual: np.ndarray, background: np.ndarray, cfg: FootprintConfig) -> int | None:
    """Smallest tolerance (<= max_tolerance) above which the background holds only scattered noise, or None."""
    n_bg = max(int(background.sum()), 1)
    for t in range(0, cfg.max_tolerance + 1):
        exceed = background & (residual > t)
        share = exceed.sum() / n_bg
        if share > cfg.max_missed + cfg.noise_rate:   # more than a missed edit plus noise could be
            continue
        if share <= cfg.noise_rate or \
                _scattered_fraction(residual, t, background, cfg.max_missed) <= cfg.noise_rate:
            return t
    return None


def composite_test(original: np.ndarray, edited: np.ndarray, prob: np.ndarray,
                   cfg: FootprintConfig | None = None) -> CompositeTest:
    """Is this pair a composite (most pixels untouched, up to a JPEG re-save), and on what evidence?

    The reference is the original, or, when the original leaves the background unexplained, its JPEG
    re-encode that best explains the edited image (JPEG ghost). The tolerance is the smallest number of
    levels (<= `max_tolerance`) above which the background (away from the model's region) holds only
    scattered noise. A composite needs a tolerance and either `min_untouched` of all pixels within it
    ("most pixels untouched") or proof of a paste-back: textured 8x8 blocks bit-identical to the
    original over `min_identical_blocks` of the image, which no whole-image process leaves (a large edit
    pasted back over a small kept region). Tiers: `exact` (the original, tolerance 0: every unchanged
    pixel is bit-identical), `near-exact` (a JPEG reference or a tolerance of a few levels), `none`.
    Depends on the images and the semantic probability map, not on the mask threshold, so a per-request
    threshold re-derives the footprint without re-running this.
    """
    cfg = cfg or FootprintConfig()
    if original.shape != edited.shape or original.dtype != np.uint8 or edited.dtype != np.uint8:
        raise ValueError(f"composite_test needs two uint8 images of one shape, got {original.shape} "
                         f"{original.dtype} and {edited.shape} {edited.dtype}")
    if prob.shape != original.shape[:2]:
        raise ValueError(f"prob {prob.shape} does not match the images {original.shape[:2]}")
    identity = residual_map(original, edited)
    same, textured = identical_blocks(original, edited, residual=identity)
    h, w = identity.shape
    blocks = float(same.sum()) * 64 / (h * w)
    background = _background(prob, cfg)
    share = _block_share(background, same, textured)
    reference, ref_info, residual = original, {"reference": "original"}, identity
    if blocks >= cfg.min_identical_blocks and share >= cfg.min_identical_share:
        tolerance = 0     # the background's textured blocks are bit-identical: a lossless paste-back
    else:
        tolerance = _tolerance(identity, background, cfg)
    if tolerance != 0 and cfg.jpeg_search:
        candidate, info = best_reference(original, edited, background, True)
        if candidate is not original:
            res_j = residual_map(candidate, edited)
            tol_j = _tolerance(res_j, background, cfg)
            if tol_j is not None and (tolerance is None or tol_j < tolerance):
                reference, residual, tolerance = candidate, res_j, tol_j
            ref_info = info if reference is candidate else {**info, "reference": "original"}
    jpeg = reference is not original
    bg = residual[background]
    q_hi = int(np.quantile(bg, 1.0 - cfg.noise_rate)) if bg.size else 0
    what = "the original" if not jpeg else \
        f"the original re-encoded as JPEG q{ref_info['jpeg_quality']} {ref_info['jpeg_subsampling']}"
    if tolerance is None:
        untouched = _share(residual <= cfg.max_tolerance)
        is_composite, tier = False, "none"
        reason = (f"no tolerance <= {cfg.max_tolerance} levels explains the background as noise (its "
                  f"{100 * (1 - cfg.noise_rate):.1f}th percentile residual to {what} is {q_hi}): the whole "
                  "image was re-rendered")
        forced = max(q_hi, cfg.max_tolerance)
    elif tolerance > 0 and not jpeg and \
            (structure := residual_structure(original, residual, background)) > cfg.max_structure:
        untouched = _share(residual <= tolerance)
        is_composite, tier = False, "none"
        reason = (f"{100 * untouched:.1f}% of pixels within {tolerance} levels of {what}, but the background "
                  f"residual follows the image's detail (r={structure:.2f} > {cfg.max_structure}): a "
                  "whole-image filter (resampling, blur, regeneration), not noise on a paste-back")
        forced = tolerance
    else:
        untouched = _share(residual <= tolerance)
        pasted = blocks >= cfg.min_identical_blocks
        is_composite = untouched >= cfg.min_untouched or pasted
        tier = ("exact" if tolerance == 0 and not jpeg else "near-exact") if is_composite else "none"
        reason = f"{100 * untouched:.1f}% of pixels within {tolerance} levels of {what}"
        if pasted:
            reason += (f"; {100 * blocks:.1f}% of the image is textured blocks bit-identical to the original, "
                       "which no whole-image process leaves: pasted back")
        elif not is_composite:
            reason += f" (< {100 * cfg.min_untouched:.0f}% needed)"
        forced = tolerance
    evidence = {"tier": tier, "untouched_fraction": round(untouched, 4), "tolerance": tolerance,
                "identical_fraction": round(_share(identity == 0), 4),
                "identical_block_fraction": round(blocks, 4),
                "background_identical_share": round(share, 4),
                "noise_floor": round(float(bg.mean()) if bg.size else 0.0, 3), "background_p995": q_hi,
                "background_fraction": round(_share(background), 4), **ref_info, "reason": reason}
    extras: dict[str, Any] = {}
    if jpeg:
        extras = {"original_residual": identity, "floor": _requantisation_floor(original, edited, ref_info),
                  "block": 8}
    return CompositeTest(is_composite=is_composite, residual=residual, tolerance=int(forced), evidence=evidence,
                         **extras)


# --------------------------------------------------------------------------------------------- footprint

def _fill_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill background pockets fully enclosed by the mask and no larger than max_area.

    Labelled inside the mask's bounding box grown by one pixel, not over the whole image: every background pixel
    outside the box belongs to a region that reaches the image's edge, so a pocket touching the crop's edge (the
    margin, or the image's edge where there is none) is open in the image too, and an enclosed one is the same
    region with the same area. The same result, for the cost of the box (an edit is a few per cent of a photo)."""
    if max_area <= 0 or not mask.any():
        return mask
    h, w = mask.shape
    top, bottom, left, right = mask_extent(mask)     # not empty: checked above
    y0, y1 = max(top - 1, 0), min(bottom + 2, h)
    x0, x1 = max(left - 1, 0), min(right + 2, w)
    crop = mask[y0:y1, x0:x1]
    inv = (~crop).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    if n <= 1:
        return mask
    ch, cw = crop.shape
    x, y, ww, hh, area = (stats[:, i] for i in range(5))
    touches = (x == 0) | (y == 0) | (x + ww >= cw) | (y + hh >= ch)
    fill = ~touches & (area <= max_area)
    fill[0] = False
    if not fill.any():
        return mask
    out = mask.copy()
    out[y0:y1, x0:x1] |= fill[labels]
    return out


def _blockify(mask: np.ndarray, block: int) -> np.ndarray:
    """Every block x block cell (on the image grid) that holds any True pixel, as a pixel mask."""
    h, w = mask.shape
    hb, wb = -(-h // block), -(-w // block)
    pad = np.zeros((hb * block, wb * block), bool)
    pad[:h, :w] = mask
    cells = pad.reshape(hb, block, wb, block).any(axis=(1, 3))
    return np.repeat(np.repeat(cells, block, axis=0), block, axis=1)[:h, :w]


def synthesise_footprint(test: CompositeTest, semantic: np.ndarray, cfg: FootprintConfig | None = None
                         ) -> np.ndarray:
    """The pixels the editor re-made, at the original resolution, always containing the semantic core."""
    cfg = cfg or FootprintConfig()
    h, w = test.residual.shape
    if semantic.shape != (h, w):
        raise ValueError(f"semantic mask {semantic.shape} does not match the residual {(h, w)}")
    tol = test.tolerance
    support = test.residual > tol                       # what the reference cannot explain
    if test.block > 1:
        support = _blockify(support, test.block)
    if test.floor is not None:                          # pixel level inside re-quantised blocks
        excess = test.original_residual.astype(np.float32) - cfg.jpeg_noise_factor * test.floor
    else:
        excess = test.residual.astype(np.float32)
    weak = support & (excess > tol)
    strong_level = tol + max(2, tol)
    seed = cv2.dilate(semantic.astype(np.uint8), _disk(2)) > 0
    footprint = np.zeros((h, w), bool)
    # labelled inside the box of the changed pixels, not over the whole image (the footprint 14.7 -> 5.9 ms a pair
    # at 1.5 Mpx on a composite): every region lies in it whole, with the same area, seed contact and pixels in the
    # same order (so the same float64 sums); only label 0, never kept, differs
    extent = mask_extent(weak)
    if extent is not None:
        top, bottom, left, right = extent
        box = (slice(top, bottom + 1), slice(left, right + 1))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(weak[box].astype(np.uint8), connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA]
        touches_seed = np.bincount(labels[seed[box]], minlength=n) > 0
        if test.exact:     # no noise on a bit-identical background: every changed region is an edit
            keep = touches_seed | (area >= 4)
        else:              # away from the model's region, only solid regions well above the noise
            mean = (np.bincount(labels.ravel(), weights=excess[box].ravel().astype(np.float64), minlength=n)
                    / np.maximum(area, 1))
            keep = touches_seed | ((mean > strong_level) & (area >= max(16, round(cfg.min_component * h * w))))
        keep[0] = False
        footprint[box] = keep[labels]
    if footprint.any():
        radius = round(cfg.close_radius * float(np.hypot(h, w)))
        if radius > 0 and not test.exact:   # on a noisy background the edit's residual dips inside the tolerance
            footprint = cv2.morphologyEx(footprint.astype(np.uint8), cv2.MORPH_CLOSE, _disk(radius)) > 0
        footprint = _fill_holes(footprint, round(cfg.max_hole * h * w))
        if test.block > 1:   # nothing outside the blocks the reference cannot explain
            footprint &= support
    return footprint | semantic_core(test, semantic, footprint, support, cfg)


def semantic_core(test: CompositeTest, semantic: np.ndarray, footprint: np.ndarray, support: np.ndarray,
                  cfg: FootprintConfig) -> np.ndarray:
    """The part of the semantic mask the pixels do not contradict; the footprint always contains it.

    On a composite, a pixel within the tolerance of the reference and outside the footprint is explained
    as untouched (bit-identical on an exact composite; within the re-save noise otherwise). The model's
    mask, upsampled from its working size, spills a few pixels past an object's edge and sometimes
    bridges a gap between two parts of it: those pixels are left out. An edit so faint it stays within
    the tolerance everywhere is invisible to the footprint; with `refute_explained` off the footprint
    keeps the whole semantic mask instead.
    """
    if not (test.is_composite and cfg.refute_explained):
        return semantic
    return semantic & (footprint | support)


def choose(mode: str, semantic: np.ndarray, test: CompositeTest | None, cfg: FootprintConfig | None = None
           ) -> FootprintResult:
    """Both masks and the one `mode` picks. `footprint` forces the footprint even off composites (with the
    background's own tolerance); the evidence still says the pair is not a composite."""
    check_mask_mode(mode)
    semantic = semantic.astype(bool, copy=False)
    if test is None:
        return FootprintResult(mask=semantic, chosen="semantic", semantic=semantic, footprint=None,
                               mask_mode=mode, composite={"is_composite": None})
    footprint = synthesise_footprint(test, semantic, cfg) if (test.is_composite or mode == "footprint") else None
    use_footprint = mode == "footprint" or (mode == "auto" and test.is_composite)
    chosen: Literal["semantic", "footprint"] = "footprint" if use_footprint else "semantic"
    return FootprintResult(mask=footprint if use_footprint else semantic, chosen=chosen, semantic=semantic,
                           footprint=footprint, mask_mode=mode,
                           composite={"is_composite": bool(test.is_composite), **test.evidence})


def analyse(original: np.ndarray, edited: np.ndarray, prob: np.ndarray, semantic: np.ndarray, mode: str = "auto",
            cfg: FootprintConfig | None = None) -> FootprintResult:
    """One call: composite test, footprint, choice. `semantic` mode still runs the test (the result reports it)."""
    test = composite_test(original, edited, prob, cfg)
    return choose(mode, semantic, test, cfg)

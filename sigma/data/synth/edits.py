"""Edits confined to a mask, mimicking the five edit types of text-driven editors.

Each edit is split in two: `sample_*` draws the parameters from the rng, `apply_*` is a pure function of
(base image, donor image, mask, params). That split lets the engine apply the *same* edit to a photo and
to its cached VAE roundtrip, which is how an online "VAE roundtrip of the edited image" costs nothing.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

Params = dict[str, Any]


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """Soft alpha in [0,1] from a bool mask; radius 0 → hard edge."""
    a = mask.astype(np.float32)
    if radius <= 0.3:
        return a
    k = int(2 * round(radius * 2) + 1)
    return cv2.GaussianBlur(a, (k, k), radius)


def blend(base: np.ndarray, new: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    out = base.astype(np.float32) * (1 - a) + new.astype(np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- remove: classical inpainting
def sample_remove(rng: np.random.Generator, h: int, w: int) -> Params:
    return {"method": str(rng.choice(["telea", "ns", "patch", "nearby"], p=[0.25, 0.15, 0.3, 0.3])),
            "radius": int(rng.integers(3, 8)),
            "shift": (int(rng.integers(-h // 2, h // 2 + 1)), int(rng.integers(-w // 2, w // 2 + 1))),
            "angle": float(rng.uniform(0, 2 * np.pi)), "reach": float(rng.uniform(1.1, 2.0)),
            "smooth": float(rng.uniform(2, 8)), "feather": float(rng.uniform(0, 4.0))}


def apply_remove(base: np.ndarray, donor: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
    m8 = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    if p["method"] == "nearby":
        # background continued from just beside the hole (a content-aware / exemplar fill): the photo's
        # own texture at a distance of ~1-2 hole sizes, low frequencies matched to the hole's ring
        ys, xs = np.nonzero(mask)
        size = max(4.0, float(max(np.ptp(ys), np.ptp(xs)))) if len(ys) else 8.0
        d = p["reach"] * size
        shift = (int(round(d * np.sin(p["angle"]))), int(round(d * np.cos(p["angle"]))))
        texture = np.roll(base, shift, axis=(0, 1))
        filled = harmonise(texture, base, mask, 0.8)
    elif p["method"] in ("telea", "ns"):
        flag = cv2.INPAINT_TELEA if p["method"] == "telea" else cv2.INPAINT_NS
        filled = cv2.inpaint(base, m8, p["radius"], flag)
    else:
        # patch fill: texture borrowed from elsewhere in the same photo, its low frequencies replaced by a
        # smooth fill of the hole, so the result looks like "background continued" rather than a copy.
        texture = np.roll(base, p["shift"], axis=(0, 1)).astype(np.float32)
        k = int(2 * round(p["smooth"] * 2) + 1)
        tex_hf = texture - cv2.GaussianBlur(texture, (k, k), p["smooth"])
        small = cv2.inpaint(cv2.resize(base, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA),
                            cv2.resize(m8, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_NEAREST), 3,
                            cv2.INPAINT_TELEA)
        low = cv2.resize(small, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        filled = np.clip(low + tex_hf, 0, 255).astype(np.uint8)
    return blend(base, filled, feather(mask, p["feather"]))


# ---------------------------------------------------------------- add / replace: splice from another photo
def sample_splice(rng: np.random.Generator, h: int, w: int) -> Params:
    return {"feather": float(rng.uniform(0, 3)), "harmonise": float(rng.uniform(0, 1)),
            "copy_move": bool(rng.random() < 0.3),
            "shift": (int(rng.integers(-h // 3, h // 3 + 1)), int(rng.integers(-w // 3, w // 3 + 1)))}


def harmonise(src: np.ndarray, ref: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """Move the spliced region's Lab mean/std towards the surroundings it lands in (strength 0–1)."""
    if strength <= 0 or mask.sum() < 4:
        return src
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
    if ring.sum() < 4:
        ring = ~mask if (~mask).sum() >= 4 else mask
    s = cv2.cvtColor(src, cv2.COLOR_RGB2LAB).astype(np.float32)
    r = cv2.cvtColor(ref, cv2.COLOR_RGB2LAB).astype(np.float32)
    sm, ss = s[mask].mean(0), s[mask].std(0) + 1e-3
    rm, rs = r[ring].mean(0), r[ring].std(0) + 1e-3
    target = (s - sm) * (1 + strength * (rs / ss - 1)) + sm + strength * (rm - sm)
    return cv2.cvtColor(np.clip(target, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def apply_splice(base: np.ndarray, donor: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
    src = np.roll(base, p["shift"], axis=(0, 1)) if p["copy_move"] else donor
    src = harmonise(src, base, mask, p["harmonise"])
    return blend(base, src, feather(mask, p["feather"]))


# ---------------------------------------------------------------- a new building seen from above
ROOF_PALETTE = np.array([[150, 150, 150], [205, 205, 200], [235, 232, 225], [90, 90, 95], [160, 85, 65],
                         [120, 70, 55], [75, 115, 175], [60, 95, 150], [170, 150, 120]], np.float32)


def sample_roof(rng: np.random.Generator, h: int, w: int) -> Params:
    return {"colour": int(rng.integers(len(ROOF_PALETTE))), "jitter": rng.uniform(-25, 25, 3).tolist(),
            "gable": float(rng.uniform(0.05, 0.3)) if rng.random() < 0.6 else 0.0,
            "grain": float(rng.uniform(1.5, 8.0)), "shadow": float(rng.uniform(0.45, 0.8)),
            "sun": float(rng.uniform(0, 2 * np.pi)), "reach": float(rng.uniform(1.0, 4.0)),
            "feather": float(rng.uniform(0, 0.8)), "seed": int(rng.integers(2**31))}


def apply_roof(base: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
    """Roofs on the mask's components (one colour for the lot, a gable ridge along each one's long axis,
    grain) and their cast shadow beside them. Aerial change labels mark the footprint, not the shadow:
    the shadow darkens ground outside the mask, unlabelled. Why procedural: a splice of another tile's
    texture in a rectangle looks like no building, and real new buildings are what those labels mark."""
    rng = np.random.default_rng(p["seed"])
    h, w = mask.shape
    out = base.astype(np.float32)
    dy, dx = np.sin(p["sun"]) * p["reach"], np.cos(p["sun"]) * p["reach"]
    shifted = cv2.warpAffine(mask.astype(np.uint8), np.float32([[1, 0, dx], [0, 1, dy]]), (w, h),
                             flags=cv2.INTER_NEAREST).astype(bool)
    out[shifted & ~mask] *= p["shadow"]
    colour = np.clip(ROOF_PALETTE[p["colour"]] + np.float32(p["jitter"]), 0, 255)
    n, labels = cv2.connectedComponents(mask.astype(np.uint8))
    roof = out.copy()
    for k in range(1, n):
        ys, xs = np.nonzero(labels == k)
        shade = np.ones(len(ys), np.float32)
        if p["gable"] > 0 and len(ys) >= 6:
            cy, cx = ys.mean(), xs.mean()
            evecs = np.linalg.eigh(np.cov(np.stack([ys - cy, xs - cx])))[1]
            major = evecs[:, 1]
            side = (ys - cy) * major[1] - (xs - cx) * major[0] > 0
            shade = np.where(side, 1 + p["gable"], 1 - p["gable"]).astype(np.float32)
        roof[ys, xs] = colour[None] * shade[:, None] + rng.normal(0, p["grain"], (len(ys), 1)).astype(np.float32)
    out = np.clip(out, 0, 255).astype(np.uint8)
    return blend(out, np.clip(roof, 0, 255).astype(np.uint8), feather(mask, p["feather"]))


# ---------------------------------------------------------------- copy-move inside the same photo
def sample_copymove(rng: np.random.Generator, h: int, w: int) -> Params:
    transform = rng.random() < 0.5
    return {"dy": float(rng.uniform(-0.45, 0.45) * h), "dx": float(rng.uniform(-0.45, 0.45) * w),
            "angle": float(rng.choice([rng.uniform(-35, 35), rng.choice([90.0, 180.0, -90.0])], p=[0.8, 0.2]))
            if transform else 0.0,
            "scale": float(np.exp(rng.uniform(np.log(0.7), np.log(1.45)))) if transform else 1.0,
            "flip": bool(transform and rng.random() < 0.25),
            "feather": float(rng.choice([0.0, rng.uniform(0.3, 2.0)])), "harmonise": float(rng.uniform(0, 0.3))}


def apply_copymove(base: np.ndarray, donor: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
    """A patch of the same photo pasted over the mask (hiding what was there), optionally rotated /
    scaled / mirrored: the copy-move forgery. The label is the whole pasted patch."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = (float(ys.mean()), float(xs.mean())) if len(ys) else (h / 2, w / 2)
    src_c = (cx - p["dx"], cy - p["dy"])              # where the patch comes from
    m = cv2.getRotationMatrix2D(src_c, p["angle"], p["scale"])
    m[0, 2] += cx - src_c[0]
    m[1, 2] += cy - src_c[1]
    src = base[:, ::-1] if p["flip"] else base
    if p["flip"]:
        m = m @ np.array([[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]], np.float64)
    moved = cv2.warpAffine(np.ascontiguousarray(src), m, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    moved = harmonise(moved, base, mask, p["harmonise"])
    return blend(base, moved, feather(mask, p["feather"]))


# ---------------------------------------------------------------- attribute: same object, changed look
def sample_attribute(rng: np.random.Generator, h: int, w: int) -> Params:
    kind = str(rng.choice(["hue", "saturation", "brightness", "texture", "blur", "sharpen", "recolor"]))
    return {"kind": kind, "hue": float(rng.uniform(20, 160)) * float(rng.choice([-1, 1])),
            "sat": float(rng.choice([rng.uniform(0.0, 0.5), rng.uniform(1.6, 2.5)])),
            "bright": float(rng.choice([rng.uniform(-70, -30), rng.uniform(30, 70)])),
            "sigma": float(rng.uniform(2.0, 5.0)), "amount": float(rng.uniform(1.5, 3.0)),
            "color": rng.integers(0, 256, 3).tolist(), "tex_seed": int(rng.integers(1 << 30)),
            "feather": float(rng.uniform(0, 2.5))}


def apply_attribute(base: np.ndarray, donor: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
    kind = p["kind"]
    img = base
    if kind in ("hue", "saturation"):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
        if kind == "hue":
            hsv[..., 0] = (hsv[..., 0] + p["hue"] * 256 / 360) % 256
            hsv[..., 1] = np.maximum(hsv[..., 1], 90)  # a hue shift on grey is invisible: give it colour
        else:
            hsv[..., 1] = np.clip(hsv[..., 1] * p["sat"] + (40 if p["sat"] > 1 else 0), 0, 255)
        new = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL)
    elif kind == "brightness":
        new = np.clip(img.astype(np.float32) + p["bright"], 0, 255).astype(np.uint8)
    elif kind == "blur":
        new = cv2.GaussianBlur(img, (0, 0), p["sigma"])
    elif kind == "sharpen":
        soft = cv2.GaussianBlur(img, (0, 0), 2.0).astype(np.float32)
        new = np.clip(img + p["amount"] * (img - soft), 0, 255).astype(np.uint8)
    elif kind == "texture":
        trng = np.random.default_rng(p["tex_seed"])
        g = trng.normal(0, 1, (img.shape[0] // 4 + 1, img.shape[1] // 4 + 1)).astype(np.float32)
        tex = cv2.resize(g, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_CUBIC)
        new = np.clip(img.astype(np.float32) + 35 * tex[..., None], 0, 255).astype(np.uint8)
    else:  # recolor: material/paint change, keep shading
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)[..., None] / 255.0
        new = np.clip(np.array(p["color"], np.float32) * (0.4 + 0.9 * grey), 0, 255).astype(np.uint8)
    return blend(base, new, feather(mask, p["feather"]))


# ---------------------------------------------------------------- global: style / colour of the whole image
def sample_global(rng: np.random.Generator, h: int, w: int) -> Params:
    return {"kind": str(rng.choice(["grade", "posterize", "stylize", "mono"])),
            "gains": rng.uniform(0.6, 1.4, 3).tolist(), "gamma": float(rng.uniform(0.6, 1.6)),
            "levels": int(rng.integers(3, 7))}


def apply_global(base: np.ndarray, donor: np.ndarray, mask: np.ndarray, p: Params) -> np.ndarray:
    x = base.astype(np.float32) / 255.0
    if p["kind"] == "grade":
        x = np.power(x, p["gamma"]) * np.array(p["gains"], np.float32)
    elif p["kind"] == "posterize":
        x = np.round(x * p["levels"]) / p["levels"]
    elif p["kind"] == "stylize":
        out = cv2.stylization(base, sigma_s=40, sigma_r=0.4) if hasattr(cv2, "stylization") else base
        x = out.astype(np.float32) / 255.0
    else:
        g = x.mean(2, keepdims=True)
        x = np.concatenate([g * 1.1, g * 0.95, g * 0.8], 2)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- generative inpainting of a region
def sample_regen(rng: np.random.Generator) -> Params:
    """How an inpainting editor re-renders the whole region it was handed, around the object it drew."""
    return {"offset": float(rng.choice([-1, 1]) * rng.uniform(2, 9)), "gains": rng.uniform(0.96, 1.04, 3).tolist(),
            "field": float(rng.uniform(0, 6)), "seed": int(rng.integers(1 << 30)),
            "render": str(rng.choice(["vae", "texture", "blur", "resample"], p=[0.55, 0.2, 0.1, 0.15])),
            "strength": float(rng.uniform(15, 45)), "sigma": float(rng.uniform(0.5, 1.2)),
            "factor": float(rng.uniform(0.5, 0.8)), "feather": float(rng.uniform(0, 2.5))}


def regenerate(base: np.ndarray, rendered: np.ndarray | None, p: Params) -> np.ndarray:
    """The region as the editor re-synthesised it: another rendering of the same content (a VAE
    decode when given, else texture re-rendering), a few levels brighter/darker, slightly tinted,
    with a smooth variation across it (a wall re-rendered a few levels brighter)."""
    from sigma.data import perturb as K

    if p["render"] == "vae" and rendered is not None:
        out = rendered
    elif p["render"] == "blur":
        out = K.blur(base, p["sigma"])
    elif p["render"] == "resample":
        out = K.resample(base, p["factor"], 2, 1)
    else:
        out = K.denoise_sharpen(base, p["strength"], 0.6, 1.0)
    h, w = base.shape[:2]
    field = p["field"] * K.smooth_field(h, w, p["seed"], 3)
    x = out.astype(np.float32) * np.asarray(p["gains"], np.float32) + p["offset"] + field[..., None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


SAMPLERS = {"remove": sample_remove, "splice": sample_splice, "attribute": sample_attribute,
            "global": sample_global, "copymove": sample_copymove}
APPLIERS = {"remove": apply_remove, "splice": apply_splice, "attribute": apply_attribute,
            "global": apply_global, "copymove": apply_copymove}

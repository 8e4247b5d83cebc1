"""Random edit-region masks: object-like shapes from 0.5 % to 60 % of the image.

Every generator takes (rng, h, w, area) and returns a bool [h, w] mask whose area is *roughly* `area`
(a fraction); shapes are what real edits look like: objects (blobs, polygons, ellipses, superpixel
unions), brush strokes from mask-drawing UIs, thin structures (wires, text lines), several regions.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

MaskFn = Callable[[np.random.Generator, int, int, float], np.ndarray]


def _center(rng: np.random.Generator, h: int, w: int, r: float) -> tuple[float, float]:
    my, mx = min(r, h / 2), min(r, w / 2)
    return float(rng.uniform(my * 0.5, h - my * 0.5)), float(rng.uniform(mx * 0.5, w - mx * 0.5))


def ellipse(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
    a_px = area * h * w
    ratio = float(rng.uniform(0.35, 1.0))
    ax = math.sqrt(a_px / (math.pi * ratio))
    ay = ax * ratio
    cy, cx = _center(rng, h, w, ax)
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (int(cx), int(cy)), (max(1, int(ax)), max(1, int(ay))), float(rng.uniform(0, 180)),
                0, 360, 1, -1)
    return m.astype(bool)


def polygon(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
    n = int(rng.integers(3, 11))
    angles = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * math.pi / n)
    radii = rng.uniform(0.5, 1.0, n)
    # area of a star polygon with these radii at unit scale, then scale to the target area
    unit = 0.5 * np.sum(radii * np.roll(radii, -1) * np.sin(np.diff(np.r_[angles, angles[0] + 2 * math.pi])))
    scale = min(math.sqrt(area * h * w / max(unit, 0.05)), 1.5 * max(h, w))
    cy, cx = _center(rng, h, w, scale)
    pts = np.stack([cx + scale * radii * np.cos(angles), cy + scale * radii * np.sin(angles)], 1)
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [pts.astype(np.int32)], 1)
    return m.astype(bool)


def brush(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
    """Free-form strokes as drawn in an inpainting UI: thick random walks with round caps."""
    m = np.zeros((h, w), np.uint8)
    target = area * h * w
    thick = max(3, int(math.sqrt(target) * rng.uniform(0.15, 0.45)))
    y, x = _center(rng, h, w, thick * 2)
    angle = rng.uniform(0, 2 * math.pi)
    for _ in range(60):
        angle += rng.normal(0, 0.8)
        step = rng.uniform(0.5, 1.5) * thick
        ny = float(np.clip(y + step * math.sin(angle), 0, h - 1))
        nx = float(np.clip(x + step * math.cos(angle), 0, w - 1))
        cv2.line(m, (int(x), int(y)), (int(nx), int(ny)), 1, thick)
        y, x = ny, nx
        if m.sum() >= target:
            break
    return m.astype(bool)


def blob(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
    """Object-like blob: smooth noise thresholded at the area quantile, largest component kept."""
    g = int(rng.integers(3, 8))
    noise = rng.normal(size=(g, g)).astype(np.float32)
    field = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    # bias towards one center so the blob is compact
    cy, cx = _center(rng, h, w, math.sqrt(area * h * w) / 2)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field -= ((yy - cy) ** 2 + (xx - cx) ** 2) / (0.5 * area * h * w + 1.0)
    thr = np.quantile(field, 1.0 - area)
    m = (field > thr).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n > 2:
        keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        m = (labels == keep).astype(np.uint8)
    return m.astype(bool)


def superpixels(rng: np.random.Generator, h: int, w: int, area: float,
                image: np.ndarray | None = None) -> np.ndarray:
    """A union of adjacent superpixels (SLIC over the photo when given, else Voronoi cells)."""
    n_seg = int(rng.integers(40, 160))
    labels = None
    try:  # scikit-image is in the `train` extra; without it, Voronoi cells stand in for superpixels
        from skimage.segmentation import slic
    except ImportError:
        image = None
    if image is not None:
        small = cv2.resize(image, (max(8, w // 2), max(8, h // 2)), interpolation=cv2.INTER_AREA)
        lab = slic(small, n_segments=n_seg, compactness=10, start_label=0)
        labels = cv2.resize(lab.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    if labels is None or labels.max() < 4:  # no photo, or a flat one SLIC cannot split
        pts = np.stack([rng.uniform(0, h, n_seg), rng.uniform(0, w, n_seg)], 1)
        yy, xx = np.mgrid[0:h:4, 0:w:4]
        d = (yy.ravel()[:, None] - pts[None, :, 0]) ** 2 + (xx.ravel()[:, None] - pts[None, :, 1]) ** 2
        labels = cv2.resize(d.argmin(1).reshape(yy.shape).astype(np.int32), (w, h),
                            interpolation=cv2.INTER_NEAREST)
    cy, cx = int(rng.uniform(0, h)), int(rng.uniform(0, w))
    chosen = {int(labels[cy, cx])}
    m = labels == labels[cy, cx]
    target = area * h * w
    for _ in range(200):
        if m.sum() >= target:
            break
        ring = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~m
        cand = np.unique(labels[ring])
        cand = [c for c in cand.tolist() if c not in chosen]
        if not cand:
            break
        c = int(rng.choice(cand))
        chosen.add(c)
        m |= labels == c
    return m


def thin(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
    """Thin structures (wires, poles, text strokes): 1–4 px curves; `area` is ignored (thin by nature)."""
    m = np.zeros((h, w), np.uint8)
    t = int(rng.integers(1, 5))
    for _ in range(int(rng.integers(1, 4))):
        pts = np.stack([rng.uniform(0, w, 4), rng.uniform(0, h, 4)], 1)
        ts = np.linspace(0, 1, 40)[:, None]
        bez = ((1 - ts) ** 3 * pts[0] + 3 * (1 - ts) ** 2 * ts * pts[1] + 3 * (1 - ts) * ts ** 2 * pts[2]
               + ts ** 3 * pts[3])
        cv2.polylines(m, [bez.astype(np.int32)], False, 1, t)
    return m.astype(bool)


def rectangle(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
    ratio = float(rng.uniform(0.4, 2.5))
    bw = min(w, math.sqrt(area * h * w * ratio))
    bh = min(h, area * h * w / max(bw, 1))
    y0 = int(rng.uniform(0, max(1, h - bh)))
    x0 = int(rng.uniform(0, max(1, w - bw)))
    m = np.zeros((h, w), bool)
    m[y0:y0 + max(1, int(bh)), x0:x0 + max(1, int(bw))] = True
    return m


SHAPES: dict[str, MaskFn] = {
    "blob": blob, "ellipse": ellipse, "polygon": polygon, "brush": brush, "rectangle": rectangle,
    "superpixels": superpixels, "thin": thin,
}


def sample_area(rng: np.random.Generator, lo: float = 0.005, hi: float = 0.6) -> float:
    """Log-uniform: small edits are as common as large ones, as in real editing data."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def random_mask(rng: np.random.Generator, h: int, w: int, weights: dict[str, float],
                area_range: tuple[float, float] = (0.005, 0.6), multi_p: float = 0.15,
                image: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """One mask and the name of its shape ("multi:<a>+<b>" for several regions)."""
    names = list(weights)
    p = np.array([weights[n] for n in names], np.float64)
    p /= p.sum()
    area = sample_area(rng, *area_range)
    count = int(rng.integers(2, 4)) if rng.random() < multi_p else 1
    out = np.zeros((h, w), bool)
    used = []
    for _ in range(count):
        name = names[int(rng.choice(len(names), p=p))]
        fn = SHAPES[name]
        part_area = area / count
        m = fn(rng, h, w, part_area, image) if name == "superpixels" else fn(rng, h, w, part_area)
        out |= m
        used.append(name)
    if not out.any():  # degenerate draw (tiny thin line off-image): fall back to a small ellipse
        out = ellipse(rng, h, w, max(area, 0.005))
        used = ["ellipse"]
    return out, (used[0] if count == 1 else "multi:" + "+".join(used))


def irregular(rng: np.random.Generator, mask: np.ndarray, amount: float) -> np.ndarray:
    """Roughen a mask's boundary (hand-drawn inpainting masks, ragged object outlines): the mask is
    softened, a smooth noise field of relative `amount` is added, and the result thresholded again.
    The mask's interior is kept; an empty result returns the input."""
    if amount <= 0 or not mask.any():
        return mask
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    size = max(4.0, float(max(np.ptp(ys), np.ptp(xs))) + 1)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.8, 0.08 * size))
    cells = int(np.clip(max(h, w) / max(2.0, 0.25 * size), 3, 48))
    g = rng.normal(size=(cells, cells)).astype(np.float32)
    noise = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    out = soft + amount * noise / max(float(np.abs(noise).max()), 1e-6) > 0.5
    out |= cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & (soft > 0.9)
    return out if out.sum() >= max(4, 0.3 * mask.sum()) else mask


def sample_area_mix(rng: np.random.Generator, area_range: tuple[float, float], small_p: float,
                    small_range: tuple[float, float]) -> float:
    """Log-uniform over `area_range`, or with probability `small_p` over `small_range` (tiny edits:
    single small objects, text-sized patches, down to 0.05 % of the image)."""
    if small_p > 0 and rng.random() < small_p:
        return sample_area(rng, *small_range)
    return sample_area(rng, *area_range)


def shaped_mask(rng: np.random.Generator, h: int, w: int, weights: dict[str, float], area: float,
                count: int = 1, image: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """`count` regions of total area ≈ `area`, shapes drawn from `weights`."""
    names = list(weights)
    p = np.array([weights[n] for n in names], np.float64)
    p /= p.sum()
    out = np.zeros((h, w), bool)
    used = []
    for _ in range(count):
        name = names[int(rng.choice(len(names), p=p))]
        fn = SHAPES[name]
        part = area / count
        out |= fn(rng, h, w, part, image) if name == "superpixels" else fn(rng, h, w, part)
        used.append(name)
    if not out.any():
        out = ellipse(rng, h, w, max(area, 0.002))
        used = ["ellipse"]
    return out, (used[0] if count == 1 else "multi:" + "+".join(used))

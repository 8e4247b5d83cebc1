"""Composite test + synthesised footprint on synthetic composites with known footprints →
bench/results/bench_footprint.json.

A check of `sigma.annotators.footprint` away from ../shared/data/eval (which is a report, not a target):
real photographs from ../shared/data/photos, edits made here with known pixel footprints, then saved as
the pair would reach a user:

  edits       copy-move (same photo, optionally rotated/scaled), removal by a real inpainter (OpenCV
              Telea / Navier-Stokes), splice from another photo (hard or 1-2 px feathered edge), local
              relighting/recolouring (6-40 levels), two regions at once; areas 0.1 %-25 % log-uniform
  conditions  none (lossless composite), jpeg90 / jpeg75 (the edited image re-saved), both_jpeg (the
              original is itself a JPEG q90, the composite is re-saved at q85), resize (down 0.5-0.8 and
              back: not a composite), blur (Gaussian σ=1 over the whole image: not a composite), vae
              (TAEF2 roundtrip, --vae, slow on a CPU: not a composite)

Per condition: how often the pair is called a composite, and mean per-pair F1 of the semantic mask
(sigma-lite), the footprint (forced), the auto mask, and pixel differencing at its best τ for the
condition. Timing of the composite test + footprint is reported as a ratio to sigma-lite's own
per-pair time in the same run.

    python bench/bench_footprint.py --n 48
    python bench/bench_footprint.py --n 24 --vae
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sigma.annotators.footprint import FootprintConfig, choose, composite_test  # noqa: E402
from sigma.data.synth import masks as synth_masks  # noqa: E402
from sigma.eval import perturb  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SHARED = Path(os.environ.get("SIGMA_SHARED", ROOT.parent / "shared"))
EDITS = ("copymove", "remove", "splice", "relight", "multi")
CONDITIONS = ("none", "jpeg90", "jpeg75", "both_jpeg", "resize", "blur")
COMPOSITED = {"none", "jpeg90", "jpeg75", "both_jpeg"}


def load_photo(path: Path, max_side: int) -> np.ndarray:
    """The photo as the project reads one (`sigma.io.read_image`: byte and pixel limits, EXIF orientation, ICC
    profiles to sRGB), long side at most `max_side`. Pillow opened it directly here: a rotated phone photo was
    edited on its side, a Display P3 one was taken for sRGB, and a decompression bomb was decoded whole."""
    from PIL import Image

    from sigma.io import read_image

    img = Image.fromarray(read_image(path).rgb)
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    return np.asarray(img).copy()


def region(rng: np.random.Generator, h: int, w: int, area: float) -> np.ndarray:
    shape = str(rng.choice(["ellipse", "polygon", "blob"]))
    mask = synth_masks.SHAPES[shape](rng, h, w, area)
    if not mask.any():
        mask = synth_masks.ellipse(rng, h, w, max(area, 0.002))
    return mask


def copy_move(rng, photo, mask):
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    sy, sx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    angle = float(rng.choice([0.0, rng.uniform(-20, 20)]))
    scale = float(rng.choice([1.0, rng.uniform(0.85, 1.15)]))
    m = cv2.getRotationMatrix2D((float(sx), float(sy)), angle, scale)
    m[:, 2] += (cx - sx, cy - sy)
    moved = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = photo.copy()
    out[mask] = moved[mask]
    return out, mask


def remove(rng, photo, mask):
    m8 = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    flag = cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS
    return cv2.inpaint(photo, m8, int(rng.integers(3, 8)), flag), m8 > 0


def splice(rng, photo, mask, donor):
    h, w = mask.shape
    donor = cv2.resize(donor, (w, h), interpolation=cv2.INTER_AREA)
    radius = float(rng.choice([0.0, rng.uniform(0.8, 2.0)]))
    alpha = mask.astype(np.float32)
    if radius > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), radius)
    out = np.clip(photo * (1 - alpha[..., None]) + donor * alpha[..., None] + 0.5, 0, 255).astype(np.uint8)
    return out, (out != photo).any(axis=2) | mask


def relight(rng, photo, mask):
    gain = rng.uniform(6, 40) * rng.choice([-1, 1]) * rng.uniform(0.6, 1.0, size=3)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)
    out = np.clip(photo + alpha[..., None] * gain[None, None, :] + 0.5, 0, 255).astype(np.uint8)
    return out, (out != photo).any(axis=2)


def make_composite(rng: np.random.Generator, photo: np.ndarray, donor: np.ndarray, kind: str):
    h, w = photo.shape[:2]
    area = math.exp(rng.uniform(math.log(0.001), math.log(0.25)))
    if kind == "multi":
        out, gt = photo, np.zeros((h, w), bool)
        for _ in range(2):
            sub = str(rng.choice(["copymove", "remove", "splice", "relight"]))
            out, part = make_composite_one(rng, out, donor, sub, area / 2)
            gt |= part
        return out, gt
    return make_composite_one(rng, photo, donor, kind, area)


def make_composite_one(rng, photo, donor, kind, area):
    mask = region(rng, *photo.shape[:2], area)
    if kind == "copymove":
        return copy_move(rng, photo, mask)
    if kind == "remove":
        return remove(rng, photo, mask)
    if kind == "splice":
        return splice(rng, photo, mask, donor)
    return relight(rng, photo, mask)


def condition(name: str, original: np.ndarray, edited: np.ndarray, pair_id: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "none":
        return original, edited
    if name in ("jpeg90", "jpeg75", "resize", "vae"):
        return original, perturb.apply(name, edited, pair_id)
    if name == "blur":
        return original, cv2.GaussianBlur(edited, (0, 0), 1.0)
    raise ValueError(name)


def best_tau(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[float, float]:
    taus = [0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2]
    scores = [np.mean([f1(diff > t, gt) for diff, gt, _ in rows]) for t in taus]
    i = int(np.argmax(scores))
    return float(scores[i]), taus[i]


def f1(pred: np.ndarray, gt: np.ndarray) -> float:
    tp = np.count_nonzero(pred & gt)
    denom = 2 * tp + np.count_nonzero(pred & ~gt) + np.count_nonzero(~pred & gt)
    return 1.0 if denom == 0 else 2 * tp / denom


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", default=str(SHARED / "data" / "photos"))
    ap.add_argument("--n", type=int, default=48, help="composites (one per photo)")
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--vae", action="store_true", help="add the TAEF2 roundtrip condition (slow on a CPU)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "bench_footprint.json"))
    args = ap.parse_args()

    from sigma.data.synth.cache import list_photos, readable_photos
    from sigma.registry import create_annotator
    from sigma.types import Pair

    photos, unreadable = readable_photos(list_photos(args.photos))   # headers checked as sigma.io reads them
    for why in unreadable:
        print(f"skipped: {why}", file=sys.stderr)
    if len(photos) < 2:
        print(f"fewer than 2 readable photos under {args.photos}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(photos), size=min(args.n, len(photos)), replace=False)
    conditions = [c for c in args.conditions.split(",") if c] + (["vae"] if args.vae else [])
    annotator = create_annotator("sigma-lite", cpu_threads=1)
    cfg = FootprintConfig()
    per: dict[str, list[dict]] = {c: [] for c in conditions}
    pixrows: dict[str, list] = {c: [] for c in conditions}
    model_s = foot_s = 0.0
    calls = 0
    for i, idx in enumerate(picks):
        photo = load_photo(photos[int(idx)], args.max_side)
        donor = load_photo(photos[int(picks[(i + 1) % len(picks)])], args.max_side)
        kind = EDITS[i % len(EDITS)]
        for cond in conditions:
            base = perturb.jpeg(photo, 90) if cond == "both_jpeg" else photo
            crng = np.random.default_rng([args.seed, int(idx), 7])   # same edit in every condition
            edited, gt = make_composite(crng, base, donor, kind)
            if cond == "both_jpeg":
                original, edited = base, perturb.jpeg(edited, 85)
            else:
                original, edited = condition(cond, base, edited, f"synth{idx}")
            pair = Pair(original=original, edited=edited, pair_id=f"synth{idx}")
            t0 = time.perf_counter()
            ann = annotator.predict([pair])[0]
            t1 = time.perf_counter()
            test = composite_test(original, edited, ann.prob, cfg)
            semantic = ann.prob > annotator.threshold
            auto = choose("auto", semantic, test, cfg)
            forced = choose("footprint", semantic, test, cfg)
            t2 = time.perf_counter()
            model_s += t1 - t0
            foot_s += t2 - t1
            calls += 1
            per[cond].append({"id": f"synth{idx}", "kind": kind, "gt_fraction": round(float(gt.mean()), 5),
                              "composite": bool(test.is_composite), "tier": test.evidence.get("tier"),
                              "semantic": f1(semantic, gt), "footprint": f1(forced.mask, gt),
                              "auto": f1(auto.mask, gt)})
            diff = np.abs(original.astype(np.int16) - edited).mean(axis=2) / 255.0
            pixrows[cond].append((diff, gt, kind))
        print(f"{i + 1}/{len(picks)} {kind}", file=sys.stderr, flush=True)
    summary = {}
    for cond, rows in per.items():
        if not rows:
            continue
        pix, tau = best_tau(pixrows[cond])
        summary[cond] = {
            "pairs": len(rows), "composite_rate": float(np.mean([r["composite"] for r in rows])),
            "semantic_f1": float(np.mean([r["semantic"] for r in rows])),
            "footprint_f1": float(np.mean([r["footprint"] for r in rows])),
            "auto_f1": float(np.mean([r["auto"] for r in rows])),
            "pixel_diff_best_f1": pix, "pixel_diff_best_tau": tau,
            "by_kind": {k: {"auto_f1": float(np.mean([r["auto"] for r in rows if r["kind"] == k])),
                            "semantic_f1": float(np.mean([r["semantic"] for r in rows if r["kind"] == k]))}
                        for k in EDITS if any(r["kind"] == k for r in rows)},
        }
    result = {"bench": "footprint", "photos": args.photos, "n": len(picks), "seed": args.seed,
              "expected_composite": sorted(COMPOSITED & set(conditions)),
              "footprint_ms_over_model_ms": round(foot_s / max(model_s, 1e-9), 3),
              "config": cfg.model_dump(), "summary": summary, "pairs": per}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{'condition':<10} {'pairs':>5} {'comp%':>6} {'sem':>6} {'foot':>6} {'auto':>6} {'pix*':>6}")
    for cond, s in summary.items():
        print(f"{cond:<10} {s['pairs']:>5} {100 * s['composite_rate']:6.1f} {100 * s['semantic_f1']:6.1f} "
              f"{100 * s['footprint_f1']:6.1f} {100 * s['auto_f1']:6.1f} {100 * s['pixel_diff_best_f1']:6.1f}")
    print(f"composite test + footprint time / sigma-lite time: {result['footprint_ms_over_model_ms']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

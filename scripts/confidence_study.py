"""Confidence formulas against per-pair F1 (issue 14, item 6): Spearman ρ over manipulated pairs of the npz
files written by scripts/collect_probs.py, and the cutoff table (keep pairs with confidence ≥ c → mean F1).

    python scripts/confidence_study.py runs/probs/shipped/*.npz
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def load(path):
    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    return [(m, z[f"p{i}"].astype(np.float32) / 255.0, z[f"g{i}"]) for i, m in enumerate(meta)]


def main(paths):
    from sigma.annotators.mask_extras import confidence, expected_f1

    for path in paths:
        rows = [r for r in load(path) if r[2].any()]
        f1 = np.array([m["f1"] for m, _, _ in rows])
        out = {"pairs": len(rows), "mean_f1": round(float(f1.mean()), 4)}
        cands = {
            "margin (old)": [confidence(p, p > 0.5, 0.5) for _, p, _ in rows],
            "expected_f1": [expected_f1(p, p > 0.5) for _, p, _ in rows],
        }
        for name, c in cands.items():
            out[name] = round(spearman(np.array(c), f1), 3)
        print(path, json.dumps(out))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("npz", nargs="+", help="files written by scripts/collect_probs.py")
    main(ap.parse_args().npz)

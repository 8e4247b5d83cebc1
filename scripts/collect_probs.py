"""Collect per-pair probability maps of a sigma-lite model over pairs.jsonl folders (optionally under
`sigma eval` perturbations) for the confidence study (issue 14, item 6): each pair's prob map (uint8, at
the original resolution), its ground truth and its F1 at 0.5, in one .npz per (folder, perturbation).

    python scripts/collect_probs.py --weights sigma/weights/sigma-lite.safetensors --data runs/val/synth-ii-v1 \
        --perturb none --out runs/probs/shipped
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--perturb", default="none")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from sigma.eval import perturb
    from sigma.eval.metrics import score_image
    from sigma.io.images import read_mask
    from sigma.io.pairs import load_pair
    from sigma.io.pairs_jsonl import find_sets, read_set
    from sigma.registry import create_annotator

    ann = create_annotator("sigma-lite", weights=args.weights, parser=None)
    names = perturb.expand(args.perturb)
    perturb.prepare(names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = [r for s in find_sets(args.data) for r in read_set(s)]
    for name in names:
        target = out / f"{Path(args.data).name}__{name}.npz"
        if target.is_file():
            continue
        arrays, rows = {}, []
        for i, rec in enumerate(records):
            pair = load_pair(rec.original, rec.edited, rec.instruction, pair_id=rec.pair_id)
            gt = read_mask(rec.mask)
            pair.edited = perturb.apply(name, pair.edited, rec.pair_id)
            a = ann.predict([pair])[0]
            s = score_image(rec.pair_id, a.mask, a.prob, gt)
            arrays[f"p{i}"] = np.round(a.prob * 255).astype(np.uint8)
            arrays[f"g{i}"] = gt
            rows.append({"set": rec.set_name, "id": rec.pair_id, "f1": s.f1, "iou": s.iou,
                         "gt_fraction": s.gt_fraction, "whole": rec.whole_image_changed,
                         "confidence": a.extra.get("confidence")})
        np.savez_compressed(target, meta=json.dumps(rows), **arrays)
        print(f"{target}: {len(rows)} pairs", flush=True)


if __name__ == "__main__":
    main()

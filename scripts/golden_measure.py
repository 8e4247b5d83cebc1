"""Mean F1 of a sigma-lite file on the golden pairs of tests/test_golden_sigma_lite.py under `vae`
(what the golden test asserts a floor on): python scripts/golden_measure.py [WEIGHTS]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(weights: str | None) -> None:
    import test_golden_sigma_lite as golden

    from sigma.eval import perturb
    from sigma.eval.metrics import score_image
    from sigma.io.images import read_mask
    from sigma.io.pairs import load_pair
    from sigma.registry import create_annotator

    ann = create_annotator("sigma-lite", parser=None, **({"weights": weights} if weights else {}))
    perturb.prepare(["vae"])
    f1 = []
    for rec in golden._records():
        pair = load_pair(rec.original, rec.edited, rec.instruction, pair_id=rec.pair_id)
        pair.edited = perturb.apply("vae", pair.edited, rec.pair_id)
        r = ann.predict([pair])[0]
        f1.append(score_image(rec.pair_id, r.mask, r.prob, read_mask(rec.mask)).f1)
        print(f"{rec.set_name}/{rec.pair_id}: {f1[-1]:.4f}", flush=True)
    print(f"mean {np.mean(f1):.4f} over {len(f1)} pairs")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="?", help="a .safetensors file (default: the shipped sigma-lite)")
    main(ap.parse_args().weights)

"""Write the synthetic check set of the removal-margin family (issue 14, run g's selection): inpainting pairs
only, every one with the object-plus-margin region, all regenerated, from a run's own data config.

    python scripts/write_margin_check.py runs/sigma-lite-ii-f/config.yaml runs/val/margin-check [N] [SEED]

Then `sigma eval --data runs/val/margin-check --set options.weights=RUN/best --set options.mask_mode=semantic`.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main(config: str, out: str, n: int = 96, seed: int = 777) -> None:
    from sigma.config.loader import load_config
    from sigma.training.config import TrainConfig
    from sigma.training.data import write_val_dir

    cfg = load_config(TrainConfig, config, [])
    data = cfg.data.model_copy(update={"mix": {"inpaint": 1.0}, "inpaint_margin_p": 1.0,
                                       "inpaint_composite_p": 0.0, "crop": 160, "cache_index": ""})
    cfg = cfg.model_copy(update={"data": data, "eval": cfg.eval.model_copy(update={"val_seed": seed})})
    write_val_dir(cfg, Path(out), n)
    print(f"wrote {n} margin-inpainting pairs (seed {seed}) to {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="a run's config.yaml (its data section is used)")
    ap.add_argument("out", help="the folder to write")
    ap.add_argument("n", nargs="?", type=int, default=96, help="pairs (96)")
    ap.add_argument("seed", nargs="?", type=int, default=777, help="seed (777)")
    args = ap.parse_args()
    main(args.config, args.out, args.n, args.seed)

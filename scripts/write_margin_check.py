"""Write the synthetic check set of the removal-margin family (issue 14, run g's selection): inpainting pairs
only, every one with the object-plus-margin region, all regenerated, from a run's own data config.

    python scripts/write_margin_check.py runs/sigma-lite-ii-f/config.yaml runs/val/margin-check [N] [SEED]

Then `sigma eval --data runs/val/margin-check --set options.weights=RUN/best --set options.mask_mode=semantic`.
"""
from __future__ import annotations


def main(config: str, out: str, n: int = 96, seed: int = 777) -> None:
    from _cli import write_check_set

    write_check_set(config, out, n, seed, lambda data: {"mix": {"inpaint": 1.0}, "inpaint_margin_p": 1.0,
                                                        "inpaint_composite_p": 0.0, "crop": 160, "cache_index": ""})
    print(f"wrote {n} margin-inpainting pairs (seed {seed}) to {out}")

if __name__ == "__main__":
    from _cli import CHECK_SET_HELPS, run

    run(main, __doc__, CHECK_SET_HELPS)

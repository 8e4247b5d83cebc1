"""Write the synthetic check set of the removal-margin family (issue 14, run g's selection): inpainting pairs
only, every one with the object-plus-margin region, all regenerated, from a run's own data config.

    python scripts/write_margin_check.py runs/sigma-lite-ii-f/config.yaml runs/val/margin-check [N] [SEED] [BOX] [FILL]

BOX (0 by default, the set run g was selected on) is the share of regions that are the object's grown bounding
box (`inpaint_margin_box_p`): `... runs/val/box-check 96 779 1.0` writes the rectangle family's set.

Then `sigma eval --data runs/val/margin-check --set options.weights=RUN/best --set options.mask_mode=semantic`.
"""
from __future__ import annotations


def main(config: str, out: str, n: int = 96, seed: int = 777, box: float = 0.0, fill: float = 0.0) -> None:
    from _cli import write_check_set

    write_check_set(config, out, n, seed, lambda data: {"mix": {"inpaint": 1.0}, "inpaint_margin_p": 1.0,
                                                        "inpaint_margin_box_p": box, "inpaint_margin_fill_p": fill,
                                                        "inpaint_composite_p": 0.0, "crop": 160, "cache_index": ""})
    print(f"wrote {n} margin-inpainting pairs (seed {seed}, boxes {box:.0%}, filled removals {fill:.0%}) to {out}")

if __name__ == "__main__":
    from _cli import CHECK_SET_HELPS, run

    run(main, __doc__, {**CHECK_SET_HELPS, "box": "share of grown-bounding-box regions",
                               "fill": "share of margin removals filled whole from the surroundings"})

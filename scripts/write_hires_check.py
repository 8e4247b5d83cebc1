"""Write the synthetic native-resolution check set (issue 14, item 3): the training engine's families at a
resolution twice the training scale, so the working size can be chosen on synthetic pairs, not on the report.

    sigma synth --build-cache runs/cache/hires768 --photos PHOTOS_448 --max-side 768 --scales 1.0,0.5
    python scripts/write_hires_check.py configs/train/sigma-lite-ii.yaml runs/cache/hires768 runs/val/hires-check

PHOTOS_448: the photos of ../shared/data/photos whose short side is >= 448 px (208 of 946), stored at
long side 768. Every pair is a 448 px crop taken at the photo's own scale (no resampling of the crop), so
a working size of 448 is the pair's native resolution and 224 is what a 512 px working size does to a
1024 px image. Then:

    sigma eval --data runs/val/hires-check --annotator sigma-lite --set options.mask_mode=semantic \
        --set options.image_size=224        # and 320, 448
"""
from __future__ import annotations


def main(config: str, cache: str, out: str, n: int = 160, seed: int = 4242, crop: int = 448) -> None:
    from _cli import write_check_set

    write_check_set(config, out, n, seed, lambda data: {"cache": cache, "photos": "", "cache_index": "",
                                                        "crop": crop, "scale_range": (1.0, 1.0)})
    print(f"wrote {n} pairs ({crop} px, native scale, seed {seed}) to {out}")

if __name__ == "__main__":
    from _cli import CHECK_SET_HELPS, run

    run(main, __doc__, {**CHECK_SET_HELPS, "cache": "the high-resolution synth cache",
                        "crop": "crop size in pixels"})

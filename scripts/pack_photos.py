"""Pack the photo bank small enough to travel: each photo as the training cache would store it (the project's
decoder, long side ≤ MAX_SIDE, sides multiples of 8: `sigma.data.synth.cache.load_photo`), written as a JPEG in
the same sub-folder. Why: a device machine (`scripts/gpu_trial.sh`) receives at most 64 MiB of working tree, and
`../shared/data/photos` is 79 MB of full-size files of which the cache keeps 384 px anyway; at quality 90 the
946 photos pack into about 40 MB, and a cache built from the packed copy reads each at its stored size.

    python scripts/pack_photos.py ../shared/data/photos .devpack/photos [MAX_SIDE] [QUALITY]
"""
from __future__ import annotations


def main(src: str, out: str, max_side: int = 384, quality: int = 90) -> None:
    from pathlib import Path

    from PIL import Image
    from tqdm import tqdm

    from sigma.data.synth.cache import list_photos, load_photo
    from sigma.errors import ImageError

    src_dir, out_dir = Path(src), Path(out)
    photos = list_photos(src_dir)
    total, skipped = 0, []
    for path in tqdm(photos, desc="pack", unit="photo"):
        # two photos whose names differ only by extension (a.png, a.tif) would pack into one a.jpg
        target = out_dir / path.relative_to(src_dir)
        target = target.with_name(f"{target.stem}{target.suffix.replace('.', '_')}.jpg")
        try:
            rgb = load_photo(path, max_side)
        except ImageError as exc:   # as the cache does: one bad photo costs itself and is said
            skipped.append(exc.message)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(target, quality=quality, subsampling=0)
        total += target.stat().st_size
    for line in skipped:
        print(f"skipped {line}")
    print(f"packed {len(photos) - len(skipped)} photos into {out_dir} ({total / 2**20:.1f} MiB, long side ≤ "
          f"{max_side}, q{quality})")


if __name__ == "__main__":
    from _cli import run

    run(main, __doc__, {"src": "the photo folder", "out": "the folder to write", "max_side": "long side",
                        "quality": "JPEG quality"})

"""Write synthetic editing corpora (every input format `sigma batch run` reads) for the batch benchmark.

    python bench/make_corpora.py --out /tmp/sigma_bench --pairs 2000 --size 96

Each format gets its own folder; images are small (64–128 px) so the corpus builds in about a minute on
two CPU cores. Nothing here is committed: the data is regenerated from a seed.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sigma.io.corpora.synthetic import (
    synthetic_pairs,
    write_csv,
    write_folder,
    write_pairs_jsonl,
    write_parquet,
    write_saved_dataset,
    write_webdataset,
)

FORMATS = {
    # name: (writer, path inside the format's folder that `sigma batch run` is given, preset)
    "folder": (lambda root, pairs: write_folder(root, pairs), "", None),
    "jsonl": (lambda root, pairs: write_pairs_jsonl(root, pairs), "", None),
    "csv": (lambda root, pairs: write_csv(root, pairs), "manifest.csv", None),
    "parquet": (lambda root, pairs: write_parquet(root / "train-00000-of-00001.parquet", pairs, "magicbrush",
                                                  row_group_size=100), "", "magicbrush"),
    "hf": (lambda root, pairs: write_saved_dataset(root, pairs, "instructpix2pix", batch_rows=100, split="train"),
           "", "instructpix2pix"),
    "wds": (lambda root, pairs: write_webdataset(root, pairs, per_tar=250), "", None),
}


def make(out: Path, pairs: int, size: int, formats: list[str] | None = None, seed: int = 0) -> dict[str, dict]:
    made = {}
    for name in formats or list(FORMATS):
        writer, inner, preset = FORMATS[name]
        root = out / f"{name}-{pairs}-{size}"
        marker = root / ".complete"
        if not marker.is_file():
            start = time.perf_counter()
            root.mkdir(parents=True, exist_ok=True)
            writer(root, synthetic_pairs(pairs, size=size, seed=seed))
            marker.write_text(json.dumps({"pairs": pairs, "size": size, "seconds": time.perf_counter() - start}))
        made[name] = {"path": str(root / inner) if inner else str(root), "preset": preset, "pairs": pairs,
                      "size": size}
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/sigma_bench")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--formats", nargs="*", choices=list(FORMATS))
    args = ap.parse_args()
    print(json.dumps(make(Path(args.out), args.pairs, args.size, args.formats), indent=2))


if __name__ == "__main__":
    main()

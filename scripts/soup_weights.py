"""Average the weights of several saved `sigma-lite` files that share one starting point (a "model soup",
Wortsman et al. 2022): runs fine-tuned from the same file sit in one basin, and their average is often
more robust off the training distribution than any one of them, at no cost at inference.

    python scripts/soup_weights.py runs/soup-opq sigma/weights/sigma-lite.safetensors \
        runs/sigma-lite-ii-o/best runs/sigma-lite-ii-p/best runs/sigma-lite-ii-q/best

`--coef` makes it any linear combination instead of the plain mean, e.g. extrapolation along the step from an
earlier file D to a later one G ("model extrapolation", Zheng et al. 2024): G + a·(G − D) is
`--coef 1.3,-0.3 G D` for a = 0.3.

Writes OUT/model.safetensors (fp32) and OUT/config.json (the first model's network config), a directory
`load_model`, `val_breakdown.py` and `--set options.weights=OUT` read. Integer tensors (BatchNorm step
counts) are taken from the first model; every float tensor is the combination (BatchNorm running variances
kept ≥ 1e-5, which an extrapolation could otherwise push below zero). The three files are written as one set
(`sigma.models.factory.write_model_files`, `save_model`'s writer): a soup killed at any point leaves OUT's earlier
files or the new ones, never its weights beside an earlier soup's config, nor a temporary file for good.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from sigma.models.factory import write_model_files


def _files(path: str) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        return p / "model.safetensors", p / "config.json"
    return p, p.with_suffix(".json")


def main(out: str, models: list[str], coef: list[float] | None = None) -> None:
    if coef is None:
        coef = [1.0 / len(models)] * len(models)
    if len(coef) != len(models):
        raise SystemExit(f"--coef has {len(coef)} numbers for {len(models)} models")
    tensors = [load_file(str(_files(m)[0])) for m in models]
    keys = set(tensors[0])
    for m, t in zip(models[1:], tensors[1:]):
        if set(t) != keys:
            raise SystemExit(f"{m}: not the same network as {models[0]} (tensor names differ)")
    soup = {}
    for k in sorted(keys):
        first = tensors[0][k]
        if first.is_floating_point():
            mixed = sum(c * t[k].float() for c, t in zip(coef, tensors))
            soup[k] = (mixed.clamp_min(1e-5) if k.endswith("running_var") else mixed).contiguous()
        else:
            soup[k] = first.clone()
    config = json.loads(_files(models[0])[1].read_text())
    config.pop("stored_dtype", None)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_model_files(soup, folder / "model.safetensors", folder / "config.json", config,
                      beside=((folder / "soup.json", json.dumps({"models": models, "coef": coef}, indent=1).encode()),))
    print(f"{out}: {' + '.join(f'{c:g}·{m}' for c, m in zip(coef, models))}, {len(soup)} tensors")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--coef", type=lambda v: [float(x) for x in v.split(",")], default=None,
                    help="one number per model, comma-separated (default: the plain mean)")
    a = ap.parse_args()
    main(a.out, a.models, a.coef)

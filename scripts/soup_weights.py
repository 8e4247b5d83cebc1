"""Average the weights of several saved `sigma-lite` files that share one starting point (a "model soup",
Wortsman et al. 2022): runs fine-tuned from the same file sit in one basin, and their average is often
more robust off the training distribution than any one of them, at no cost at inference.

    python scripts/soup_weights.py runs/soup-opq sigma/weights/sigma-lite.safetensors \
        runs/sigma-lite-ii-o/best runs/sigma-lite-ii-p/best runs/sigma-lite-ii-q/best

Writes OUT/model.safetensors (fp32) and OUT/config.json (the first model's network config), a directory
`load_model`, `val_breakdown.py` and `--set options.weights=OUT` read. Integer tensors (BatchNorm step
counts) are taken from the first model; every float tensor is the plain mean.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _files(path: str) -> tuple[Path, Path]:
    p = Path(path)
    if p.is_dir():
        return p / "model.safetensors", p / "config.json"
    return p, p.with_suffix(".json")


def main(out: str, models: list[str]) -> None:
    tensors = [load_file(str(_files(m)[0])) for m in models]
    keys = set(tensors[0])
    for m, t in zip(models[1:], tensors[1:]):
        if set(t) != keys:
            raise SystemExit(f"{m}: not the same network as {models[0]} (tensor names differ)")
    soup = {}
    for k in sorted(keys):
        first = tensors[0][k]
        if first.is_floating_point():
            soup[k] = torch.stack([t[k].float() for t in tensors]).mean(0).contiguous()
        else:
            soup[k] = first.clone()
    config = json.loads(_files(models[0])[1].read_text())
    config.pop("stored_dtype", None)
    Path(out).mkdir(parents=True, exist_ok=True)
    save_file(soup, str(Path(out) / "model.safetensors"))
    (Path(out) / "config.json").write_text(json.dumps(config, indent=1))
    (Path(out) / "soup.json").write_text(json.dumps({"models": models}, indent=1))
    print(f"{out}: mean of {len(models)} models, {len(soup)} tensors")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    main(a.out, a.models)

"""Ship a trained model as the embedded sigma-lite: sigma/weights/sigma-lite.safetensors (+ .json), stored in
fp16 (BatchNorm statistics fp32: 5.6 MB for 2.75 M parameters, under the 10 MB limit), and its sha256 written
into `PRETRAINED["sigma-lite"]` in sigma/models/presets.py (a swapped file is refused at load).

    python scripts/ship_sigma_lite.py runs/sigma-lite-ii/model      # a save_model folder / run folder / .safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(source: str) -> None:
    from sigma.models import load_model, save_model
    from sigma.training.loop import init_source

    model = load_model(init_source(source))
    target = ROOT / "sigma" / "weights" / "sigma-lite.safetensors"
    save_model(model, target, dtype=torch.float16)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    presets = ROOT / "sigma" / "models" / "presets.py"
    text = presets.read_text()
    new, n = re.subn(r'("sigma-lite": PretrainedCfg\(\s*file="sigma-lite.safetensors",\s*sha256=")[0-9a-f]{64}(")',
                     rf"\g<1>{digest}\g<2>", text)
    if n != 1:
        raise SystemExit("could not find PRETRAINED['sigma-lite'].sha256 in presets.py: update it by hand: " + digest)
    presets.write_text(new)
    size = target.stat().st_size / 1e6
    print(f"shipped {source} -> {target} ({size:.2f} MB, sha256 {digest})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="a saved model: a run's best/ or final/ folder")
    main(ap.parse_args().source)

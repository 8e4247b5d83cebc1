"""Training throughput: synthetic-pair generation (per worker) vs the model step, and the two together
through the real training loop's DataLoader.

    python bench/bench_training.py                     # JSON to bench/results/bench_training_<device>.json
    python bench/bench_training.py --cache runs/cache/photos384 --preset sigma-lite --crop 160 --batch 12

What it says: `data_pairs_per_s` is what one generator process makes; `model_pairs_per_s` is what the
optimiser step consumes; the data pipeline keeps up when data_pairs_per_s * num_workers > model_pairs_per_s.
`loop_pairs_per_s` is the end-to-end rate of `sigma train` (DataLoader workers + step), measured from a
short real run. A machine busy with other jobs measures lower; `load_avg` records how busy it was.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    import numpy as np
    import torch

    from sigma.data.synth.engine import SynthConfig, SynthEngine
    from sigma.models import build_model
    from sigma.models.vae import shared_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(ROOT / "runs/cache/photos384"))
    ap.add_argument("--photos", default=str(shared_dir() / "data" / "photos"))
    ap.add_argument("--preset", default="sigma-lite")
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--samples", type=int, default=96, help="pairs generated for the data measurement")
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps for the model measurement")
    ap.add_argument("--loop-steps", type=int, default=12, help="steps of the real loop (0 = skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    use_cache = Path(args.cache, "index.json").is_file()
    cfg = SynthConfig(cache=args.cache if use_cache else "", photos="" if use_cache else args.photos, crop=args.crop)
    eng = SynthEngine(cfg, seed=0)
    for i in range(4):  # warm the photo cache
        eng.sample(i)
    t0 = time.perf_counter()
    kinds: dict[str, list[float]] = {}
    for i in range(args.samples):
        t = time.perf_counter()
        s = eng.sample(1000 + i)
        kinds.setdefault(s.kind, []).append(time.perf_counter() - t)
    data_s = time.perf_counter() - t0

    model = build_model(args.preset).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    o = torch.rand(args.batch, 3, args.crop, args.crop, device=device)
    e = torch.rand_like(o)
    m = (torch.rand(args.batch, 1, args.crop, args.crop, device=device) > 0.8).float()
    times = []
    for step in range(args.steps + 1):
        t = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            out = model(o, e)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits.float(), m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step pays one-off costs
            times.append(time.perf_counter() - t)
    step_s = float(np.median(times))

    loop = None
    if args.loop_steps:
        from sigma.training.loop import start

        with tempfile.TemporaryDirectory() as tmp:
            overrides = [f"model={args.preset}", f"out_dir={tmp}", "name=bench", f"steps={args.loop_steps}",
                         f"batch_size={args.batch}", f"data.crop={args.crop}", "eval.val_size=0", "num_workers=1",
                         f"threads={args.threads}", "tensorboard=false", f"log_every={args.loop_steps}",
                         f"ckpt_every={args.loop_steps}", "warmup_steps=1"]
            overrides.append(f"data.cache={args.cache}" if use_cache else f"data.photos={args.photos}")
            cfg_path = Path(tmp) / "bench.yaml"
            cfg_path.write_text("{}\n")
            t = time.perf_counter()
            run = start(str(cfg_path), overrides, log=lambda *_: None)
            wall = time.perf_counter() - t
            rec = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["event"] == "train"][-1]
            loop = {"steps": args.loop_steps, "loop_pairs_per_s": rec["pairs_per_s"], "data_wait_s": rec["data_s"],
                    "model_s": rec["model_s"], "wall_s_including_startup": wall}

    result = {
        "bench": "training", "device": str(device), "torch": torch.__version__, "threads": args.threads,
        "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(), "platform": platform.platform(),
        "preset": args.preset, "crop": args.crop, "batch": args.batch, "cache": use_cache,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "data_pairs_per_s_one_process": args.samples / data_s,
        "data_ms_per_kind": {k: 1000 * float(np.mean(v)) for k, v in kinds.items()},
        "model_step_s": step_s, "model_pairs_per_s": args.batch / step_s,
        "loop": loop,
    }
    out = Path(args.out) if args.out else RESULTS / f"bench_training_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

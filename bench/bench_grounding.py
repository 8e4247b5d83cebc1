"""Grounding throughput → bench/results/bench_grounding_<device>.json.

The full grounding path of `gdino-sam2` (Grounding DINO-T architecture + SAM 2 hiera-tiny architecture,
random weights: speed does not depend on them) on batches of pairs, per edit type, with where the time
goes (detector vs segmenter). `replace`/`attribute` ground both images, `add`/`remove` one: the pipeline
only searches the image the edit type needs.

    python bench/bench_grounding.py                                # CPU, small
    python bench/bench_grounding.py --device cuda --batch 32 --detector-size 800
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
TEXTS = {"remove": "remove the cat", "add": "add a dog on the sofa", "replace": "replace the cat with a dog",
         "attribute": "turn the car red"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--size", type=int, default=512, help="pair image size (square)")
    ap.add_argument("--detector-size", type=int, default=512, help="Grounding DINO shortest edge (800 = default)")
    ap.add_argument("--boxes", type=int, default=3, help="detections kept per image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default="remove,replace")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sigma.grounding import build_grounder
    from sigma.grounding.config import DetectorConfig, SegmenterConfig
    from sigma.grounding.detector import GroundingDinoDetector
    from sigma.grounding.segmenter import Sam2Segmenter
    from sigma.grounding.tiny import random_grounding_dino_t, random_sam2_hiera_tiny
    from sigma.parse import parse_instruction

    dtype = "auto"
    gd_model, gd_proc = random_grounding_dino_t(image_size=args.detector_size)
    det = GroundingDinoDetector(DetectorConfig(box_threshold=0.0, text_threshold=0.0, max_detections=args.boxes,
                                               batch_size=max(args.batch * 2, 1)),
                                model=gd_model, processor=gd_proc, device=args.device, dtype=dtype)
    seg = Sam2Segmenter(SegmenterConfig(batch_size=max(args.batch * 2, 1)), model=random_sam2_hiera_tiny(),
                        device=args.device, dtype=dtype)
    grounder = build_grounder("gdino-sam2", detector_obj=det, segmenter_obj=seg)
    rng = np.random.default_rng(0)
    originals = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.batch)]
    edited = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.batch)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    out = {"device": args.device, "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
           "cpu": platform.processor() or platform.machine(), "threads": args.threads, "batch": args.batch,
           "load_avg_1m_at_start": round(os.getloadavg()[0], 2),    # the CPU machine is shared
           "image_size": args.size, "detector_shortest_edge": args.detector_size, "boxes_per_image": args.boxes,
           "weights": "random (GD-T and SAM 2 hiera-tiny architectures)", "torch": torch.__version__, "by_type": {}}
    for et in args.types.split(","):
        parses = [parse_instruction(TEXTS[et])] * args.batch
        grounder.ground_batch(originals, edited, parses)                       # warm-up
        sync()
        walls, detect, segment = [], [], []
        for _ in range(args.iters):
            t = time.perf_counter()
            res = grounder.ground_batch(originals, edited, parses)
            sync()
            walls.append(time.perf_counter() - t)
            detect.append(res[0].timings_ms["detect"] * args.batch / 1e3)
            segment.append(res[0].timings_ms["segment"] * args.batch / 1e3)
        best = min(walls)
        out["by_type"][et] = {"pairs_per_s": round(args.batch / best, 3), "s_per_batch_best": round(best, 3),
                              "detect_s": round(float(np.median(detect)), 3),
                              "segment_s": round(float(np.median(segment)), 3),
                              "images_grounded_per_pair": 2 if et in ("replace", "attribute") else 1}
        print(et, out["by_type"][et], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench_grounding_{args.device.split(':')[0]}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

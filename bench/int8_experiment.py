"""Would ONNX Runtime static int8 keep sigma-lite's quality? (issue 13, part 4) → bench/results/int8_experiment.json

1. quantise the cached fp32 graph (QDQ, per-channel int8 weights, uint8 activations) calibrated on
   `--calib` synthetic 512 px pairs from sigma.data.synth (real photos of ../shared/data/photos, the
   training edit families without the VAE-latent kind);
2. run the evaluation of `sigma eval --data ../shared/data/eval --perturb none,vae,jpeg75,resize` through the
   same sigma-lite annotator with its runner on the int8 graph, against the fp32 graph, same process;
3. time both networks at 512 px (min of N).
The gate: int8 may lose at most 0.3 F1 points (0.003) under every perturbation, else it stays out.

    python bench/int8_experiment.py --calib 48
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class SynthReader:
    """onnxruntime.quantization CalibrationDataReader over synthetic pairs."""

    def __init__(self, n: int, photos: str, seed: int = 7):
        from sigma.data.synth.engine import SynthConfig, SynthEngine
        from sigma.models.refine import EDIT_TYPES

        cfg = SynthConfig(photos=photos, crop=512,
                          mix={"none": 0.06, "remove": 0.3, "splice": 0.35, "attribute": 0.25, "global": 0.04})
        engine = SynthEngine(cfg, seed=seed)
        self.items = []
        for i in range(n):
            s = engine.sample(i)
            o = (s.original.astype(np.float32) / 255).transpose(2, 0, 1)[None]
            e = (s.edited.astype(np.float32) / 255).transpose(2, 0, 1)[None]
            et = EDIT_TYPES.index(s.edit_type) if s.edit_type in EDIT_TYPES else 0
            self.items.append({"original": np.ascontiguousarray(o), "edited": np.ascontiguousarray(e),
                               "prior": np.full((1, 1, 512, 512), 0.5, np.float32),
                               "edit_type": np.array([et], np.int64)})
        self.it = iter(self.items)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.items)


def quantise(fp32: Path, out: Path, calib: int, photos: str) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + ".pre.onnx")
    t = time.perf_counter()
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    reader = SynthReader(calib, photos)
    quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"])
    return {"calibration_pairs": calib, "quantise_s": round(time.perf_counter() - t, 1),
            "int8_mb": round(out.stat().st_size / 2 ** 20, 2)}


def evaluate_with(ann, data: str, perturb: list[str]) -> dict:
    from sigma.eval.runner import evaluate

    res = evaluate(ann, data, perturb)
    return {p: {g: {"f1": row["f1"], "iou": row["iou"]} for g, row in t.items()} for p, t in res.tables().items()}


def gate(fp32: dict, int8: dict, perturb: list[str]) -> dict:
    """F1 points lost per perturbation (all 53 pairs: the gate, ≤ 0.3 under every one) and per group."""
    lost = {p: round(100 * (fp32[p]["overall"]["f1"] - int8[p]["overall"]["f1"]), 2) for p in perturb}
    by_group = {p: {g: round(100 * (fp32[p][g]["f1"] - int8[p][g]["f1"]), 2) for g in fp32[p] if g in int8[p]}
                for p in perturb}
    return {"f1_points_lost_overall": lost, "f1_points_lost_by_group": by_group,
            "passes_gate_0.3": all(v <= 0.3 for v in lost.values())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=48)
    ap.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "photos"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eval"))
    ap.add_argument("--perturb", default="none,vae,jpeg75,resize")
    ap.add_argument("--work", default=None)
    ap.add_argument("--fp32-metrics", default=None, help="metrics.json of `sigma eval` with the fp32 default "
                    "(same data and perturbations): reused instead of evaluating fp32 again")
    ap.add_argument("--int8", default=None, help="an already quantised graph (skip quantisation)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "int8_experiment.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="sigma-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SIGMA_CACHE_DIR", str(work / "cache"))
    import torch

    from sigma.registry import create_annotator
    from sigma.runtime.ort_graph import make_session

    fp32 = create_annotator("sigma-lite", runtime="onnxruntime", parser="rules", cpu_threads=1)
    graph = Path(fp32.runner.describe()["graph"])
    int8_path = Path(args.int8) if args.int8 else work / "sigma-lite.int8.onnx"
    result: dict = {"fp32_graph": str(graph), "int8_graph": str(int8_path)}
    if not args.int8:
        result["quantisation"] = quantise(graph, int8_path, args.calib, args.photos)
    print(json.dumps(result), flush=True)
    q = create_annotator("sigma-lite", runtime="onnxruntime", parser="rules", cpu_threads=1)
    q.runner.session = make_session(int8_path, 1)
    # speed, network only, 512 px, min of 5
    x = torch.rand(1, 3, 512, 512)
    prior = torch.full((1, 1, 512, 512), 0.5)
    times, cpu = {}, {}
    for name, ann in (("fp32", fp32), ("int8", q)):
        ann.runner(x, x, prior, ["none"])
        best, best_cpu = 1e9, 1e9
        for _ in range(5):
            t, c = time.perf_counter(), time.process_time()
            ann.runner(x, x, prior, ["none"])
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
        times[name], cpu[name] = round(best * 1e3, 1), round(best_cpu * 1e3, 1)
    result["network_ms_512"] = times
    result["network_cpu_ms_512"] = cpu
    result["int8_speedup"] = round(times["fp32"] / times["int8"], 2)
    result["int8_speedup_cpu_time"] = round(cpu["fp32"] / cpu["int8"], 2)
    dl = np.abs(q.runner(x, x, prior, ["none"]).numpy() - fp32.runner(x, x, prior, ["none"]).numpy()).max()
    result["max_abs_dlogit_random_input"] = float(dl)
    perturb = args.perturb.split(",")
    result["eval_int8"] = evaluate_with(q, args.data, perturb)   # first: the fp32 metrics may still be running
    if args.fp32_metrics:
        tables = json.loads(Path(args.fp32_metrics).read_text())["tables"]
        result["eval_fp32"] = {p: {g: {"f1": r["f1"], "iou": r["iou"]} for g, r in t.items()}
                               for p, t in tables.items()}
        result["eval_fp32_from"] = args.fp32_metrics
    else:
        result["eval_fp32"] = evaluate_with(fp32, args.data, perturb)
    result.update(gate(result["eval_fp32"], result["eval_int8"], perturb))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("network_cpu_ms_512", "int8_speedup_cpu_time",
                                             "f1_points_lost_overall", "passes_gate_0.3")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

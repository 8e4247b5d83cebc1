"""Runtime benchmark (issue 13) → bench/results/bench_runtime_cpu.json.

Everything in one process run, so every figure is a ratio against today's path measured alongside it
(today = eager torch, NCHW: `runtime=torch channels_last=false`):

1. the CPU's practical fp32 peak: a 2048² sgemm with torch, at 1 and 2 threads (best of N);
2. sigma-lite with the shipped weights at 512x512: the bare runner (network only, batch 1) and the whole
   annotator (resize, parse, network, resize back, extras) for torch NCHW / torch channels-last / ONNX
   Runtime (/ ONNX Runtime int8 when `--int8 PATH` names a quantised graph), at 1 and 2 threads, min of
   `--repeats` interleaved rounds; max |Δ logit| and mask agreement against NCHW; GFLOP/s achieved;
3. `sigma batch run` over a synthetic folder corpus (`--batch-pairs`, 512 px) as a user runs it (a fresh
   process each, graph already cached): the default config against `--set options.runtime=torch
   --set options.channels_last=false`, alternated, min of `--batch-repeats`.

The ONNX graph is exported into a fresh cache folder first; its cold export time is reported too.

    python bench/bench_runtime.py                     # ~10 min on 2 shared cores
    python bench/bench_runtime.py --skip-batch --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def sgemm_peak(threads: int, n: int = 2048, repeats: int = 5) -> dict:
    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    runs = [_timed2(lambda: a @ b) for _ in range(repeats)]
    best = min(w for w, _ in runs)
    best_cpu = min(c for _, c in runs) / threads
    return {"threads": threads, "n": n, "best_s": round(best, 4), "gflops": round(2 * n ** 3 / best / 1e9, 1),
            "gflops_cpu_time": round(2 * n ** 3 / best_cpu / 1e9, 1)}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _timed2(fn) -> tuple[float, float]:
    """(wall s, process CPU s). On a shared machine wall time includes the time the scheduler gave to
    others; at one thread the CPU time is what the call costs on a dedicated core."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def pairs_512(n: int = 4):
    """n synthetic splices of the example photo at 512x512 (real image content, a real edit)."""
    import cv2

    from sigma.data.synth import edits as E
    from sigma.data.synth import masks as M
    from sigma.io import load_pair
    from sigma.types import Pair

    ex = ROOT / "sigma" / "assets" / "examples"
    base = load_pair(ex / "sigma_example_original.jpg", ex / "sigma_example_edited.jpg")
    photo = cv2.resize(base.original, (512, 512), interpolation=cv2.INTER_AREA)
    donor = cv2.resize(base.edited[::-1].copy(), (512, 512), interpolation=cv2.INTER_AREA)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        mask, _ = M.random_mask(rng, 512, 512, {"blob": 1.0, "ellipse": 1.0, "polygon": 1.0}, (0.03, 0.3))
        out.append(Pair(photo, E.apply_splice(photo, donor, mask, E.sample_splice(rng, 512, 512)),
                        "add a cup" if i % 2 else None, f"p{i}"))
    return out


def network_gflops_per_pair() -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from sigma.models import load_model
    from sigma.models.fuse import fuse_batchnorm

    model = fuse_batchnorm(load_model(ROOT / "sigma" / "weights" / "sigma-lite.safetensors").eval())
    x = torch.rand(1, 3, 512, 512)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, x, prior=torch.full((1, 1, 512, 512), 0.5))
    return counter.get_total_flops() / 1e9


def bench_annotators(threads: int, repeats: int, int8: str | None, gflops: float) -> dict:
    from sigma.registry import create_annotator

    variants = {
        "torch_nchw (today)": {"runtime": "torch", "channels_last": False},
        "torch_channels_last": {"runtime": "torch", "channels_last": True},
        "onnxruntime": {"runtime": "onnxruntime"},
    }
    if int8:
        variants["onnxruntime_int8"] = {"runtime": "onnxruntime"}
    anns = {}
    for name, opts in variants.items():
        t = time.perf_counter()
        anns[name] = create_annotator("sigma-lite", cpu_threads=threads, **opts)
        if name == "onnxruntime_int8":        # the same runner on the quantised graph
            from sigma.runtime.ort_graph import make_session

            anns[name].runner.session = make_session(Path(int8), threads)
            anns[name].runner.graph_info = {**anns[name].runner.graph_info, "graph": int8, "int8": True}
        anns[name].load_s = time.perf_counter() - t
    pairs = pairs_512()
    x = (torch.from_numpy(np.stack([p.original for p in pairs[:1]]).astype(np.float32) / 255).permute(0, 3, 1, 2),
         torch.from_numpy(np.stack([p.edited for p in pairs[:1]]).astype(np.float32) / 255).permute(0, 3, 1, 2))
    prior = torch.full((1, 1, 512, 512), 0.5)
    net = {k: [] for k in anns}
    e2e = {k: [] for k in anns}
    net_cpu = {k: [] for k in anns}
    e2e_cpu = {k: [] for k in anns}
    outputs = {}
    for _ in range(repeats + 1):          # round 0 warms every variant up and is dropped
        for name, ann in anns.items():
            torch.set_num_threads(threads)
            w, c = _timed2(lambda ann=ann: ann.runner(x[0], x[1], prior, ["none"]))
            net[name].append(w)
            net_cpu[name].append(c)
            w, c = _timed2(lambda ann=ann, name=name: outputs.__setitem__(name, ann.predict(pairs)))
            e2e[name].append(w / len(pairs))
            e2e_cpu[name].append(c / len(pairs))
    ref_logits = anns["torch_nchw (today)"].runner(x[0], x[1], prior, ["none"]).numpy()
    today = "torch_nchw (today)"
    base_net, base_e2e = min(net[today][1:]), min(e2e[today][1:])
    base_net_cpu, base_e2e_cpu = min(net_cpu[today][1:]), min(e2e_cpu[today][1:])
    rows = {}
    for name, ann in anns.items():
        n, e = min(net[name][1:]), min(e2e[name][1:])
        logits = ann.runner(x[0], x[1], prior, ["none"]).numpy()
        agree = [float((a.mask == b.mask).mean()) for a, b in zip(outputs[name], outputs["torch_nchw (today)"])]
        rows[name] = {"network_ms_per_pair": round(n * 1e3, 1), "network_speedup": round(base_net / n, 2),
                      "annotator_ms_per_pair": round(e * 1e3, 1), "annotator_pairs_per_s": round(1 / e, 2),
                      "annotator_speedup": round(base_e2e / e, 2),
                      "network_gflops_per_s": round(gflops / n, 1),
                      "network_cpu_ms_per_pair": round(min(net_cpu[name][1:]) * 1e3, 1),
                      "annotator_cpu_ms_per_pair": round(min(e2e_cpu[name][1:]) * 1e3, 1),
                      "network_speedup_cpu_time": round(base_net_cpu / min(net_cpu[name][1:]), 2),
                      "annotator_speedup_cpu_time": round(base_e2e_cpu / min(e2e_cpu[name][1:]), 2),
                      "network_gflops_per_cpu_s": round(gflops / (min(net_cpu[name][1:]) / threads), 1),
                      "max_abs_dlogit_vs_nchw": float(np.abs(logits - ref_logits).max()),
                      "min_mask_agreement_vs_nchw": min(agree), "load_s": round(ann.load_s, 2),
                      "runtime": ann.runner.describe()}
    return {"threads": threads, "repeats": repeats, "pairs": len(pairs), "size": 512, "variants": rows}


def bench_batch(pairs: int, repeats: int, work: Path, extra_both: list[str]) -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from sigma.io.corpora.synthetic import synthetic_pairs, write_folder

    corpus = work / f"corpus-{pairs}-512"
    if not corpus.exists():
        write_folder(corpus, synthetic_pairs(pairs, size=512, seed=0))
    configs = {"default (auto)": [],
               "today (torch NCHW)": ["--set", "options.runtime=torch", "--set", "options.channels_last=false"]}
    walls: dict[str, list[float]] = {k: [] for k in configs}
    cpus: dict[str, list[float]] = {k: [] for k in configs}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    for r in range(repeats):
        for name, extra in configs.items():
            out = work / f"run-{os.getpid()}-{r}-{name.split()[0]}"
            cmd = [sys.executable, "-m", "sigma", "batch", "run", str(corpus), "--out", str(out), "--no-progress",
                   "--no-ground-truth", *extra_both, *extra]
            t = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            walls[name].append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    best = {k: min(v) for k, v in walls.items()}
    return {"pairs": pairs, "size": 512, "repeats": repeats,
            "wall_s": {k: [round(x, 1) for x in v] for k, v in walls.items()},
            "pairs_per_s_best": {k: round(pairs / v, 2) for k, v in best.items()},
            "speedup_default_vs_today": round(best["today (torch NCHW)"] / best["default (auto)"], 2),
            "cpu_s": {k: [round(x, 1) for x in v] for k, v in cpus.items()},
            "speedup_default_vs_today_cpu_time": round(min(cpus["today (torch NCHW)"])
                                                       / min(cpus["default (auto)"]), 2),
            "default_runtime": _default_runtime(),
            "note": "wall time of the whole `sigma batch run` process: start-up, model load, ORT session "
                    "(graph cached), decode, network, parquet"}


def _default_runtime() -> dict:
    """What the default config picks, through the same registry call the batch runner makes."""
    import sigma

    return sigma.create_annotator("sigma-lite").runner.describe()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--batch-pairs", type=int, default=200)
    ap.add_argument("--batch-repeats", type=int, default=2)
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--skip-annotator", action="store_true")
    ap.add_argument("--batch-threads", type=int, default=None,
                    help="options.cpu_threads for both batch runs (default: unset = the default config)")
    ap.add_argument("--int8", default=None, help="a quantised sigma-lite .onnx to add as a variant")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", default=str(RESULTS / "bench_runtime_cpu.json"))
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="sigma-bench-runtime-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["SIGMA_CACHE_DIR"] = str(work / "cache")
    import onnxruntime

    import sigma
    result: dict = {"command": " ".join(["bench_runtime.py", *(argv if argv is not None else sys.argv[1:])]),
                    "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "sigma": sigma.__version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                    "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "machine": platform.machine(), "loadavg_before": [round(v, 2) for v in os.getloadavg()]}
    # cold export into the fresh cache (what a user's first run pays once)
    from sigma.registry import create_annotator

    t = time.perf_counter()
    ann = create_annotator("sigma-lite", runtime="onnxruntime")
    result["cold_export"] = {"first_load_s": round(time.perf_counter() - t, 1),
                             **{k: ann.runner.describe().get(k) for k in ("graph", "max_abs_diff")},
                             "graph_mb": round(Path(ann.runner.describe()["graph"]).stat().st_size / 2 ** 20, 1)}
    del ann
    print(json.dumps(result["cold_export"]), flush=True)
    result["sgemm_peak"] = [sgemm_peak(t) for t in args.threads]
    gflops = network_gflops_per_pair()
    result["network_gflops_per_pair_512"] = round(gflops, 3)
    print(json.dumps(result["sgemm_peak"]), flush=True)
    result["annotator_512"] = []
    for threads in ([] if args.skip_annotator else args.threads):
        row = bench_annotators(threads, args.repeats, args.int8, gflops)
        peak = next(p["gflops"] for p in result["sgemm_peak"] if p["threads"] == threads)
        for v in row["variants"].values():
            v["fraction_of_sgemm_peak"] = round(v["network_gflops_per_s"] / peak, 3)
        result["annotator_512"].append(row)
        print(json.dumps(row, indent=1, default=str), flush=True)
    if not args.skip_batch:
        extra = ["--set", f"options.cpu_threads={args.batch_threads}"] if args.batch_threads else []
        result["batch_run"] = bench_batch(args.batch_pairs, args.batch_repeats, work, extra)
        result["batch_run"]["extra_args_both"] = extra
        print(json.dumps(result["batch_run"], indent=1), flush=True)
    result["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

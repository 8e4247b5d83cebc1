"""Benchmark of `sigma batch run`: pairs/s against a plain loop of single-pair predict on the same pairs
and annotator, per input format; memory over a long run; a real model with random weights; a run over
../shared/data/eval with its review page screenshot.

    python bench/bench_batch.py                       # everything, JSON to bench/results/bench_batch.json
    python bench/bench_batch.py --pairs 500 --long-pairs 2000 --skip-model   # quicker

    python bench/bench_batch.py --ref /tmp/ref     # only: sigma-lite end to end, this checkout against another

With `--ref DIR` (a checkout of another commit, e.g. `git worktree add /tmp/ref a03b528`) it runs only that
comparison: `sigma batch run --annotator sigma-lite --png-masks` over photo pairs from ../shared/data/photos at each
`--ref-sizes` (long side), as subprocesses, this checkout and DIR alternately `--repeats` times (machine load falls on
both alike), and reports per checkout the median wall pairs/s and CPU seconds per pair (the run's user + system time,
all its threads: steadier than wall time on a shared machine), the ratios this / ref, and whether both wrote the same
masks and rows. Both run `--procs 1 --threads 1`: the network's extra intra-op threads spin while they wait, which
counts as CPU time in proportion to the machine's load, not to the work. JSON to bench/results/bench_batch_vs_ref.json.

The batch runs here skip ground-truth scoring (the loop does none); the eval run scores it.
The plain loop is what a user writes without the batch runner: read each pair with the same corpus
reader, decode with sigma.io (pair_from_bytes / load_pair), `annotator.predict([pair])`, and append
`Annotation.to_dict()` to a JSONL file. Both sides run in this process, one after the other.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_corpora import make

import sigma
from sigma.batch import BatchConfig, run_batch
from sigma.errors import SigmaError
from sigma.io import load_pair, pair_from_bytes
from sigma.io.corpora import open_corpus

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class MemorySampler:
    """RSS of this process and of its children (the decode workers), every `interval` seconds."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []   # (t, main MB, children MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        start = time.perf_counter()
        pid = os.getpid()
        while not self._stop.wait(self.interval):
            self.samples.append((time.perf_counter() - start, rss_mb(pid), sum(rss_mb(c) for c in children(pid))))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def plain_loop(corpus_info: dict, annotator, out: Path) -> dict:
    """Single-pair predict over the same pairs, results to JSONL; the baseline."""
    corpus = open_corpus(corpus_info["path"], preset=corpus_info["preset"], shard_size=250)
    start = time.perf_counter()
    pairs = errors = 0
    with open(out, "w") as handle:
        for shard in corpus.plan():
            for item in corpus.read(shard):
                try:
                    if item.error:
                        raise SigmaError(item.error[1], item.error[0])
                    if item.original is not None:
                        pair = pair_from_bytes(item.original, item.edited, item.instruction, pair_id=item.pair_id)
                    else:
                        pair = load_pair(item.original_path, item.edited_path, item.instruction,
                                         pair_id=item.pair_id)
                    ann = annotator.predict([pair])[0]
                    handle.write(json.dumps(ann.to_dict(), default=str) + "\n")
                except SigmaError:
                    errors += 1
                pairs += 1
    seconds = time.perf_counter() - start
    return {"pairs": pairs, "errors": errors, "seconds": round(seconds, 3), "pairs_per_s": round(pairs / seconds, 2)}


def batch_run(corpus_info: dict, annotator_name: str, options: dict, out: Path, workers: int | None,
              batch_size: int, shard_size: int = 250, ground_truth: bool = False) -> dict:
    cfg = BatchConfig.model_validate({"input": {"path": corpus_info["path"], "preset": corpus_info["preset"],
                                                "shard_size": shard_size},
                                      "annotator": annotator_name, "options": options, "workers": workers,
                                      "batch_size": batch_size, "ground_truth": ground_truth})
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    summary = run_batch(cfg, out, progress=False)
    seconds = time.perf_counter() - start
    return {"pairs": summary.pairs, "errors": summary.errors, "shards": summary.shards, "seconds": round(seconds, 3),
            "pairs_per_s": round(summary.pairs / seconds, 2), "workers": cfg.decode_workers(),
            "batch_size": batch_size, "ground_truth_scored": ground_truth}


def compare_formats(corpora: dict, work: Path, annotator_name: str, workers: int, batch_size: int,
                    repeats: int) -> dict:
    """Batch run and plain loop alternate `repeats` times per format; medians are reported, because other
    processes on a shared machine move single timings by ±50 %."""
    annotator = sigma.create_annotator(annotator_name)
    out = {}
    for name, info in corpora.items():
        batches, loops = [], []
        for _ in range(repeats):
            batches.append(batch_run(info, annotator_name, {}, work / f"run-{name}", workers, batch_size))
            loops.append(plain_loop(info, annotator, work / f"loop-{name}.jsonl"))
        b = statistics.median(r["pairs_per_s"] for r in batches)
        l_ = statistics.median(r["pairs_per_s"] for r in loops)
        ratios = [x["pairs_per_s"] / y["pairs_per_s"] for x, y in zip(batches, loops)]
        out[name] = {"batch_run": {**batches[0], "pairs_per_s_median": b,
                                   "pairs_per_s_all": [r["pairs_per_s"] for r in batches]},
                     "plain_loop": {**loops[0], "pairs_per_s_median": l_,
                                    "pairs_per_s_all": [r["pairs_per_s"] for r in loops]},
                     "speedup_median": round(b / l_, 3), "speedup_per_repeat": [round(r, 3) for r in ratios]}
        print(f"{name:8s} batch {b:8.1f} pairs/s   loop {l_:8.1f} pairs/s   x{out[name]['speedup_median']} "
              f"(per repeat {out[name]['speedup_per_repeat']})", flush=True)
    return out


def long_run(corpus_info: dict, work: Path, workers: int, batch_size: int) -> dict:
    with MemorySampler() as sampler:
        result = batch_run(corpus_info, "pixel-diff", {}, work / "run-long", workers, batch_size, shard_size=500)
    s = sampler.samples
    total = [m + c for _, m, c in s]
    n = len(total)
    quart = [statistics.mean(total[i * n // 4:(i + 1) * n // 4]) for i in range(4)] if n >= 8 else total
    half = s[n // 2:]
    slope = 0.0
    if len(half) > 2:
        ts = [t for t, _, _ in half]
        ys = [m + c for _, m, c in half]
        tm, ym = statistics.mean(ts), statistics.mean(ys)
        slope = sum((t - tm) * (y - ym) for t, y in zip(ts, ys)) / max(sum((t - tm) ** 2 for t in ts), 1e-9)
    pairs_per_s = result["pairs_per_s"]
    return {**result, "samples": n, "rss_mb_main_first": round(s[0][1], 1) if s else None,
            "rss_mb_main_last": round(s[-1][1], 1) if s else None,
            "rss_mb_total_by_quarter": [round(q, 1) for q in quart],
            "rss_mb_total_max": round(max(total), 1) if total else None,
            "rss_growth_mb_per_1000_pairs_second_half": round(slope / pairs_per_s * 1000, 3) if pairs_per_s else None}


def model_compare(corpus_info: dict, work: Path, pairs: int, workers: int, batch_size: int, repeats: int) -> dict:
    """sigma-lite with random heads (explicit opt-in): batching matters once inference is not trivial."""
    options = {"random_init": True, "image_size": 128}
    try:
        annotator = sigma.create_annotator("sigma-lite", **options)
    except SigmaError as exc:
        return {"skipped": f"sigma-lite could not be built: {exc.message}"}
    sub = work / f"model-corpus-{pairs}"
    info = make(sub, pairs, corpus_info["size"], ["parquet"])["parquet"]
    batches, loops = [], []
    for _ in range(repeats):
        batches.append(batch_run(info, "sigma-lite", options, work / "run-model", workers, batch_size,
                                 shard_size=100))
        loops.append(plain_loop(info, annotator, work / "loop-model.jsonl"))
    b = statistics.median(r["pairs_per_s"] for r in batches)
    l_ = statistics.median(r["pairs_per_s"] for r in loops)
    ratios = [round(x["pairs_per_s"] / y["pairs_per_s"], 3) for x, y in zip(batches, loops)]
    print(f"sigma-lite batch {b:.2f} pairs/s  loop {l_:.2f} pairs/s  per repeat {ratios}", flush=True)
    return {"annotator": "sigma-lite", "options": options, "pairs": pairs,
            "batch_run": {**batches[0], "pairs_per_s_median": b,
                          "pairs_per_s_all": [r["pairs_per_s"] for r in batches]},
            "plain_loop": {**loops[0], "pairs_per_s_median": l_,
                           "pairs_per_s_all": [r["pairs_per_s"] for r in loops]},
            "speedup_median": round(b / l_, 3), "speedup_per_repeat": ratios}


def eval_run(shared: Path, work: Path) -> dict:
    data = shared / "data" / "eval"
    if not data.is_dir():
        return {"skipped": f"{data} not found"}
    out = work / "run-eval"
    result = batch_run({"path": str(data), "preset": None}, "pixel-diff", {}, out, None, 8, shard_size=1000,
                       ground_truth=True)
    from sigma.batch.layout import RunDir
    from sigma.export.select import RowFilter, load_rows
    from sigma.report import build_report
    from sigma.report.build import set_metrics

    report = build_report(out, out / "report.html", limit=60)
    metrics = set_metrics(load_rows(out, RowFilter(include_errors=True)))
    info = {**result, "status": RunDir(out).summary(), "report": {k: v for k, v in report.items() if k != "out"},
            "metrics_pixel_diff": {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
                                   for name, m in metrics.items()}}
    chromium = shutil.which("chromium")
    if chromium:
        shot = work / "review_eval_full.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={work / 'chromium-profile'}", "--window-size=1200,1100",
                        f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True, timeout=120,
                       check=True)
        from PIL import Image

        img = Image.open(shot).convert("RGB")
        img = img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.LANCZOS).quantize(colors=128)
        target = RESULTS / "review_eval.png"
        img.save(target, optimize=True)
        info["screenshot"] = str(target.relative_to(RESULTS.parent.parent))
        info["screenshot_bytes"] = target.stat().st_size
    return info


# --- this checkout against another (--ref) ---------------------------------------------------------
#: row columns that may differ between two runs of the same pairs (time, provenance of the code)
_VOLATILE = {"extra", "sigma_version", "config_hash", "run_hash"}


def _run_outputs(out: Path) -> dict:
    """What a run promises byte for byte: every mask PNG's sha256 and every row but its timings and provenance."""
    import hashlib

    import pyarrow.parquet as pq

    masks = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((out / "masks").rglob("*.png"))}
    rows = {}
    for f in sorted((out / "shards").rglob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            extra = json.loads(r["extra"]) if isinstance(r.get("extra"), str) else {}
            extra.pop("timings_ms", None)
            rows[r["pair_id"]] = {**{k: v for k, v in r.items() if k not in _VOLATILE}, "extra": extra}
    return {"masks": masks, "rows": rows}


def _timed_run(checkout: Path, corpus: Path, out: Path) -> dict:
    """One `python -m sigma batch run` of `checkout`'s sigma: wall seconds, its CPU seconds (user + system, all
    threads), pairs/s from its own summary (the run, without the interpreter's start)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(checkout)
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "sigma", "batch", "run", str(corpus), "--out", str(out), "--annotator",
            "sigma-lite", "--png-masks", "--json", "--procs", "1", "--threads", "1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} ({checkout}) exited {proc.returncode}")
    summary = json.loads(stdout)
    pairs = int(summary.get("pairs") or 0)
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "pairs": pairs,
            "pairs_per_s": summary.get("pairs_per_s"), "cpu_s_per_pair": round((usage.ru_utime + usage.ru_stime)
                                                                                 / max(pairs, 1), 4)}


def compare_with_ref(ref: Path, data: Path, work: Path, sizes: list[int], pairs: int, repeats: int) -> dict:
    """sigma-lite end to end, this checkout and `ref` alternately; medians, ratios and the outputs compared."""
    from bench_scaleout import make_corpus

    this = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(ref), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(this), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    result: dict = {"ref": {"path": str(ref), "commit": commit}, "this": {"commit": head}, "sizes": {}}
    for size in sizes:
        corpus = data / f"photos_{pairs}_{size}"
        source = make_corpus(corpus, pairs, size) if not corpus.is_dir() else f"{corpus} (reused)"
        runs: dict[str, list[dict]] = {"this": [], "ref": []}
        same = True
        for r in range(repeats):
            order = ("this", "ref") if r % 2 == 0 else ("ref", "this")
            outputs = {}
            for name in order:
                out = work / f"vs_ref_{name}_{size}"
                runs[name].append(_timed_run(this if name == "this" else ref, corpus, out))
                outputs[name] = _run_outputs(out)
            same = same and outputs["this"] == outputs["ref"]
            print(f"{size} px round {r + 1}: " + ", ".join(f"{n} {runs[n][-1]['pairs_per_s']} pairs/s "
                                                           f"{runs[n][-1]['cpu_s_per_pair']} cpu s/pair"
                                                           for n in ("this", "ref")), flush=True)

        def med(name: str, key: str, runs: dict[str, list[dict]] = runs) -> float:
            return statistics.median(x[key] for x in runs[name])

        result["sizes"][str(size)] = {
            "corpus": source, "runs": runs, "same_masks_and_rows": same,
            "median": {n: {k: med(n, k) for k in ("pairs_per_s", "cpu_s_per_pair", "wall_s")} for n in runs},
            "pairs_per_s_ratio_this_over_ref": round(med("this", "pairs_per_s") / med("ref", "pairs_per_s"), 3),
            "cpu_per_pair_ratio_ref_over_this": round(med("ref", "cpu_s_per_pair") / med("this", "cpu_s_per_pair"), 3),
            "per_round_pairs_per_s_ratio": [round(a["pairs_per_s"] / b["pairs_per_s"], 3)
                                            for a, b in zip(runs["this"], runs["ref"], strict=True)],
            "per_round_cpu_ratio_ref_over_this": [round(b["cpu_s_per_pair"] / a["cpu_s_per_pair"], 3)
                                                  for a, b in zip(runs["this"], runs["ref"], strict=True)]}
        entry = result["sizes"][str(size)]      # the ratio within each round, then its median: the load is shared
        entry["per_round_pairs_per_s_ratio_median"] = statistics.median(entry["per_round_pairs_per_s_ratio"])
        entry["per_round_cpu_ratio_median"] = statistics.median(entry["per_round_cpu_ratio_ref_over_this"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/sigma_bench", help="where synthetic corpora are written (reused)")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--long-pairs", type=int, default=10000)
    ap.add_argument("--model-pairs", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: cores - 1)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="alternations of batch run and loop per format")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--out", default=None, help="default bench/results/bench_batch.json "
                    "(bench_batch_vs_ref.json with --ref)")
    ap.add_argument("--ref", type=Path, help="only compare sigma-lite end to end with this checkout (see above)")
    ap.add_argument("--ref-sizes", default="512,1500", help="long sides of the photo pairs for --ref")
    ap.add_argument("--ref-pairs", type=int, default=40)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    shared = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1] / ".." / "shared"))
    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="sigma_bench_runs_"))
    if args.ref:
        out = Path(args.out or RESULTS / "bench_batch_vs_ref.json")
        result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
                  "cpus": os.cpu_count(), "python": platform.python_version(), "repeats": args.repeats,
                  "pairs": args.ref_pairs, "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
        result |= compare_with_ref(args.ref.resolve(), data, work, [int(v) for v in args.ref_sizes.split(",")],
                                   args.ref_pairs, args.repeats)
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        shutil.rmtree(work, ignore_errors=True)
        return
    try:
        import torch

        device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        device = "cpu"
    result: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
                    "cpus": os.cpu_count(), "device": device, "python": platform.python_version(),
                    "pairs_per_format": args.pairs, "image_size": args.size, "annotator": "pixel-diff",
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    t0 = time.perf_counter()
    corpora = make(data, args.pairs, args.size)
    result["corpus_build_s"] = round(time.perf_counter() - t0, 1)
    result["repeats"] = args.repeats
    result["formats"] = compare_formats(corpora, work, "pixel-diff", args.workers, args.batch_size, args.repeats)
    long_info = make(data, args.long_pairs, 64, ["wds"])["wds"]
    result["long_run"] = long_run(long_info, work, args.workers, args.batch_size)
    print(f"long run: {result['long_run']['pairs']} pairs, "
          f"RSS by quarter {result['long_run']['rss_mb_total_by_quarter']} MB", flush=True)
    if not args.skip_model:
        result["model"] = model_compare(corpora["parquet"], work, args.model_pairs, args.workers, 8, args.repeats)
    result["eval_run"] = eval_run(shared, work)
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["total_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out or RESULTS / "bench_batch.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

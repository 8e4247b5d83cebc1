"""Service overhead and micro-batching throughput, measured on loopback in one run.

    python bench/bench_service.py [--requests 200] [--size 512] [--jobs 300] [--out bench/results/]

Starts its own redis-server (temp dir, free port), one API process and workers (`sigma serve api`,
`sigma worker`, annotator pixel-diff), then measures:

1. Overhead: latency of `POST /v1/annotate` (multipart, one 512 px pair, sequential client) minus
   the in-process work on the same bytes in this process: `predict` alone, and the whole
   in-process path (`pair_from_bytes` + `predict` + `Annotation.to_dict()` with its RLE), each run
   right before its request so both see the same load; p50/p99 and paired differences. Also the
   plumbing alone: e2e minus the worker's own decode + predict + encode times for that request
   (HTTP, multipart, header check, Redis round trips, queue hand-off, JSON).
2. Throughput: M jobs queued while no worker runs, then one worker drains them with
   `max_batch_size=1` and again with larger batches; pairs/s from the jobs' own start/finish
   stamps, and the ratio to batch size 1.

Writes one JSON file to bench/results/ (machine, settings, figures).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import redis
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def make_pair(size: int) -> tuple[bytes, bytes, str]:
    """A real photograph from ../shared when there is one (an edit pasted in), else a synthetic scene."""
    shared = Path(os.environ.get("SIGMA_SHARED", ROOT.parent / "shared")) / "data" / "photos"
    photos = sorted(p for p in shared.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")) \
        if shared.is_dir() else []
    if photos:
        img = Image.open(photos[0]).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        original = np.asarray(img).copy()
        source = f"photo {photos[0].name} resized to {size}"
    else:
        yy, xx = np.mgrid[0:size, 0:size]
        rng = np.random.default_rng(0)
        original = np.stack([(xx * 255 // size), (yy * 255 // size), ((xx + yy) * 127 // size)], -1)
        original = np.clip(original + rng.normal(0, 8, original.shape), 0, 255).astype(np.uint8)
        source = f"synthetic gradient + noise {size}x{size}"
    edited = original.copy()
    s = size // 4
    edited[s:2 * s, s:3 * s] = (30, 200, 60)
    enc = []
    for arr in (original, edited):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        enc.append(buf.getvalue())
    return enc[0], enc[1], source


class Stack:
    def __init__(self, tmp: Path, overrides: list[str]):
        self.tmp = tmp
        self.redis_port, self.api_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.env = {**os.environ, "SIGMA_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                    "SIGMA_API_KEYS": KEY}
        self.sets = [x for o in overrides for x in ("--set", o)]
        self.procs: list[subprocess.Popen] = []
        self.redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port),
                                       "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL)
        self.r = redis.Redis(port=self.redis_port)
        wait_until(self.r.ping, 10, "redis")
        self.api = self.spawn(["serve", "api", "--port", str(self.api_port), "--log-level", "warning"])
        self.http = httpx.Client(base_url=self.url, timeout=60, headers={"X-API-Key": KEY})
        wait_until(lambda: self.http.get("/healthz").status_code == 200, 30, "API")

    def spawn(self, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{args[0]}-{len(self.procs)}.log", "wb")  # noqa: SIM115 - lives with the process
        p = subprocess.Popen([sys.executable, "-m", "sigma", *args, *self.sets], env=self.env, stdout=log,
                             stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs.append(p)
        return p

    def worker(self, batch: int, consumer: str) -> subprocess.Popen:
        p = self.spawn(["worker", "--consumer", consumer, "--set", f"worker.max_batch_size={batch}"])
        wait_until(lambda: self.r.hget(f"sigma:worker:{consumer}", "model_loaded") == b"1", 30, "worker")
        return p

    def stop(self, p: subprocess.Popen) -> None:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()

    def close(self) -> None:
        self.http.close()
        for p in self.procs:
            if p.poll() is None:
                self.stop(p)
        self.redis.terminate()
        self.redis.wait(timeout=10)


def overhead(stack: Stack, original: bytes, edited: bytes, n: int, warmup: int) -> dict:
    """Interleaved: each HTTP request is paired with an in-process run right before it, so both see the
    same machine load (this box is shared); overhead = e2e - in-process, per pair and of the p50s."""
    from sigma import create_annotator
    from sigma.io import pair_from_bytes

    ann = create_annotator("pixel-diff")
    pair = pair_from_bytes(original, edited)
    files = {"original": ("o.png", original, "image/png"), "edited": ("e.png", edited, "image/png")}
    worker = stack.worker(8, "overhead")
    e2e: list[float] = []
    predict: list[float] = []
    full: list[float] = []
    compute: list[float] = []     # the worker's own decode + predict + encode for that very request
    for i in range(warmup + n):
        t = time.perf_counter()
        ann.predict([pair])
        t_predict = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        ann.predict([pair_from_bytes(original, edited)])[0].to_dict()
        t_full = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        resp = stack.http.post("/v1/annotate", files=files)
        ms = (time.perf_counter() - t) * 1000
        if resp.status_code != 200:
            raise SystemExit(f"bench: annotate answered {resp.status_code}: {resp.text[:300]}")
        if i >= warmup:
            e2e.append(ms)
            predict.append(t_predict)
            full.append(t_full)
            worker_ms = resp.json()["result"]["timings_ms"]
            compute.append(worker_ms["decode"] + worker_ms["predict"] + worker_ms["encode"])
    stack.stop(worker)
    out = {"requests": n, "e2e_ms": {"p50": pct(e2e, 50), "p99": pct(e2e, 99), "mean": statistics.fmean(e2e)}}
    for name, values in (("predict", predict), ("full", full), ("worker_compute", compute)):
        diffs = [a - b for a, b in zip(e2e, values)]
        out[f"in_process_{name}_ms"] = {"p50": pct(values, 50), "p99": pct(values, 99)}
        out[f"overhead_vs_{name}_ms"] = {"p50": pct(e2e, 50) - pct(values, 50),
                                         "p99": pct(e2e, 99) - pct(values, 99),
                                         "paired_p50": pct(diffs, 50), "paired_p99": pct(diffs, 99)}
    return out


def throughput(stack: Stack, original: bytes, edited: bytes, jobs: int, batch: int) -> dict:
    files = {"original": ("o.png", original, "image/png"), "edited": ("e.png", edited, "image/png")}
    ids = []
    for _ in range(jobs):
        resp = stack.http.post("/v1/jobs", files=files)
        if resp.status_code != 202:
            raise SystemExit(f"bench: /v1/jobs answered {resp.status_code}: {resp.text[:300]}")
        ids.append(resp.json()["id"])
    worker = stack.worker(batch, f"tp{batch}")
    wait_until(lambda: stack.r.xlen("sigma:stream:pixel-diff") == 0, 600, f"drain at batch {batch}")
    stack.stop(worker)
    started, finished = [], []
    for job_id in ids:
        h = stack.r.hgetall(f"sigma:job:{job_id}")
        assert h[b"status"] == b"done", h.get(b"status")
        started.append(float(h[b"started_at"]))
        finished.append(float(h[b"finished_at"]))
    span = max(finished) - min(started)
    batches = stack.r.hgetall("sigma:metrics:pixel-diff")
    return {"batch_size": batch, "jobs": jobs, "seconds": span, "pairs_per_s": jobs / span,
            "cumulative_batches": int(batches.get(b"batch_count", 0))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    original, edited, source = make_pair(args.size)
    overrides = ["queue.block_ms=1000", "worker.max_wait_ms=5", f"limits.max_queue_length={args.jobs + 10}",
                 "api.wait_timeout_s=30"]
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), overrides)
        try:
            result: dict = {"benchmark": "service", "annotator": "pixel-diff", "pair": source,
                            "bytes": [len(original), len(edited)], "settings": overrides,
                            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                                        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            result["overhead"] = overhead(stack, original, edited, args.requests, args.warmup)
            runs = [throughput(stack, original, edited, args.jobs, int(b)) for b in args.batches.split(",")]
            base = runs[0]["pairs_per_s"]
            for run in runs:
                run["ratio_vs_batch_1"] = run["pairs_per_s"] / base
            result["throughput"] = runs
            result["machine"]["loadavg_end"] = os.getloadavg()
        finally:
            stack.close()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"service_{platform.node() or 'host'}_{args.size}px.json"
    target.write_text(json.dumps(result, indent=2))
    ov = result["overhead"]
    print(f"e2e p50 {ov['e2e_ms']['p50']:.2f} ms p99 {ov['e2e_ms']['p99']:.2f} ms; "
          f"overhead vs in-process decode+predict+RLE p50 {ov['overhead_vs_full_ms']['p50']:.2f} ms "
          f"p99 {ov['overhead_vs_full_ms']['p99']:.2f} ms; vs predict only p50 "
          f"{ov['overhead_vs_predict_ms']['p50']:.2f} ms; plumbing (e2e - the worker's own decode+predict+encode, "
          f"paired) p50 {ov['overhead_vs_worker_compute_ms']['paired_p50']:.2f} ms "
          f"p99 {ov['overhead_vs_worker_compute_ms']['paired_p99']:.2f} ms")
    for run in result["throughput"]:
        print(f"batch {run['batch_size']:>3}: {run['pairs_per_s']:.1f} pairs/s (x{run['ratio_vs_batch_1']:.2f})")
    print(f"-> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""API memory under hostile but legal load (issue 11, item 14): N concurrent ~44 MB base64 JSON bodies.

    python bench/bench_api_memory.py [--clients 16] [--side 2350] [--tree NAME=PYTHON[:ROOT][,KEY=VALUE...]]...

Starts its own redis-server (temp dir, free port) and, for each tree, one API process (`sigma serve api`, no
worker: accepted jobs just wait in Redis), then sends `--clients` concurrent `POST /v1/jobs` with the same JSON
body (two noise PNGs of side x side px, base64: 2 x 16.6 MB of PNG → 44 MB of JSON at the default side), and in
a fresh API process the same pair as multipart. For the API process it reads VmRSS before, VmHWM (the kernel's
peak RSS) after the burst, and VmRSS once the burst is over (2 s settle). `KEY=VALUE` after a tree are `--set`
overrides for its API (e.g. `limits.max_bytes_in_flight=100000000000` measures the new code without the budget).
Each tree is a Python whose `sigma` is that checkout (e.g. the branch's base in its own venv), so old and new code
are measured in the same run on the same bytes; the JSON gives each figure and the ratio to the first tree.

    git archive <base> | tar -x -C /tmp/i11-base && source /work/helpers/wtenv.sh /tmp/i11-base   # the old code
    python bench/bench_api_memory.py --tree before=/tmp/venv-i11-base/bin/python:/tmp/i11-base \\
                                     --tree after=$(which python)
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import redis
from bench_service import KEY, ROOT, free_port  # the sibling benchmark's helpers (bench/ is on sys.path)
from PIL import Image


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = round(int(value.split()[0]) / 1024, 1)
    return out


def reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); best effort."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def noise_png(side: int, seed: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def start_redis(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(tmp), "--save", "", "--appendonly", "no", "--logfile", str(tmp / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def start_api(python: str, tree: Path, redis_port: int, prefix: str, log: Path, sets: list[str]
              ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGMA")}
    env.update({"SIGMA_API_KEYS": KEY, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
    args = [python, "-m", "sigma", "serve", "api", "--port", str(port), "--log-level", "warning",
            "--set", f"redis.url=redis://127.0.0.1:{redis_port}/0", "--set", f"redis.key_prefix={prefix}",
            "--set", "limits.max_queue_length=100000", "--set", "queue.job_ttl_s=600"]
    for item in sets:
        args += ["--set", item]
    proc = subprocess.Popen(args, env=env, cwd=str(tree), stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"API exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("API did not start")


def burst(url: str, clients: int, request: dict) -> tuple[Counter, float]:
    statuses: Counter = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def one() -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            barrier.wait()
            try:
                resp = http.post("/v1/jobs", **request)
                status = resp.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with lock:
                statuses[status] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses, time.perf_counter() - t0


def measure(name: str, python: str, tree: Path, sets: list[str], redis_port: int, tmp: Path, clients: int,
            bodies: dict[str, dict]) -> dict:
    out: dict = {"python": python, "tree": str(tree), "sets": sets}
    for kind, request in bodies.items():       # a fresh API per burst: each starts from the same idle process
        prefix = f"bench-{name}-{kind}"
        api, url = start_api(python, tree, redis_port, prefix, tmp / f"api-{name}-{kind}.log", sets)
        try:
            time.sleep(1.0)
            before = proc_status(api.pid)["VmRSS"]
            reset_peak(api.pid)
            statuses, seconds = burst(url, clients, request)
            peak = proc_status(api.pid)["VmHWM"]
            time.sleep(2.0)
            after = proc_status(api.pid)["VmRSS"]
        finally:
            api.terminate()
            api.wait(timeout=30)
        out[kind] = {"rss_before_mb": before, "peak_mb": peak, "rss_after_mb": after, "seconds": round(seconds, 2),
                     "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}}
        print(f"{name:>14} {kind:>9}: idle {before:7.1f} MB  peak {peak:7.1f} MB  after {after:7.1f} MB  "
              f"{seconds:5.1f} s  {dict(statuses)}", flush=True)
        client = redis.Redis(port=redis_port)     # free Redis memory between bursts
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--side", type=int, default=2350, help="each noise PNG is side x side RGB (2350: ~16.6 MB)")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PYTHON[:ROOT][,KEY=VALUE...]",
                    help="a Python whose `sigma` is the code to measure, its checkout, --set overrides for its API "
                    "(repeatable; default: this one)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    trees = []
    for spec in args.tree or [f"this={sys.executable}:{ROOT}"]:
        name, _, rest = spec.partition("=")
        where, *sets = rest.split(",")
        python, _, root = where.partition(":")
        trees.append((name, python, Path(root or ROOT), sets))

    original, edited = noise_png(args.side, 1), noise_png(args.side, 2)
    body = json.dumps({"original": base64.b64encode(original).decode(),
                       "edited": base64.b64encode(edited).decode(), "instruction": "x"}).encode()
    bodies = {"json": {"content": body, "headers": {"content-type": "application/json", "X-API-Key": KEY}},
              "multipart": {"files": {"original": ("o.png", original, "image/png"),
                                      "edited": ("e.png", edited, "image/png")}, "headers": {"X-API-Key": KEY}}}
    print(f"pair: 2 x {len(original) / 1e6:.1f} MB PNG; JSON body {len(body) / 1e6:.1f} MB; {args.clients} clients")
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-mem-"))
    redis_proc, redis_port = start_redis(tmp)
    results = {}
    try:
        for name, python, tree, sets in trees:
            results[name] = measure(name, python, tree, sets, redis_port, tmp, args.clients, bodies)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    first = trees[0][0]
    ratios = {name: {kind: {f: round(r[kind][f] / results[first][kind][f], 3) for f in ("peak_mb", "rss_after_mb")}
                     for kind in bodies} for name, r in results.items()}
    record = {"bench": "api_memory", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                 "load_avg": os.getloadavg()},
              "clients": args.clients, "png_bytes": [len(original), len(edited)], "json_body_bytes": len(body),
              "results": results, f"ratio_to_{first}": ratios}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "api_memory.json"
    path.write_text(json.dumps(record, indent=2))
    print(json.dumps(ratios, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

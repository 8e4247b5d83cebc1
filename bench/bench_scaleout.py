"""Scale-out benchmark: `sigma-lite` pairs/s on one corpus for the local backend with one process (torch's
default threads, and 1 thread), `--procs 2`, Ray with 1 and 2 actors, and no flags at all (the defaults),
alternated in one run, as ratios to the one-process run of the same round; Ray's and the process pool's
overhead per shard; and the inputs of the 1.1 M-pair projection in docs/batch.md (per-pair cost at 512 px,
host-side cost per pair, FLOPs per pair).

    python bench/bench_scaleout.py                         # JSON to bench/results/bench_scaleout.json
    python bench/bench_scaleout.py --pairs 24 --repeats 1  # quicker

The corpus is made from ../shared/data/photos (JPEG, a patch of another photo pasted in; synthetic pairs when
../shared is absent), in a temporary folder. Every configuration is a `sigma batch run` subprocess, so each
starts as a user's would (its wall time includes Python, torch and the model loading); Ray runs join one
`ray start --head --block` started here for the whole benchmark (its start-up is reported apart).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHARED = Path(os.environ.get("SIGMA_SHARED", ROOT.parent / "shared"))


# --- the corpus -----------------------------------------------------------------------------------
def make_corpus(folder: Path, pairs: int, size: int, seed: int = 0) -> str:
    """`<id>_original.jpg` + `<id>_edited.jpg` + instructions.jsonl; returns where the pixels came from."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted((SHARED / "data" / "photos").rglob("*.jpg")) + sorted((SHARED / "data" / "photos").rglob("*.png"))
    rng = np.random.default_rng(seed)
    texts = []
    if len(photos) < 2:
        from sigma.io.corpora.synthetic import synthetic_pairs, write_folder

        write_folder(folder, synthetic_pairs(pairs, size=size, seed=seed))
        return f"synthetic pairs ({size} px): ../shared/data/photos not found"
    for i in range(pairs):
        a, b = (photos[j] for j in rng.choice(len(photos), 2, replace=False))
        img = Image.open(a).convert("RGB")
        scale = size / max(img.size)
        img = img.resize((max(32, round(img.width * scale)), max(32, round(img.height * scale))), Image.BILINEAR)
        donor = Image.open(b).convert("RGB").resize(img.size, Image.BILINEAR)
        w, h = img.size
        pw, ph = int(w * rng.uniform(0.15, 0.4)), int(h * rng.uniform(0.15, 0.4))
        x, y = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
        edited = img.copy()
        edited.paste(donor.crop((x, y, x + pw, y + ph)), (x, y))
        for name, im in (("original", img), ("edited", edited)):
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            (folder / f"p{i:05d}_{name}.jpg").write_bytes(buf.getvalue())
        texts.append({"id": f"p{i:05d}", "instruction": "replace the object with something else"})
    (folder / "instructions.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    return f"{pairs} photos from ../shared/data/photos at {size} px long side, JPEG q90, a pasted patch each"


# --- running --------------------------------------------------------------------------------------
def env() -> dict[str, str]:
    """One authentication mode for the head and every driver (Ray >= 2.59 would otherwise turn tokens on in
    `ray start` alone when ~/.ray/auth_token exists); the benchmark's head listens on loopback only."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}


def _parents() -> dict[int, int]:
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            out[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(root: int) -> set[int]:
    parents = _parents()
    tree, frontier = set(), {root}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - tree
    return tree


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory_mb(root: int, ray_head: int | None) -> tuple[float, float]:
    """(RSS of `root` and its descendants, RSS of the Ray head's shard actors), MB."""
    own = sum(_rss_mb(p) for p in descendants(root))
    actors = 0.0
    if ray_head is not None:
        for pid in descendants(ray_head):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::") and b"ShardActor" in \
                        Path(f"/proc/{pid}/cmdline").read_bytes():
                    actors += _rss_mb(pid)
            except OSError:
                continue
    return own, actors


RAY_HEAD: int | None = None


def sigma_run(corpus: Path, out: Path, flags: list[str], annotator: str, shard_size: int) -> dict:
    args = [sys.executable, "-m", "sigma", "batch", "run", str(corpus), "--out", str(out), "--annotator", annotator,
            "--shard-size", str(shard_size), "--workers", "0", "--no-ground-truth", "--no-progress", "--json", *flags]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    peak_own = peak_actors = 0.0
    while proc.poll() is None:          # once a second: the sampling itself must not compete with the run
        own, actors = memory_mb(proc.pid, RAY_HEAD)
        peak_own, peak_actors = max(peak_own, own), max(peak_actors, actors)
        time.sleep(1.0)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    summary = json.loads(stdout)
    digest = hashlib.sha256()
    for f in sorted((out / "shards").glob("*.parquet")):
        digest.update(f.read_bytes())
    return {"wall_s": round(wall, 3), "pairs": summary["pairs"], "run_s": summary["seconds"],
            "pairs_per_s_wall": round(summary["pairs"] / wall, 3), "pairs_per_s_run": summary["pairs_per_s"],
            "peak_rss_mb_driver_and_children": round(peak_own, 1), "peak_rss_mb_ray_actors": round(peak_actors, 1),
            "backend": summary.get("backend", {}), "shards_sha256": digest.hexdigest()[:16]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ray_head(cpus: int) -> tuple[subprocess.Popen, str, float]:
    from sigma.batch.ray_backend import probe_grpc

    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    start = time.perf_counter()
    # same session as the local runs: with the kernel's autogroup scheduling (on here) a session of its own
    # would get its own share of the CPU and flatter Ray against the local backend
    proc = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", f"--num-cpus={cpus}",
                             "--node-ip-address=127.0.0.1",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            probe_grpc("127.0.0.1", port, 2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("`ray start --head` did not come up") from None
            time.sleep(0.2)
    return proc, address, round(time.perf_counter() - start, 2)


def flops_per_pair(size: int) -> float:
    """sigma-lite's FLOPs for one pair at `size` px (torch's flop counter over annotator.predict)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import sigma
    from sigma.io import pair_from_bytes
    from sigma.io.corpora.synthetic import synthetic_pairs

    torch.set_num_threads(1)
    annotator = sigma.create_annotator("sigma-lite")
    p = next(synthetic_pairs(1, size=size))
    pair = pair_from_bytes(p["original"], p["edited"], p["instruction"])
    with FlopCounterMode(display=False) as counter:
        annotator.predict([pair])
    return float(counter.get_total_flops())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--size", type=int, default=256, help="long side of the scaling corpus (px)")
    ap.add_argument("--shard-size", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--proj-pairs", type=int, default=16, help="pairs at 512 px for the per-pair cost")
    ap.add_argument("--tiny-shards", type=int, default=60, help="one-pair shards for the overhead per shard")
    ap.add_argument("--out", default=str(RESULTS / "bench_scaleout.json"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary corpora and runs")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # run the clean-up below on `kill`

    work = Path(tempfile.mkdtemp(prefix="sigma-scaleout-"))
    corpus = work / "corpus"
    source = make_corpus(corpus, args.pairs, args.size)
    global RAY_HEAD
    head, address, ray_start_s = start_ray_head(cpus=os.cpu_count() or 2)
    RAY_HEAD = head.pid
    cores = os.cpu_count() or 2
    configs = {
        "local_1proc": ["--procs", "1", "--threads", str(cores)],   # torch's default threads: the baseline
        "local_1proc_1thread": ["--procs", "1", "--threads", "1"],
        "local_procs2": ["--procs", "2"],
        "ray_1actor": ["--ray-address", address, "--actors", "1"],
        "ray_2actors": ["--ray-address", address, "--actors", "2"],
        "local_default": [],                                        # what `sigma batch run` picks by itself
    }
    rounds: list[dict] = []
    try:
        for r in range(args.repeats):
            row = {}
            for name, flags in configs.items():
                row[name] = sigma_run(corpus, work / f"{name}-{r}", flags, "sigma-lite", args.shard_size)
                print(f"round {r} {name}: {row[name]['pairs_per_s_wall']} pairs/s (wall), "
                      f"{row[name]['pairs_per_s_run']} (run)", flush=True)
            rounds.append(row)
        # overhead per shard: one-pair shards of a near-free annotator
        tiny = work / "tiny"
        from sigma.io.corpora.synthetic import synthetic_pairs, write_pairs_jsonl

        write_pairs_jsonl(tiny, synthetic_pairs(args.tiny_shards, size=32))
        overhead = {}
        for name, flags in {"ray_1actor": ["--ray-address", address, "--actors", "1"],
                            "local_procs2": ["--procs", "2"]}.items():
            res = sigma_run(tiny, work / f"tiny-{name}", flags, "pixel-diff", 1)
            overhead[name] = {"shards": args.tiny_shards,
                              "overhead_ms_per_shard": res["backend"]["overhead_ms_per_shard"],
                              "run_s": res["run_s"], "worker_s": res["backend"]["worker_seconds"]}
            print(f"overhead {name}: {overhead[name]}", flush=True)
        # projection inputs at 512 px: per pair per core, with the model and with a near-free annotator
        big = work / "corpus512"
        make_corpus(big, args.proj_pairs, 512, seed=1)
        per = max(1, args.proj_pairs // 4)                 # >= 2 shards, so both processes work
        lite = sigma_run(big, work / "p512-lite", ["--procs", "2"], "sigma-lite", per)
        host = sigma_run(big, work / "p512-host", ["--procs", "2"], "pixel-diff", per)
    finally:
        left = descendants(head.pid) - {head.pid}
        head.terminate()                       # `ray start --block` stops the head's processes on SIGTERM
        try:
            head.wait(timeout=20)
        except subprocess.TimeoutExpired:
            head.kill()
        for pid in left:                       # anything of that head still there
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    def ratios(key: str) -> dict:
        out = {}
        for name in configs:
            per = [round(r[name][key] / r["local_1proc"][key], 3) for r in rounds]
            out[name] = {"median": round(statistics.median(per), 3), "per_repeat": per,
                         "pairs_per_s_median": round(statistics.median(r[name][key] for r in rounds), 3)}
        return out

    lite_s = lite["backend"]["worker_seconds"] / lite["pairs"]
    host_s = host["backend"]["worker_seconds"] / host["pairs"]
    flops = flops_per_pair(512)
    ray_ms = overhead["ray_1actor"]["overhead_ms_per_shard"]
    pairs_total, shard = 1_100_000, 1000
    cpu_hours = pairs_total * lite_s / 32 / 3600 + (pairs_total / shard) * ray_ms / 1000 / 32 / 3600
    projection = {
        "pairs": pairs_total, "shard_size": shard,
        "sigma_lite_s_per_pair_per_core_512px": round(lite_s, 4),
        "host_s_per_pair_per_core_512px (decode, hash, RLE, parquet; pixel-diff)": round(host_s, 4),
        "sigma_lite_gflops_per_pair_512px": round(flops / 1e9, 2),
        "ray_overhead_ms_per_shard": ray_ms,
        "a_32_core_cpu_hours": round(cpu_hours, 2),
        "a_assumes": "32 actors x 1 thread, linear in cores (measured 1 -> 2 processes here, see ratios), the "
                     "per-pair cost measured here under this machine's load (an upper bound on a dedicated core)",
        "b_8_gpu": "not measured (no GPU lent): see docs/batch.md for the model built from the FLOPs and host cost",
    }
    result = {
        "benchmark": "bench/bench_scaleout.py", "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "corpus": {"source": source, "pairs": args.pairs, "shard_size": args.shard_size,
                   "shards": -(-args.pairs // args.shard_size)},
        "ray_head_start_s": ray_start_s,
        "configs": configs | {"ray_1actor": ["--ray-address", "ADDR", "--actors", "1"],
                              "ray_2actors": ["--ray-address", "ADDR", "--actors", "2"]},
        "ratio_wall_vs_local_1proc": ratios("pairs_per_s_wall"),
        "ratio_run_vs_local_1proc": ratios("pairs_per_s_run"),
        "same_bytes_as_local_1proc_1thread": {
            name: all(r[name]["shards_sha256"] == r["local_1proc_1thread"]["shards_sha256"] for r in rounds)
            for name in configs},
        "overhead_per_shard": overhead,
        "projection_inputs": projection,
        "rounds": rounds,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio_wall_vs_local_1proc", "ratio_run_vs_local_1proc",
                                             "same_bytes_as_local_1proc_1thread", "overhead_per_shard",
                                             "projection_inputs")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

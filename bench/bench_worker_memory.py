"""Per-worker peak memory of max-size pairs: what a worker host must have for `limits.max_pixels` at
`worker.max_batch_size` (issue 11 item 15).

Each configuration runs in a fresh process (peak RSS, VmHWM, is per process): the serving `Predictor` decodes a
batch of WebP pairs of the given size (a few kB each: a smooth gradient with a dark square edited in) and
annotates them, exactly as a worker does. Writes bench/results/bench_worker_memory.json.

    python bench/bench_worker_memory.py [--side 4000] [--batches 1,8] [--annotators pixel-diff,sigma-lite]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, re, sys, time
def mem():
    t = open('/proc/self/status').read()
    return {k: int(re.search(k + r':\s+(\d+)', t).group(1)) // 1024 for k in ('VmHWM', 'VmRSS')}
from sigma.service.predictor import Predictor
name, batch, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = Predictor(name, {})
p.setup()
base = mem()
o = open(folder + '/o.webp', 'rb').read(); e = open(folder + '/e.webp', 'rb').read()
t = time.perf_counter()
out = p([{'id': f'j{i}', 'original': o, 'edited': e, 'instruction': None, 'outputs': ['rle', 'png']}
         for i in range(batch)])
assert all(r['ok'] for r in out), out
print(json.dumps({'annotator': name, 'batch': batch, 'after_setup_mb': base['VmRSS'],
                  'peak_mb': mem()['VmHWM'], 'seconds': round(time.perf_counter() - t, 2)}))
"""


def make_pair(folder: Path, side: int) -> None:
    import numpy as np
    from PIL import Image

    x = np.linspace(0, 255, side, dtype=np.float32)
    img = np.stack([np.add.outer(x, x) / 2] * 3, -1).astype(np.uint8)
    Image.fromarray(img).save(folder / "o.webp", quality=80)
    img[side // 4:side // 4 + side // 10, side // 4:side // 4 + side // 10] = 0
    Image.fromarray(img).save(folder / "e.webp", quality=80)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=4000, help="pair size (side x side); 4000 = the 16 Mpx default limit")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--annotators", default="pixel-diff,sigma-lite")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_worker_memory.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_pair(Path(tmp), args.side)
        sizes = {p.name: p.stat().st_size for p in Path(tmp).iterdir()}
        for name in args.annotators.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                proc = subprocess.run([sys.executable, "-c", CHILD, name, str(batch), tmp], capture_output=True,
                                      text=True, timeout=1800, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    return 1
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["per_pair_mb"] = round((row["peak_mb"] - row["after_setup_mb"]) / batch, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"side": args.side, "megapixels": round(args.side ** 2 / 1e6, 1), "file_bytes": sizes, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of `sigma export coco` over a run of many rows, against an earlier revision in the same run.

The run is made as the batch runner makes it, without annotating its pairs (`tests/runrecords.py:grown_run`): a
small synthetic corpus is run once (pixel-diff, one pair per shard), then every shard file is rewritten with
ROWS/SHARDS rows copied from the shard's own row (masks of --side px, so their RLE is as long as a real one's) and
its status updated to the new file's size and sha256, as `sigma.batch` records them. Each export runs in a fresh
process; its peak RSS (VmHWM) is read at the end. `--baseline REV` also runs the `sigma` package of git revision
REV (extracted to a temporary folder) on the same run, so the two are compared on the same machine.
Writes bench/results/bench_export_memory.json.

    python bench/bench_export_memory.py --rows 20000,100000 --baseline 77c1c15
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from runrecords import grown_run  # noqa: E402  (the tests' run builder: one fixture for both)

CHILD = r"""
import json, re, sys, time
from sigma.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
hwm = int(re.search(r'VmHWM:\s+(\d+)', open('/proc/self/status').read()).group(1)) // 1024
print(json.dumps({'rc': code, 'peak_mb': hwm, 'seconds': round(time.perf_counter() - t, 2)}))
"""


def export(tree: Path, argv: list[str]) -> dict:
    """One export in a fresh process whose `sigma` is the one in `tree` (its working folder comes first on the
    path)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, cwd=tree, env=env,
                          timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"export failed ({tree}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def baseline_tree(rev: str, into: Path) -> Path:
    """The `sigma` package of git revision `rev`, extracted under `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "sigma"], check=True,
                             capture_output=True).stdout
    tar = into / "baseline.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as handle:
        handle.extractall(into / "baseline", filter="data")
    return into / "baseline"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="20000,100000", help="run sizes (rows), comma-separated")
    ap.add_argument("--shards", type=int, default=100, help="shard files per run")
    ap.add_argument("--side", type=int, default=128, help="mask side in pixels (RLE length)")
    ap.add_argument("--sorts", default="corpus,confidence")
    ap.add_argument("--baseline", help="git revision to compare with (its sigma package)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_export_memory.json"))
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"current": ROOT}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = baseline_tree(args.baseline, Path(tmp))
        for rows in (int(r) for r in args.rows.split(",")):
            folder = Path(tmp) / f"r{rows}"
            folder.mkdir()
            t = time.perf_counter()
            run = grown_run(folder, rows, args.shards, args.side)
            built = round(time.perf_counter() - t, 1)
            for sort in args.sorts.split(","):
                row = {"rows": rows, "shards": args.shards, "side": args.side, "sort": sort, "build_s": built}
                for name, tree in trees.items():
                    out = folder / f"{name.split()[0]}-{sort}.json"
                    got = export(tree, ["export", "coco", str(run), "--out", str(out), "--sort", sort])
                    row[name] = {**got, "json_mb": round(out.stat().st_size / 2 ** 20, 1)}
                if len(trees) == 2:
                    files = [folder / f"{name.split()[0]}-{sort}.json" for name in trees]
                    row["same_bytes"] = files[0].read_bytes() == files[1].read_bytes()
                    base = row[f"baseline {args.baseline}"]["peak_mb"]
                    row["peak_ratio_current_to_baseline"] = round(row["current"]["peak_mb"] / base, 3)
                for f in folder.glob("*.json"):
                    f.unlink()
                results.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"python": sys.version.split()[0], "runs": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

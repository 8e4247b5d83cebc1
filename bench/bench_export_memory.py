"""Peak memory of `sigma export coco` over a run of many rows, against an earlier revision in the same run.

The run is made as the batch runner makes it, without annotating its pairs (`tests/runrecords.py:grown_run`): a
small synthetic corpus is run once (pixel-diff, one pair per shard), then every shard file is rewritten with
ROWS/SHARDS rows copied from the shard's own row (masks of --side px, so their RLE is as long as a real one's) and
its status updated to the new file's size and sha256, as `sigma.batch` records them. Each export runs in a fresh
process; its peak RSS (VmHWM) is read at the end. `--baseline REV` also runs the `sigma` package of git revision
REV (extracted to a temporary folder) on the same run, so the two are compared on the same machine.
Writes bench/results/bench_export_memory.json.

`--images`: the run's pairs can be read again (`grown_run(images=True)`: the corpus holds every pair, the run is
annotated once, ~3 ms a pair) and each export runs twice, without and with `--images DIR` (a fresh DIR), so the
memory the images add (`images_extra_mb`: their staged names, `PlacedFiles`) is read beside the JSON's. `--structures
N` also measures, in this process with tracemalloc, the bytes per pair of what an export holds until its end: the
staged images (this tree's `PlacedFiles` names against the (temporary Path, target Path) pairs held before), the file
names taken (`UniqueNames`), and the skipped pairs (`Skipped` against one dict each).

`--format imdl-benco` measures `sigma export imdl-benco RUN --out DIR` instead (a run made to be re-read, as with
`--images`: it writes every pair's Tp/ and Gt/ PNGs); `same_bytes` compares the two trees' JSON lists with each
one's DIR said the same way.

    python bench/bench_export_memory.py --rows 20000,100000 --baseline 77c1c15
    python bench/bench_export_memory.py --format imdl-benco --rows 20000,100000 --baseline HEAD~1
    python bench/bench_export_memory.py --rows 5000,20000 --images --baseline HEAD --structures 200000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]      # this tree's sigma (the venv's editable one may be another)
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


def _held(build) -> int:
    """Bytes the Python heap holds in what `build()` returns (tracemalloc, in this process)."""
    import gc

    gc.collect()
    tracemalloc.start()
    try:
        kept = build()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return held


def measure_structures(n: int) -> dict:
    """Bytes per pair of what an export holds until its end, at `n` pairs (no files are written: the staged names
    are put as `PlacedFiles.stage` puts them once its file is written)."""
    from collections import deque

    from sigma.export.placing import PlacedFiles
    from sigma.export.select import Skipped, UniqueNames
    from sigma.tempfiles import temp_name

    folder = Path("/data/exports/images")
    names = [f"corpus_q{k:08d}.png" for k in range(n)]

    def before_staged():        # 1e39359's PlacedFiles.staged: (temp_name(target), target) per image
        return deque((temp_name(folder / name), folder / name) for name in names)

    def now_staged():
        placed = PlacedFiles(folder)
        for name in names:
            placed._names += name.encode("utf-8", "surrogateescape") + b"\0"
        return placed

    def unique_names():
        taken = UniqueNames()
        for k in range(n):
            taken({"pair_id": f"corpus_q{k:08d}", "shard": "s", "index": k})
        return taken

    def before_skipped():
        return [{"pair_id": f"corpus_q{k:08d}", "reason": "no footprint mask (not a composite)"} for k in range(n)]

    def now_skipped():
        skipped = Skipped()
        for k in range(n):
            skipped.add(f"corpus_q{k:08d}", "no footprint mask (not a composite)")
        return skipped

    got = {"pairs": n}          # `names` is made before tracemalloc starts: not counted
    for label, build in (("staged_before", before_staged), ("staged_now", now_staged), ("unique_names", unique_names),
                         ("skipped_before", before_skipped), ("skipped_now", now_skipped)):
        got[f"{label}_bytes_per_pair"] = round(_held(build) / n, 1)
    got["staged_ratio_now_to_before"] = round(got["staged_now_bytes_per_pair"] / got["staged_before_bytes_per_pair"], 3)
    got["skipped_ratio_now_to_before"] = round(got["skipped_now_bytes_per_pair"] /
                                               got["skipped_before_bytes_per_pair"], 4)
    return got


def _benco_row(row: dict, trees: dict[str, Path], run: Path, folder: Path, sort: str) -> dict:
    """One `sigma export imdl-benco` per tree into a fresh DIR, its peak RSS and its JSON list (DIR said as `DIR`,
    so the two trees' lists compare), the DIRs removed after."""
    lists = []
    for name, tree in trees.items():
        out = folder / f"benco-{name.split()[0]}-{sort}"
        got = export(tree, ["export", "imdl-benco", str(run), "--out", str(out), "--sort", sort])
        listing = out / "imdl_benco.json"
        row[name] = {**got, "json_mb": round(listing.stat().st_size / 2 ** 20, 1)}
        lists.append(listing.read_bytes().replace(str(out.resolve()).encode(), b"DIR"))
        shutil.rmtree(out)
    if len(trees) == 2:
        names = list(trees)
        row["same_bytes"] = lists[0] == lists[1]
        row["peak_ratio_current_to_baseline"] = round(row[names[0]]["peak_mb"] / row[names[1]]["peak_mb"], 3)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="20000,100000", help="run sizes (rows), comma-separated")
    ap.add_argument("--shards", type=int, default=100, help="shard files per run")
    ap.add_argument("--side", type=int, default=128, help="mask side in pixels (RLE length)")
    ap.add_argument("--sorts", default="corpus,confidence")
    ap.add_argument("--baseline", help="git revision to compare with (its sigma package)")
    ap.add_argument("--images", action="store_true", help="also export with --images DIR (a run made to be re-read)")
    ap.add_argument("--format", choices=("coco", "imdl-benco"), default="coco", help="the export measured")
    ap.add_argument("--structures", type=int, default=0, help="pairs for the per-structure measurement (0: none)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_export_memory.json"))
    args = ap.parse_args()
    results = []
    structures = measure_structures(args.structures) if args.structures else None
    if structures:
        print(json.dumps(structures), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"current": ROOT}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = baseline_tree(args.baseline, Path(tmp))
        for rows in (int(r) for r in args.rows.split(",")):
            folder = Path(tmp) / f"r{rows}"
            folder.mkdir()
            t = time.perf_counter()
            run = grown_run(folder, rows, args.shards, args.side, images=args.images or args.format == "imdl-benco")
            built = round(time.perf_counter() - t, 1)
            for sort in args.sorts.split(","):
                row = {"rows": rows, "shards": args.shards, "side": args.side, "sort": sort, "build_s": built}
                if args.format == "imdl-benco":
                    results.append(_benco_row(row, trees, run, folder, sort))
                    print(json.dumps(results[-1]), flush=True)
                    continue
                for name, tree in trees.items():
                    out = folder / f"{name.split()[0]}-{sort}.json"
                    got = export(tree, ["export", "coco", str(run), "--out", str(out), "--sort", sort])
                    row[name] = {**got, "json_mb": round(out.stat().st_size / 2 ** 20, 1)}
                    if args.images:
                        images = folder / f"img-{name.split()[0]}"
                        argv = ["export", "coco", str(run), "--out", str(out), "--sort", sort, "--images", str(images)]
                        with_images = export(tree, argv)
                        files = sum(1 for _ in images.iterdir())
                        shutil.rmtree(images)
                        row[name]["with_images"] = {**with_images, "files": files}
                        row[name]["images_extra_mb"] = with_images["peak_mb"] - got["peak_mb"]
                if len(trees) == 2:
                    files = [folder / f"{name.split()[0]}-{sort}.json" for name in trees]
                    row["same_bytes"] = files[0].read_bytes() == files[1].read_bytes()
                    base = row[f"baseline {args.baseline}"]
                    row["peak_ratio_current_to_baseline"] = round(row["current"]["peak_mb"] / base["peak_mb"], 3)
                    if args.images:
                        row["images_peak_ratio_current_to_baseline"] = round(
                            row["current"]["with_images"]["peak_mb"] / base["with_images"]["peak_mb"], 3)
                for f in folder.glob("*.json"):
                    f.unlink()
                results.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    commit = (subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], capture_output=True,
                             text=True).stdout.strip() if args.baseline else None)
    Path(args.out).write_text(json.dumps({"python": sys.version.split()[0], "argv": sys.argv[1:],
                                          "baseline_commit": commit, "structures": structures, "runs": results},
                                         indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

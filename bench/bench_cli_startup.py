"""How long a `sigma` command takes to start and finish when it needs no network → bench/results/bench_cli_startup.json.

Every `python -m sigma ...` imported torch (about 1.5 s on a 2-core CPU) until `sigma.models` resolved its names on
first use: a pixel-diff annotation, `batch status`, `sigma models` or an argument refusal paid for a network they
never built, and so did every CLI test. This measures each command's wall time (median of `--runs`), whether it
imported torch, and reports it as a ratio to two baselines measured in the same run, alternating with them so that
machine load falls on all alike:

  python -c pass          the interpreter alone
  python -c "import torch" the cost that is now skipped

With `--ref DIR` (a checkout of another commit, e.g. `git worktree add /tmp/ref 5102466`), the same commands also run
against that checkout's `sigma`, and the ratio new / ref is reported per command.

    python bench/bench_cli_startup.py --runs 5
    python bench/bench_cli_startup.py --runs 5 --ref /tmp/ref
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

#: says whether torch was imported, after the command ran (atexit: the command's own exit path is kept), on the
#: descriptor named by BENCH_PROBE_FD
_PROBE = ("import atexit, os, runpy, sys\n"
          "fd = int(os.environ.pop('BENCH_PROBE_FD'))\n"
          "atexit.register(lambda: os.write(fd, b'torch' if 'torch' in sys.modules else b'none'))\n"
          "sys.argv = ['sigma', *sys.argv[1:]]\n"
          "runpy.run_module('sigma', run_name='__main__')\n")


def make_pair(folder: Path) -> tuple[Path, Path]:
    """A 256x256 pair with one square changed: enough for pixel-diff to find something."""
    rng = np.random.default_rng(0)
    original = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    edited = original.copy()
    edited[96:160, 96:160] = 255 - edited[96:160, 96:160]
    paths = folder / "original.png", folder / "edited.png"
    Image.fromarray(original).save(paths[0])
    Image.fromarray(edited).save(paths[1])
    return paths


def commands(pair: tuple[Path, Path], out: Path) -> dict[str, list[str]]:
    return {
        "help": ["--help"],
        "models": ["models"],
        "parse": ["parse", "remove the red car"],
        "annotate_pixel_diff": ["annotate", str(pair[0]), str(pair[1]), "--annotator", "pixel-diff", "-o", str(out)],
        "refusal_unknown_annotator": ["annotate", str(pair[0]), str(pair[1]), "--annotator", "sigma-lyte"],
    }


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, bool]:
    """(wall seconds, whether torch was imported) of one run; the probe's answer comes through a pipe. `cwd` is a
    folder with no `sigma/` in it: `python -c` puts the current folder first on the path, before PYTHONPATH."""
    read, write = os.pipe()
    env = {**env, "BENCH_PROBE_FD": str(write)}
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write,),
                   check=False)
    seconds = time.perf_counter() - start
    os.close(write)
    with os.fdopen(read, "rb") as said:
        torch_imported = said.read() == b"torch"
    return seconds, torch_imported


def env_for(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(checkout), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    return env


def commit_of(checkout: Path) -> str | None:
    """The commit a checkout is at, for the report (a folder's name alone says nothing a week later)."""
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each command (median reported)")
    ap.add_argument("--ref", type=Path, help="another checkout to compare with (its sigma/ is imported)")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_cli_startup.json")
    args = ap.parse_args()

    checkouts = {"this": ROOT} | ({"ref": args.ref.resolve()} if args.ref else {})
    with tempfile.TemporaryDirectory() as tmp:
        pair = make_pair(Path(tmp))
        cmds = commands(pair, Path(tmp) / "out")
        times: dict[str, list[float]] = {}
        torch_seen: dict[str, bool] = {}
        baselines = {"python_pass": [sys.executable, "-c", "pass"],
                     "import_torch": [sys.executable, "-c", "import torch"]}
        for _ in range(args.runs):          # alternate everything within a round: load falls on all alike
            for name, argv in baselines.items():
                times.setdefault(name, []).append(timed(argv, env_for(ROOT), Path(tmp))[0])
            for where, checkout in checkouts.items():
                for name, tail in cmds.items():
                    key = f"{where}:{name}"
                    seconds, imported = timed([sys.executable, "-c", _PROBE, *tail], env_for(checkout), Path(tmp))
                    times.setdefault(key, []).append(seconds)
                    torch_seen[key] = torch_seen.get(key, False) or imported

    median = {key: statistics.median(values) for key, values in times.items()}
    rows = {}
    for key in (k for k in median if ":" in k):
        where, name = key.split(":", 1)
        row = {"median_s": round(median[key], 3), "imports_torch": torch_seen[key],
               "ratio_to_python_pass": round(median[key] / median["python_pass"], 2),
               "ratio_to_import_torch": round(median[key] / median["import_torch"], 2)}
        if where == "this" and f"ref:{name}" in median:
            row["ratio_to_ref"] = round(median[key] / median[f"ref:{name}"], 2)
        rows[key] = row
    report = {"runs": args.runs, "machine": f"{platform.machine()} {os.cpu_count()} cpus, no GPU",
              "python": platform.python_version(), "commit": commit_of(ROOT),
              "ref": {"path": str(args.ref), "commit": commit_of(args.ref)} if args.ref else None,
              "baselines_median_s": {k: round(median[k], 3) for k in baselines}, "commands": rows,
              "note": "wall times on a shared CPU machine: read the ratios, not the seconds"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for key, row in rows.items():
        print(f"{key:38s} {row['median_s']:6.2f} s  torch={row['imports_torch']!s:5s}  "
              f"×pass {row['ratio_to_python_pass']:5.2f}  ×torch {row['ratio_to_import_torch']:5.2f}"
              + (f"  ×ref {row['ratio_to_ref']:.2f}" if "ratio_to_ref" in row else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

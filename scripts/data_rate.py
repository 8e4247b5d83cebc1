"""Training pairs per second the synthetic-edit engine makes on this machine's CPUs with WORKERS processes, for
a training config plus overrides. Why: on a GPU the engine, not the network, sets the pace, and a time-limited
slot (`scripts/gpu_trial.sh`) must choose its step count so the cosine schedule ends inside the slot; a run cut
by `max_minutes` before its schedule ends never anneals. Prints one number (pairs/s) on the last line.

    python scripts/data_rate.py configs/train/sigma-lite-ii.yaml 14 20 data.crop=256
"""
from __future__ import annotations

import sys
import time


def _init(config: str, overrides: list[str]) -> None:
    import torch

    from sigma.config.loader import load_config
    from sigma.training.config import TrainConfig
    from sigma.training.data import TrainDataset

    torch.set_num_threads(1)
    global _DS
    _DS = TrainDataset(load_config(TrainConfig, config, overrides))


def _one(index: int) -> int:
    _DS[index]
    return index


def main(config: str, workers: int, seconds: float, overrides: list[str]) -> float:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init, initargs=(config, overrides)) as pool:
        list(pool.imap_unordered(_one, range(10_000_000, 10_000_000 + 2 * workers)))   # started and warm
        t0, done = time.monotonic(), 0
        for _ in pool.imap_unordered(_one, range(workers * 10_000), chunksize=2):
            done += 1
            if time.monotonic() - t0 > seconds:
                break
        rate = done / (time.monotonic() - t0)
        pool.terminate()
    print(f"{workers} workers: {rate:.1f} pairs/s", file=sys.stderr)
    print(f"{rate:.2f}")
    return rate


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:])

"""Run by tests/test_training_signals.py: `sigma train ARGS` in this process, saying how many data workers (this
process's spawned children) are alive at the first training step, at each checkpoint and validation, and just
before the process exits: `WORKERS <where> <count>` lines on stdout."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def data_workers() -> int:
    """This process's children started by multiprocessing's spawn (`--multiprocessing-fork` on their command line):
    the DataLoader's workers; the resource tracker, also a child, is not one."""
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        count += ppid == os.getpid() and b"--multiprocessing-fork" in argv
    return count


def watch(cls: type, name: str) -> None:
    original = getattr(cls, name)

    def watched(self, *args, **kwargs):
        print(f"WORKERS {name}@{self.step} {data_workers()}", flush=True)
        return original(self, *args, **kwargs)

    setattr(cls, name, watched)


def run_watched(args: list[str]) -> int:
    """`sigma train ARGS` with the `WORKERS` lines (also tests/train_term_mid_step.py's, after its own patches)."""
    from sigma.cli import main as sigma_main
    from sigma.training.loop import Trainer

    for name in ("train_step", "checkpoint", "validate"):
        watch(Trainer, name)
    code = sigma_main(["train", *args])
    print(f"WORKERS exit {data_workers()}", flush=True)
    return code


def main() -> int:
    return run_watched(sys.argv[1:])


if __name__ == "__main__":      # spawned data workers import this module as __mp_main__: nothing runs there
    sys.exit(main())

"""Run by tests/test_training_signals.py: `sigma train ARGS` in this process, with `num_workers=0` (the batch built
in the main thread), held inside sample INDEX ($SIGMA_TEST_TERM_SAMPLE) of a batch: `READY` on stdout, then held
there until the process's SIGTERM handler has run (its own handler chained for that, then put back). A scheduler's
stop that lands while the trainer builds a batch, between two of its samples."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time


def main() -> int:
    from sigma.cli import main as sigma_main
    from sigma.training.data import TrainDataset

    at = int(os.environ["SIGMA_TEST_TERM_SAMPLE"])
    getitem = TrainDataset.__getitem__

    def held(self, index):
        if int(index) == at and threading.current_thread() is threading.main_thread():
            handled = threading.Event()
            noted = signal.getsignal(signal.SIGTERM)

            def chained(signum, frame):
                noted(signum, frame)
                handled.set()

            signal.signal(signal.SIGTERM, chained)
            print("READY", flush=True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not handled.is_set():
                time.sleep(0.01)
            signal.signal(signal.SIGTERM, noted)
        return getitem(self, index)

    TrainDataset.__getitem__ = held
    return sigma_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())

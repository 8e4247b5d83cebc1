"""Run by tests/test_training_signals.py: `sigma train ARGS` in this process (as tests/train_watch_workers.py, its
`WORKERS <where> <count>` lines too), held inside training step STEP ($SIGMA_TEST_TERM_STEP) until both data workers
are stuck in their read (`SIGMA_TEST_WORKER_STALL`: their pids in FIFO.stalled), then `READY` on stdout and held
there until a SIGTERM is noted: a scheduler's stop that lands while the trainer has its batch, between steps for the
loop, with the workers stuck prefetching the next ones. `CHECKPOINT <time.time()>` says when each checkpoint began.
`SIGMA_TEST_HOLD=stuck`: held only until both workers are stuck (a `max_minutes` pause then ends the loop there);
`SIGMA_TEST_HOLD=error`: then the step raises `TrainingDiverged` (an error ends the loop there)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from train_watch_workers import data_workers, run_watched


def main() -> int:
    from sigma.training.loop import STALL_ENV, Trainer, TrainingDiverged

    at = int(os.environ["SIGMA_TEST_TERM_STEP"])
    hold = os.environ.get("SIGMA_TEST_HOLD", "sigterm")
    said = Path(os.environ[STALL_ENV].rpartition(":")[0] + ".stalled")
    step, checkpoint = Trainer.train_step, Trainer.checkpoint

    def held_step(self, *args, **kwargs):
        if self.step == at:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(set(said.read_text().split()) if said.exists() else ()) < 2:
                time.sleep(0.02)
            print(f"READY {data_workers()}", flush=True)
            if hold == "error":
                raise TrainingDiverged(f"test error at step {self.step}, both data workers stuck")
            while hold == "sigterm" and time.monotonic() < deadline and not self.terminated:
                time.sleep(0.01)
        return step(self, *args, **kwargs)

    def timed_checkpoint(self):
        print(f"CHECKPOINT {time.time():.3f}", flush=True)
        return checkpoint(self)

    Trainer.train_step, Trainer.checkpoint = held_step, timed_checkpoint
    return run_watched(sys.argv[1:])


if __name__ == "__main__":      # spawned data workers import this module as __mp_main__: nothing runs there
    sys.exit(main())

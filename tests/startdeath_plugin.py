"""A `--procs` plugin for one real start-up death: with $SIGMA_TEST_START_DEATHS naming a folder, the first inference
process to import it (the one that creates `DIR/victim` first) SIGKILLs itself there, while starting (the run's plugins
are imported before a child says "ready"); every other one waits, before it can say "ready", until the victim is
reaped by the driver (the driver then handles the death with no child ready: every child was still starting). In the
driver process it does nothing."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

_folder = os.environ.get("SIGMA_TEST_START_DEATHS")
if _folder and multiprocessing.parent_process() is not None:
    victim = Path(_folder) / "victim"
    try:
        fd = os.open(victim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pid = victim.read_text()
            if pid and not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.01)
    else:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

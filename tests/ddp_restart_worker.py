"""Run under `torchrun --max-restarts` by tests/test_torchrun_env.py: `sigma train` (`sigma.cli.main`, its arguments
after this file's), with rank 1 of a restart starting a second late — a rank's start is slower than another's now and
then (its imports, its data), and rank 0 of the restart is then the first to connect."""
from __future__ import annotations

import os
import sys
import time


def main() -> None:
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" and os.environ.get("RANK") == "1":
        time.sleep(1.5)
    from sigma.cli import main as sigma_main

    sys.exit(sigma_main(sys.argv[1:]))


if __name__ == "__main__":
    main()

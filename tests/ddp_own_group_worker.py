"""Run under torchrun by tests/test_training_ii.py: a user's own DDP script that starts the process group itself
(gloo, env://) and then calls `sigma train` in the same process (`sigma.cli.main`, its arguments after this file's)."""
from __future__ import annotations

import sys

import torch.distributed


def main() -> None:
    torch.distributed.init_process_group("gloo")
    from sigma.cli import main as sigma_main

    sys.exit(sigma_main(["train", *sys.argv[1:]]))


if __name__ == "__main__":
    main()

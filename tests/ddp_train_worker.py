"""Run under torchrun by tests/test_training_ii.py: the real `sigma train` loop on each rank, then each
rank writes its own weights, so the test can check that DDP kept them identical."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def main() -> None:
    out = Path(sys.argv[1])
    from sigma.cli import main as sigma_main
    from sigma.training.loop import Trainer

    captured = {}
    orig_init = Trainer.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        captured["trainer"] = self

    Trainer.__init__ = init
    code = sigma_main(["train", *sys.argv[2:]])
    if code:
        sys.exit(code)
    rank = int(os.environ["RANK"])
    model = captured["trainer"].model
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()

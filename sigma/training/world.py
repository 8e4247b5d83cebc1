"""This process's place among torchrun's ranks (`$RANK`, `$WORLD_SIZE`, `$LOCAL_RANK`), read once the same way.

Each reader did `int(os.environ.get(...))`: `RANK=abc`, `RANK=` or `RANK=2.5` (a shell script's slip, a launcher
that exports an empty value) ended `sigma train` in a ValueError traceback, and `RANK=-1` / `WORLD_SIZE=0` were
taken without a word (no run folder printed, no DDP). Now every reader goes through `sigma.text.positive_int_env`:
unset or blank is the single-process value, anything else not a whole number in range is one `invalid_config` line
naming the variable.
"""
from __future__ import annotations

from sigma.text import positive_int_env

# ranks are numbered by torchrun in an int32 (and CUDA device indices are small): a bound that says so
MOST_RANKS = 2 ** 31 - 1


def world_size(default: int = 1) -> int:
    """`$WORLD_SIZE`: how many ranks the run has (1, or `default`, when unset)."""
    return positive_int_env("WORLD_SIZE", default, "torchrun's number of ranks: a whole number, 1 or more",
                            MOST_RANKS)


def rank() -> int:
    """`$RANK`: this process's rank among all (0 when unset)."""
    return positive_int_env("RANK", 0, "torchrun's rank of this process: a whole number, 0 or more", MOST_RANKS,
                            least=0)


def local_rank() -> int:
    """`$LOCAL_RANK`: this process's rank on its machine, its CUDA device (0 when unset)."""
    return positive_int_env("LOCAL_RANK", 0, "torchrun's rank of this process on its machine: a whole number, 0 or "
                            "more", MOST_RANKS, least=0)

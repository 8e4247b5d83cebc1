"""This process's place among torchrun's ranks (`$RANK`, `$WORLD_SIZE`, `$LOCAL_RANK`), read once the same way.

Each reader did `int(os.environ.get(...))`: `RANK=abc`, `RANK=` or `RANK=2.5` (a shell script's slip, a launcher
that exports an empty value) ended `sigma train` in a ValueError traceback, and `RANK=-1` / `WORLD_SIZE=0` were
taken without a word (no run folder printed, no DDP). Now every reader goes through `sigma.text.positive_int_env`:
unset or blank is the single-process value, anything else not a whole number in range is one `invalid_config` line
naming the variable.

`WORLD_SIZE=2 sigma train ...` outside torchrun (no `$RANK`, `$MASTER_ADDR`, `$MASTER_PORT`) ended in torch's
ValueError traceback from `init_process_group`; `RANK=2 WORLD_SIZE=2` waited for a rank 2 that no group has. Now
`rendezvous` says which variable is missing or wrong before the run folder is touched.

`torchrun --nproc_per_node 4` on a machine with 2 GPUs gave ranks 2 and 3 a `$LOCAL_RANK` with no CUDA device:
`torch.cuda.set_device(2)` ended them in CUDA's `invalid device ordinal` traceback. `cuda_device` says it first.
"""
from __future__ import annotations

import sys

from sigma.errors import ConfigError, SigmaError
from sigma.text import MAX_DURATION_S, env_text, positive_int_env, shown

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


def connect_timeout_s() -> int | None:
    """`$SIGMA_DDP_TIMEOUT_S`: how long a rank waits for the others — to connect at the start, and in each
    collective (torch's process-group timeout); None when unset: torch's own default for the backend (30 minutes
    for gloo, 10 for NCCL). Keep it above rank 0's longest validation: the other ranks wait for it at a barrier."""
    return positive_int_env("SIGMA_DDP_TIMEOUT_S", 0, "seconds a rank waits for the others", MAX_DURATION_S) or None


def _group() -> tuple[int, int] | None:
    """(rank, size) of the torch process group this process already started, None when there is none. torch is not
    imported for it (the CLI reads the rank on every error): without torch.distributed loaded there is no group."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist.get_rank(), dist.get_world_size()


def rendezvous() -> tuple[int, int]:
    """(rank, world size), with what torch's `env://` rendezvous reads checked when there is more than one rank:
    `$RANK` set and below `$WORLD_SIZE`, `$MASTER_ADDR` set, `$MASTER_PORT` a port number (read by torch with
    int(), as here). torchrun sets all four; a `WORLD_SIZE=2` exported by hand set none of the others. Each refusal
    is one `invalid_config` naming the variable. One rank needs none of them: the single-process run."""
    size, this = world_size(), rank()
    group = _group()
    if group is not None:
        # a script of the user's that started its own process group (tcp:// or a store of its own) before calling
        # sigma's training: the group's rank and size must be the environment's, which every part of the run reads
        # (rank 0 alone holds and writes the run folder; a lost rank is named by them)
        if group != (this, size):
            raise ConfigError(f"a torch process group is already started (rank {group[0]} of {group[1]}) but "
                              f"$RANK={this} and $WORLD_SIZE={size}: sigma train reads its rank from the "
                              "environment; set $RANK and $WORLD_SIZE to the group's (torchrun sets them)")
        return this, size
    if this >= size:
        # with one rank too: `RANK=1 WORLD_SIZE=1` (or `RANK=1` alone) trained as a rank other than 0, which writes
        # nothing — no run folder, no checkpoint, no log — and ended 0
        if not env_text("WORLD_SIZE"):
            raise ConfigError(f"$RANK={this} but $WORLD_SIZE is not set: a run of one process is rank 0 (unset "
                              "$RANK, or start the ranks with torchrun --nproc_per_node N -m sigma train CONFIG)")
        raise ConfigError(f"$RANK={this}: ranks of $WORLD_SIZE={size} are 0 to {size - 1}")
    if size < 2:
        return this, size
    launched = "(torchrun sets it: torchrun --nproc_per_node N -m sigma train CONFIG)"
    if not env_text("RANK"):
        raise ConfigError(f"$RANK is not set but $WORLD_SIZE={size}: each of the {size} processes needs its rank "
                          f"{launched}")
    if not env_text("MASTER_ADDR"):
        raise ConfigError(f"$MASTER_ADDR is not set but $WORLD_SIZE={size}: the host rank 0 listens on {launched}")
    port = env_text("MASTER_PORT")
    if not port:
        raise ConfigError(f"$MASTER_PORT is not set but $WORLD_SIZE={size}: the port rank 0 listens on {launched}")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise ConfigError(f"$MASTER_PORT={shown(port, 40)!r}: the port rank 0 listens on, a whole number 1 to 65535")
    return this, size


class NoSuchDevice(SigmaError):
    """A rank's `$LOCAL_RANK` names a CUDA device this machine does not have (more ranks per node than GPUs)."""

    code = "no_such_device"


def cuda_device(local: int, count: int) -> int:
    """The CUDA device index of the rank whose `$LOCAL_RANK` is `local`, on a machine with `count` CUDA devices
    (the ones `$CUDA_VISIBLE_DEVICES` leaves visible): `local` itself, one device per rank of the node, or
    `NoSuchDevice` when there is no such device — torch's `set_device` answered it with CUDA's `invalid device
    ordinal` traceback, which names neither the variable nor the count."""
    if 0 <= local < count:
        return local
    visible = env_text("CUDA_VISIBLE_DEVICES")
    where = f" ($CUDA_VISIBLE_DEVICES={shown(visible, 60)!r})" if visible else ""
    if not count:
        raise NoSuchDevice(f"$LOCAL_RANK={local}: this machine has no CUDA device visible{where}")
    plural = "" if count == 1 else "s"
    raise NoSuchDevice(f"$LOCAL_RANK={local}: this machine has {count} CUDA device{plural}{where}, numbered 0 to "
                       f"{count - 1}: start at most {count} rank{plural} per machine (torchrun --nproc_per_node "
                       f"{count})")

"""A rank lost under DDP (`torchrun`): one line on the ranks left, instead of gloo's traceback.

Seen before: `torchrun --nproc_per_node=2 -m sigma train ...` with one rank SIGKILLed mid-run (the OOM killer, a
stray kill, a node gone) ended within a second — the checkpoint kept — but the rank left printed gloo's
`RuntimeError: ... Connection reset by peer` (or `Connection closed by peer`) as a `[rank0]` Python traceback from
whichever collective it was in (the step's gradient all-reduce, the stop check's, a validation's barrier), or was
ended `-15` by torchrun's SIGTERM on its way out. Every collective of the run is reached through `Trainer`, so the
failure is caught once, around it (`lost_ranks_said`, in `sigma.training.loop.start`), and said as `rank_lost`.
"""
from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sigma.errors import SigmaError, first_line

from . import world
from .checkpoint import latest_step


class RankLost(SigmaError):
    """Another rank of the run is gone. Said by every rank that meets it: the one that would say it alone (rank 0)
    may be the rank lost."""

    code = "rank_lost"
    every_rank_says = True


# what gloo and NCCL say when the other end of a collective is gone (torch's own `DistError` classes aside)
_PEER_GONE = re.compile(r"gloo|nccl|connection (?:closed|reset) by peer|broken pipe", re.IGNORECASE)
_REASON = re.compile(r"connection (?:closed|reset) by peer|broken pipe|timed out", re.IGNORECASE)


def lost_in_collective(exc: BaseException) -> bool:
    """Whether `exc` is a collective's failure of this process's group (a peer gone), not an error of the run's
    own: only under DDP, and only torch's distributed errors or a RuntimeError in gloo's or NCCL's words."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if world.world_size() < 2:
        return False
    return isinstance(exc, torch.distributed.DistError) or (
        isinstance(exc, RuntimeError) and bool(_PEER_GONE.search(str(exc))))


def rank_lost(exc: BaseException, run_dir: Path) -> RankLost:
    """The one line for `exc`, a collective that failed because a peer is gone: which rank (known with two; with
    more, torchrun's report names the first to fail), the last complete checkpoint's step, how to continue."""
    size = world.world_size(2)
    rank = world.rank()
    who = f"rank {1 - rank} of 2" if size == 2 else f"another rank of {size} (torchrun's report names it)"
    said = _REASON.search(str(exc))
    why = said.group(0).lower() if said else re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc, 200))[:100]
    step = latest_step(run_dir)
    if step is not None:
        kept = f"the last complete checkpoint (step {step}) is kept; continue with"
    elif run_dir.is_dir():
        kept = "no checkpoint was written yet; start it over with"
    else:       # this rank's node does not see rank 0's run folder
        kept = "the last checkpoint rank 0 wrote is kept; continue with"
    return RankLost(f"{who} was lost ({why}); the run stopped; {kept}: sigma train --resume {run_dir} (under "
                    "torchrun, as it was started)")


@contextmanager
def lost_ranks_said(run_dir: Path) -> Iterator[None]:
    """Around the trainer's whole life under DDP: a collective that fails because a peer is gone is `RankLost`.

    torchrun stops the ranks left with SIGTERM as soon as it sees one die; that SIGTERM may come before this rank's
    collective fails (noted by the trainer, which goes on to its next collective: it fails there) or after (while
    the error is on its way out: it killed the process, `-15` in torchrun's report). From the failure on, SIGTERM is
    ignored — the process is leaving with its error, and nothing is written on the way — so it ends with the error's
    status either way, like a rank that failed with a sigma error (`sigma.cli.elastic.leaving_quietly`)."""
    try:
        yield
    except RuntimeError as exc:
        if not lost_in_collective(exc):
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise rank_lost(exc, run_dir) from exc

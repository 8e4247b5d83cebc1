"""A rank lost under DDP (`torchrun`): one line on the ranks left, instead of gloo's traceback.

Seen before: `torchrun --nproc_per_node=2 -m sigma train ...` with one rank SIGKILLed mid-run (the OOM killer, a
stray kill, a node gone) ended within a second — the checkpoint kept — but the rank left printed gloo's
`RuntimeError: ... Connection reset by peer` (or `Connection closed by peer`) as a `[rank0]` Python traceback from
whichever collective it was in (the step's gradient all-reduce, the stop check's, a validation's barrier), or was
ended `-15` by torchrun's SIGTERM on its way out. Every collective of the run is reached through `Trainer`, so the
failure is caught once, around it (`lost_ranks_said`, in `sigma.training.loop.start`), and said as `rank_lost`.
With more than 2 ranks, the line named no rank and every rank left printed it: each rank now keeps its host and pid
in the run's rendezvous store (`register_rank`), the first rank left names the dead ones of its host and says it.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sigma.errors import SigmaError, first_line
from sigma.regular import open_regular
from sigma.tempfiles import pid_alive
from sigma.text import shown

from . import world
from .checkpoint import checkpoint_files, latest_step


class RankLost(SigmaError):
    """Another rank of the run is gone. Said by the rank `said_here` names (the one that would say it alone, rank 0,
    may be the rank lost): the first rank left to meet it, or every rank left when they could not agree on one."""

    code = "rank_lost"

    def __init__(self, message: str, said_here: bool = True) -> None:
        super().__init__(message)
        #: whether this rank prints the line (every rank writes it to torchrun's error file); read by `sigma.cli`
        self.said_here = said_here


#: how long a rank left looks for the lost one among this host's ranks (`_lost_here`): a process SIGKILLed closes its
#: sockets a moment before it is a zombie
LOOK_S = 1.0


def _key(name: str) -> str:
    """A key of this module's in the run's store, apart for each of torchrun's restarts. Not redundant beside the
    attempt's namespace (`_attempt`): that is the store of a group sigma started (`connect`); a group the user's
    script started itself with env:// under torchrun (`world.rendezvous` takes it) has torchrun's agent store, which
    outlives the restarts, under torch's one `default_pg/` prefix: without this one a restart's ranks would find the
    dead attempt's `said` count, and none would say its lost rank (per node only, as the count is)."""
    return f"sigma/ranks/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{name}"


def _store() -> Any:
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def register_rank(rank: int) -> None:
    """This rank's host and pid in the run's rendezvous store (under torchrun it is torchrun's own, which outlives
    any rank), for `_lost_here` to tell which rank is gone. Called once the process group is up; best effort."""
    try:
        _store().set(_key(f"pid/{rank}"), f"{socket.gethostname()} {os.getpid()}")
    except Exception:  # noqa: BLE001 - no store: the rank lost is said without its number
        pass


@contextmanager
def ended_while_connecting() -> Iterator[None]:
    """SIGTERM ends this rank at once while it connects to the others (`init_process_group`), instead of being
    noted for a clean stop at the next step (`sigma.lifeline.signal_noted`, around the whole run).

    A rank that failed (or was killed) before the ranks connected — rank 0 refused `run_locked`, a rank OOM-killed
    while loading — left the others waiting inside torch's C++ rendezvous, where a Python handler never runs: the
    SIGTERM torchrun sent them was only noted, and torchrun SIGKILLed them 30 s later (its shutdown grace,
    `--shutdown-timeout`: shortening it would cut short the ranks' checkpoint on a SIGTERM mid-run too). No step
    has run before the ranks connect (rank 0 has written config.yaml alone), so there is nothing to save: the
    default action loses nothing. Only in the main thread, and not where SIGTERM is ignored."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, before)


class RendezvousFailed(SigmaError):
    """The ranks did not all connect within `world.connect_timeout_s` (rank 0's host unreachable, a rank that
    never started)."""

    code = "rendezvous_failed"


#: in torchrun's store: the token of the latest attempt's rank 0, under which that attempt's ranks connect (`_attempt`)
ATTEMPT = "sigma/attempt"
#: how often a rank looks again at the store while it waits for the others to connect
POLL_S = 0.05


def _waited(store: Any, keys: list[str], deadline: float, wait_s: float | None, whom: str = "the other ranks",
            given_up: Callable[[], bool] | None = None) -> bool:
    """True once every key of `keys` is in `store`; False when `given_up()` (asked after each pause) says the keys
    will not come; torch's own words for a wait that ran out (`connect` says it as `rendezvous_failed`) naming
    `whom` it waited for. Polled: torch's own `wait` prints a C++ warning each time a short wait runs out. The one
    wait of `_attempt`'s: its wait for rank 0's welcome, which gives up when rank 0 writes a new token, was a loop of
    its own beside this one."""
    while not store.check(keys):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {wait_s} s waiting for {whom} in torchrun's store")
        time.sleep(POLL_S)
        if given_up is not None and given_up():
            return False
    return True


def _token_replaced(store: Any, token: str) -> Callable[[], bool]:
    """Whether rank 0 has written a token other than `token` (`_attempt`): that of an attempt before is never
    welcomed."""
    return lambda: store.get(ATTEMPT).decode() != token


def _attempt(store: Any, rank: int, size: int, wait_s: float) -> str:
    """A token that this attempt's ranks, and only they, share: a fresh namespace of torchrun's store to connect in.

    torchrun's agent keeps one store for the whole job (`TORCHELASTIC_USE_AGENT_STORE=True`, torch >= 2.5), across
    the restarts `--max-restarts` allows, and each rank's process group writes its address under the same key every
    attempt. A rank of a restart that connects before its peer has written its new address read the address of the
    peer's process of the attempt before, dead: gloo's `Connection refused` (NCCL's alike), so every restart failed
    once the ranks did not arrive together (torch's issue 135712; its former per-attempt prefix,
    $TORCHELASTIC_RESTART_COUNT, is per node: a node whose ranks did not fail restarts them without counting, so it
    cannot name an attempt).
    Here rank 0 writes a token of its own (`ATTEMPT`); each other rank answers the token it reads with a nonce of its
    own, and takes the token once rank 0 has welcomed that nonce under it — a token rank 0 of a dead attempt wrote
    is never welcomed, and the rank asks again when rank 0 writes a new one."""
    me = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    if rank == 0:
        store.set(ATTEMPT, me)
        hello = [f"{ATTEMPT}/{me}/hello/{other}" for other in range(1, size)]
        _waited(store, hello, deadline, wait_s)
        for nonce in store.multi_get(hello):
            store.set(f"{ATTEMPT}/{me}/welcome/{nonce.decode()}", "1")
        return me
    while True:
        _waited(store, [ATTEMPT], deadline, wait_s)
        token = store.get(ATTEMPT).decode()
        store.set(f"{ATTEMPT}/{token}/hello/{rank}", me)
        # given up: a token of an attempt before, this attempt's rank 0 has written its own: asked again under it
        if _waited(store, [f"{ATTEMPT}/{token}/welcome/{me}"], deadline, wait_s, "rank 0",
                   given_up=_token_replaced(store, token)):
            return token


def _agent_store(rank: int, size: int, wait_s: float) -> Any:
    """This attempt's namespace of torchrun's store (`_attempt`), for the process group; None where torchrun keeps
    no store of its own for the ranks (rank 0 starts one each attempt, with nothing of an attempt before in it)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    import datetime

    from torch.distributed import PrefixStore, TCPStore

    agent = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size, False,
                     timeout=datetime.timedelta(seconds=wait_s))
    return PrefixStore(f"{ATTEMPT}/{_attempt(agent, rank, size, wait_s)}/", agent)


def connect(backend: str, rank: int, size: int) -> None:
    """Start the process group of this run's `size` ranks (torch's env:// rendezvous), waiting at most
    `world.connect_timeout_s` for all of them. Before, torch's default wait (30 minutes) was the only one: a
    `$MASTER_ADDR` nobody answers at, or a rank that never came, held the others half an hour, then ended them in
    torch's DistNetworkError traceback with its C++ frames. Now one `rendezvous_failed` line names the wait, its
    variable and torch's reason. The same timeout is every collective's (torch's own for a group); unset, torch's
    default for the backend is kept."""
    import datetime

    wait = world.connect_timeout_s()
    timeout = {} if wait is None else {"timeout": datetime.timedelta(seconds=wait)}
    try:
        with ended_while_connecting():     # a rank lost before: torchrun's SIGTERM ends the others now
            # torch's default wait for the store as for the group (30 minutes): `default_pg_timeout`
            store = _agent_store(rank, size, wait or torch.distributed.default_pg_timeout.total_seconds())
            torch.distributed.init_process_group(backend, rank=rank, world_size=size, store=store, **timeout)
    except RuntimeError as exc:           # DistNetworkError, DistStoreError (timeouts); gloo's own
        where = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
        why = first_line(exc, 200)
        waited = ""
        if re.search(r"timed out after", why, re.IGNORECASE):    # the wait ran out: not a refusal met at once
            waited = f" (waited {wait} s: $SIGMA_DDP_TIMEOUT_S)" if wait else \
                f" (waited torch's default for {backend}: $SIGMA_DDP_TIMEOUT_S sets it)"
        raise RendezvousFailed(f"rank {rank} of {size}: the ranks could not connect{waited}; rank 0's store at "
                               f"{shown(where, 80)}: {why}") from exc


#: in a run folder: which torchrun started the run (`launcher`), for its own restarts to continue it (`restarted_here`)
LAUNCHER = ".torchrun"


def launcher() -> str | None:
    """This process's torchrun, one line: its run id, host, agent pid and the agent's start time (a run id alone is
    `none` for every torchrun without `--rdzv-id`); None outside torchrun or where the agent cannot be read."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        return None
    agent = os.getppid()
    try:
        started = Path(f"/proc/{agent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{run_id} {socket.gethostname()} {agent} {started}"


def mark_launcher(run_dir: Path) -> None:
    """Rank 0 of a run started under torchrun keeps its `launcher` in the run folder; best effort."""
    this = launcher()
    if this is None:
        return
    try:
        tmp = run_dir / f"{LAUNCHER}.tmp"
        tmp.write_text(this + "\n")
        tmp.replace(run_dir / LAUNCHER)
    except OSError:
        pass


def restarted_here(run_dir: Path) -> bool:
    """Whether this process is torchrun's restart (`--max-restarts`, after a rank was lost) of the run it started
    in `run_dir`: the restart runs the same `sigma train CONFIG` command, which refused the run folder ("already
    holds a run; use --resume"), so every restart failed at once and the fault tolerance torchrun offers was none.
    The torchrun that started the run, not any other (a run id alone repeats), and on rank 0's host only (a rank of
    another host refuses as before)."""
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") in ("", "0"):
        return False
    this = launcher()
    if this is None:
        return False
    try:
        # a regular file only, opened without blocking: a `.torchrun` that was a FIFO held the restart's rank 0 in
        # its open for ever, torchrun's SIGTERM only noted (the run folder's FIFOs are refused later, bad_outdir)
        with open_regular(run_dir / LAUNCHER, "r", encoding="utf-8", errors="replace") as handle:
            return handle.read(4096).strip() == this
    except OSError:
        return False


def _running(pid: int) -> bool:
    """Whether `pid` is a process not yet dead (a zombie, SIGKILLed but not yet reaped by torchrun, is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return pid_alive(pid)
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def _lost_here(size: int, rank: int) -> tuple[list[int], bool] | None:
    """(the ranks of this host whose process is dead, whether this rank is the first left to say so), through the run's
    store; None when it cannot be reached (kept by rank 0, itself lost). Ranks of other hosts cannot be looked at:
    none of them is named. Nothing is waited for from the other ranks: a rank left may be stuck in its collective
    with this one until this process ends."""
    try:
        store = _store()
        first = int(store.add(_key("said"), 1)) == 1
        host = socket.gethostname()
        pids = {}
        for other in range(size):
            if other != rank and store.check([_key(f"pid/{other}")]):
                where, pid = store.get(_key(f"pid/{other}")).decode().split()
                if where == host:
                    pids[other] = int(pid)
    except Exception:  # noqa: BLE001 - the store gone with its rank, or none: the line without names, by every rank
        return None
    deadline = time.monotonic() + LOOK_S
    while True:
        lost = [other for other, pid in pids.items() if not _running(pid)]
        if lost or not pids or time.monotonic() > deadline:
            return lost, first
        time.sleep(0.05)


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


def _named(ranks: list[int], size: int) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]} of {size} was"
    return f"ranks {', '.join(map(str, ranks))} of {size} were"


def _restarts_left() -> tuple[int, int] | None:
    """(restarts torchrun has made, the most it makes: `--max-restarts`) when it will restart the ranks after this
    failure; None when it will not (none left, or not under torchrun)."""
    try:
        done = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        most = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        return None
    return (done, most) if done < most else None


def rank_lost(exc: BaseException, run_dir: Path) -> RankLost:
    """The one line for `exc`, a collective that failed because a peer is gone: which rank (known with two; with
    more, the ranks of this host whose process is dead: `_lost_here`), the last complete checkpoint's step, how to
    continue; said by one rank only (the one left with two; with more, the first left to meet it). With more than
    two ranks, every rank left said it, and the line named none ("another rank of 3")."""
    size = world.world_size(2)
    rank = world.rank()
    found = _lost_here(size, rank) if size > 2 else ([1 - rank], True)
    if found is None:          # no store to agree through: every rank left says it
        who, said_here = f"another rank of {size} (torchrun's report names it) was", True
    elif found[0]:
        who, said_here = _named(found[0], size), found[1]
    else:                      # none of this host's: a rank of another host
        who, said_here = f"a rank of {size} on another host (torchrun's report names it) was", found[1]
    said = _REASON.search(str(exc))
    why = said.group(0).lower() if said else re.sub(r"^\[[^\]]*\]\s*", "", first_line(exc, 200))[:100]
    step = latest_step(run_dir)
    found = checkpoint_files(run_dir)
    if step is None and found:
        # files there, none readable: "no checkpoint was written yet" sent the user to a --resume that refuses them
        names = " and ".join(path.name for path in found)
        return RankLost(f"{who} lost ({why}); the run stopped; {names} {'are' if len(found) > 1 else 'is'} "
                        f"unreadable, so `sigma train --resume {run_dir}` refuses {'them' if len(found) > 1 else 'it'}"
                        " (checkpoint_unreadable): start the run again from its best/ or model/ with init_from",
                        said_here)
    left = _restarts_left()
    if left:
        # torchrun restarts every rank by itself: "the run stopped; continue with: sigma train --resume" sent a
        # person to start a second run over the one torchrun is restarting (refused: run_locked)
        done, most = left
        again = f"from step {step}" if step is not None else "from its start" if run_dir.is_dir() else \
            "from the last checkpoint rank 0 wrote"
        return RankLost(f"{who} lost ({why}); torchrun restarts the ranks (restart {done + 1} of {most}): the run "
                        f"continues {again}", said_here)
    if step is not None:
        kept = f"the last complete checkpoint (step {step}) is kept; continue with"
    elif run_dir.is_dir():
        kept = "no checkpoint was written yet; start it over with"
    else:       # this rank's node does not see rank 0's run folder
        kept = "the last checkpoint rank 0 wrote is kept; continue with"
    return RankLost(f"{who} lost ({why}); the run stopped; {kept}: sigma train --resume {run_dir} (under "
                    "torchrun, as it was started)", said_here)


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

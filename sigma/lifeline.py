"""Child processes that die with their parent and leave stop signals to it.

A `sigma batch run` killed with SIGKILL runs no cleanup; without this its inference or decode children
would live on (holding a model in memory, or blocked on a pipe nobody reads). Call `die_with_parent`
first thing in a child (e.g. as a `ProcessPoolExecutor` initializer).

Ctrl-C signals the terminal's whole process group, a service manager's stop the whole cgroup: children that
took SIGINT/SIGTERM as their own died each with a KeyboardInterrupt traceback while their parent was deciding
what to do. Start a child as a `ShieldedSpawnProcess` (or through a `ShieldedSpawnContext`) and call
`leave_stop_signals_to_parent` first thing in it: the parent alone decides, and stops or kills its children.

A bottom-layer module (stdlib only): `sigma.batch` (decode pools, `--procs`) and `sigma.training` (the DataLoader's
workers), siblings that may not import each other, both use it.
"""
from __future__ import annotations

import multiprocessing.context
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker

PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int) -> bool:
    """Linux: the kernel sends `sig` to this process when the thread that forked it exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return False


def _watch(parent_pid: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:   # re-parented: the parent is gone
            os._exit(1)


def die_with_parent(parent_pid: int | None = None, interval: float = 1.0) -> None:
    """SIGKILL this process when its parent dies: prctl(PR_SET_PDEATHSIG) where the kernel offers it, and a
    watch thread everywhere (it also covers a parent that died before the prctl call)."""
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    _pdeathsig(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, interval), name="sigma-lifeline", daemon=True).start()


#: the signals a child leaves to its parent
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """SIGINT/SIGTERM held back in this thread (the process's handlers run in another thread, or here on leaving).
    A process started meanwhile inherits the blocked mask, through exec too: a signal that reaches it before it
    can ignore signals waits, pending, instead of killing it."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM noted meanwhile and handed to their handlers on leaving, in the main thread (elsewhere
    nothing changes: Python runs handlers in the main thread only). Blocking them in this thread is not enough:
    the kernel hands a process-wide signal to any thread that has it unblocked (torch's and OpenMP's native threads
    do), and Python then runs the handler in the main thread at its next instruction, wherever that is: a
    Ctrl-C raised its KeyboardInterrupt in the middle of a spawn, after the child was started and before it was
    sent what to run (it then died of "EOFError: Ran out of input", with a traceback). Only around code whose
    caller can take the signal where the block ends: a process pool that records a process only once `start`
    returns would lose track of it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    old = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    deferred = [signum for signum, handler in old.items() if callable(handler)]
    for signum in deferred:
        signal.signal(signum, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for signum in deferred:
            signal.signal(signum, old[signum])
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)


def leave_stop_signals_to_parent() -> None:
    """First thing in a child started blocked (`ShieldedSpawnProcess`): SIGINT/SIGTERM ignored, which discards one
    already pending, then unblocked. Before this ran (the interpreter starting, the child's modules importing:
    a second or more on a busy machine) a signal waited, blocked, instead of killing the child."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _in_handle_server(tb) -> bool:
    """Whether a traceback passes through multiprocessing's handle server (`resource_sharer._serve`)."""
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "_serve" and tb.tb_frame.f_code.co_filename.endswith("resource_sharer.py"):
            return True
        tb = tb.tb_next
    return False


def quiet_failed_handoffs() -> None:
    """In a data worker: an error in multiprocessing's handle server (the thread that hands a batch's shared-memory
    file descriptors to the trainer, `resource_sharer._serve`) is not printed. That thread prints any failure with
    `sys.excepthook`; a trainer stopping mid-transfer (a SIGTERM cutting its wait for a batch, then the workers
    SIGKILLed) hung up on it, and the worker's traceback, cut short by the kill, landed on the trainer's stderr over
    the one line a stop promises (`sigma: terminated at step N; ...`; the SIGTERM storm test caught it once, in
    a clean-clone CI run). Nothing is lost: the trainer's side of a failed hand-off raises there, where it is
    handled or said. Every other uncaught error is printed as before."""
    default = sys.excepthook

    def hook(kind, value, tb) -> None:
        if not _in_handle_server(tb):
            default(kind, value, tb)

    sys.excepthook = hook


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile, for a parent stopping its children after a first Ctrl-C: a second one (a storm of
    them: a held key, a script) cut the stop short and left children running, unkilled. Bounded work only. Only
    the main thread may set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.SIG_DFL)


class Noted:
    """Whether the signal `signal_noted` held arrived (truthy once it has)."""

    def __init__(self) -> None:
        self.arrived = False

    def __bool__(self) -> bool:
        return self.arrived


@contextmanager
def signal_noted(signum: int) -> Iterator[Noted]:
    """`signum` noted meanwhile instead of acted on, for a loop that stops cleanly at its next safe point (a trainer's
    SIGTERM: a batch scheduler's stop, SIGKILL following after a grace period). One arriving again while the loop
    stops is noted again, harmlessly: the stop in hand is not cut short. Only in the main thread (elsewhere nothing
    changes: only it may set handlers), and not where the signal is ignored (a caller's choice, kept). A disposition
    set meanwhile by the code inside is kept on the way out: a trainer that lost a rank ignores SIGTERM while it leaves
    with its error (`sigma.training.ranks`), and the put-back default let torchrun's SIGTERM kill it on the way."""
    noted = Noted()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signum) is signal.SIG_IGN:
        yield noted
        return

    def note(_signum: int, _frame: object) -> None:
        noted.arrived = True

    old = signal.signal(signum, note)
    try:
        yield noted
    finally:
        if signal.getsignal(signum) is note:
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def join_queue_feeders(queues: Iterable[object], timeout: float = 2.0) -> int:
    """Wait (`timeout` in all) for the feeder threads of closed multiprocessing queues to end; how many still run.

    A queue's feeder (a daemon thread) holds the last references to the queue's semaphores once the queue itself is
    gone, and runs their finalizers (`sem_unlink`, then a note to the resource tracker) as it ends. A program that
    exits meanwhile freezes it between the two: the tracker, told nothing, reported at its own exit "There appear
    to be 1 leaked semaphore objects" and "[Errno 2] No such file or directory" under the one line a Ctrl-C
    promises (the training Ctrl-C storm test, 1 run in 7; CI, stop 35). Joined while the queue still exists, the
    feeder ends holding no last reference, and the finalizers run later in the thread that frees the queue. Only
    for closed queues (an open one's feeder never ends: it would cost the whole timeout). Bounded: a feeder
    blocked on a full pipe no process reads is left, and holds its semaphores to the exit, where multiprocessing's
    own exit hook finalizes them in the main thread."""
    deadline = time.monotonic() + timeout
    left = 0
    for q in queues:
        thread = getattr(q, "_thread", None)      # multiprocessing.queues.Queue's feeder; None until a first put
        if not isinstance(thread, threading.Thread) or thread is threading.current_thread():
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        left += thread.is_alive()
    return left


class ShieldedSpawnProcess(multiprocessing.context.SpawnProcess):
    """A spawned process that starts with SIGINT/SIGTERM blocked (`stop_signals_blocked`), whichever thread starts
    it, for `leave_stop_signals_to_parent` to ignore them. Only 'spawn': a 'fork' child would inherit the blocked
    mask as well, but a 'forkserver' child is forked by the server, not by this process, and would not. At module
    level so that the child can unpickle it.

    The first process a program starts also starts multiprocessing's resource tracker, and that start ends with
    SIGINT/SIGTERM *unblocked* in the calling thread (it blocks them for the tracker, then unblocks rather than
    restoring the mask): the first `--procs` child started unshielded and died of a Ctrl-C in its imports with a
    traceback. So the tracker is started first, outside the blocked section.

    A Ctrl-C to this process can still raise its KeyboardInterrupt in the middle of `start` (see
    `stop_signals_deferred`, which a caller that has registered the process before starting it can add)."""

    def start(self) -> None:
        resource_tracker.ensure_running()
        with stop_signals_blocked():
            super().start()


class ShieldedSpawnContext(multiprocessing.context.SpawnContext):
    """The 'spawn' context whose processes are `ShieldedSpawnProcess`es (its Pipe, Queue, ... are spawn's)."""

    Process = ShieldedSpawnProcess


class QuickExitSpawnProcess(ShieldedSpawnProcess):
    """A `ShieldedSpawnProcess` that ends as a forked child does: once its target has returned and multiprocessing's
    own clean-up has run (its queues flushed: `_bootstrap`), `os._exit` with the same status, skipping the
    interpreter's finalisation. A spawned child otherwise ends with `sys.exit`: the interpreter's finalisation and
    then the C++ static destructors of the native libraries it imported (torch, OpenCV, OpenBLAS). One of those
    tears down a thread pool whose thread is still joinable, now and then, and the runtime aborts the child with
    `terminate called without an active exception` on the shared stderr: a training run stopped by Ctrl-C
    printed it above its own one line (≈ 1 run in 6 of the Ctrl-C storm test), and a GPU run at its `max_minutes`
    stop did too. For children whose work is all handed back through multiprocessing (the DataLoader's workers)."""

    def _bootstrap(self, parent_sentinel: int | None = None) -> int:   # type: ignore[override]
        code = super()._bootstrap(parent_sentinel)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        os._exit(code)


class QuickExitSpawnContext(ShieldedSpawnContext):
    """The 'spawn' context of `QuickExitSpawnProcess`es: the training DataLoader's workers."""

    Process = QuickExitSpawnProcess

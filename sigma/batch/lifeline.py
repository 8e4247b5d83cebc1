"""Child processes that die with their parent.

A `sigma batch run` killed with SIGKILL runs no cleanup; without this its inference or decode children
would live on (holding a model in memory, or blocked on a pipe nobody reads). Call `die_with_parent`
first thing in a child (e.g. as a `ProcessPoolExecutor` initializer).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

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

"""The test session's reaper: when the pytest process it watches ends, however it ends (a clean exit, Ctrl-C, SIGTERM
from CI, SIGKILL, a crash), every process the session started is killed.

Why a separate process: a SIGTERMed or SIGKILLed pytest runs no fixture teardown, atexit or signal handler, and its
children (`sigma serve`, workers, redis-servers, their own children) lived on as orphans holding ports and CPU for the
rest of the CI run. The session's processes are found by an entry of their environment (`conftest.REAPER_ENV=<token>`,
inherited by every child and grandchild that does not clear its environment), not by process group or parentage,
which a test's `start_new_session=True` or an orphan's re-parenting to init would lose. The token is unique per
session, so a session beside it (another pytest on the machine) is never touched.

Usage (conftest.py does it): `python reaper.py ENTRY PIDFD`, PIDFD a pidfd of the watched pytest (passed open); it
prints `ready` once watching. Stdlib only: it starts in a few milliseconds.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path


def _holds(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:             # gone, a zombie, or a kernel thread
        return False


def reap(entry: bytes, rounds: int = 100) -> int:
    """SIGKILL every process whose environment holds `entry` but this one, again until none is left (a process forked
    while the previous round killed). Through a pidfd, and the environment read again once it is open, so a pid
    reused by an unrelated process in between is never signalled. Returns how many were killed."""
    me, killed = os.getpid(), 0
    for _ in range(rounds):
        found = 0
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me or not _holds(int(name), entry):
                continue
            try:
                fd = os.pidfd_open(int(name))
            except OSError:
                continue
            try:
                if _holds(int(name), entry):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)    # works on a stopped (SIGSTOP) process too
                    found += 1
            except OSError:
                pass
            finally:
                os.close(fd)
        if not found:
            return killed
        killed += found
        time.sleep(0.05)
    return killed


def main(argv: list[str]) -> int:
    entry, watched = argv[0].encode(), int(argv[1])
    os.environ.pop(entry.split(b"=", 1)[0].decode(), None)
    # Ctrl-C at a terminal and a hang-up reach the whole foreground group: pytest handles them; the reaper waits for it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # stopped itself (CI ends a job): it does its work first
    signal.signal(signal.SIGTERM, lambda *_: (reap(entry), os._exit(0)))
    print("ready", flush=True)
    sys.stdout.close()
    while True:
        try:
            readable, _, _ = select.select([watched], [], [])     # a pidfd is readable once its process has exited
        except InterruptedError:
            continue
        if readable:
            break
    reap(entry)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

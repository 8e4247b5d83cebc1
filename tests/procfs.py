"""Live processes as Linux's /proc shows them, for tests that watch what a run starts and what outlives it."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def env() -> dict[str, str]:
    """The environment for a test's child Python: the tests' helper modules and the repository importable, one
    OpenMP thread (a 2-core machine runs several children at once)."""
    path = os.pathsep.join(p for p in [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def children_of(pid: int, spawned: bool = False) -> list[int]:
    """Live (not zombie) child processes of `pid`; with `spawned`, only those multiprocessing spawned (its pool
    workers and `--procs` children, not its resource tracker)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        if int(fields[1]) == pid and fields[0] != "Z" and (not spawned or "spawn_main" in cmdline(child)):
            out.append(child)
    return out


def rank_pid(torchrun: int, rank: int) -> int:
    """The pid of the process torchrun (`torchrun`, its pid) started as `rank`."""
    for pid in children_of(torchrun):
        try:
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
        except OSError:
            continue
    raise AssertionError(f"torchrun {torchrun} has no rank {rank} among {children_of(torchrun)}")


def takes_ctrl_c() -> None:
    """`preexec_fn` for a child that a test stops with Ctrl-C: SIGINT as a terminal's foreground job has it. A shell
    that starts a job in the background (`cmd &`, as a CI runner or `nohup ... &` may) sets SIGINT to ignored, the
    child inherits that, and Python then installs no KeyboardInterrupt handler: the run ignored every Ctrl-C the
    test sent and finished with exit 0 (as it should, under an ignored SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def communicate(proc: subprocess.Popen, timeout: float) -> tuple[bytes, str]:
    """(stdout, stderr as text) of a child started in its own session; one still running after `timeout` s is
    killed with its whole group and fails the test with its stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{err.decode(errors='replace')}") from None
    return out, err.decode(errors="replace")

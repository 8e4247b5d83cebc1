"""Live processes as Linux's /proc shows them, for tests that watch what a run starts and what outlives it."""
from __future__ import annotations

import os
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

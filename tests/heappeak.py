"""The Python heap's peak (tracemalloc) over one call, measured in a fresh interpreter.

Why not in the pytest process: there the heap holds what every earlier test left, and the interpreter grows some of
its own tables now and then as one block. The table of interned strings (pathlib interns every path part, imports
intern identifiers) grows with each test run before; when it is reallocated inside a measured window that adds one
block of MBs (7.5 MB once it is large) to the peak. A bound that held alone then failed after other test files, and
adding a test before it could make it fail. A fresh `python -c` starts from the same state every run, so a peak
measured there depends on the code measured alone.

The call is a module-level function (of a test module or of sigma), given by reference: the child imports its
module before tracing, then traces the call alone. Its arguments and its return value travel pickled, so the test
asserts on what it gave. Imports the call makes itself are counted, as in any cold process: where they would drown
what is measured (a CLI command imports its subcommand's libraries: ~40 MB), `setup` runs first, untraced — the same
call on a tiny input (`functools.partial`), which leaves the interpreter as a long-running one would be.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CHILD = r"""
import contextlib, io, pickle, sys, tracemalloc
sys.path[:0] = sys.argv[2:]
with open(sys.argv[1], "rb") as handle:
    fn, setup, args, kwargs = pickle.load(handle)      # functions by reference: their modules are imported here
if setup is not None:
    with contextlib.redirect_stdout(io.StringIO()):   # untraced, and its output is not the measured call's
        setup()
tracemalloc.start()
try:
    value = fn(*args, **kwargs)
    peak = tracemalloc.get_traced_memory()[1]
finally:
    tracemalloc.stop()
with open(sys.argv[1], "wb") as handle:
    pickle.dump((value, peak), handle)
"""


@dataclass(frozen=True)
class Measured:
    """What the call returned, the heap's peak (bytes) over it, and what it wrote to stdout and stderr."""

    value: Any
    peak: int
    stdout: str
    stderr: str


def heap_peak(fn: Callable, *args: Any, setup: Callable[[], Any] | None = None, timeout: float = 300,
              **kwargs: Any) -> Measured:
    """`fn(*args, **kwargs)` in a fresh interpreter; its value and the peak of the heap traced over it alone.

    `setup` (a module-level function, or a functools.partial of one) runs in the child before tracing starts, its
    stdout discarded. The child fails the test with its stderr when it raises: assert in the parent on the value
    returned, or raise in `fn` for what only it can see."""
    # this folder (the test modules) and the one sigma was imported from, so the child imports the same files
    import sigma

    paths = [str(Path(__file__).resolve().parent), str(Path(sigma.__file__).resolve().parents[1])]
    with tempfile.TemporaryDirectory(prefix="heappeak") as folder:
        box = os.path.join(folder, "call.pickle")
        with open(box, "wb") as handle:
            pickle.dump((fn, setup, args, kwargs), handle)
        proc = subprocess.run([sys.executable, "-c", _CHILD, box, *paths], capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"{fn.__qualname__} failed in a fresh interpreter:\n{proc.stderr[-3000:]}"
        with open(box, "rb") as handle:
            value, peak = pickle.load(handle)
    return Measured(value, peak, proc.stdout, proc.stderr)

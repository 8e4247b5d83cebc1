"""One OpenBLAS thread for a command run under an address-space limit, chosen before numpy or OpenCV load it."""
from __future__ import annotations

import os
import resource
import sys

BLAS_THREADS_VAR = "OPENBLAS_NUM_THREADS"


def one_blas_thread_under_an_address_limit() -> bool:
    """Set OPENBLAS_NUM_THREADS=1 when this process's RLIMIT_AS is finite (`ulimit -v`, `prlimit --as`) and neither
    the user nor an import has settled it yet; True when it was set here.

    OpenBLAS starts a thread per core when its library loads (numpy's copy, and OpenCV's own 0.3.15 in
    opencv-python-headless), and each reserves its buffer of tens of MB at once. Under a limit those reservations
    took 140 MB of address space on 2 cores (`import cv2`: 320 MB against 183 MB with one thread), and within that
    margin of the limit the load killed the command: OpenCV's OpenBLAS calls a null allocator when its thread's
    mmap is refused (SIGSEGV, no message: `sigma annotate ... --annotator pixel-diff` under `prlimit --as` 400-450
    MB), or raises SIGINT on itself when it cannot start the thread (`sigma: interrupted`, 130, nobody pressed
    Ctrl-C); with sigma-lite's imports the same window sits near 1 GB. One thread reserves nothing up front, and
    what memory is short is then said by the command as `out_of_memory`. Only under a limit: elsewhere numpy keeps
    its threads. The environment is read once, when the library loads, so this runs before anything imports
    numpy (the CLI package imports none), and a value the user set is kept."""
    if BLAS_THREADS_VAR in os.environ or "numpy" in sys.modules or "cv2" in sys.modules:
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return False
    os.environ[BLAS_THREADS_VAR] = "1"
    return True

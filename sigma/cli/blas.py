"""One OpenBLAS thread for a command run under an address-space limit or a low limit on threads, chosen before numpy or
OpenCV load it."""
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
    numpy (the CLI package imports none), and a value the user set is kept.

    The same under a low limit on processes and threads (`ulimit -u`, `prlimit --nproc`: `threads_limited`): OpenBLAS
    that cannot start its threads raises SIGINT on itself as well (`sigma annotate ... --annotator pixel-diff` as a
    user under `prlimit --nproc` 1 or 2: `sigma: interrupted`, 130, before any work)."""
    if BLAS_THREADS_VAR in os.environ or "numpy" in sys.modules or "cv2" in sys.modules or not _thread_pools_bound():
        return False
    os.environ[BLAS_THREADS_VAR] = "1"
    return True


def threads_limited() -> bool:
    """True when this process's RLIMIT_NPROC binds (it never binds root) and is below what a command's libraries may
    start: a thread per core in each of OpenBLAS's two copies, OpenCV and torch, and room for the user's other
    processes. A usual `ulimit -u` (thousands) is far above it: numpy keeps its threads there."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    return soft != resource.RLIM_INFINITY and os.geteuid() != 0 and soft < THREADS_PER_CORE * (os.cpu_count() or 1) + 64


def _thread_pools_bound() -> bool:
    """Whether a library's pool of a thread per core may fail to start here: an address-space limit (each thread's
    stack is reserved from it) or a low limit on threads (`threads_limited`)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY or threads_limited()


THREADS_PER_CORE = 4
OPENCV_THREADS_VAR = "OPENCV_FOR_THREADS_NUM"


def one_opencv_thread_under_a_limit() -> bool:
    """Set OPENCV_FOR_THREADS_NUM=1 under an address-space limit or a low limit on threads (`threads_limited`) when
    neither the user nor an import has settled it yet; True when it was set here.

    OpenCV's pool starts a thread per core at its first parallel call, each with its stack (8 MB of address space);
    one it cannot start is printed raw into the command's output (`[ERROR:0@1.0] global parallel_impl.cpp:246
    WorkerThread 0: Can't spawn new thread: res = 11` above `sigma annotate`'s own line: a 600x800 pair under
    `prlimit --nproc` 1, sigma-lite under `prlimit --as` 914-920 MB), the work then done on the threads that did
    start. With one thread OpenCV starts none. Read once, when the library loads: before any import of cv2."""
    if OPENCV_THREADS_VAR in os.environ or "cv2" in sys.modules or not _thread_pools_bound():
        return False
    os.environ[OPENCV_THREADS_VAR] = "1"
    return True

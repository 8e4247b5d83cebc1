"""torch's intra-op threads started while there is room for them, under an address-space limit.

torch's CPU pool is libgomp's (OpenMP): its threads start at the first parallel op, and when the system refuses one
its stack (`pthread_create` EAGAIN: no address space left under `ulimit -v` / `prlimit --as`) libgomp prints
`libgomp: Thread creation failed: Resource temporarily unavailable` and ends the process, exit 1; a thread started
with no memory left for its thread-local data ends it in glibc, `cannot allocate memory for thread-local data`,
exit 127. Neither can be caught, so sigma could say nothing (`sigma annotate --annotator sigma-lite` under
`prlimit --as` ~880 MB died so, in the model's load-time probe). Started here, before the model's first op, once
the address space they need has been found free, a shortage is one `out_of_memory` instead; once started, libgomp
keeps its threads for every later op, and what later runs short is an allocation torch reports.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from sigma.runtime.threads import check_room_for_threads, pthread_stack_bytes, threads_that_fit

_UNITS = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30}


# `import torch` maps ~488 MB of address space (torch 2.x: libtorch_cpu and its libraries), and within that of an
# address-space limit its C++ start-up ends the process (`terminate called after throwing an instance of
# 'std::bad_alloc'`, SIGABRT, under `prlimit --as` 680-700 MB; `cannot allocate memory for thread-local data` at 720),
# which no handler can catch. With less than this left before the import, `out_of_memory` is said instead: the
# model's load needs hundreds of MB more, so no command that would have run is refused.
TORCH_IMPORT_BYTES = 560 * 2**20


def import_torch_with_room() -> Any:
    """`torch`, imported once the address space its import maps has been found left under this process's RLIMIT_AS
    (`TORCH_IMPORT_BYTES`): `out_of_memory` when it is not, instead of torch's start-up aborting the process."""
    if "torch" not in sys.modules:
        from sigma.errors import OutOfMemoryError, address_space_left

        left = address_space_left()
        if left is not None and left < TORCH_IMPORT_BYTES:
            raise OutOfMemoryError(f"importing torch: {left >> 20} MB of address space left under the limit, where "
                                   f"its import maps ~{TORCH_IMPORT_BYTES >> 20} MB (short of it, torch aborts the "
                                   "process); raise the limit (`ulimit -v`, the container's memory)")
    import torch

    return torch


def thread_stack_bytes() -> int:
    """The stack each libgomp thread maps: `OMP_STACKSIZE` / `GOMP_STACKSIZE` (a number, K by default, or with a
    B/K/M/G suffix) when set, else pthread's default, the soft RLIMIT_STACK (`ulimit -s`)."""
    for var in ("GOMP_STACKSIZE", "OMP_STACKSIZE"):
        text = os.environ.get(var, "").strip().upper()
        if text:
            unit = _UNITS.get(text[-1], 0)
            try:
                return int(text[:-1] if unit else text) * (unit or 2**10)
            except ValueError:
                pass
    return pthread_stack_bytes()


def start_threads_with_room(torch: Any) -> None:
    """Start torch's intra-op threads now, under a finite RLIMIT_AS, after checking that the address space they need
    is free (`check_room_for_threads`): `out_of_memory` when it is not, instead of libgomp or glibc ending the
    process later. With no limit, or one thread, nothing is done.

    Under a low limit on the user's processes and threads (`prlimit --nproc`) torch is given the threads that fit
    (`threads_that_fit`, one at least, which starts none): libgomp ended `sigma annotate` (sigma-lite) under
    `--nproc 1` the same way, `Thread creation failed`, exit 1."""
    from sigma.errors import address_space_left

    threads = torch.get_num_threads()
    fit = threads_that_fit(threads)
    if fit < threads:
        threads = fit
        torch.set_num_threads(threads)
    if threads <= 1 or address_space_left() is None:
        return
    check_room_for_threads(threads, thread_stack_bytes(), "torch's", "`ulimit -s`, OMP_STACKSIZE")
    torch.ones(2**18).add_(1)       # more than one grain (32768): a parallel op, which starts the pool

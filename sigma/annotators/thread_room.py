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
from typing import Any

from sigma.runtime.threads import check_room_for_threads, pthread_stack_bytes, threads_that_fit

_UNITS = {"B": 1, "K": 2**10, "M": 2**20, "G": 2**30}


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

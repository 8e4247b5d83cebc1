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

import errno
import mmap
import os
import resource
from typing import Any

# what each started thread may take beside its stack: its thread-local blocks, its guard page, the first chunk of
# its malloc arena (a full arena's 64 MB reservation is optional: glibc shares an arena when it is refused)
PER_THREAD_SLACK = 2 * 2**20
# beside the threads: the op that starts them (a 1 MiB tensor) and torch's bookkeeping of the pool
START_SLACK = 8 * 2**20
DEFAULT_STACK = 8 * 2**20         # glibc's thread stack when RLIMIT_STACK is unlimited
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
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return DEFAULT_STACK if soft == resource.RLIM_INFINITY else max(int(soft), 16 * 2**10)


def start_threads_with_room(torch: Any) -> None:
    """Start torch's intra-op threads now, under a finite RLIMIT_AS, after checking that the address space they need
    is free (mapped and unmapped again, no page touched): `out_of_memory` (OutOfMemoryError) when it is not, instead
    of libgomp or glibc ending the process later. With no limit, or one thread, nothing is done."""
    from sigma.errors import OutOfMemoryError, address_space_left, no_memory

    threads = torch.get_num_threads()
    if threads <= 1 or address_space_left() is None:
        return
    need = (threads - 1) * (thread_stack_bytes() + PER_THREAD_SLACK) + START_SLACK
    try:
        mmap.mmap(-1, need).close()
    except (MemoryError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
            raise
        raise OutOfMemoryError(f"starting torch's {threads} threads: {no_memory(exc, f'for their {need >> 20} MB')}; "
                               "raise the limit (`ulimit -v`, the container's memory), or ask for fewer threads "
                               "(--set options.cpu_threads=1, OMP_NUM_THREADS=1) or smaller stacks (`ulimit -s`, "
                               "OMP_STACKSIZE)") from exc
    torch.ones(2**18).add_(1)       # more than one grain (32768): a parallel op, which starts the pool

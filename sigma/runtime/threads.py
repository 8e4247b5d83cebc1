"""Room for a native library's threads under an address-space limit, checked before the library starts them.

A thread whose stack the system refuses (`pthread_create` EAGAIN under `ulimit -v` / `prlimit --as`) ends the process
in libgomp (torch's pool: `sigma.annotators.thread_room`) or in glibc (`cannot allocate memory for thread-local data`,
127), or hangs ONNX Runtime's session for ever; none of them can be caught. Mapping the address space the threads
need first, and unmapping it again (no page touched), turns that into one `out_of_memory`.
"""
from __future__ import annotations

import errno
import mmap
import os
import resource

# what each started thread may take beside its stack: its thread-local blocks, its guard page, the first chunk of
# its malloc arena (a full arena's 64 MB reservation is optional: glibc shares an arena when it is refused)
PER_THREAD_SLACK = 2 * 2**20
# beside the threads: the op that starts them (a 1 MiB tensor) and torch's bookkeeping of the pool
START_SLACK = 8 * 2**20
DEFAULT_STACK = 8 * 2**20         # glibc's thread stack when RLIMIT_STACK is unlimited


# RLIMIT_NPROC (`ulimit -u`, `prlimit --nproc`) counts every process and thread of the real user, and a thread it
# refuses ends the process as a refused stack does. Below NPROC_SCANNED the user's tasks are counted (/proc) and a
# pool is given no more threads than fit, NPROC_SPARE kept for the rest (OpenCV's pool, whose refusal is harmless,
# a decode thread); a limit of thousands (a desktop's `ulimit -u`) is never near.
NPROC_SCANNED = 4096
NPROC_SPARE = 2


def tasks_left() -> int | None:
    """The processes and threads this process's real user may still start under its RLIMIT_NPROC; None when no such
    limit binds (none, one of NPROC_SCANNED or more, or root, whom it never binds)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    uid = os.getuid()
    if soft == resource.RLIM_INFINITY or soft >= NPROC_SCANNED or uid == 0:
        return None
    used = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", encoding="ascii", errors="replace") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                used += int(fields["Threads"])
        except (OSError, KeyError, ValueError, IndexError):
            continue                         # a process that ended meanwhile, or one not ours to read
    return max(0, soft - used)


def threads_that_fit(threads: int) -> int:
    """`threads` (a pool's size, itself included), or fewer, at least 1, so that its new threads fit under the user's
    RLIMIT_NPROC with NPROC_SPARE left over (`tasks_left`)."""
    left = tasks_left() if threads > 1 else None
    return threads if left is None else max(1, min(threads, left + 1 - NPROC_SPARE))


def pthread_stack_bytes() -> int:
    """The stack a thread started without a size of its own maps (ONNX Runtime's): the soft RLIMIT_STACK (`ulimit
    -s`), glibc's 8 MiB when it is unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return DEFAULT_STACK if soft == resource.RLIM_INFINITY else max(int(soft), 16 * 2**10)


def check_room_for_threads(threads: int, stack: int, whose: str, smaller: str) -> None:
    """`out_of_memory` (OutOfMemoryError) unless the address space `threads` - 1 new threads of `stack` bytes need
    is free under this process's RLIMIT_AS (mapped and unmapped again, no page touched). With no limit, or one
    thread, nothing is checked. `smaller` names the setting that makes the stacks smaller."""
    from sigma.errors import OutOfMemoryError, address_space_left, no_memory

    if threads <= 1 or address_space_left() is None:
        return
    need = (threads - 1) * (stack + PER_THREAD_SLACK) + START_SLACK
    try:
        mmap.mmap(-1, need).close()
    except (MemoryError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno != errno.ENOMEM:
            raise
        raise OutOfMemoryError(f"starting {whose} {threads} threads: {no_memory(exc, f'for their {need >> 20} MB')}; "
                               "raise the limit (`ulimit -v`, the container's memory), or ask for fewer threads "
                               f"(--set options.cpu_threads=1, OMP_NUM_THREADS=1) or smaller stacks ({smaller})"
                               ) from exc


def ort_threads_with_room(threads: int | None) -> int | None:
    """The intra-op threads to ask of an ONNX Runtime session: `threads` (options.cpu_threads) when set; with no
    address-space limit, None (ORT's default, a thread per physical core). Under a finite RLIMIT_AS, torch's count
    (the same setting: `cpu_threads`, else torch's default, also a thread per physical core), once the room for
    their stacks has been found free: `out_of_memory` when it is not.

    ORT starts its pool as the session is made, and when the system refuses a thread it hangs there for ever: an
    8-thread session made with 40 MB of address space left never returned, where one with 80 MB did."""
    from sigma.errors import address_space_left

    if tasks_left() is not None:            # a low `ulimit -u`: ORT hangs as well when a thread is refused
        if not threads:
            import torch

            threads = torch.get_num_threads()
        threads = threads_that_fit(threads)
    if address_space_left() is None:
        return threads
    if not threads:
        import torch

        threads = torch.get_num_threads()
    check_room_for_threads(threads, pthread_stack_bytes(), "ONNX Runtime's", "`ulimit -s`")
    return threads

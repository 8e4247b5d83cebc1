"""Opening a file a user names for reading, refusing anything but a regular file in the open itself.

The readers of user-named files (an image, a config YAML, a pairs.jsonl or corpus manifest) checked `is_file()` and
then `open()`ed the path. A FIFO put in its place between the two (or a FIFO where a caller skipped the check)
blocked that `open()` for ever, waiting for a writer. `open_regular` opens with O_NONBLOCK (a FIFO's read end then
opens at once), checks what was opened with `fstat` (so no later swap matters) and only then clears O_NONBLOCK
for the ordinary blocking reads of a file object. Each caller turns `NotRegularFile` into its own error code.
"""
from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import IO, Any


class NotRegularFile(OSError):
    """What was opened is a FIFO, a device, a folder or a socket, not a regular file. An OSError, so a caller that
    only reports OSErrors as "cannot read" still reports it; callers with a message of their own catch it first."""


def open_regular(path: str | Path, mode: str = "rb", **kwargs: Any) -> IO:
    """`open(path, mode, **kwargs)` for reading (`mode` "r" or "rb"; `kwargs`: encoding, newline, ...), raising
    NotRegularFile without blocking when `path` is not a regular file (links followed, as `is_file()` does)."""
    if "r" not in mode or any(c in mode for c in "wax+"):
        raise ValueError(f"open_regular reads only, not mode {mode!r}")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path}: not a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise

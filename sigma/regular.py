"""Opening a file a user names for reading, refusing anything but a regular file in the open itself.

The readers of user-named files (an image, a config YAML, a pairs.jsonl or corpus manifest) checked `is_file()` and
then `open()`ed the path. A FIFO put in its place between the two (or a FIFO where a caller skipped the check)
blocked that `open()` for ever, waiting for a writer. `open_regular` opens with O_NONBLOCK (a FIFO's read end then
opens at once), checks what was opened with `fstat` (so no later swap matters) and only then clears O_NONBLOCK
for the ordinary blocking reads of a file object. Each caller turns `NotRegularFile` into its own error code.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import IO, Any


class NotRegularFile(OSError):
    """What was opened is a FIFO, a device, a folder or a socket, not a regular file. An OSError, so a caller that
    only reports OSErrors as "cannot read" still reports it; callers with a message of their own catch it first.
    `kind` says which ("a FIFO", "a folder", "a character device", ...), for the caller's message."""

    def __init__(self, message: str, kind: str = "not a regular file"):
        super().__init__(message)
        self.kind = kind


def file_kind(mode: int) -> str:
    """What a file of `st_mode` `mode` is, in words: "a folder", "a FIFO", "a character device" (/dev/zero), ...
    A FIFO, a folder or /dev/zero given as an image was said "not a regular file" with the code `file_not_found`, as
    if nothing were there: the user looked for a missing file."""
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file")):
        if test(mode):
            return kind
    return "not a regular file"


def kind_of(path: str | Path) -> str:
    """`file_kind` of what `path` names (links followed), or "not a regular file" when it cannot be looked at."""
    try:
        return file_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return "not a regular file"


class BrokenLink(FileNotFoundError):
    """`path` is a symbolic link to nothing (a photo on a drive not mounted, a folder moved away). A FileNotFoundError,
    as before, whose words say so: "No such file or directory" of a name `ls` lists sent people looking for a
    missing file. `target` is where the link points, for the caller's message."""

    def __init__(self, path: str | Path, target: str, loop: bool = False):
        said = (f"a link loop (its link to {target} leads back round, never to a file)" if loop
                else f"a broken link to {target} (nothing is there)")
        super().__init__(errno.ELOOP if loop else errno.ENOENT, said, str(path))
        self.target = target


def broken_link(path: str | Path) -> BrokenLink | None:
    """BrokenLink for `path` when it is a symbolic link whose target is not there, else None. A link that leads back
    to itself (`ln -s x x`, a -> b -> a) is said as a loop: it was "a broken link to x (nothing is there)", of a
    name whose target `ls` shows right beside it."""
    try:
        target = os.readlink(path)
    except (OSError, ValueError):     # not a link, gone, or a NUL in the name
        return None
    try:
        os.stat(path)
    except OSError as exc:
        return BrokenLink(path, target, loop=exc.errno == errno.ELOOP)
    return None


def open_regular(path: str | Path, mode: str = "rb", **kwargs: Any) -> IO:
    """`open(path, mode, **kwargs)` for reading (`mode` "r" or "rb"; `kwargs`: encoding, newline, ...), raising
    NotRegularFile without blocking when `path` is not a regular file (links followed, as `is_file()` does), and
    BrokenLink when it is a link to nothing."""
    if "r" not in mode or any(c in mode for c in "wax+"):
        raise ValueError(f"open_regular reads only, not mode {mode!r}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        gone = broken_link(path)
        if gone is None:
            raise
        raise gone from exc
    try:
        st_mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(st_mode):
            raise NotRegularFile(f"{path}: not a regular file", file_kind(st_mode))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise

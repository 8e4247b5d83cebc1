"""Lines of a binary file ending in LF, CRLF or a lone CR, and a file's bytes up to a limit, read without holding
more than the limit.

`readline` on a binary file ends lines at LF only: a CSV or JSONL manifest saved with old-Mac line endings (CR)
was one line, and a record that ended in CR ran into the next one (its pair and the next were one bad record,
or the whole file an unreadable header). Python's text mode and the csv module take all three endings; the
manifest readers stay binary (they seek to byte offsets), so they read lines here.
"""
from __future__ import annotations

import re
from typing import BinaryIO

LINE_ENDS = (b"\n", b"\r")
_EOL = re.compile(rb"[\r\n]")


def read_line(handle: BinaryIO, limit: int) -> bytes:
    """The next line with its ending (CRLF whole), or at most `limit` bytes of it; b"" at the end of the file.
    `handle` must be buffered (`peek`): the line is found in the buffer, never read past."""
    out = bytearray()
    while len(out) < limit:
        buf = handle.peek(1)[:limit - len(out)]
        if not buf:
            break
        found = _EOL.search(buf)
        if found is None:
            out += handle.read(len(buf))
            continue
        out += handle.read(found.end())
        if buf[found.start()] == 0x0D and handle.peek(1)[:1] == b"\n":
            out += handle.read(1)
        break
    return bytes(out)


def ends_line(line: bytes) -> bool:
    return line.endswith(LINE_ENDS)


def read_at_most(handle: BinaryIO, most: int) -> bytes:
    """Up to `most` bytes of `handle`, read in pieces of 1 MiB. `read(limit + 1)` asks for a buffer of that size up
    front: a large limit (`io.limits.max_bytes=1e11`, `$SIGMA_MAX_RUN_BYTES=1e12`) was a MemoryError in every
    read of an image or a run.json of a few KB."""
    pieces, left = [], most
    while left > 0:
        piece = handle.read(min(left, 1 << 20))
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)

"""The sha256 of a file, read in 1 MiB blocks: how weights, cached ONNX graphs and published shards are keyed
and checked (one definition, so a digest written by one part is the digest another part compares)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from sigma.regular import open_regular

BLOCK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    """NotRegularFile (an OSError), without blocking, when `path` is a FIFO, a device or a folder: a FIFO put where
    a run's shard file was checked held `sigma batch run --resume` (and a fleet worker) for ever."""
    with open_regular(path) as handle:
        return sha256_stream(handle)


def sha256_stream(handle: BinaryIO) -> str:
    """The sha256 of what `handle` holds from its current position to its end: a file already opened (and
    checked) is hashed as it is, not opened again by its path."""
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
        digest.update(block)
    return digest.hexdigest()

"""The sha256 of a file, read in 1 MiB blocks: how weights, cached ONNX graphs and published shards are keyed
and checked (one definition, so a digest written by one part is the digest another part compares)."""
from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()

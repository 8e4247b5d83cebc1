"""The one test of confinement: does a path a data set names lie inside the folder it may read from?

Used by the batch runs the API submits (`input.root`), the synth cache's index (its cache folder) and the
`pairs.jsonl` reader of `sigma eval` and training (each set's own folder), so every one resolves `..`, absolute
paths and symbolic links the same way."""
from __future__ import annotations

import os

from sigma.errors import InputError


def resolved_under(path: str, real_root: str) -> str | None:
    """`path` resolved (symlinks, `..`) if it lies under `real_root` (itself resolved), else None: the one test
    of confinement, for the run's input and links (`runner.check_confined`) and each file a corpus names."""
    if "\x00" in path:
        raise InputError("the corpus names a path with a NUL byte; refused", code="invalid_path")
    real = os.path.realpath(path)
    return real if os.path.commonpath([real_root, real]) == real_root else None

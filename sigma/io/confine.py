"""The one test of confinement: does a path a data set names lie inside the folder it may read from?

Used by the batch runs the API submits (`input.root`), the synth cache's index (its cache folder) and the
`pairs.jsonl` reader of `sigma eval` and training (each set's own folder), so every one resolves `..`, absolute
paths and symbolic links the same way."""
from __future__ import annotations

import os

from sigma.errors import InputError


def refuse_nul(path: str) -> None:
    """InputError (`invalid_path`) for a path with a NUL byte, which no file can have: said before any resolving."""
    if "\x00" in path:
        raise InputError("the corpus names a path with a NUL byte; refused", code="invalid_path")


def resolved_under(path: str, real_root: str) -> str | None:
    """`path` resolved (symlinks, `..`) if it lies under `real_root` (itself resolved), else None: the one test
    of confinement, for the run's input and links (`runner.check_confined`) and each file a corpus names."""
    refuse_nul(path)
    real = os.path.realpath(path)
    return real if os.path.commonpath([real_root, real]) == real_root else None


def lies_under(real: str, real_root: str) -> bool:
    """`real` (resolved) is `real_root` (resolved) or inside it: `os.path.commonpath`'s answer for such paths, as a
    string test (commonpath cost as much as resolving the path, per file of a 100,000-record set)."""
    return real == real_root or real.startswith(real_root if real_root.endswith(os.sep) else real_root + os.sep)


class Confinement:
    """`resolved_under(path, root)` for the many files one manifest names: each folder they sit in is resolved once,
    and a file only looked at (`lstat`) to see whether it is a link, which is resolved whole. Resolving every path
    whole tripled the time to read a 100,000-record pairs.jsonl (10 s to 30 s); the answer is the same."""

    MAX_FOLDERS = 4096            # folders remembered at once (a set of a million folders holds no more than this)

    def __init__(self, root: str | os.PathLike[str]):
        self.real_root = os.path.realpath(root)
        self._folders: dict[str, str] = {}

    def resolved(self, path: str) -> str | None:
        """`path` resolved if it lies under the root, else None; InputError (invalid_path) for a NUL byte."""
        refuse_nul(path)
        folder, name = os.path.split(path)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            if len(self._folders) >= self.MAX_FOLDERS:
                self._folders.clear()
            real_folder = self._folders[folder] = os.path.realpath(folder or ".")
        joined = os.path.join(real_folder, name)
        real = os.path.realpath(path) if name in ("", ".", "..") or os.path.islink(joined) else joined
        return real if lies_under(real, self.real_root) else None

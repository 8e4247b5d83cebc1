"""The one test of confinement: does a path a data set names lie inside the folder it may read from?

Used by the batch runs the API submits (`input.root`), the synth cache's index (its cache folder) and the
`pairs.jsonl` reader of `sigma eval` and training (each set's own folder), so every one resolves `..`, absolute
paths and symbolic links the same way. `refuse_opened_outside` asks it again of the file actually opened
(`sigma.io.images.read_file_bytes(root=...)`), so nothing swapped in after the first check is read."""
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


def opened_real_path(fd: int, path: str) -> str:
    """The resolved path of the file `fd` is open on: the kernel's own answer (`/proc/self/fd/N`), so a file or a
    folder above it swapped for a link after any check of `path` cannot change it; `os.path.realpath(path)` where
    there is no /proc (that answer is as old as the call, not the open)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _moved_outside(where: str) -> InputError:
    return InputError(f"{where}: lies outside the folder it is read from (a link to elsewhere, or a folder above it, "
                      "put there since it was checked); refused, nothing was read", code="path_outside_root")


def refuse_outside(path: str, real_root: str, where: str) -> None:
    """InputError (`path_outside_root`) when `path` resolved lies outside `real_root`, asked again as a file is about
    to be opened (nothing looked at yet, not even its existence); `refuse_opened_outside` then asks what was opened."""
    if resolved_under(path, real_root) is None:
        raise _moved_outside(where)


def refuse_opened_outside(fd: int, path: str, real_root: str, where: str) -> None:
    """InputError (`path_outside_root`) when what `fd` opened lies outside `real_root` (resolved). The readers of a
    set (`sigma eval`, training) check each path the manifest names when they read it and open the file later: a
    file swapped for a link to elsewhere in between was read. Checked on what was opened, before a byte is read."""
    if not lies_under(opened_real_path(fd, path), real_root):
        raise _moved_outside(where)


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

"""A path an input names as a folder (an eval set, a folder of sets, a photo bank, a folder corpus) that is not one.

Each reader said it its own way: `file_not_found` for a regular file ("not a folder (a file)": the user looked for a
missing file that `ls` showed), `not_a_regular_file` for a FIFO (which a regular file would not have cured), and the
folder corpus `no_pairs`. One code now says what is wrong, `not_a_folder`, whatever stands there."""
from __future__ import annotations

import os
from pathlib import Path

from sigma.errors import InputError
from sigma.regular import broken_link, kind_of


def not_a_folder(path: Path, expected: str, missing: str = "no such folder",
                 missing_code: str = "file_not_found") -> InputError | None:
    """None when `path` is a folder (links followed); else the error to raise: `missing_code` saying `missing` when
    nothing is there (a broken link said as one, with where it points), `not_a_folder` naming what is there
    ("a file", "a FIFO", "a character device") followed by `expected`, what the reader takes."""
    if path.is_dir():
        return None
    if not path.exists():
        gone = broken_link(path)
        why = gone.strerror if gone is not None else missing
        return InputError(f"{path}: {why}", code=missing_code)
    return InputError(f"{path}: not a folder ({kind_of(path)}); {expected}", code="not_a_folder")


def refuse_unreadable_folder(path: Path, listed: bool = True) -> None:
    """InputError (`permission_denied`) naming `path`, a folder, when the user may not look into it (no `x`: `chmod
    000`) or, when its reader must list it (`listed`), list it (no `r`). Its readers treated such a folder as an
    empty one (`no_pairs`, a set passed over), or met it in a file inside it (`os_error` naming a `state.json` the
    user never named). A set folder of mode 311 whose pairs.jsonl names its files needs no listing, and is read."""
    try:
        os.stat(os.path.join(path, "."))
    except PermissionError:
        raise InputError(f"{path}: permission denied (the folder cannot be looked into); it must be readable to you "
                         "(chmod u+rx)", code="permission_denied") from None
    if not listed:
        return
    try:
        with os.scandir(path) as entries:          # opened, not listed: a photo bank may hold a million
            next(entries, None)
    except PermissionError:
        raise InputError(f"{path}: permission denied (the folder cannot be listed); it must be readable to you "
                         "(chmod u+r)", code="permission_denied") from None


def require_folder(path: Path, expected: str, missing: str = "no such folder",
                   missing_code: str = "file_not_found", listed: bool = True) -> None:
    """`not_a_folder` raised when it is not None (`os.path` only: nothing is opened, a FIFO never blocks), and
    `permission_denied` for a folder the user may not read (`refuse_unreadable_folder`; `listed`: nor list)."""
    error = not_a_folder(path, expected, missing, missing_code)
    if error is not None:
        raise error
    refuse_unreadable_folder(path, listed)

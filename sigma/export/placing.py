"""Files an export puts into a folder that is not its own (`sigma export coco --images DIR`), never over another's.

Such a folder is anyone's: an earlier export of another run, or of this run with other filters (the names follow the
pairs kept, so `x.png` may be another pair's image there), or the user's own tools. (A second export at the same
time is refused up front: the export holds DIR, `sigma.folderlock.hold_folder`.) Before, each
image was renamed over whatever had its name: the earlier export's JSON then paired its masks with this export's
images, silently. Now every file is staged first under a temporary name of this writer's own (`temp_name`, fsynced)
and compared with what the folder holds under its name: identical bytes are left as they are (a rerun of one export
changes nothing), different bytes refuse the export (`out_not_empty`, naming the file) before any file of it is put
in place, unless `overwrite`. The staged files are then put in place with a hard link, which never replaces a file:
one that appeared meanwhile (another tool's) is compared again, and different bytes refuse the export there.
A file system without hard links takes an `O_EXCL` copy instead (fsynced; a kill mid-copy leaves a file cut short,
which a rerun refuses as different bytes rather than trusting).
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from sigma.errors import InputError
from sigma.regular import open_regular
from sigma.tempfiles import make_folders_durably, said_of_target, write_synced

#: link() errors that mean "this file system has no hard links", not "the name is taken"
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
_CHUNK = 1 << 20


def _same_file_bytes(path: Path, data: bytes | Path) -> bool:
    """Whether `path` is a plain file (never a link: it may change under the JSON) holding exactly `data` (bytes, or
    the bytes of the file `data`)."""
    try:
        info = os.lstat(path)
        size = len(data) if isinstance(data, bytes) else os.stat(data).st_size
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return False
        # open_regular: a FIFO put at `path` after the lstat above held the export in open() for ever
        if isinstance(data, bytes):
            with open_regular(path) as a:
                return a.read(len(data) + 1) == data
        with open_regular(path) as a, open(data, "rb") as b:
            while True:
                chunk = a.read(_CHUNK)
                if chunk != b.read(_CHUNK):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


class PlacedFiles:
    """The files of one export into `folder`: `stage` each, then `place` them all; `discard` (always, in a
    `finally`) removes what was staged and not placed. `overwrite`: a name holding different bytes is replaced."""

    def __init__(self, folder: Path, overwrite: bool = False, option: str = "--images"):
        self.folder, self.overwrite, self.option = Path(folder), overwrite, option
        # `temp_name`'s form with one pid and token for the whole export (`_temp`): a staged file is known by its
        # name alone. The names staged and not yet placed are one NUL-separated byte string, placed from
        # `_placed_to` on: a (temporary Path, target Path) pair per image held a few hundred bytes each until the
        # end (~0.4 GB at a million images); a name is ~15 (a file name holds no NUL). Two targets of one export
        # never share a name, so never a temporary file.
        self._suffix = f".{os.getpid()}.{secrets.token_hex(4)}.tmp"
        self._names = bytearray()
        self._placed_to = 0
        self.kept = 0                                    # names already holding these bytes
        self._made = False

    def _temp(self, name: str) -> Path:
        """The temporary file `name` is staged in (`temp_name`'s form, which `sweep_dead_writers_of` knows)."""
        return self.folder / f".{name}{self._suffix}"

    def staged(self) -> Iterator[str]:
        """The names staged and not placed yet, in the order staged."""
        at = self._placed_to
        while at < len(self._names):
            end = self._names.index(0, at)
            yield self._names[at:end].decode("utf-8", "surrogateescape")
            at = end + 1

    def _conflict(self, target: Path, during: str = "") -> InputError:
        return InputError(
            f"{self.option} {self.folder}: {target.name} already holds a different file{during} (another export's, "
            "or one of this run made with other filters: the names follow the pairs kept, so the same name may be "
            "another pair's image); writing it would leave the JSON that lists it pairing its masks with this "
            f"export's image. Choose another folder, or pass --overwrite to replace such files",
            code="out_not_empty")

    def stage(self, name: str, data: bytes) -> None:
        """`data` to be put at `folder/name`: compared with what is there now (refused if different), else written
        to a temporary file of this writer's own, fsynced. Nothing under `name` itself is written here."""
        target = self.folder / name
        if not self._made:
            make_folders_durably(self.folder)     # its name on disk in its parent, as the files will be
            self._made = True
        if os.path.lexists(target):
            if _same_file_bytes(target, data):
                self.kept += 1
                return
            if not self.overwrite:
                raise self._conflict(target)
        if "\0" in name or "/" in name:
            raise ValueError(f"not a file name: {name!r}")
        tmp = self._temp(name)
        try:
            write_synced(tmp, data)
        except OSError as exc:       # a full disk: said of the image's name in DIR, not of none or the tmp
            tmp.unlink(missing_ok=True)
            said = said_of_target(exc, tmp, target, True)
            if said is exc:
                raise
            raise said from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._names += name.encode("utf-8", "surrogateescape") + b"\0"

    def place(self) -> int:
        """Every staged file at its name: a hard link (never over a file), or with `overwrite` a rename. A name
        taken meanwhile by the same bytes is fine; by others, refused (`out_not_empty`): the files placed before it
        stay (new names only, none replaced, listed by no JSON of this export). Returns the files placed."""
        placed = 0
        for name in self.staged():
            tmp, target = self._temp(name), self.folder / name
            if self.overwrite:
                os.replace(tmp, target)
                placed += 1
            elif self._link(tmp, target):
                tmp.unlink()
                placed += 1
            elif _same_file_bytes(target, tmp):
                tmp.unlink()
                self.kept += 1
            else:
                raise self._conflict(target, " (written there while this export ran)")
            self._placed_to += len(name.encode("utf-8", "surrogateescape")) + 1
        self._names.clear()
        self._placed_to = 0
        return placed

    @staticmethod
    def _link(tmp: Path, target: Path) -> bool:
        """`tmp` also at `target` unless `target` exists (then False). Without hard links: an exclusive create and
        a copy, fsynced."""
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as out, open(tmp, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return True

    def discard(self) -> None:
        """The staged files not placed, removed (a refusal, a failure, Ctrl-C)."""
        for name in self.staged():
            self._temp(name).unlink(missing_ok=True)
        self._names.clear()
        self._placed_to = 0

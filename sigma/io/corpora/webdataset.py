"""WebDataset tar shards: members grouped by `__key__` (the path up to the first dot of the file name),
fields named by the rest (`000123.original.png` → key `000123`, field `original.png`).

Each tar is one shard, streamed member by member from one handle opened by `open_tar` (`open_regular`: a FIFO or a
device is refused, never waited on; tarfile opening the path itself blocked for ever on a FIFO put there after the
check). Which fields hold which role is configurable with
`--columns original=src.jpg|original.png,...` (the first field present wins).
"""
from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sigma.errors import InputError
from sigma.io.corpora.base import Corpus, Shard, SourceItem, rel_key, text_value
from sigma.regular import NotRegularFile, open_regular
from sigma.text import loads as load_json

DEFAULT_FIELDS = {
    "original": "original.png|original.jpg|original.jpeg|original.webp|src.png|src.jpg|source.png|source.jpg|"
                "input.png|input.jpg",
    "edited": "edited.png|edited.jpg|edited.jpeg|edited.webp|tgt.png|tgt.jpg|target.png|target.jpg|"
              "output.png|output.jpg",
    "mask": "mask.png|gt.png",
    "instruction": "instruction.txt|txt|prompt.txt",
    "json": "json",
}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def split_key(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def open_tar(tar: Path) -> BinaryIO:
    """`tar` opened for reading if it is a regular file; else bad_tar saying what it is, without blocking. An open
    that fails otherwise (the shard deleted after the plan) is bad_tar too: the read's own handler took it for a
    shard of no pairs."""
    try:
        return open_regular(tar, "rb")
    except NotRegularFile:
        raise InputError(f"{tar}: not a regular file (a FIFO, a device or a folder); a tar shard must be a file",
                         code="bad_tar") from None
    except OSError as exc:
        raise InputError(f"{tar}: not a readable tar ({exc})", code="bad_tar") from exc


class TooLarge:
    """A member above io.limits.max_bytes, skipped unread: its size, for the pair's error."""

    def __init__(self, size: int):
        self.size = size


def members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """A tar's members one at a time, none kept: TarFile holds every header it has read (`members`), so a shard
    of 400000 members held 200 MB while it was planned or read."""
    while (member := tf.next()) is not None:
        yield member
        tf.members = []


class WebDatasetCorpus(Corpus):
    format = "wds"

    def __init__(self, path, columns, shard_size, preset=None):
        super().__init__(path, columns, shard_size, preset)
        self.fields = {role: (columns.get(role) or default).split("|") for role, default in DEFAULT_FIELDS.items()}

    def tars(self) -> list[Path]:
        if self.path.exists() and not self.path.is_dir():
            return [self.path]              # a FIFO or a device too: refused by open_tar, saying what it is
        tars = sorted(p for p in self.path.rglob("*") if p.is_file() and p.name.endswith(TAR_SUFFIXES))
        if not tars:
            raise InputError(f"{self.path}: no .tar shards", code="no_pairs")
        return tars

    def plan(self) -> list[Shard]:
        root = self.path if self.path.is_dir() else self.path.parent
        shards = []
        for tar in self.tars():
            self.confine(tar)                         # a symlinked .tgz out of the root
            count = None
            try:
                with open_tar(tar) as handle:
                    if tar.suffix == ".tar":   # seekable: headers only, data skipped, so counting is cheap
                        with tarfile.open(fileobj=handle, mode="r:") as tf:
                            keys = {split_key(m.name)[0] for m in members(tf) if m.isfile()}
                        count = len(keys)
                    else:
                        with tarfile.open(fileobj=handle, mode="r|*"):
                            pass
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise InputError(f"{tar}: not a readable tar ({exc})", code="bad_tar") from exc
            shards.append(Shard(len(shards), rel_key(tar, root), {"file": str(tar)}, count))
        return shards

    def read(self, shard: Shard) -> Iterator[SourceItem]:
        tar = self.confine(Path(shard.ref["file"]))
        with open_tar(tar) as handle:
            yield from self._read(handle, tar)

    def _read(self, handle: BinaryIO, tar: Path) -> Iterator[SourceItem]:
        """The pairs of the tar open as `handle` (`tar` names them)."""
        index = 0
        group: dict[str, bytes | TooLarge | None] = {}
        wanted = {f for fields in self.fields.values() for f in fields}
        current: str | None = None
        try:
            with tarfile.open(fileobj=handle, mode="r|*") as tf:
                for member in members(tf):
                    if not member.isfile():
                        continue
                    key, ext = split_key(member.name)
                    if current is not None and key != current:
                        yield self._item(group, current, index, tar)
                        index += 1
                        group = {}
                    current = key
                    if ext not in wanted:              # a field no role reads: listed, never read
                        group.setdefault(ext, None)
                    elif self.max_bytes is not None and member.size > self.max_bytes:
                        group[ext] = TooLarge(member.size)   # a 1 KB .tar.gz can hold a 10 GB member
                    else:
                        data = tf.extractfile(member)
                        group[ext] = data.read() if data else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            if current is not None:
                item = self._item(group, current, index, tar)
                item.error = ("bad_tar", f"{tar}: truncated or unreadable after key {current} ({exc})")
                yield item
            return
        if current is not None:
            yield self._item(group, current, index, tar)

    def _pick(self, group: dict[str, bytes | TooLarge | None], role: str) -> bytes | None:
        for field in self.fields[role]:
            if isinstance(group.get(field), bytes):
                return group[field]
        return None

    def _item(self, group: dict[str, bytes | TooLarge | None], key: str, index: int, tar: Path) -> SourceItem:
        item = SourceItem(index=index, pair_id=key, source=f"{tar.name}#{key}")
        for role in ("original", "edited"):
            field = next((f for f in self.fields[role] if f in group), None)
            if isinstance(group.get(field), TooLarge):
                item.error = ("file_too_large", f"{item.source}: field {field} is {group[field].size} bytes, above "
                              f"io.limits.max_bytes={self.max_bytes}; not read")
                return item
        meta: dict = {}
        raw_json = self._pick(group, "json")
        if raw_json:
            try:
                meta = load_json(raw_json)
                meta = meta if isinstance(meta, dict) else {}
            except ValueError:          # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer
                item.error = ("bad_record", f"{item.source}: .json field is not valid JSON")
        text = self._pick(group, "instruction")
        # the .json field's values as text, as the other readers give them: a dict there reached the shard
        # writer and stopped the whole run with a traceback
        item.instruction = text.decode("utf-8", errors="replace") if text is not None else text_value(
            meta.get("instruction"))
        item.edit_type = text_value(meta.get("edit_type"))
        item.original = self._pick(group, "original")
        item.edited = self._pick(group, "edited")
        item.mask = self._pick(group, "mask")
        missing = [r for r in ("original", "edited") if getattr(item, r) is None]
        if missing and item.error is None:
            item.error = ("missing_image", f"{item.source}: no {' and no '.join(missing)} field among "
                          f"{sorted(group)} (expected one of: " +
                          "; ".join(f"{r}={'|'.join(self.fields[r])}" for r in missing) + ")")
        return item

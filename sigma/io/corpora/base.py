"""What every corpus reader shares: the item it yields, the shard it plans, and column handling.

A reader never decodes pixels: it hands encoded bytes (or file paths) to the decode workers, so the
reading thread stays cheap and decoding runs in parallel processes.
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sigma.errors import InputError
from sigma.io.confine import resolved_under


@dataclass
class SourceItem:
    """One pair as the corpus stores it; `error` is set when the reader already knows it is bad."""

    index: int                         # position inside its shard: rows are written in this order
    pair_id: str
    source: str                        # where it came from: "file.parquet:row=12", "shard.tar#key", a path
    original: bytes | None = None
    edited: bytes | None = None
    original_path: str | None = None
    edited_path: str | None = None
    mask: bytes | None = None          # ground truth, when the corpus has one
    mask_path: str | None = None
    instruction: str | None = None
    edit_type: str | None = None
    subset: str | None = None          # eval set / split name: the review page groups metrics by it
    error: tuple[str, str] | None = None


@dataclass(frozen=True)
class Shard:
    """The unit of work: a row-group range, a tar, N lines. `ref` says how to read it again anywhere."""

    index: int
    key: str                           # file-system-safe, unique in the corpus
    ref: dict[str, Any] = field(default_factory=dict)
    num_items: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        return cls(index=int(data["index"]), key=str(data["key"]), ref=dict(data.get("ref") or {}),
                   num_items=data.get("num_items"))


def unique_keys(shards: list[Shard], dash_safe: bool = True) -> list[Shard]:
    """The plan with one key per shard. Readers build keys from file names made safe and cut to a length
    (`safe_name`), so two shards could get one key: "a b.parquet" and "a_b.parquet", two sets "x y" and "x_y",
    or every shard of a manifest whose long name cut off the record range. One key is one output file and one
    status file: all but the last shard's rows were lost while the run said every shard was done. A repeated
    key (compared case-folded, for case-insensitive disks) gets the shard's index appended.

    `dash_safe`: a key that starts with `-` (a manifest `-rf.jsonl`, a tar `-x.tar`) gets `_` before it. It named
    `shards/-rf.r0000000-0000002.HASH.parquet`, `status/-rf...json` and `masks/-rf.../`, which `ls *`, `cp * dest`
    or `xargs` in those folders read as options (as the export's file names, `sigma.export.select._harmless`). A
    `safe_name` never starts with `_`, so the prefix makes no key another's. Only plans made now: a run's recorded
    plan keeps its keys (`--resume` reads them from run.json), and a version 1 record, checked by planning again,
    is also compared with the plan made without it (`sigma.batch.record.plan_problem`)."""
    seen: set[str] = set()
    out = []
    for shard in shards:
        key = f"_{shard.key}" if dash_safe and shard.key.startswith("-") else shard.key
        if key.casefold() in seen:
            key = f"{key}-{shard.index}"
            while key.casefold() in seen:
                key += "x"
        if key != shard.key:
            shard = Shard(shard.index, key, shard.ref, shard.num_items)
        seen.add(key.casefold())
        out.append(shard)
    return out


def planned_pairs(shards: list[Shard]) -> int | None:
    """How many pairs the shards hold, when every one knows (a progress bar's total, the run record's)."""
    counts = [s.num_items for s in shards]
    return sum(counts) if all(c is not None for c in counts) else None


class Corpus(ABC):
    """A streaming source of pairs: `plan()` lists shards, `read(shard)` yields that shard's items."""

    format: str = ""
    # io.limits.max_bytes of the run (set by `corpus_from_config`): a reader that streams members out of an
    # archive skips one above it instead of reading it into memory (None: no limit, as before)
    max_bytes: int | None = None
    # input.root of a confined run (set by `corpus_from_config`): every data file a reader opens must resolve
    # under it, checked before the file is touched (None: the CLI's default, any file the user can read)
    root: str | None = None

    def __init__(self, path: str | Path, columns: dict[str, str], shard_size: int, preset: str | None = None):
        self.path = Path(path).resolve()
        self.columns = columns
        self.shard_size = shard_size
        self.preset = preset

    def confine(self, path: Path, named_by: str | Path | None = None) -> Path:
        """`path` if the run may read it: a confined run refuses a data file or folder outside its root (a
        state.json naming /elsewhere/x.arrow or ../x, a symlinked .tgz), before anything looks at it."""
        if self.root is None:
            return path
        if resolved_under(str(path), os.path.realpath(self.root)) is None:
            where = f"{named_by} names" if named_by else "the corpus holds"
            raise InputError(f"{where} a file outside the batch root; refused (nothing read)",
                             code="path_outside_root")
        return path

    @abstractmethod
    def plan(self) -> list[Shard]:
        """One streaming pass over indexes/headers; raises InputError on a structurally bad corpus."""

    @abstractmethod
    def read(self, shard: Shard) -> Iterator[SourceItem]:
        ...

    def identity(self) -> dict[str, Any]:
        """What the outputs depend on: the run's config hash includes it."""
        return {"format": self.format, "path": str(self.path), "columns": dict(sorted(self.columns.items())),
                "preset": self.preset, "shard_size": self.shard_size}


# What a reader may decompress at once to get at `values` cells: io.limits.max_bytes per cell, at most this many
# cells' worth. Parquet pages and compressed Arrow buffers must be held whole before one value of them can be
# looked at, so a cell of 2 GB of zeros (a few KB compressed) is refused from its stated size instead; this
# bounds what one page or buffer can take (400 MB at the default 50 MB). A page of one row group's images
# (pyarrow writes them as one dictionary page) stays far under it, one hostile cell among small ones does not.
MAX_PAGE_CELLS = 8
PAGE_SLACK = 64 * 1024          # length prefixes, offsets and level bytes beside the values


def held_bytes_allowed(values: int, max_bytes: int) -> int:
    return min(max(values, 1), MAX_PAGE_CELLS) * max_bytes + PAGE_SLACK


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_len: int = 120) -> str:
    """A string usable as one path component, stable for the same input."""
    name = _UNSAFE.sub("_", text).strip("._") or "item"
    return name[:max_len]


def rel_key(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return safe_name(str(rel).replace(os.sep, "__"))


def image_value(value: Any, base_dir: Path | None, what: str) -> tuple[bytes | None, str | None]:
    """A cell that holds an image: HF struct {bytes, path}, raw bytes, or a path string."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        # a manifest can say anything: {"bytes": "abc"} or {"path": 5} raised a TypeError that failed the whole
        # shard (every pair in it, at every --resume) instead of being this pair's error
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"{what}: the image cell's bytes are {type(data).__name__}, not binary",
                             code="missing_image")
        if path is not None and not isinstance(path, str):
            raise InputError(f"{what}: the image cell's path is {type(path).__name__}, not text", code="missing_image")
        if data:
            return bytes(data), None
        if path:
            return None, resolve_path(path, base_dir)
        raise InputError(f"{what}: image cell has neither bytes nor path", code="missing_image")
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise InputError(f"{what}: image cell is empty (0 bytes)", code="image_empty")
        return bytes(value), None
    if isinstance(value, str) and value.strip():
        return None, resolve_path(value, base_dir)
    raise InputError(f"{what}: no image (cell is {'null' if value is None else type(value).__name__})",
                     code="missing_image")


def resolve_path(path: str, base_dir: Path | None) -> str:
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return str(p)


def text_value(value: Any) -> str | None:
    """Instruction cells: a string, or a list of candidates (OmniEdit) of which the first non-empty wins."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        for candidate in value:
            if isinstance(candidate, str) and candidate.strip():
                return candidate
        return "" if value else None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def missing_columns_error(where: str, found: list[str], columns: dict[str, str], required: list[str],
                          preset: str | None) -> InputError:
    missing = [f"{role}={columns[role]}" for role in required if columns[role] not in found]
    expected = ", ".join(f"{role}={col}" for role, col in columns.items())
    source = f"preset {preset!r}" if preset else "the column mapping"
    return InputError(
        f"{where}: missing column(s) {', '.join(missing)} required by {source}. Columns found: "
        f"{', '.join(found) or '(none)'}. Expected: {expected}. Map your names with "
        "--columns original=COL,edited=COL,instruction=COL or pick another --preset.",
        code="bad_columns")

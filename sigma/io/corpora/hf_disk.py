"""A folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict), read offline with pyarrow alone.

The layout is `state.json` (which `.arrow` files, in order), `dataset_info.json` (features) and the
Arrow IPC *stream* files themselves; a DatasetDict adds `dataset_dict.json` listing split folders.
Files are memory-mapped and read record batch by record batch, so nothing is loaded whole. Rows are counted from
each batch's metadata (`arrow_batches`), a compressed batch with a buffer larger than its rows may need is not
decompressed, and a cell above io.limits.max_bytes is never copied out: those pairs are `file_too_large`.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sigma.config.schema import LimitsConfig
from sigma.errors import InputError
from sigma.io.corpora.arrow_batches import BatchInfo, iter_batches, read_schema
from sigma.io.corpora.base import MAX_PAGE_CELLS, Corpus, Shard, SourceItem, held_bytes_allowed, safe_name
from sigma.io.corpora.presets import resolve_columns
from sigma.io.corpora.tabular import check_schema, id_columns, needed_columns, oversized_cells, row_to_item
from sigma.regular import open_regular
from sigma.text import loads as load_json

CONVERT_ROWS = 64          # rows copied out to Python at once


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


MAX_INDEX_BYTES = 16 * 1024 * 1024     # state.json / dataset_dict.json: a few hundred bytes per data file


def _index_json(path: Path):
    """A save_to_disk index file, read no further than MAX_INDEX_BYTES (they are read whole: a 5 GB one was)."""
    with open_regular(path, "rb") as handle:     # a FIFO: NotRegularFile (an OSError, bad_dataset), no hang
        data = handle.read(MAX_INDEX_BYTES + 1)
    if len(data) > MAX_INDEX_BYTES:
        raise ValueError(f"more than {MAX_INDEX_BYTES} bytes: not a save_to_disk index")
    return load_json(data)


def _open_batches(file: Path):
    import pyarrow as pa

    source = pa.memory_map(str(file), "r")
    try:
        return pa.ipc.open_stream(source)
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)
        return _FileAsStream(reader)


class _FileAsStream:
    """Arrow IPC *file* format (random access) behind the stream reader's iteration."""

    def __init__(self, reader):
        self.reader = reader
        self.schema = reader.schema

    def __iter__(self):
        for i in range(self.reader.num_record_batches):
            yield self.reader.get_batch(i)


class SavedDatasetCorpus(Corpus):
    format = "hf"

    def __init__(self, path, columns, shard_size, preset=None):
        super().__init__(path, columns, shard_size, preset)
        self.mapping, self.required = resolve_columns(preset, columns)

    def splits(self) -> list[tuple[str | None, Path]]:
        if (self.path / "dataset_dict.json").is_file():
            try:
                names = _index_json(self.path / "dataset_dict.json")["splits"]
            except (ValueError, KeyError, TypeError, OSError) as exc:
                raise InputError(f"{self.path}/dataset_dict.json: unreadable ({exc})", code="bad_dataset") from exc
            return [(str(name), self.confine(self.path / str(name), "dataset_dict.json")) for name in names]
        return [(None, self.path)]

    def arrow_files(self, folder: Path) -> list[Path]:
        state = folder / "state.json"
        if not state.is_file():
            raise InputError(f"{folder}: no state.json (not a save_to_disk folder)", code="bad_dataset")
        try:
            files = [folder / f["filename"] for f in _index_json(state)["_data_files"]]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise InputError(f"{state}: unreadable ({exc})", code="bad_dataset") from exc
        for file in files:
            self.confine(file, state.name)              # before is_file: not even its existence leaks
            if not file.is_file():
                raise InputError(f"{file}: listed in state.json but missing", code="file_not_found")
        return files

    def plan(self) -> list[Shard]:
        shards: list[Shard] = []
        for split, folder in self.splits():
            for file in self.arrow_files(folder):
                try:
                    schema = read_schema(file)
                    check_schema(str(file), schema.names, self.mapping, self.required, self.preset)
                    sizes = [info.rows for info, _ in iter_batches(file)]
                except InputError:
                    raise
                except Exception as exc:
                    raise InputError(f"{file}: not an Arrow IPC file ({exc})", code="bad_dataset") from exc
                start, rows = 0, 0
                for i, n in enumerate(sizes):
                    rows += n
                    if rows >= self.shard_size or i == len(sizes) - 1:
                        key = safe_name(f"{split + '__' if split else ''}{file.stem}.b{start:05d}-{i:05d}")
                        ref = {"file": str(file), "split": split, "batches": [start, i + 1],
                               "first_row": sum(sizes[:start])}
                        shards.append(Shard(len(shards), key, ref, rows))
                        start, rows = i + 1, 0
        return shards

    def read(self, shard: Shard) -> Iterator[SourceItem]:
        import pyarrow as pa

        file = self.confine(Path(shard.ref["file"]))
        split = shard.ref.get("split")
        schema = read_schema(file)
        present = check_schema(str(file), schema.names, self.mapping, self.required, self.preset)
        cols = needed_columns(present)
        max_bytes = self.max_bytes if self.max_bytes is not None else LimitsConfig().max_bytes
        label = f"{split}/{file.name}" if split else file.name
        a, b = shard.ref["batches"]
        row_no = int(shard.ref["first_row"])
        index = 0
        batches = iter_batches(file) if not _has_dictionaries(schema) else _decoded_batches(file)
        for i, (info, message) in enumerate(batches):
            if i < a:
                continue
            if i >= b:
                break
            too_big = _refused(info, max_bytes)
            if too_big is None:
                batch = message if isinstance(message, pa.RecordBatch) else pa.ipc.read_record_batch(message, schema)
                batch = batch.select(cols)
                cells = oversized_cells(batch, cols, max_bytes)
            else:
                cells = [None] * info.rows
            for start in range(0, info.rows, CONVERT_ROWS):
                part = range(start, min(start + CONVERT_ROWS, info.rows))
                rows = iter(()) if too_big else iter(_copy_out(batch, part, cells))
                for n in part:
                    if too_big is None and cells[n] is None:
                        yield row_to_item(next(rows), present, index, row_no, label, file.parent, subset=split)
                    else:
                        why = too_big or (f"column {cells[n][0]} holds {cells[n][1]} bytes, above "
                                          f"io.limits.max_bytes={max_bytes}")
                        pair_id = None if too_big else _pair_id(batch, present, n, cells[n][0])
                        item = SourceItem(index=index, pair_id=pair_id or f"{label}:{row_no}",
                                          source=f"{label}:row={row_no}", subset=split)
                        item.error = ("file_too_large", f"{item.source}: not read: {why}")
                        yield item
                    index += 1
                    row_no += 1


def _refused(info: BatchInfo, max_bytes: int) -> str | None:
    """Why a compressed batch is not decompressed (a buffer above what its rows may need), else None."""
    if info.compressed and info.largest_buffer > held_bytes_allowed(info.rows, max_bytes):
        return (f"record batch of {info.rows} row(s) decompresses a buffer of {info.largest_buffer} bytes, more than "
                f"io.limits.max_bytes={max_bytes} per row (at most {MAX_PAGE_CELLS} rows' worth): an image cell above "
                "the limit, or a decompression bomb")
    return None


def _pair_id(batch, present: dict[str, str], n: int, oversized: str) -> str | None:
    """Row `n`'s id from its id columns, unless one of them is the oversized cell (then the caller's default)."""
    ids = id_columns(present) if "id" in present else []
    if not ids or oversized.split(".")[0] in ids:
        return None
    return "-".join(str(batch.column(c)[n].as_py()) for c in ids)


def _copy_out(batch, part: range, cells: list) -> list[dict]:
    """The rows of `part` without an oversized cell, as Python values (the others are never copied)."""
    import pyarrow as pa

    keep = [cells[n] is None for n in part]
    window = batch.slice(part.start, len(part))
    return (window if all(keep) else window.filter(pa.array(keep))).to_pylist()


def _has_dictionaries(schema) -> bool:
    import pyarrow as pa

    return any(pa.types.is_dictionary(f.type) for f in schema)


def _decoded_batches(file: Path):
    """Dictionary-encoded columns (not written by `datasets`) need pyarrow's own reader, batch by batch."""
    for batch in _open_batches(file):
        yield BatchInfo(batch.num_rows, False, 0), batch

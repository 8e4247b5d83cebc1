"""Parquet files in the Hugging Face datasets layout, read one row-group range at a time.

Each file is opened once by `open_parquet` (`open_regular`: a FIFO or a device is refused, never waited on) and
pyarrow reads that handle: pyarrow opening the path itself blocked for ever on a FIFO put there after the check.

No cell is decoded whose page is larger than its values may be (`oversized_page`): a parquet file is compressed,
so a 12 KB file can hold a 300 MB cell of zeros, and the reader must hold a whole page before it can look at
one value of it. Such a row group's pairs are each reported `file_too_large` and the run goes on.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sigma.config.schema import LimitsConfig
from sigma.errors import InputError
from sigma.io.corpora.base import MAX_PAGE_CELLS, Corpus, Shard, SourceItem, held_bytes_allowed, rel_key
from sigma.io.corpora.parquet_pages import PageHeaderError, column_pages
from sigma.io.corpora.presets import resolve_columns
from sigma.io.corpora.tabular import check_schema, id_columns, needed_columns, row_to_item
from sigma.regular import NotRegularFile, open_regular

READ_BATCH_ROWS = 64
READ_BUFFER_BYTES = 1 << 20     # stream each column chunk through a buffer instead of reading it whole


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the batch extra
        raise InputError("reading parquet needs pyarrow: pip install 'sigma-masks[batch]'",
                         code="missing_dependency") from exc
    return pq


def handle_reader(handle: BinaryIO, **options: Any) -> Any:
    """pyarrow's `ParquetFile` over a Python file handle that starts no pyarrow thread, for every parquet SIGMA reads
    (a corpus, a run's shards); each of its reads passes `use_threads=False`. pyarrow's pools (the IO pool that
    pre-buffering reads the handle on, the CPU pool that decodes columns) finish their work after the call returned:
    releasing a buffer of the handle's bytes needs the GIL, and one that came during the interpreter's exit ended
    the process in `terminate called without an active exception`, status -6, now and then after its last line
    (`pq.read_table`: about 1 `sigma export` in 100). With neither, pyarrow reads on the caller's thread alone."""
    return _pq().ParquetFile(handle, pre_buffer=False, **options)


def open_parquet(file: Path) -> BinaryIO:
    """`file` opened for reading if it is a regular file; else bad_parquet saying what it is, without blocking."""
    try:
        return open_regular(file, "rb")
    except NotRegularFile:
        raise InputError(f"{file}: not a regular file (a FIFO, a device or a folder); a parquet file must be a file",
                         code="bad_parquet") from None


class ParquetCorpus(Corpus):
    format = "parquet"

    def __init__(self, path, columns, shard_size, preset=None):
        super().__init__(path, columns, shard_size, preset)
        self.mapping, self.required = resolve_columns(preset, columns)

    def files(self) -> list[Path]:
        if self.path.exists() and not self.path.is_dir():
            return [self.path]              # a FIFO or a device too: refused by open_parquet, saying what it is
        # regular files only: a FIFO named x.parquet hung the plan for ever, a folder of that name failed it
        files = sorted(p for p in self.path.rglob("*.parquet") if p.is_file())
        if not files:
            raise InputError(f"{self.path}: no *.parquet files", code="no_pairs")
        return files

    def _root(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def plan(self) -> list[Shard]:
        shards: list[Shard] = []
        for file in self.files():
            self.confine(file)
            with open_parquet(file) as handle:
                try:
                    meta = handle_reader(handle)
                except Exception as exc:
                    raise InputError(f"{file}: not a readable parquet file ({exc})", code="bad_parquet") from exc
            check_schema(str(file), meta.schema_arrow.names, self.mapping, self.required, self.preset)
            groups = [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)]
            start, rows = 0, 0
            for i, n in enumerate(groups):
                rows += n
                if rows >= self.shard_size or i == len(groups) - 1:
                    key = f"{rel_key(file, self._root())}.rg{start:05d}-{i:05d}"
                    ref = {"file": str(file), "row_groups": [start, i + 1],
                           "first_row": sum(groups[:start])}
                    shards.append(Shard(len(shards), key, ref, rows))
                    start, rows = i + 1, 0
        return shards

    def read(self, shard: Shard) -> Iterator[SourceItem]:
        file = self.confine(Path(shard.ref["file"]))
        with open_parquet(file) as handle:   # pyarrow and the page-header walk share it: each seeks before it reads
            yield from self._read(handle_reader(handle, buffer_size=READ_BUFFER_BYTES), handle, file, shard)

    def _read(self, pf, handle: BinaryIO, file: Path, shard: Shard) -> Iterator[SourceItem]:
        """`shard`'s items from `pf`, the ParquetFile over `handle` (`file` names them)."""
        present = check_schema(str(file), pf.schema_arrow.names, self.mapping, self.required, self.preset)
        label = file.name
        row_no = int(shard.ref["first_row"])
        index = 0
        columns = needed_columns(present)
        max_bytes = self.max_bytes if self.max_bytes is not None else LimitsConfig().max_bytes
        a, b = shard.ref["row_groups"]
        for group in range(a, b):
            refused = oversized_page(handle, pf.metadata.row_group(group), columns, max_bytes)
            if refused is None:
                rows = (row for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[group],
                                                         columns=columns, use_threads=False)
                        for row in batch.to_pylist())
                for row in rows:
                    yield row_to_item(row, present, index, row_no, label, file.parent)
                    index += 1
                    row_no += 1
                continue
            bad_column, why = refused
            ids = self._ids(pf, group, present, handle, max_bytes)
            for n in range(pf.metadata.row_group(group).num_rows):
                pair_id = ids[n] if ids else f"{label}:{row_no}"
                item = SourceItem(index=index, pair_id=pair_id, source=f"{label}:row={row_no}")
                item.error = ("file_too_large", f"{item.source}: row group {group} of {label} was not read: "
                              f"column {bad_column} {why}")
                yield item
                index += 1
                row_no += 1

    def _ids(self, pf, group: int, present: dict[str, str], handle, max_bytes: int) -> list[str] | None:
        """The pair ids of a row group not otherwise read, when its id columns are themselves safe to read."""
        ids = id_columns(present) if "id" in present else []
        if not ids or oversized_page(handle, pf.metadata.row_group(group), ids, max_bytes) is not None:
            return None
        table = pf.read_row_group(group, columns=ids, use_threads=False).to_pydict()
        return ["-".join(str(v) for v in values) for values in zip(*(table[c] for c in ids), strict=True)]


def oversized_page(handle, row_group, columns: list[str], max_bytes: int) -> tuple[str, str] | None:
    """(column, why) for the first page of `columns` in `row_group` that holds more than its values may
    (io.limits.max_bytes each, at most MAX_PAGE_CELLS of them), or whose headers cannot be walked; else None.
    Only page headers are read."""
    for j in range(row_group.num_columns):
        chunk = row_group.column(j)
        path = chunk.path_in_schema
        if not any(path == c or path.startswith(c + ".") for c in columns):
            continue
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        try:
            pages = column_pages(handle, int(start), int(chunk.total_compressed_size))
        except (PageHeaderError, OSError, IndexError) as exc:
            return path, f"has page headers that cannot be read ({exc})"
        for page in pages:
            if page.uncompressed > held_bytes_allowed(page.values or 1, max_bytes):
                held = f"{page.values} value(s)" if page.values is not None else "its values"
                return path, (f"holds a page of {page.uncompressed} bytes for {held}, more than "
                              f"io.limits.max_bytes={max_bytes} per cell (at most {MAX_PAGE_CELLS} cells' worth "
                              "per page): an image cell above the limit, or a decompression bomb")
    return None

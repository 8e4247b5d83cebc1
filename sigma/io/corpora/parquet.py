"""Parquet files in the Hugging Face datasets layout, read one row-group range at a time."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sigma.errors import InputError
from sigma.io.corpora.base import Corpus, Shard, SourceItem, rel_key
from sigma.io.corpora.presets import resolve_columns
from sigma.io.corpora.tabular import check_schema, needed_columns, row_to_item

READ_BATCH_ROWS = 64


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the batch extra
        raise InputError("reading parquet needs pyarrow: pip install 'sigma-masks[batch]'",
                         code="missing_dependency") from exc
    return pq


class ParquetCorpus(Corpus):
    format = "parquet"

    def __init__(self, path, columns, shard_size, preset=None):
        super().__init__(path, columns, shard_size, preset)
        self.mapping, self.required = resolve_columns(preset, columns)

    def files(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        files = sorted(self.path.rglob("*.parquet"))
        if not files:
            raise InputError(f"{self.path}: no *.parquet files", code="no_pairs")
        return files

    def _root(self) -> Path:
        return self.path.parent if self.path.is_file() else self.path

    def plan(self) -> list[Shard]:
        pq = _pq()
        shards: list[Shard] = []
        for file in self.files():
            self.confine(file)
            try:
                meta = pq.ParquetFile(file)
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
        pq = _pq()
        file = self.confine(Path(shard.ref["file"]))
        pf = pq.ParquetFile(file)
        present = check_schema(str(file), pf.schema_arrow.names, self.mapping, self.required, self.preset)
        label = file.name
        row_no = int(shard.ref["first_row"])
        index = 0
        a, b = shard.ref["row_groups"]
        for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=list(range(a, b)),
                                     columns=needed_columns(present), use_threads=False):
            for row in batch.to_pylist():
                yield row_to_item(row, present, index, row_no, label, file.parent)
                index += 1
                row_no += 1

"""A folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict), read offline with pyarrow alone.

The layout is `state.json` (which `.arrow` files, in order), `dataset_info.json` (features) and the
Arrow IPC *stream* files themselves; a DatasetDict adds `dataset_dict.json` listing split folders.
Files are memory-mapped and read record batch by record batch, so nothing is loaded whole.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sigma.errors import InputError
from sigma.io.corpora.base import Corpus, Shard, SourceItem, safe_name
from sigma.io.corpora.presets import resolve_columns
from sigma.io.corpora.tabular import check_schema, needed_columns, row_to_item
from sigma.text import loads as load_json


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


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
                names = load_json((self.path / "dataset_dict.json").read_bytes())["splits"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{self.path}/dataset_dict.json: unreadable ({exc})", code="bad_dataset") from exc
            return [(str(name), self.confine(self.path / str(name), "dataset_dict.json")) for name in names]
        return [(None, self.path)]

    def arrow_files(self, folder: Path) -> list[Path]:
        state = folder / "state.json"
        if not state.is_file():
            raise InputError(f"{folder}: no state.json (not a save_to_disk folder)", code="bad_dataset")
        try:
            files = [folder / f["filename"] for f in load_json(state.read_bytes())["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
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
                    reader = _open_batches(file)
                except Exception as exc:
                    raise InputError(f"{file}: not an Arrow IPC file ({exc})", code="bad_dataset") from exc
                check_schema(str(file), reader.schema.names, self.mapping, self.required, self.preset)
                sizes = [batch.num_rows for batch in reader]
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
        file = self.confine(Path(shard.ref["file"]))
        split = shard.ref.get("split")
        reader = _open_batches(file)
        present = check_schema(str(file), reader.schema.names, self.mapping, self.required, self.preset)
        cols = needed_columns(present)
        label = f"{split}/{file.name}" if split else file.name
        a, b = shard.ref["batches"]
        row_no = int(shard.ref["first_row"])
        index = 0
        for i, batch in enumerate(reader):
            if i < a:
                continue
            if i >= b:
                break
            for row in batch.select(cols).to_pylist():
                yield row_to_item(row, present, index, row_no, label, file.parent, subset=split)
                index += 1
                row_no += 1

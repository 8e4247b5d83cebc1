"""JSONL / CSV manifests of paths, and the `pairs.jsonl` evaluation layout (a set or a folder of sets).

Planning streams the file once and remembers the byte offset where each shard starts, so reading a
shard seeks straight to it: no manifest is ever held in memory.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

from sigma.errors import InputError
from sigma.io.corpora.base import Corpus, Shard, SourceItem, image_value, safe_name, text_value
from sigma.io.corpora.presets import resolve_columns
from sigma.io.corpora.tabular import check_schema, id_columns


def iter_records(handle, csv_mode: bool) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw record) from a binary handle; a CSV record may span lines inside quotes."""
    pending, start = b"", handle.tell()
    while True:
        line = handle.readline()
        if not line:
            if pending.strip():
                yield start, pending
            return
        if not pending:
            start = handle.tell() - len(line)
        pending += line
        if csv_mode and pending.count(b'"') % 2 == 1:
            continue
        if pending.strip():
            yield start, pending
        pending = b""


def find_sets(path: Path) -> list[Path]:
    """The sets of a folder, as `sigma eval` finds them (none: an empty list, the caller says why)."""
    from sigma.io.pairs_jsonl import find_sets as find_eval_sets

    try:
        return find_eval_sets(path)
    except InputError:
        return []


class ManifestCorpus(Corpus):
    """`path` is a .jsonl/.csv file, or a folder holding pairs.jsonl (one set) or <set>/pairs.jsonl."""

    format = "jsonl"

    def __init__(self, path, columns, shard_size, preset=None):
        super().__init__(path, columns, shard_size, preset)
        self.mapping, self.required = resolve_columns(preset, columns)

    def files(self) -> list[tuple[Path, str | None]]:
        if self.path.is_file():
            return [(self.path, None)]
        sets = find_sets(self.path)
        if not sets:
            raise InputError(f"{self.path}: no pairs.jsonl here or in its sub-folders", code="no_pairs")
        return [(s / "pairs.jsonl", s.name) for s in sets]

    def _is_csv(self, file: Path) -> bool:
        return file.suffix.lower() in (".csv", ".tsv")

    def _header(self, handle, file: Path) -> list[str] | None:
        if not self._is_csv(file):
            return None
        first = handle.readline()
        delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
        header = next(csv.reader([first.decode("utf-8-sig")], delimiter=delimiter), [])
        return [h.strip() for h in header]

    def plan(self) -> list[Shard]:
        shards: list[Shard] = []
        for file, subset in self.files():
            with open(file, "rb") as handle:
                header = self._header(handle, file)
                if header is not None:
                    check_schema(str(file), header, self.mapping, self.required, self.preset)
                count, offset = 0, None
                for n, (pos, raw) in enumerate(iter_records(handle, header is not None)):
                    if n == 0 and header is None:
                        self._check_first_json(file, raw)
                    if count == 0:
                        offset = pos
                    count += 1
                    if count == self.shard_size:
                        shards.append(self._shard(len(shards), file, subset, offset, count, n + 1 - count))
                        count = 0
                if count:
                    shards.append(self._shard(len(shards), file, subset, offset, count, n + 1 - count))
        return shards

    def _check_first_json(self, file: Path, raw: bytes) -> None:
        try:
            first = json.loads(raw)
        except json.JSONDecodeError:
            return   # a bad line is that pair's error, found again when the shard is read
        if isinstance(first, dict):
            check_schema(f"{file} (first record)", list(first), self.mapping, self.required, self.preset)

    def _shard(self, index: int, file: Path, subset: str | None, offset: int, count: int, first: int) -> Shard:
        stem = f"{subset}__{file.stem}" if subset else file.stem
        key = safe_name(f"{stem}.r{first:07d}-{first + count - 1:07d}")
        return Shard(index, key, {"file": str(file), "subset": subset, "offset": offset, "count": count,
                                  "first_record": first}, count)

    def read(self, shard: Shard) -> Iterator[SourceItem]:
        file = Path(shard.ref["file"])
        subset = shard.ref.get("subset")
        with open(file, "rb") as handle:
            header = self._header(handle, file)
            handle.seek(int(shard.ref["offset"]))
            records = iter_records(handle, header is not None)
            for index in range(int(shard.ref["count"])):
                try:
                    _, raw = next(records)
                except StopIteration:
                    raise InputError(f"{file}: changed since the run was planned (shard {shard.key} ends early)",
                                     code="corpus_changed") from None
                record_no = int(shard.ref["first_record"]) + index
                yield self._item(raw, header, file, subset, index, record_no)

    def _item(self, raw: bytes, header: list[str] | None, file: Path, subset: str | None, index: int,
              record_no: int) -> SourceItem:
        label = f"{subset}/{file.name}" if subset else file.name
        fallback_id = f"{label}:{record_no}"
        item = SourceItem(index=index, pair_id=fallback_id, source=f"{label}:line={record_no + 1}", subset=subset)
        try:
            if header is not None:
                delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
                values = next(csv.reader(io.StringIO(raw.decode("utf-8")), delimiter=delimiter), [])
                # CSV cannot say null: an empty cell means "no value"
                record = {h: (v if v != "" else None) for h, v in zip(header, values)}
            else:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            item.error = ("bad_record", f"{item.source}: unreadable record ({exc})")
            return item
        m = self.mapping
        ids = id_columns(m)
        if ids and all(record.get(c) is not None for c in ids):
            item.pair_id = "-".join(str(record[c]) for c in ids)
            if subset:
                item.pair_id = f"{subset}/{item.pair_id}"
        base = file.parent
        try:
            item.original, item.original_path = image_value(record.get(m["original"]), base,
                                                            f"{item.pair_id} original")
            item.edited, item.edited_path = image_value(record.get(m["edited"]), base, f"{item.pair_id} edited")
        except InputError as exc:
            item.error = (exc.code, exc.message)
        if "instruction" in m:
            item.instruction = text_value(record.get(m["instruction"]))
        if "edit_type" in m:
            item.edit_type = text_value(record.get(m["edit_type"]))
        if "mask" in m and record.get(m["mask"]):
            try:
                item.mask, item.mask_path = image_value(record.get(m["mask"]), base, f"{item.pair_id} mask")
            except InputError:
                pass
        return item

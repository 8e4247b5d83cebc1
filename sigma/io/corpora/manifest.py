"""JSONL / CSV manifests of paths, and the `pairs.jsonl` evaluation layout (a set or a folder of sets).

Planning streams the file once and remembers the byte offset where each shard starts, so reading a
shard seeks straight to it: no manifest is ever held in memory.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from sigma.errors import InputError
from sigma.io.corpora.base import Corpus, Shard, SourceItem, image_value, safe_name, text_value
from sigma.io.corpora.presets import resolve_columns
from sigma.io.corpora.tabular import check_schema, id_columns
from sigma.io.lines import ends_line, read_line
from sigma.io.pairs_jsonl import MAX_RECORD_BYTES, open_manifest  # a record: a few hundred bytes
from sigma.io.unfinished import refuse_unfinished
from sigma.text import loads as load_json

_QUOTE, _CR, _LF = ord('"'), ord("\r"), ord("\n")


def quoted_at_end(line: bytes, delimiter: bytes, quoted: bool) -> bool:
    """Whether a quoted field is still open after `line`, read as the csv module reads it: a quote opens a
    quoted field only as a field's first character (`5" wide` unquoted is text), `""` inside one is a quote.
    Counting quotes instead took `make it 5" wider` for an open field and swallowed the records after it."""
    if not quoted and _QUOTE not in line:
        return False
    delim = delimiter[0]
    state = "quoted" if quoted else "start"      # start of a field, in a plain field, quoted, quote in quoted
    for c in line:
        if state == "quoted":
            if c == _QUOTE:
                state = "quote"
        elif state == "quote":
            state = "quoted" if c == _QUOTE else ("start" if c in (delim, _CR, _LF) else "plain")
        elif c == delim or c in (_CR, _LF):
            state = "start"
        elif state == "start" and c == _QUOTE:
            state = "quoted"
        else:
            state = "plain"
    return state == "quoted"


def _read_line(handle, csv_mode: bool, delimiter: bytes, quoted: bool, limit: int) -> tuple[bytes | None, bool]:
    """One physical line (b"" at the end of the file), or None when it is longer than `limit`: then it is read
    through in chunks and kept nowhere. Also whether a quoted CSV field is open after it."""
    line = read_line(handle, limit + 1)
    if csv_mode:
        quoted = quoted_at_end(line, delimiter, quoted)
    if len(line) <= limit or ends_line(line):
        return line, quoted
    while line and not ends_line(line):
        line = read_line(handle, 1 << 20)
        if csv_mode:
            quoted = quoted_at_end(line, delimiter, quoted)
    return None, quoted


class Unclosed:
    """A CSV record whose quoted field is still open at the end of the file."""


UNCLOSED = Unclosed()


def iter_records(handle, csv_mode: bool, first_line: int = 1, delimiter: bytes = b","
                 ) -> Iterator[tuple[int, bytes | Unclosed | None, int]]:
    """(byte offset, raw record, 1-based line the record starts on) from a binary handle positioned on line
    `first_line`; blank lines are skipped, a CSV record may span lines inside quotes. A record longer than
    MAX_RECORD_BYTES comes as None, never held: a 600 MB line took 7 GB of memory and became a 600 MB pair id.
    A quote opened and never closed comes as UNCLOSED: the csv module took the rest of the file as that one
    field, so the records after it vanished into one pair's instruction without a word."""
    pending, start, start_line, line_no = b"", handle.tell(), first_line, first_line - 1
    quoted = too_long = False
    while True:
        pos = handle.tell()
        line, quoted_after = _read_line(handle, csv_mode, delimiter, quoted, max(0, MAX_RECORD_BYTES - len(pending)))
        if line == b"":
            if csv_mode and quoted:
                yield start, UNCLOSED, start_line
            elif too_long or pending.strip():
                yield start, None if too_long else pending, start_line
            return
        line_no += 1
        if not pending and not too_long:
            start, start_line = pos, line_no
        if line is None:
            too_long, pending = True, b""
        elif not too_long:
            pending += line
        if csv_mode:
            quoted = quoted_after
            if quoted:
                continue
        if too_long:
            yield start, None, start_line
        elif pending.strip():
            yield start, pending, start_line
        pending, too_long = b"", False


def find_sets(path: Path) -> list[Path]:
    """The sets of a folder, as `sigma eval` finds them (none: an empty list, the caller says why)."""
    from sigma.io.pairs_jsonl import UnreadableManifest
    from sigma.io.pairs_jsonl import find_sets as find_eval_sets

    try:
        return find_eval_sets(path)
    except UnreadableManifest:      # a set's pairs.jsonl that is a FIFO, a link loop: said, not passed over
        raise
    except InputError as exc:
        if exc.code in ("unfinished_synth_set", "permission_denied"):  # said as such, not as a folder with no set
            raise
        return []


class ManifestCorpus(Corpus):
    """`path` is a .jsonl/.csv file, or a folder holding pairs.jsonl (one set) or <set>/pairs.jsonl."""

    format = "jsonl"

    def __init__(self, path, columns, shard_size, preset=None):
        super().__init__(path, columns, shard_size, preset)
        self.mapping, self.required = resolve_columns(preset, columns)

    def files(self) -> list[tuple[Path, str | None]]:
        if self.path.exists() and not self.path.is_dir():
            # a manifest named itself (`SET/pairs.jsonl`) is read from its folder as the folder's set is: one a
            # `sigma synth` is writing, or was killed writing, was annotated half-written (only the folder was
            # checked for the mark)
            refuse_unfinished(self.path.parent)
            return [(self.path, None)]      # a FIFO or a device too: refused by open_manifest, saying what it is
        sets = find_sets(self.path)
        if not sets:
            raise InputError(f"{self.path}: no pairs.jsonl here or in its sub-folders", code="no_pairs")
        return [(s / "pairs.jsonl", s.name) for s in sets]

    def _is_csv(self, file: Path) -> bool:
        # --format csv on a file not named .csv (manifest.txt) was read as JSONL: every record a bad_record
        return self.format == "csv" or file.suffix.lower() in (".csv", ".tsv")

    def _delimiter(self, file: Path) -> str:
        return "\t" if file.suffix.lower() == ".tsv" else ","

    def _header(self, handle, file: Path) -> list[str] | None:
        if not self._is_csv(file):
            return None
        first = read_line(handle, MAX_RECORD_BYTES + 1)
        if len(first) > MAX_RECORD_BYTES:
            raise InputError(f"{file}: a header line longer than {MAX_RECORD_BYTES} bytes", code="bad_manifest")
        delimiter = self._delimiter(file)
        try:
            header = next(csv.reader([first.decode("utf-8-sig")], delimiter=delimiter), [])
        except (UnicodeDecodeError, csv.Error) as exc:      # a traceback before
            raise InputError(f"{file}: unreadable header line ({exc})", code="bad_manifest") from exc
        return [h.strip() for h in header]

    def plan(self) -> list[Shard]:
        shards: list[Shard] = []
        for file, subset in self.files():
            with open_manifest(self.confine(file)) as handle:
                header = self._header(handle, file)
                if header is not None:
                    check_schema(str(file), header, self.mapping, self.required, self.preset)
                count, offset, line = 0, None, 1
                first_line = 2 if header is not None else 1
                for n, (pos, raw, line_no) in enumerate(iter_records(handle, header is not None, first_line,
                                                                          self._delimiter(file).encode())):
                    if n == 0 and header is None and raw is not None:
                        self._check_first_json(file, raw)
                    if count == 0:
                        offset, line = pos, line_no
                    count += 1
                    if count == self.shard_size:
                        shards.append(self._shard(len(shards), file, subset, offset, count, n + 1 - count, line))
                        count = 0
                if count:
                    shards.append(self._shard(len(shards), file, subset, offset, count, n + 1 - count, line))
        return shards

    def _check_first_json(self, file: Path, raw: bytes) -> None:
        try:
            first = load_json(raw)
        except ValueError:
            return   # a bad line is that pair's error, found again when the shard is read
        if isinstance(first, dict):
            check_schema(f"{file} (first record)", list(first), self.mapping, self.required, self.preset)

    def _shard(self, index: int, file: Path, subset: str | None, offset: int, count: int, first: int,
               first_line: int) -> Shard:
        stem = f"{subset}__{file.stem}" if subset else file.stem
        key = safe_name(f"{stem}.r{first:07d}-{first + count - 1:07d}")
        return Shard(index, key, {"file": str(file), "subset": subset, "offset": offset, "count": count,
                                  "first_record": first, "first_line": first_line}, count)

    def read(self, shard: Shard) -> Iterator[SourceItem]:
        file = self.confine(Path(shard.ref["file"]))
        refuse_unfinished(file.parent)      # a `--resume` (or a fleet worker) after a `sigma synth` began rewriting it
        subset = shard.ref.get("subset")
        with open_manifest(file) as handle:
            header = self._header(handle, file)
            handle.seek(int(shard.ref["offset"]))
            # plans made before line numbers were recorded number records instead (1-based, as before)
            first_line = shard.ref.get("first_line")
            records = iter_records(handle, header is not None, int(first_line or 1), self._delimiter(file).encode())
            for index in range(int(shard.ref["count"])):
                try:
                    _, raw, line_no = next(records)
                except StopIteration:
                    raise InputError(f"{file}: changed since the run was planned (shard {shard.key} ends early)",
                                     code="corpus_changed") from None
                if first_line is None:
                    line_no = int(shard.ref["first_record"]) + index + 1
                yield self._item(raw, header, file, subset, index, line_no)

    def _item(self, raw: bytes | Unclosed | None, header: list[str] | None, file: Path, subset: str | None, index: int,
              line_no: int) -> SourceItem:
        """`line_no`: the 1-based line the record starts on, in the id of an id-less record and in its source."""
        label = f"{subset}/{file.name}" if subset else file.name
        item = SourceItem(index=index, pair_id=f"{label}:{line_no}", source=f"{label}:line={line_no}", subset=subset)
        if raw is None:
            item.error = ("bad_record", f"{item.source}: a record longer than {MAX_RECORD_BYTES} bytes; not read")
            return item
        if isinstance(raw, Unclosed):
            item.error = ("bad_record", f"{item.source}: a quoted field opened in this record is never closed, so "
                          "every line after it would be part of it; close the quote (or double a quote inside one)")
            return item
        try:
            if header is not None:
                values = next(csv.reader(io.StringIO(raw.decode("utf-8")), delimiter=self._delimiter(file)), [])
                # CSV cannot say null: an empty cell means "no value"
                record = {h: (v if v != "" else None) for h, v in zip(header, values)}
            else:
                record = load_json(raw)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError, csv.Error) as exc:
            # csv.Error (a cell over the csv module's 128 KB field limit) is not a ValueError: it failed the
            # whole shard, at every --resume
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

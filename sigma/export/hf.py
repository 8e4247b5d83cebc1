"""A batch run as a Hugging Face dataset: parquet shards with `datasets`' image structs and a dataset card.

    OUT/README.md                               the card: YAML (configs, features) + how the masks were made
    OUT/data/train-00000-of-00003.parquet       original, edited, mask (struct{bytes, path}) + annotation columns

The `huggingface` schema metadata of every file carries the features, so
`datasets.load_dataset("parquet", data_dir=OUT)` gives `Image()` columns, and the card's YAML does the
same for `load_dataset(OUT)` and on the Hub (`huggingface-cli upload NAME OUT --repo-type dataset`).
Only pyarrow is needed to write it. The images are the corpus's own bytes, unchanged (their sha256 is
the manifest's); the mask is a PNG (0/255) at the original's size, the same mask as `mask_rle`.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sigma.batch.decode import source_bytes
from sigma.batch.layout import refuse_inside_run
from sigma.digest import sha256_file
from sigma.errors import ConfigError, InputError, SigmaError
from sigma.export.select import (
    CheckedRun,
    RowFilter,
    Skipped,
    checked_before_writing,
    checked_run,
    iter_items,
    nothing_to_export,
    row_mask_counts,
)
from sigma.folderlock import hold_folder, refuse_non_folder
from sigma.regular import NotRegularFile
from sigma.rle import decode_rle, mask_bbox
from sigma.tempfiles import (
    finish_replacements,
    make_folders_durably,
    no_room_said_of,
    replace_together,
    sync_folder,
    temp_name,
)
from sigma.text import escape_name, printable

SPLIT = "train"

# (column, parquet type, datasets feature): one table so the schema, the metadata and the card agree
_IMAGE = {"_type": "Image"}
_RLE = {"size": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "Sequence"},
        "counts": {"dtype": "string", "_type": "Value"}}


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


COLUMNS: list[tuple[str, str, dict[str, Any], str]] = [
    ("pair_id", "string", _value("string"), "the pair's id in the corpus"),
    ("source", "string", _value("string"), "where the pair came from (file:row, tar#key, path)"),
    ("subset", "string", _value("string"), "eval set or split of the corpus, when it has one"),
    ("instruction", "string", _value("string"), "the editing instruction"),
    ("edit_type", "string", _value("string"), "the corpus's edit type, else the parser's"),
    ("original", "image", _IMAGE, "the original image: the corpus's bytes, unchanged"),
    ("edited", "image", _IMAGE, "the edited image: the corpus's bytes, unchanged (size: edited_height/width)"),
    ("mask", "image", _IMAGE, "the manipulation mask, PNG, 255 = edited, at the original's size"),
    ("mask_rle", "rle", _RLE, "the same mask as COCO RLE ({size: [h, w], counts})"),
    ("mask_source", "string", _value("string"), "which of the two masks `mask` is: semantic or footprint"),
    ("semantic_rle", "rle", _RLE, "the semantic mask (what changed in meaning), RLE"),
    ("footprint_rle", "rle", _RLE, "the synthesised footprint (every pixel the editor re-made), RLE; null "
     "when the pair is not a composite"),
    ("is_composite", "bool", _value("bool"), "most pixels untouched (pasted back, maybe JPEG re-saved)"),
    ("composite", "string", _value("string"), "the composite test's evidence (JSON)"),
    ("bbox", "list<int32>", {"feature": _value("int32"), "_type": "Sequence"}, "[x, y, w, h] of the mask"),
    ("area", "int64", _value("int64"), "mask pixels"),
    ("area_fraction", "float64", _value("float64"), "mask pixels / image pixels"),
    ("confidence", "float64", _value("float64"), "the annotator's confidence (null when it gives none)"),
    ("threshold", "float64", _value("float64"), "mask = probability > threshold"),
    ("parse", "string", _value("string"), "the parsed instruction (JSON: edit type, source, target)"),
    ("components", "string", _value("string"), "connected components and their intended / side-effect split (JSON)"),
    ("intended_rle", "rle", _RLE, "the part of the mask the instruction asked for (RLE), when split"),
    ("side_effect_rle", "rle", _RLE, "the rest: side effects of the editor (RLE), when split"),
    ("height", "int32", _value("int32"), "original height"),
    ("width", "int32", _value("int32"), "original width"),
    ("edited_height", "int32", _value("int32"), "edited height as stored"),
    ("edited_width", "int32", _value("int32"), "edited width as stored"),
    ("original_sha256", "string", _value("string"), "sha256 of the original's bytes"),
    ("edited_sha256", "string", _value("string"), "sha256 of the edited image's bytes"),
    ("gt_f1", "float64", _value("float64"), "F1 against the corpus's own mask, when it has one"),
    ("gt_iou", "float64", _value("float64"), "IoU against the corpus's own mask, when it has one"),
    ("annotator", "string", _value("string"), "the model that made the mask"),
    ("config_hash", "string", _value("string"), "hash of the annotator's resolved config"),
    ("weights_sha256", "string", _value("string"), "sha256 of the model's weights file (null: no weights)"),
    ("run_hash", "string", _value("string"), "the batch run's hash (input + every option that changes output)"),
]


def arrow_schema():
    import pyarrow as pa

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rle = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
    types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(),
             "bool": pa.bool_(), "list<int32>": pa.list_(pa.int32()), "image": image, "rle": rle}
    features = {name: feature for name, _, feature, _ in COLUMNS}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.schema([(name, types[t]) for name, t, _, _ in COLUMNS], metadata=meta)


# --- provenance -----------------------------------------------------------------------------------
def _find(data: Any, key: str) -> Any:
    if isinstance(data, dict):
        if data.get(key):
            return data[key]
        for value in data.values():
            found = _find(value, key)
            if found:
                return found
    return None


def _sha256_path(path: Path) -> str | None:
    """The weights' digest (a folder: of its .safetensors files' digests), read in blocks; None when there is none to
    take, or one of the files is no regular file: a FIFO named x.safetensors there held the export for ever."""
    try:
        if path.is_file():
            return sha256_file(path)
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
            if files:
                digest = hashlib.sha256()
                for f in files:
                    digest.update(bytes.fromhex(sha256_file(f)))
                return digest.hexdigest()
    except NotRegularFile:
        return None
    return None


def weights_digest(record: dict[str, Any]) -> tuple[str | None, str]:
    """(sha256, where it came from): the digest the run recorded, else the weights file the run's config names
    (runs older than the model record: options.weights, or the weights embedded in this install), hashed now."""
    model = record.get("model")
    if isinstance(model, dict) and "weights_sha256" in model:      # runs record the model they ran
        digest = model["weights_sha256"]
        return digest, ("recorded by the run" if digest else "no weights (a training-free annotator)")
    recorded = _find(record, "weights_sha256")
    if recorded:
        return str(recorded), "recorded by the run"
    cfg = record.get("config") or {}
    options = cfg.get("options") or {}
    if options.get("weights"):
        digest = _sha256_path(Path(options["weights"]))
        return digest, f"options.weights {options['weights']}, hashed at export"
    name = options.get("model") or cfg.get("annotator")
    if name:   # the package's embedded weights: sigma/weights/<preset>.safetensors (+ .json)
        from importlib.resources import files

        embedded = Path(str(files("sigma") / "weights" / f"{name}.safetensors"))
        digest = _sha256_path(embedded)
        if digest:
            return digest, f"embedded {embedded.name}, hashed at export"
    return None, "no weights (a training-free annotator)"


# --- rows -----------------------------------------------------------------------------------------
def _png_mask(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _file_name(path: str | None) -> str | None:
    """A file name, never the machine's full path (the dataset may be published); a name that is not UTF-8
    keeps its bytes escaped as the run's pair ids do (`escape_name`; parquet holds UTF-8 only): `escape_surrogates`
    alone gave the file `a\xff.png` and one named in plain text `a\udcff.png` one name."""
    return escape_name(Path(path).name) if path else None


def _rle(size: list[int], counts: str | None) -> dict[str, Any] | None:
    return {"size": size, "counts": counts} if counts else None


def _record(row: dict[str, Any], item, weights: str | None, which: str, max_bytes: int, root: str | None
            ) -> tuple[dict[str, Any] | None, str | None]:
    counts = row_mask_counts(row, which)
    if counts is None:
        return None, f"no {which} mask (not a composite)"
    try:    # as the run read them: under its batch root, within its size limit
        original = source_bytes(item.original, item.original_path, max_bytes, root)
        edited = source_bytes(item.edited, item.edited_path, max_bytes, root)
    except SigmaError as exc:
        return None, f"cannot re-read the images: {exc.message}"
    except OSError as exc:
        return None, f"cannot re-read the images: {exc}"
    if row["original_sha256"] and hashlib.sha256(original).hexdigest() != row["original_sha256"]:
        return None, "the corpus changed since the run (original's sha256 differs)"
    if row["edited_sha256"] and hashlib.sha256(edited).hexdigest() != row["edited_sha256"]:
        return None, "the corpus changed since the run (edited's sha256 differs)"
    size = [int(row["height"]), int(row["width"])]
    mask = decode_rle({"size": size, "counts": counts})
    out = {name_: row.get(name_) for name_, _, _, _ in COLUMNS}
    if which != "chosen":     # bbox and area of the mask asked for
        out.update(bbox=[int(v) for v in mask_bbox(mask)], area=int(mask.sum()),
                   area_fraction=float(mask.mean()) if mask.size else 0.0, mask_source=which)
    out.update(
        original={"bytes": original, "path": _file_name(item.original_path)},
        edited={"bytes": edited, "path": _file_name(item.edited_path)},
        mask={"bytes": _png_mask(mask), "path": None},
        mask_rle={"size": size, "counts": counts},
        semantic_rle=_rle(size, row_mask_counts(row, "semantic")),
        footprint_rle=_rle(size, row_mask_counts(row, "footprint")),
        parse=row.get("parser"), intended_rle=_rle(size, row.get("intended_rle")),
        side_effect_rle=_rle(size, row.get("side_effect_rle")), weights_sha256=weights)
    return out, None


def iter_records(run: str | Path | CheckedRun, row_filter: RowFilter | None, weights: str | None,
                 skipped: Skipped, which: str = "chosen") -> Iterator[dict[str, Any]]:
    """Kept rows with their images, shard by shard (one shard's images in memory at most); the rows kept but not
    exported counted in `skipped` (a list of one dict each grew with the run, as COCO's and IMDL-BenCo's did)."""
    run = checked_run(run)
    cfg = run.cfg
    for row, item, error in iter_items(run, row_filter):
        record = None
        if item is not None:
            record, error = _record(row, item, weights, which, cfg.io.limits.max_bytes, cfg.input.root)
        if record is None:
            skipped.add(row["pair_id"], error or "unreadable")
        else:
            yield record


# --- writing --------------------------------------------------------------------------------------
class _ShardedWriter:
    """Parquet files of at most ~max_bytes each (the Hub's default is 500 MB), row groups of <= 100 rows."""

    ROW_GROUP = 100

    def __init__(self, data_dir: Path, max_bytes: int, skipped: Skipped | None = None,
                 row_filter: RowFilter | None = None):
        self.dir, self.max_bytes, self.row_filter = data_dir, max_bytes, row_filter
        self.skipped = Skipped() if skipped is None else skipped   # the rows kept but not exported (why, when none is)
        self.schema = arrow_schema()
        self.files: list[Path] = []
        self.writer = None
        self.file_bytes = 0
        self.buffer: list[dict[str, Any]] = []
        self.buffer_bytes = 0
        self.rows = 0

    @staticmethod
    def _size(record: dict[str, Any]) -> int:
        return sum(len(record[k]["bytes"]) for k in ("original", "edited", "mask")) + 1024

    def add(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        self.buffer_bytes += self._size(record)
        self.rows += 1
        if len(self.buffer) >= self.ROW_GROUP or self.buffer_bytes >= min(self.max_bytes, 64 << 20):
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.buffer:
            return
        if self.writer is None:
            # this writer's own temporary name (`temp_name`), one the sweeps know, never a half file under a final name
            path = temp_name(self.dir / f"{SPLIT}-{len(self.files):05d}.parquet")
            self.files.append(path)
            self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            self.file_bytes = 0
        self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
        self.file_bytes += self.buffer_bytes
        self.buffer, self.buffer_bytes = [], 0
        if self.file_bytes >= self.max_bytes:
            self.writer.close()
            self.writer = None

    def abort(self) -> None:
        """An export that failed (a full disk, Ctrl-C): its temporary shards go, the previous export stays."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - closing a file on a full disk may fail too; it is removed anyway
                pass
            self.writer = None
        for tmp in self.files:
            tmp.unlink(missing_ok=True)

    def close(self) -> list[tuple[Path, Any]]:
        """Finish the files: (final name, how to stage it) for each shard, for `replace_together` — the set the
        caller commits with the card that describes it (`_commit`). Nothing kept: an error, and the previous export
        is left as it was."""
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if not self.rows:
            for tmp in self.files:
                tmp.unlink(missing_ok=True)
            raise nothing_to_export(self.skipped, self.row_filter)
        final = [self.dir / f"{SPLIT}-{i:05d}-of-{len(self.files):05d}.parquet" for i in range(len(self.files))]
        # each shard staged by a rename of its finished temporary file (no copy), fsynced by replace_together
        return [(target, lambda path, tmp=tmp: os.replace(tmp, path)) for tmp, target in zip(self.files, final)]


def _commit(out: Path, shards: list[tuple[Path, Any]], card: bytes, replaces: list[Path]) -> list[Path]:
    """The shards and the card `OUT/README.md` put in place of `replaces` (a previous export) as one set
    (`replace_together`, the card last, its folder OUT the set's): each shard and the card fsynced, `data/` fsynced,
    then a journal `OUT/.README.md.PID.RANDOM.pending` naming them all (the commit point), then the moves (the old
    card first, `data/` fsynced before the new card's rename), then OUT fsynced. Before, the shards were committed
    as a set of their own and the card renamed after it: a kill between (SIGKILL, the OOM killer) left the new
    shards beside the earlier export's card, which stated the earlier export's row count, name and filters — and
    the next export found a complete-looking dataset. Now a kill before the journal leaves the earlier export byte
    for byte; after it, the next export of OUT (`hold_folder`'s sweep) or `finish_replacements(OUT)` puts the new
    shards and card in place together. OUT is held exclusively through its own flock (`held`)."""
    final = [target for target, _ in shards]
    replace_together([*shards, (out / "README.md", card)], remove=[old for old in replaces if old not in final],
                     held=True)
    sync_folder(out)        # the card's own name on disk before the export says done
    return final


def _yaml_feature(name: str, feature: dict[str, Any]) -> dict[str, Any]:
    kind = feature.get("_type")
    if kind == "Image":
        return {"name": name, "dtype": "image"}
    if kind == "Value":
        return {"name": name, "dtype": feature["dtype"]}
    if kind == "Sequence":
        return {"name": name, "sequence": feature["feature"]["dtype"]}
    return {"name": name, "struct": [_yaml_feature(k, v) for k, v in feature.items()]}


# the characters CommonMark (and the Hub's renderer) reads as markup inline: each is written after a backslash in the
# card's text, which every CommonMark reader shows as the character itself
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#!|~&])")


def markdown_text(text: Any) -> str:
    """`text` (a name: the dataset's, the corpus folder's, the annotator's) as Markdown that shows it and nothing
    else: controls, line breaks and bidi overrides made visible (`printable`), markup escaped. `--name '[x](javascript:
    alert(1))'` was a link on the Hub's page, `<script>` raw HTML in the card, and a newline in it began a heading
    or a table row of its own."""
    return _MARKDOWN.sub(r"\\\1", printable(text))


def check_card_name(name: str | None) -> None:
    """`--name` is one line of visible text: a control character, line break or invisible format character (a bidi
    override, which shows the name reversed) is refused before any work, `bad_arguments`, as a blank name is."""
    if name is None:
        return
    if not name.strip() or printable(name) != name:
        raise InputError(f"--name '{printable(name)}': the dataset's name is one line of visible text (no control "
                         "characters, line breaks or bidi overrides); give another", code="bad_arguments")


def dataset_card(info: dict[str, Any]) -> str:
    import yaml

    front = {
        "pretty_name": info["name"],
        "task_categories": ["image-segmentation"],
        "tags": ["image-forensics", "manipulation-localization", "image-editing", "sigma"],
        "configs": [{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"data/{SPLIT}-*"}]}],
        "dataset_info": {"features": [_yaml_feature(n, f) for n, _, f, _ in COLUMNS],
                         "splits": [{"name": SPLIT, "num_examples": info["rows"]}]},
    }
    filters = ", ".join(f"{k} = {v}" for k, v in info["filters"].items() if v is not None) or "none"
    # an export of a run not finished (still running, killed, shards failed) covers part of the corpus: said here,
    # where the dataset goes (the card counted the pairs annotated as if they were all)
    unfinished = (f"\n- **The run was not finished when this was exported**: {info['unfinished']} of its "
                  f"{info['shards']} shards"
                  + (f" (of {info['planned_pairs']} planned pairs in all)" if info.get("planned_pairs") else "")
                  + " are not in this dataset."
                  if info.get("unfinished") else "")
    table = "\n".join(f"| `{n}` | {d} |" for n, _, _, d in COLUMNS)
    return f"""---
{yaml.safe_dump(front, sort_keys=False).rstrip()}
---

# {markdown_text(info["name"])}

Pixel-level manipulation masks for the image-editing pairs of {markdown_text(info["corpus"])}
({markdown_text(info["format"])}), made by SIGMA (`sigma batch run`, package `sigma-masks`) and exported with
`sigma export hf`.

## How the masks were made

- Annotator: **{markdown_text(info["annotator"])}** (config hash `{info["config_hash"]}`), weights sha256
  `{info["weights_sha256"] or "none"}` ({info["weights_source"]}); threshold {info["threshold"]}.
- Batch run `{info["run_hash"]}`: {info["run_pairs"]} pairs annotated, {info["run_errors"]} bad pairs
  (unreadable images, mismatched sizes, ...) left out.{unfinished}
- Export filters: {filters}; {info["rows"]} pairs kept, {info["skipped"]} skipped
  (no such mask, or images that could not be re-read).
- The mask (255 = edited, at the original's size, also as COCO RLE in `mask_rle`) is {info["mask"]}. Both
  of SIGMA's masks are in `semantic_rle` (what changed in meaning) and `footprint_rle` (every pixel the
  editor re-made, when the pair is a composite: most pixels untouched; `is_composite`, `composite`).
  Where the annotator splits it, `intended_rle` is the part the instruction asked for and `side_effect_rle`
  the editor's side effects.
- `original` and `edited` are the corpus's bytes, unchanged (`original_sha256`, `edited_sha256`). The masks
  are machine-made: check `confidence`, and the review page of the run, before training on them.

## Use

```python
from datasets import load_dataset

ds = load_dataset("parquet", data_dir="path/to/this/folder")["train"]   # or load_dataset("user/name")
row = ds[0]
row["mask"]            # PIL image, mode L: 255 = edited
import numpy as np
from pycocotools import mask as mask_utils
m = mask_utils.decode({{"size": row["mask_rle"]["size"], "counts": row["mask_rle"]["counts"].encode()}})
assert (m.astype(bool) == (np.asarray(row["mask"]) > 127)).all()
```

Upload unchanged: `huggingface-cli upload USER/NAME path/to/this/folder --repo-type dataset`.

## Columns

| column | meaning |
|---|---|
{table}
"""


def export_hf(run_dir: str | Path, out: str | Path, row_filter: RowFilter | None = None, *,
              name: str | None = None, max_shard_mb: float = 500, overwrite: bool = False,
              mask: str = "chosen") -> dict[str, Any]:
    """`mask`: which of the two masks fills `mask` / `mask_rle` (chosen = the run's mask_mode; semantic;
    footprint, which keeps only composites); both are always in `semantic_rle` / `footprint_rle`. One export
    at a time per folder (`run_locked`): a second would delete the first's temporary shards as stale."""
    if not (isinstance(max_shard_mb, (int, float)) and math.isfinite(max_shard_mb) and max_shard_mb > 0):
        # NaN or inf was a ValueError / OverflowError traceback after the folder was made; 0 or less, one file a row
        raise ConfigError(f"--max-shard-mb is the largest parquet file in MB, a number > 0; got {max_shard_mb}")
    check_card_name(name)
    out = Path(out)
    # a device or a FIFO as OUT refused before the run is read (no work before a refusal), as imdl-benco does. The
    # exit abort this once also dodged ("terminate called without an active exception") is cured where parquet is
    # read: `sigma.io.corpora.parquet.handle_reader` starts no pyarrow thread
    refuse_non_folder(out, "; choose another OUT folder")
    # OUT in a run's own folders (`RUN/shards`, `RUN/status`, `RUN/masks/<shard>`) wrote the export among the run's
    # files, which --resume and the readers of those folders own, while `export coco --images` there was refused
    refuse_inside_run(out, "OUT folder")
    run = checked_before_writing(run_dir)          # before OUT is held or made
    with hold_folder(out, other="OUT folder", marker=False):    # refused before writing: no folder left behind
        return _export_hf(run, out, row_filter, name, max_shard_mb, overwrite, mask)


def _export_hf(run: CheckedRun, out: Path, row_filter: RowFilter | None, name: str | None,
               max_shard_mb: float, overwrite: bool, mask: str) -> dict[str, Any]:
    data_dir = out / "data"
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        # the shards and the card are committed as one set from OUT's journal, which never follows a link out of
        # OUT: a linked data/ was refused by that commit with a traceback after every shard had been written
        raise InputError(f"{out}: its data/ is a symbolic link or not a folder; an export writes its shards in "
                         f"OUT/data itself. Remove {data_dir} or choose another folder", code="bad_outdir")
    # an export killed after its journal (`replace_together`): its set is finished before the shards here are
    # counted (counted before, OUT looked empty, and the sweep below took the staged shards from under the journal).
    # Its journal is OUT's (the card is the set's last file), finished by `hold_folder`'s sweep already; one in
    # data/ is an export's of an earlier version (the shards alone)
    finish_replacements(out, held=True)
    finish_replacements(data_dir)
    existing = sorted(data_dir.glob("*.parquet")) if data_dir.is_dir() else []
    if existing and not overwrite:
        raise InputError(f"{out} already holds an exported dataset ({len(existing)} parquet files); pass --overwrite "
                         "to replace it, or choose another folder", code="out_not_empty")
    if not existing and not overwrite and os.path.lexists(out / "README.md"):
        # the card is OUT/README.md: a folder of the user's (a project, a clone of an empty Hub dataset repo) had its
        # own README.md replaced by the card, silently — no earlier export was there to count
        raise InputError(f"{out}: holds a README.md that no earlier export wrote (no data/*.parquet beside it); the "
                         "export writes its dataset card there. Pass --overwrite to replace it, or choose another "
                         "folder", code="out_not_empty")
    record = run.record
    corpus = (record.get("corpus") or {}).get("path")
    if corpus and existing:
        # a Hugging Face download is laid out as data/train-*.parquet, the names an export writes: exporting
        # into the corpus's own folder with --overwrite deleted the corpus the run was made from
        # the files its shards read, when the run names them: an earlier export into a folder under the corpus
        # (`cd corpus && sigma batch run . --out run && sigma export hf run hf`) is not the corpus and may be replaced
        read = {os.path.realpath(ref["file"]) for shard in record.get("shards") or []
                if isinstance(ref := shard.get("ref"), dict) and isinstance(ref.get("file"), str)}
        real = os.path.realpath(corpus)
        mine = [f for f in existing if (os.path.realpath(f) in read if read else
                                        os.path.commonpath([real, os.path.realpath(f)]) == real)]
        if mine:
            raise InputError(f"{out}: holds the corpus this run was made from ({mine[0].name}, ...); an export there "
                             "would replace it. Choose another folder", code="out_not_empty")
    row_filter = row_filter or RowFilter()
    weights, weights_source = weights_digest(record)
    made_data_dir = bool(make_folders_durably(data_dir))      # its name on disk in OUT, as its shards will be
    # OUT is held exclusively (hold_folder above): every temporary file here is a dead export's, whatever its pid
    for stale in sorted(data_dir.glob(".*.tmp")):     # left by an interrupted export (the older `.NAME.tmp` too)
        stale.unlink()
    skipped = Skipped()
    writer = _ShardedWriter(data_dir, max(1, int(max_shard_mb * (1 << 20))), skipped, row_filter)
    first: dict[str, Any] = {}
    try:
        # pyarrow's error on a full disk names no file (`Error writing bytes to file. Detail: [errno 28] ...`)
        with no_room_said_of(data_dir):
            for rec in iter_records(run, row_filter, weights, skipped, mask):
                first = first or rec
                writer.add(rec)
            shards = writer.close()
        card = dataset_card(_card_info(run, name, first, (weights, weights_source), writer, mask, row_filter))
        files = _commit(out, shards, card.encode(), existing)
    except BaseException:
        writer.abort()
        if made_data_dir:           # a refused or failed first export leaves no empty data/ behind
            _remove_empty(data_dir)
        raise
    return {"out": str(out), "rows": writer.rows, "files": [str(f.relative_to(out)) for f in files],
            "weights_sha256": weights, "unfinished_shards": run.unfinished_shards(), **skipped.report()}


def _remove_empty(folder: Path) -> None:
    """`folder` removed when nothing is in it: a first export that failed before its commit point (its temporary
    shards gone with `abort`, its staged set with `replace_together`). One that failed after it (a move refused)
    keeps its staged set there for the journal in OUT to finish: a removal of the whole tree took those files from
    under the journal, which would then put a card in place with no shards."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _card_info(run: CheckedRun, name: str | None, first: dict[str, Any], digest: tuple[str | None, str],
               writer: _ShardedWriter, mask: str, row_filter: RowFilter) -> dict[str, Any]:
    """What the card says of this export (`dataset_card`): made before the commit, as part of its set."""
    record = run.record
    (weights, weights_source), rows, skipped = digest, writer.rows, writer.skipped
    status = run.rundir.summary(record=record)
    cfg = record.get("config") or {}
    # names escaped as the rows' (`escape_name`): a run or corpus folder of non-UTF-8 bytes made the card's text
    # unwritable, the whole export `invalid_text` after every row was read
    default = f"{Path(str(record.get('corpus', {}).get('path') or run.rundir.root)).name} (SIGMA masks)"
    info = {"name": escape_name(name or default),
            "corpus": escape_name(Path(str((record.get("corpus") or {}).get("path")
                                           or cfg.get("input", {}).get("path"))).name),
            "format": record.get("format"), "annotator": first.get("annotator") or cfg.get("annotator"),
            "config_hash": first.get("config_hash") or "n/a", "weights_sha256": weights,
            "weights_source": weights_source, "threshold": first.get("threshold", cfg.get("threshold")),
            "run_hash": record["run_hash"], "run_pairs": status["ok"], "run_errors": status["errors"],
            # the shards this export read (the run may have finished more since, if it runs beside it)
            "unfinished": run.unfinished_shards(), "shards": len(record["shards"]),
            "planned_pairs": status["planned_pairs"],
            "rows": rows, "skipped": len(skipped),
            "mask": {"chosen": "the one the run's mask_mode chose (`mask_source` says which)",
                     "semantic": "the semantic mask", "footprint": "the synthesised footprint"}[mask],
            # every filter the rows passed (max_confidence and composite were left out: a card of an export
            # of the least confident pairs said "Export filters: none")
            "filters": {"min_confidence": row_filter.min_confidence, "max_confidence": row_filter.max_confidence,
                        "min_area": row_filter.min_area, "max_area": row_filter.max_area,
                        "composite": {True: "only", False: "exclude", None: None}[row_filter.composite]}}
    return info

"""Small synthetic corpora in every layout the readers take: for tests, the benchmark, and for trying a
reader/preset offline before pointing it at a real corpus.

Each pair is a smooth random image and a copy with one rectangle or ellipse repainted; the mask marks it.
The parquet and save_to_disk writers store images as Hugging Face Image structs {bytes, path}.
"""
from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sigma.io.corpora.presets import get_preset

EDIT_TYPES = ("remove", "add", "replace", "attribute")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def synthetic_pairs(n: int, size: int = 64, seed: int = 0) -> Iterator[dict[str, Any]]:
    """{"id", "original", "edited", "mask" (PNG bytes), "instruction", "edit_type"}, deterministic in seed."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h = w = size
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        original = np.asarray(Image.fromarray(low).resize((w, h), Image.BILINEAR))
        mask_img = Image.new("L", (w, h), 0)
        x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
        x1, y1 = x0 + int(rng.integers(size // 6, size // 2)), y0 + int(rng.integers(size // 6, size // 2))
        draw = ImageDraw.Draw(mask_img)
        (draw.rectangle if i % 2 == 0 else draw.ellipse)([x0, y0, x1, y1], fill=255)
        mask = np.asarray(mask_img) > 127
        edited = original.copy()
        edited[mask] = rng.integers(0, 256, 3, dtype=np.uint8)
        kind = EDIT_TYPES[i % len(EDIT_TYPES)]
        yield {"id": f"p{i:06d}", "original": _png(original), "edited": _png(edited),
               "mask": _png(mask.astype(np.uint8) * 255), "instruction": f"{kind} the object number {i}",
               "edit_type": kind}


def write_folder(root: str | Path, pairs: Iterable[dict], two_folders: bool = False) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "instructions.jsonl", "w") as texts:
        for p in pairs:
            for role in ("original", "edited", "mask"):
                target = root / role / f"{p['id']}.png" if two_folders else root / f"{p['id']}_{role}.png"
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(p[role])
            texts.write(json.dumps({"id": p["id"], "instruction": p["instruction"]}) + "\n")
    return root


def write_pairs_jsonl(root: str | Path, pairs: Iterable[dict]) -> Path:
    """The `../shared/data/eval/<set>/` layout: images beside a pairs.jsonl."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "pairs.jsonl", "w") as out:
        for p in pairs:
            rec = {"id": p["id"], "instruction": p["instruction"], "edit_type": p["edit_type"]}
            for role in ("original", "edited", "mask"):
                (root / f"{p['id']}_{role}.png").write_bytes(p[role])
                rec[role] = f"{p['id']}_{role}.png"
            out.write(json.dumps(rec) + "\n")
    return root / "pairs.jsonl"


def write_csv(root: str | Path, pairs: Iterable[dict]) -> Path:
    import csv

    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "original", "edited", "instruction", "mask"])
        for p in pairs:
            for role in ("original", "edited", "mask"):
                (root / "img" / f"{p['id']}_{role}.png").write_bytes(p[role])
            writer.writerow([p["id"], f"img/{p['id']}_original.png", f"img/{p['id']}_edited.png", p["instruction"],
                             f"img/{p['id']}_mask.png"])
    return root / "manifest.csv"


def _records(pairs: Iterable[dict], preset: str) -> Iterator[dict[str, Any]]:
    cols = get_preset(preset).columns
    for n, p in enumerate(pairs):
        rec: dict[str, Any] = {cols["original"]: {"bytes": p["original"], "path": f"{p['id']}_o.png"},
                               cols["edited"]: {"bytes": p["edited"], "path": f"{p['id']}_e.png"}}
        rec[cols["instruction"]] = ([p["instruction"], "an alternative prompt"] if preset == "omniedit"
                                    else p["instruction"])
        if "mask" in cols:
            rec[cols["mask"]] = {"bytes": p["mask"], "path": None}
        if "edit_type" in cols:
            rec[cols["edit_type"]] = p["edit_type"]
        if preset == "magicbrush":
            rec["img_id"], rec["turn_index"] = p["id"], 1 + n % 3
        elif "id" in cols:
            rec[cols["id"]] = p["id"]
        yield rec


def _image_type():
    import pyarrow as pa

    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _schema(preset: str):
    import pyarrow as pa

    cols = get_preset(preset).columns
    fields = [(cols["original"], _image_type()), (cols["edited"], _image_type())]
    fields.append((cols["instruction"], pa.list_(pa.string()) if preset == "omniedit" else pa.string()))
    if "mask" in cols:
        fields.append((cols["mask"], _image_type()))
    if "edit_type" in cols:
        fields.append((cols["edit_type"], pa.string()))
    if preset == "magicbrush":
        fields += [("img_id", pa.string()), ("turn_index", pa.int32())]
    elif "id" in cols:
        fields.append((cols["id"], pa.string()))
    return pa.schema(fields)


def _batches(pairs: Iterable[dict], preset: str, rows: int) -> Iterator[Any]:
    import pyarrow as pa

    schema = _schema(preset)
    chunk: list[dict] = []
    for rec in _records(pairs, preset):
        chunk.append(rec)
        if len(chunk) == rows:
            yield pa.RecordBatch.from_pylist(chunk, schema=schema)
            chunk = []
    if chunk:
        yield pa.RecordBatch.from_pylist(chunk, schema=schema)


def write_parquet(path: str | Path, pairs: Iterable[dict], preset: str = "magicbrush",
                  row_group_size: int = 50) -> Path:
    """One parquet file, one row group per `row_group_size` pairs, written as they come (streaming)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, _schema(preset)) as writer:
        for batch in _batches(pairs, preset, row_group_size):
            writer.write_batch(batch, row_group_size=row_group_size)
    return path


def write_saved_dataset(root: str | Path, pairs: Iterable[dict], preset: str = "instructpix2pix",
                        batch_rows: int = 50, split: str | None = None) -> Path:
    """The layout `datasets.Dataset.save_to_disk` writes: data-*.arrow (IPC stream), state.json,
    dataset_info.json; with `split`, a DatasetDict folder around it."""
    import pyarrow as pa

    root = Path(root)
    folder = root / split if split else root
    folder.mkdir(parents=True, exist_ok=True)
    name = "data-00000-of-00001.arrow"
    schema = _schema(preset)
    with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in _batches(pairs, preset, batch_rows):
            writer.write_batch(batch)
    features = {f.name: ({"_type": "Image"} if pa.types.is_struct(f.type) else {"dtype": str(f.type), "_type": "Value"})
                for f in schema}
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features}))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": name}], "_fingerprint": "synthetic",
                                                   "_format_columns": None, "_format_kwargs": {},
                                                   "_format_type": None, "_output_all_columns": False,
                                                   "_split": split}))
    if split:
        (root / "dataset_dict.json").write_text(json.dumps({"splits": [split]}))
    return root


def write_webdataset(root: str | Path, pairs: Iterable[dict], per_tar: int = 100) -> list[Path]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tars: list[Path] = []
    chunk: list[dict] = []
    for p in pairs:
        chunk.append(p)
        if len(chunk) == per_tar:
            tars.append(_write_tar(root / f"shard-{len(tars):05d}.tar", chunk))
            chunk = []
    if chunk:
        tars.append(_write_tar(root / f"shard-{len(tars):05d}.tar", chunk))
    return tars


def _write_tar(path: Path, pairs: list[dict]) -> Path:
    with tarfile.open(path, "w") as tf:
        for p in pairs:
            members = {"original.png": p["original"], "edited.png": p["edited"], "mask.png": p["mask"],
                       "json": json.dumps({"instruction": p["instruction"], "edit_type": p["edit_type"]}).encode()}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{p['id']}.{ext}")
                info.size = len(data)
                info.mtime = 0
                tf.addfile(info, io.BytesIO(data))
    return path

"""COCO-style JSON: one image per kept pair, one annotation per non-empty mask, segmentation as RLE.

Masks come straight from the manifests (no pixels needed); `images_dir` also writes the edited images
under the `file_name`s the JSON names. The JSON is streamed (`_Spool`): memory does not grow with the run but by a
few dozen bytes per kept pair (its place in the spool, its sort key, its file name).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sigma.batch.layout import OutputWrite, is_stream, output_file, refuse_images_dir, refuse_run_file
from sigma.errors import InputError
from sigma.export.placing import PlacedFiles
from sigma.export.select import (
    CheckedRun,
    RowFilter,
    Skipped,
    UniqueNames,
    checked_before_writing,
    iter_pairs,
    iter_rows,
    nothing_to_export,
    order_key,
    row_mask_counts,
)
from sigma.folderlock import hold_folder
from sigma.io.images import encode_png
from sigma.rle import decode_rle, mask_bbox
from sigma.tempfiles import no_room_said_of, sweep_dead_writers_of, sync_folder
from sigma.text import dumps_finite

CATEGORY = {"id": 1, "name": "edited", "supercategory": "manipulation"}


def _rle(row: dict, counts: str | None) -> dict | None:
    return None if counts is None else {"size": [row["height"], row["width"]], "counts": counts}


def export_coco(run_dir: str | Path, out: str | Path, row_filter: RowFilter | None = None,
                images_dir: str | Path | None = None, mask: str = "chosen", order: str = "corpus",
                overwrite: bool = False) -> dict[str, Any]:
    """One image per kept pair, one annotation per non-empty mask. `segmentation` is the `mask` asked for
    (chosen = the run's mask_mode; semantic; footprint, which skips pairs that are not composites); every
    annotation also carries both masks (`semantic_segmentation`, `footprint_segmentation`: RLE or null)
    and the composite evidence. `order`: images in corpus order or by confidence. `images_dir` may hold other
    exports' images (`PlacedFiles`): a name there holding other bytes refuses the export before any image is put in
    place, unless `overwrite`; the same bytes are left as they are. One export at a time writes into `images_dir`
    (`run_locked`, at once): two at once could each place some images and then be refused on a name the other took,
    leaving images that no JSON lists. `out` a FIFO: its reader is found (`output_file`) before anything is written
    or made, or `out_no_reader` leaves `images_dir` as it was."""
    refuse_run_file(out)
    if images_dir is not None and os.path.realpath(images_dir) == os.path.realpath(out):
        # the images were placed in DIR, then the JSON's rename onto DIR failed (os_error: Is a directory): a folder
        # of images left under the JSON's name by an export that said it failed
        raise InputError(f"--images {images_dir} is the --out file itself: name a folder for the images and "
                         "another path for the JSON (e.g. --out coco.json --images images/)", code="bad_arguments")
    run = checked_before_writing(run_dir, corpus=False)      # the corpus too, below, when its images are written
    if images_dir is not None:
        try:
            refuse_images_dir(images_dir, run.record["corpus"].get("path"))
        except OSError as exc:     # a name too long: `os_error` naming `DIR/run.json`, where --out says bad_outdir
            raise InputError(f"{images_dir}: not a usable output folder ({exc.strerror or exc})",
                             code="bad_outdir") from exc
        run.corpus()
    with output_file(Path(out)) as write:
        return _export_to(run, Path(out), write, row_filter, images_dir, mask, order, overwrite)


def _export_to(run: CheckedRun, out: Path, write: OutputWrite, row_filter: RowFilter | None,
               images_dir: str | Path | None, mask: str, order: str, overwrite: bool) -> dict[str, Any]:
    """`export_coco` once its checks are made and `out` can be written (`write`, from `output_file`)."""
    if not is_stream(out):
        # the temporary files of `out` itself (`.FILE.json.PID.RANDOM.tmp`) an export killed while writing it left
        # beside it: only that name, only of dead writers (the folder is anyone's)
        sweep_dead_writers_of(Path(out).parent, names={Path(out).name})
    if images_dir is None:
        return _export(run, out, write, row_filter, None, mask, order)
    # held like an export's OUT (a flock on the folder itself, no lock file; dropped by the kernel however the
    # export ends), so no other export places images beside this one's; a folder it made and left empty (nothing
    # exported) is removed again. The folder stays the user's (their own tools may write there): only the temporary
    # images of writers that are dead go (an export killed mid-write), never another file (`sweep=False`)
    with hold_folder(Path(images_dir), other="--images folder", marker=False, sweep=False):
        sweep_dead_writers_of(Path(images_dir), (".png",))
        images = PlacedFiles(Path(images_dir), overwrite)
        try:
            return _export(run, out, write, row_filter, images, mask, order)
        finally:
            images.discard()       # a refusal, a failure: the staged images not placed go


class _Spool:
    """The kept pairs' image and annotation objects, as JSON, in an unnamed temporary file, with the few numbers per
    pair that place them (offset, lengths, sort key) in memory. The export held every image and annotation (three
    RLE masks each) as dicts and then the whole JSON as one string: ~8 GB at a million pairs. Their ids are known
    only once every pair is kept and sorted, so each object is spooled without its leading `{"id": N, `, which the
    final write (`write`) puts back: the file is byte for byte the one the export wrote before."""

    def __init__(self, handle: BinaryIO):
        self.handle = handle
        self.offsets = array("q")
        self.image_bytes = array("q")
        self.annotation_bytes = array("q")     # 0: no annotation (an empty mask)
        self.keys = array("d")                 # order_key as one float: no confidence is +inf, last either way
        self.end = 0

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, image: dict, annotation: dict | None, key: tuple[bool, float] | None) -> None:
        # dumps_finite: a plugin's NaN confidence or evidence would make the file JSON that strict readers refuse
        first = dumps_finite(image).encode()[1:]
        second = dumps_finite(annotation).encode()[1:] if annotation is not None else b""
        self.handle.write(first + second)
        self.offsets.append(self.end)
        self.image_bytes.append(len(first))
        self.annotation_bytes.append(len(second))
        self.keys.append(0.0 if key is None else math.inf if key[0] else key[1])
        self.end += len(first) + len(second)

    def order(self, sort: bool) -> Iterable[int]:
        """The pairs in output order: as kept, or by their key (stable: ties keep their corpus order)."""
        if not sort:
            return range(len(self))
        return np.argsort(np.frombuffer(self.keys, dtype=np.float64), kind="stable")

    def write(self, path: Path | int, head: dict, sort: bool) -> None:
        """The COCO JSON at `path` (or into the file descriptor, taken: a FIFO's write end):
        `{"info": ..., "images": [...], "annotations": [...], "categories": [...]}`
        as `dumps_finite` wrote the whole dict, the ids numbered in output order."""
        self.handle.flush()
        fd, order = self.handle.fileno(), self.order(sort)
        with open(path, "wb", buffering=_BUFFER) as out:
            out.write(b'{"info": ' + dumps_finite(head).encode() + b', "images": [')
            for n, i in enumerate(order):
                out.write(b'%s{"id": %d, ' % (b", " if n else b"", n + 1))
                out.write(os.pread(fd, self.image_bytes[i], self.offsets[i]))
            out.write(b'], "annotations": [')
            written = 0
            for n, i in enumerate(order):
                if self.annotation_bytes[i]:
                    written += 1
                    out.write(b'%s{"id": %d, "image_id": %d, ' % (b", " if written > 1 else b"", written, n + 1))
                    out.write(os.pread(fd, self.annotation_bytes[i], self.offsets[i] + self.image_bytes[i]))
            out.write(b'], "categories": ' + dumps_finite([CATEGORY]).encode() + b"}")

    def annotations(self) -> int:
        return sum(1 for n in self.annotation_bytes if n)


_BUFFER = 1 << 20


def _spool_folder(out: Path) -> str | None:
    """Where the spool goes: beside `out` (its nearest folder that exists: nothing is made before the export is
    known to keep a pair), on the disk the JSON is written to; a stream's, the system's temporary folder."""
    if is_stream(out):
        return None
    folder = Path(os.path.abspath(out)).parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return str(folder)


def _export(run: CheckedRun, out: Path, write: OutputWrite, row_filter: RowFilter | None,
            images_out: PlacedFiles | None, mask: str, order: str) -> dict[str, Any]:
    # unnamed (O_TMPFILE where there is one): gone with the export however it ends, a kill included
    try:
        spool = tempfile.TemporaryFile(dir=_spool_folder(out))   # noqa: SIM115 - closed by the `with` below
    except OSError as exc:
        # said of `out`, the file the user named: a read-only or full folder was `Read-only file system:
        # /data/tmpvub7ugc6`, the spool's random name, which no one asked for and which does not exist
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
    # the spool lies beside `out` and is written for it: a full disk there (no file name on the error) said of `out`
    with spool as handle, no_room_said_of(out):
        return _spooled(run, out, write, row_filter, images_out, mask, order, _Spool(handle))


def _spooled(run: CheckedRun, out: Path, write: OutputWrite, row_filter: RowFilter | None,
             images_out: PlacedFiles | None, mask: str, order: str, spool: _Spool) -> dict[str, Any]:
    """Read the kept rows shard by shard into `spool` (one shard's rows in memory), then write the JSON from it."""
    key = order_key(order)
    names = UniqueNames()
    kept_images = 0
    skipped = Skipped()
    if images_out is not None:
        source = ((row, pair, err) for row, pair, err in iter_pairs(run, row_filter))
    else:
        source = ((row, None, None) for _, rows in iter_rows(run, row_filter) for row in rows)
    for row, pair, error in source:
        counts = row_mask_counts(row, mask)
        if counts is None:
            skipped.add(row["pair_id"], f"no {mask} mask (not a composite)")
            continue
        if images_out is not None and pair is None:
            skipped.add(row["pair_id"], error or "unreadable")
            continue
        name = names(row)
        file_name = f"{name}.png"
        if images_out is not None and pair is not None:
            images_out.stage(file_name, encode_png(pair.edited))      # refused here if DIR holds other bytes
            kept_images += 1
        image = {"file_name": file_name, "height": row["height"], "width": row["width"], "pair_id": row["pair_id"],
                 "source": row["source"], "instruction": row["instruction"], "edit_type": row["edit_type"]}
        if mask == "chosen":
            area, bbox = int(row["area"]), [int(v) for v in row["bbox"]]
        else:
            decoded = decode_rle(_rle(row, counts))
            area, bbox = int(decoded.sum()), [int(v) for v in mask_bbox(decoded)]
        annotation = None
        if area:
            annotation = {
                "category_id": CATEGORY["id"], "segmentation": _rle(row, counts), "area": area, "bbox": bbox,
                "iscrowd": 0, "score": row["confidence"], "annotator": row["annotator"],
                "config_hash": row["config_hash"], "mask": mask, "mask_mode": row.get("mask_mode"),
                "mask_source": row.get("mask_source") if mask == "chosen" else mask,
                "semantic_segmentation": _rle(row, row_mask_counts(row, "semantic")),
                "footprint_segmentation": _rle(row, row_mask_counts(row, "footprint")),
                "composite": json.loads(row["composite"]) if row.get("composite") else None}
        spool.add(image, annotation, key({"confidence": row["confidence"]}) if key is not None else None)
    if not len(spool):
        raise nothing_to_export(skipped, row_filter)
    if images_out is not None and kept_images:
        images_out.place()
        sync_folder(images_out.folder)   # the images' names on disk before the JSON that lists them
    head = {"description": f"SIGMA batch run {run.rundir.root.resolve()}", "mask": mask, "order": order}
    # streamed into a temporary file, fsynced and renamed over `out`: whole or not at all, as before
    write(lambda path: spool.write(path, head, key is not None))
    if not is_stream(out):
        sync_folder(out.parent)          # the JSON's own name: "done" is said once it is on disk
    return {"out": str(out), "images": len(spool), "annotations": spool.annotations(), "mask": mask,
            "order": order, "unfinished_shards": run.unfinished_shards(), **skipped.report()}

"""One manifest row per pair, in a fixed Arrow schema, so every shard file has the same columns and types."""
from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from sigma.batch.decode import Decoded
from sigma.eval.metrics import score_image
from sigma.rle import encode_rle
from sigma.text import MAX_JSON_DEPTH, json_text
from sigma.types import Annotation, confidence_value, finite_number

SCHEMA_FIELDS: list[tuple[str, str]] = [
    ("pair_id", "string"), ("source", "string"), ("shard", "string"), ("index", "int64"), ("subset", "string"),
    ("status", "string"), ("error_code", "string"), ("error", "string"),
    ("instruction", "string"), ("edit_type", "string"),
    ("height", "int32"), ("width", "int32"), ("edited_height", "int32"), ("edited_width", "int32"),
    ("original_sha256", "string"), ("edited_sha256", "string"),
    ("rle_counts", "string"), ("bbox", "list<int32>"), ("area", "int64"), ("area_fraction", "float64"),
    ("threshold", "float64"), ("confidence", "float64"),
    # the two masks (sigma.annotators.footprint): rle_counts is the chosen one
    ("mask_mode", "string"), ("mask_source", "string"), ("semantic_rle", "string"), ("footprint_rle", "string"),
    ("is_composite", "bool"), ("composite", "string"),
    ("parser", "string"), ("components", "string"),
    ("intended_area", "int64"), ("side_effect_area", "int64"), ("intended_rle", "string"),
    ("side_effect_rle", "string"), ("extra", "string"), ("preprocess", "string"),
    ("annotator", "string"), ("config_hash", "string"), ("weights_sha256", "string"), ("sigma_version", "string"),
    ("run_hash", "string"), ("mask_png", "string"),
    ("gt_f1", "float64"), ("gt_iou", "float64"), ("gt_auc", "float64"), ("gt_fraction", "float64"),
    ("gt_tp", "int64"), ("gt_fp", "int64"), ("gt_fn", "int64"), ("gt_note", "string"),
]
KNOWN_EXTRA = {"confidence", "parser", "parse", "components", "intended", "side_effect", "intended_mask",
               "side_effect_mask", "edit_type"}


def arrow_schema():
    import pyarrow as pa

    types = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(),
             "bool": pa.bool_(), "list<int32>": pa.list_(pa.int32())}
    return pa.schema([(name, types[t]) for name, t in SCHEMA_FIELDS])


def empty_row() -> dict[str, Any]:
    return {name: None for name, _ in SCHEMA_FIELDS}


def _json(value: Any, where: str = "", max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """A manifest column's JSON: `sigma.text.json_text`, the conversion service results use too (a set was written
    here as `"{1, 10, 9}"`, bytes as `"b'...'"`). Plain JSON is written byte for byte as before; a value that
    contains itself or nests past `max_depth` (io.limits.max_json_depth) raises `NotWritable`, which the shard writer
    makes the pair's error."""
    if value is None:
        return None
    return json_text(value, max_depth=max_depth, where=where)


def _rle_of(value: Any) -> str | None:
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return encode_rle(value.astype(bool))["counts"]
    if isinstance(value, dict) and "counts" in value:
        counts = value["counts"]
        return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)
    return None


def base_row(decoded: Decoded, shard_key: str, run_hash: str) -> dict[str, Any]:
    item = decoded.item
    row = empty_row()
    row.update(pair_id=item.pair_id, source=item.source, shard=shard_key, index=item.index, subset=item.subset,
               instruction=item.instruction, edit_type=item.edit_type, run_hash=run_hash,
               original_sha256=decoded.meta.get("original_sha256"), edited_sha256=decoded.meta.get("edited_sha256"),
               gt_note=decoded.meta.get("gt_note"))
    return row


def error_row(decoded: Decoded, shard_key: str, run_hash: str, code: str, message: str) -> dict[str, Any]:
    row = base_row(decoded, shard_key, run_hash)
    row.update(status="error", error_code=code, error=message)
    if decoded.pair is not None:
        row.update(height=decoded.pair.size[0], width=decoded.pair.size[1])
    return row


def ok_row(decoded: Decoded, ann: Annotation, shard_key: str, run_hash: str, mask_png: str | None,
           max_json_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    column = partial(_json, max_depth=max_json_depth)
    row = base_row(decoded, shard_key, run_hash)
    pair = decoded.pair
    extra = ann.extra or {}
    # the SA-1B fields exactly as Annotation.to_dict() gives them (without the extras merged into it)
    record = Annotation.to_dict(replace(ann, extra={}))
    parser = extra.get("parser", extra.get("parse"))
    components = extra.get("components")
    split = components if isinstance(components, dict) and components.get("split") not in (None, "no_prior") else {}
    edited_size = (pair.preprocess.get("edited") or {}).get("decoded_size") or list(pair.size)
    row.update(status="ok", height=pair.size[0], width=pair.size[1], edited_height=int(edited_size[0]),
               edited_width=int(edited_size[1]), rle_counts=record["segmentation"]["counts"],
               bbox=[int(v) for v in record["bbox"]], area=int(record["area"]),
               area_fraction=float(record["area_fraction"]), threshold=float(record["threshold"]),
               confidence=confidence_value(extra.get("confidence")), parser=column(parser, "parser"),
               components=column(components, "components"), intended_area=split.get("intended_area"),
               side_effect_area=split.get("side_effect_area"),
               intended_rle=_rle_of(extra.get("intended_mask", extra.get("intended"))),
               side_effect_rle=_rle_of(extra.get("side_effect_mask", extra.get("side_effect"))),
               extra=column({k: v for k, v in extra.items() if k not in KNOWN_EXTRA} or None),   # keys sorted there
               preprocess=column(pair.preprocess, "preprocess"), annotator=ann.annotator, config_hash=ann.config_hash,
               weights_sha256=record["weights_sha256"], sigma_version=record["sigma_version"], mask_png=mask_png)
    if ann.mask_mode is not None:
        composite = ann.composite or {}
        row.update(mask_mode=ann.mask_mode, mask_source=ann.mask_source,
                   semantic_rle=_rle_of(ann.semantic_mask), footprint_rle=_rle_of(ann.footprint_mask),
                   is_composite=composite.get("is_composite"), composite=column(composite or None, "composite"))
    if row["edit_type"] is None:
        row["edit_type"] = extra.get("edit_type") or (parser.get("edit_type") if isinstance(parser, dict) else None)
    if decoded.gt is not None:
        score = score_image(pair.pair_id, ann.mask, ann.prob, decoded.gt)
        row.update(gt_f1=score.f1, gt_iou=score.iou, gt_auc=finite_number(score.auc), gt_fraction=score.gt_fraction,
                   gt_tp=score.tp, gt_fp=score.fp, gt_fn=score.fn)
    return row


def rows_to_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    rows = sorted(rows, key=lambda r: r["index"])
    return pa.Table.from_pylist(rows, schema=arrow_schema())

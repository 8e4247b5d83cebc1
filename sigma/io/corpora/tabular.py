"""Rows of a table (parquet, Arrow) → `SourceItem`s, given a role → column mapping."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sigma.errors import InputError
from sigma.io.corpora.base import SourceItem, image_value, missing_columns_error, text_value


def id_columns(columns: dict[str, str]) -> list[str]:
    """`id` may name several columns, joined by "+" (or "," in config files): img_id+turn_index."""
    return [c.strip() for c in re.split(r"[+,]", columns.get("id", "")) if c.strip()]


def check_schema(where: str, found: list[str], columns: dict[str, str], required: tuple[str, ...],
                 preset: str | None) -> dict[str, str]:
    """The mapping restricted to columns that exist; a missing required column is an error naming both sides."""
    if any(columns[role] not in found for role in required):
        raise missing_columns_error(where, found, columns, list(required), preset)
    present = {}
    for role, col in columns.items():
        if role == "id":
            ids = id_columns(columns)
            if ids and all(c in found for c in ids):
                present[role] = col
        elif col in found:
            present[role] = col
    return present


def needed_columns(present: dict[str, str]) -> list[str]:
    cols: list[str] = []
    for role, col in present.items():
        for c in (id_columns(present) if role == "id" else [col]):
            if c not in cols:
                cols.append(c)
    return cols


def row_to_item(row: dict[str, Any], present: dict[str, str], index: int, row_no: int, label: str,
                base_dir: Path | None, subset: str | None = None) -> SourceItem:
    if "id" in present:
        pair_id = "-".join(str(row.get(c)) for c in id_columns(present))
    else:
        pair_id = f"{label}:{row_no}"
    item = SourceItem(index=index, pair_id=pair_id, source=f"{label}:row={row_no}", subset=subset)
    try:
        item.original, item.original_path = image_value(row.get(present["original"]), base_dir,
                                                        f"{pair_id} original ({present['original']})")
        item.edited, item.edited_path = image_value(row.get(present["edited"]), base_dir,
                                                    f"{pair_id} edited ({present['edited']})")
        if "instruction" in present:
            item.instruction = text_value(row.get(present["instruction"]))
        if "edit_type" in present:
            item.edit_type = text_value(row.get(present["edit_type"]))
        if "mask" in present and row.get(present["mask"]) is not None:
            try:
                item.mask, item.mask_path = image_value(row.get(present["mask"]), base_dir, f"{pair_id} mask")
            except InputError:
                item.mask, item.mask_path = None, None   # an absent ground truth is not an error
    except InputError as exc:
        item.error = (exc.code, exc.message)
    return item


def oversized_cells(batch: Any, columns: list[str], max_bytes: int) -> list[tuple[str, int] | None]:
    """Per row of an Arrow record batch: (column, bytes) of a binary or text cell of `columns` larger than
    `max_bytes` (an image cell's `bytes` or `path` field included), else None. Only the lengths are computed:
    from a memory-mapped file no value is copied, so such a row can be refused before its cell is read."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    found: list[tuple[str, int] | None] = [None] * batch.num_rows
    for name in columns:
        array = batch.column(name)
        parts = [(name, array)]
        if pa.types.is_struct(array.type):
            parts = [(f"{name}.{f.name}", array.field(f.name)) for f in array.type]
        for label, part in parts:
            if not (pa.types.is_binary(part.type) or pa.types.is_large_binary(part.type)
                    or pa.types.is_string(part.type) or pa.types.is_large_string(part.type)):
                continue
            sizes = np.asarray(pc.fill_null(pc.binary_length(part), 0))
            for row in np.flatnonzero(sizes > max_bytes):
                if found[row] is None:
                    found[row] = (label, int(sizes[row]))
    return found

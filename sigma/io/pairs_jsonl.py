"""The one reader of the `pairs.jsonl` layout (`<set>/pairs.jsonl` + images + masks), as ../shared ships it:
`sigma eval`, training's labelled folders and the batch corpus reader all find sets and read records here."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sigma.errors import InputError


@dataclass(frozen=True)
class EvalRecord:
    set_name: str
    pair_id: str
    original: Path
    edited: Path
    mask: Path
    instruction: str | None
    edit_type: str | None
    whole_image_changed: bool


def find_sets(data: str | Path) -> list[Path]:
    """`data` is one set (holds pairs.jsonl) or a folder of sets; sets are returned sorted by name."""
    data = Path(data)
    if data.is_file() and data.name == "pairs.jsonl":   # the manifest itself: its folder is the set
        data = data.parent
    if not data.is_dir():
        raise InputError(f"{data}: evaluation folder not found", code="file_not_found")
    if (data / "pairs.jsonl").is_file():
        return [data]
    sets = sorted(p.parent for p in data.glob("*/pairs.jsonl"))
    if not sets:
        raise InputError(f"{data}: no pairs.jsonl here or in its sub-folders (expected <set>/pairs.jsonl)",
                         code="no_pairs")
    return sets


def read_set(set_dir: Path) -> Iterator[EvalRecord]:
    with open(set_dir / "pairs.jsonl") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                yield EvalRecord(
                    set_name=set_dir.name, pair_id=str(rec["id"]), original=set_dir / rec["original"],
                    edited=set_dir / rec["edited"], mask=set_dir / rec["mask"],
                    instruction=rec.get("instruction") or None, edit_type=rec.get("edit_type"),
                    whole_image_changed=bool(rec.get("whole_image_changed", False)))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise InputError(f"{set_dir / 'pairs.jsonl'}:{line_no}: bad record ({exc})",
                                 code="bad_manifest") from exc

"""A synthetic sample written as one pair of the pairs.jsonl layout (`sigma eval --data` reads it): the
three PNGs and the record. `sigma synth --out` and the training's fixed validation sets both write pairs
this way, so a validation folder is exactly a `sigma synth` folder with other names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sigma.data.synth.engine import SynthSample


def write_synth_pair(s: SynthSample, out: Path, pid: str, editor: str, source: str,
                     instruction_fields: bool = False, durable: bool = False) -> str:
    """Writes `<pid>_original|edited|mask.png` under `out`; returns the pairs.jsonl line.
    `instruction_fields`: also the (null) instruction_source and prompt keys of the eval sets' records.
    `durable`: each PNG's bytes fsynced before its rename (`write_png(durable=True)`), for a pairs.jsonl written
    after them (`sigma synth`; the caller syncs `out` before it)."""
    from sigma.io.images import write_png

    write_png(s.original, out / f"{pid}_original.png", durable=durable)
    write_png(s.edited, out / f"{pid}_edited.png", durable=durable)
    write_png(s.mask.astype(np.uint8) * 255, out / f"{pid}_mask.png", durable=durable)
    record = {"id": pid, "original": f"{pid}_original.png", "edited": f"{pid}_edited.png",
              "mask": f"{pid}_mask.png", "instruction": None}
    if instruction_fields:
        record.update(instruction_source=None, prompt=None)
    record.update(edit_type=s.edit_type, editor=editor, whole_image_changed=s.kind == "global", source=source,
                  mask_provenance="exact region of the synthetic edit", synth=s.meta)
    return json.dumps(record, default=str)

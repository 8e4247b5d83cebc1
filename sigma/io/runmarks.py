"""The files by which one command knows another's output folder, in one list.

`sigma.cli.common.refuse_run_folder` (a batch or training run's folder as `eval --out`, `annotate -o`, `synth
--out`) and training's refusal of another command's folder as a new run's (`sigma.training.loop`) each kept a list
of these names, twins that had to be changed together; both read `OUTPUT_MARKS` now. `refuse_training_file` keeps an
output *file* (`sigma report --out`, `sigma export coco --out`) off a training run's own files, as
`sigma.batch.layout.refuse_run_file` keeps it off a batch run's."""
from __future__ import annotations

import os
from pathlib import Path

from sigma.errors import InputError

BATCH_RUN = "a batch run"
TRAINING_RUN = "a training run"

#: (file, whose output folder it marks), in the order a refusal names the first found
OUTPUT_MARKS: tuple[tuple[str, str], ...] = (
    ("run.json", BATCH_RUN),
    ("checkpoint.pt", TRAINING_RUN), ("checkpoint.prev.pt", TRAINING_RUN), ("metrics.jsonl", TRAINING_RUN),
    ("metrics.json", "a `sigma eval --out`"), ("result.json", "a `sigma annotate -o`"),
    ("pairs.jsonl", "a set of pairs"), ("synth_config.yaml", "a `sigma synth --out` set"),
)

#: the marks of a run whose config.yaml is its record (`sigma train --resume`, `sigma batch run --resume`, `sigma
#: report` read it back)
RUN_MARKS = tuple((name, what) for name, what in OUTPUT_MARKS if what in (BATCH_RUN, TRAINING_RUN))

#: what other commands leave in their folders; a training run writes none of them
OTHER_THAN_TRAINING = tuple(name for name, what in OUTPUT_MARKS if what != TRAINING_RUN)

# what a training run's folder holds for itself (`sigma.training.loop`): its record, checkpoints, metrics, best
# step, the cache index it froze, and the folders of its weights and logs. report.html or coco.json beside them is
# fine; config.yaml or metrics.jsonl written over, the run can neither be resumed nor read.
#: of those, the files and the folders it writes at its top level after its steps (`sigma.training.loop` refuses an
#: entry of the other kind under these names before any step)
TRAINING_FILES = ("checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl", "best.json", "grow.json")
TRAINING_FOLDERS = ("model", "best", "final", "tb")
TRAINING_OWN = frozenset({"config.yaml", "cache_index.json", *TRAINING_FILES, *TRAINING_FOLDERS})


def is_training_run(folder: Path) -> bool:
    """Whether `folder` holds a training run's mark (a checkpoint, its metrics.jsonl); False where it cannot be
    asked (a name too long, a folder not to be looked into): the output's own check says why, in its words."""
    try:
        return any(what == TRAINING_RUN and (folder / name).is_file() for name, what in OUTPUT_MARKS)
    except OSError:
        return False


def refuse_training_file(path: str | Path) -> None:
    """`out_is_run_file` when the output file `path` would land on a training run's own file (`TRAINING_OWN`),
    in the run's folder or one below (`RUN/model/config.json`), as written or through links. `sigma report RUN
    --out TRAIN/config.yaml` wrote the page over the run's config (`sigma train --resume` then failed
    `invalid_config`), `sigma export coco --out TRAIN/metrics.jsonl` its metrics. Checked before any work."""
    for candidate in {Path(os.path.abspath(path)), Path(os.path.realpath(path))}:
        for folder in (candidate.parent, candidate.parent.parent):
            if is_training_run(folder):
                first = candidate.relative_to(folder).parts[0]
                if first in TRAINING_OWN:
                    raise InputError(f"{path}: would overwrite the training run's own {first} in {folder}; write "
                                     "the output elsewhere", code="out_is_run_file")

"""The mark `sigma synth --out DIR` leaves in DIR while it writes a set, and the one check every reader of a pair
folder makes for it.

A `sigma synth` rewrite replaces the PNGs of an earlier set pair by pair under the same names, and writes the
pairs.jsonl that lists them last. Killed part way, DIR held no pairs.jsonl and a mix of two runs' images (a new
original beside an earlier edited image and mask): `sigma batch run DIR` read it as a plain folder corpus and
annotated the mismatched pairs without a word. The writer puts `UNFINISHED` down (synced) before it replaces or
removes a file, and removes it (synced) only once pairs.jsonl is complete; a reader that finds it refuses the
folder (`unfinished_synth_set`) and says how to finish it: run the same command again.
"""
from __future__ import annotations

import os
from pathlib import Path

from sigma.errors import InputError

UNFINISHED = "synth_unfinished.json"     # {"command": "sigma synth --out ...", "runs": [[SEED, N], ...]}


def refuse_unfinished(folder: Path) -> None:
    """An InputError (`unfinished_synth_set`) when `folder` holds the mark of a `sigma synth` run that did not end.
    `lexists`: whatever stands under that name (a broken link too) is the mark; its content is never read here (a
    link to a file outside a batch root would be echoed over the API).

    A pairs.jsonl beside the mark is refused too: a run stopped between listing its pairs and removing the mark left
    a finished set, but a copy of the folder made while a rewrite ran holds the earlier listing, a mark and a mix of
    two runs' images, and the two cannot be told apart. The message said "stopped before it listed its pairs" there
    (and while the run was still writing): it now says what may be going on and the one way out in either case."""
    if os.path.lexists(folder / UNFINISHED):
        listed = os.path.isfile(folder / "pairs.jsonl")
        state = ("is still writing it, or stopped after its pairs.jsonl but before it ended (or the folder was "
                 "copied while a run wrote it)" if listed else "is still writing it, or stopped before it listed "
                 "its pairs")
        raise InputError(f"{folder}: an unfinished `sigma synth` set ({UNFINISHED} is there: the `sigma synth --out` "
                         f"run writing this folder {state}, so its images may mix two runs); wait for a running one, "
                         f"else run the same `sigma synth --out` command again to finish it (its command line is the "
                         f"\"command\" of {UNFINISHED})", code="unfinished_synth_set")


def refuse_unfinished_sets(folder: Path) -> None:
    """`refuse_unfinished` for `folder` and each folder in it: what `sigma eval --data` reads (a set or a folder of
    sets), checked where it is only read much later (training's `eval.data`, scored after the last step)."""
    refuse_unfinished(folder)
    for marked in sorted(folder.glob(f"*/{UNFINISHED}")):
        refuse_unfinished(marked.parent)

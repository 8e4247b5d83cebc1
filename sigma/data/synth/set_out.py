"""A `sigma synth --out` set as a whole: what a run does to OUT before its first PNG and after its pairs.jsonl, so that
a run killed at any point leaves a folder every reader refuses (`sigma.io.unfinished`) rather than one that reads
as pairs of two runs."""
from __future__ import annotations

import json
from pathlib import Path

from sigma.io.unfinished import UNFINISHED


def begin_set(out: Path, seed: int, pairs: int, command: str) -> None:
    """Called once the first pair is made (a run that cannot make one leaves the earlier set be): the mark
    `UNFINISHED` put down, then the earlier set's pairs.jsonl and synth_config.yaml removed, all synced, before this
    run replaces the first PNG they may name. A rewrite (same --seed, another crop or photo folder) replaces the
    PNGs pair by pair under the same names: killed part way, OUT listed pairs whose original was the new run's and
    whose edited image, mask and record were the earlier's; with the listing gone it held no pairs.jsonl and was
    read as a plain folder corpus, the same mix, silently. The mark makes such a folder a refusal
    (`unfinished_synth_set`) until a run ends (`end_set`)."""
    from sigma.tempfiles import replace_atomically, sync_folder

    mark = {"command": command, "seed": seed, "pairs": pairs}
    replace_atomically(out / UNFINISHED, (json.dumps(mark) + "\n").encode(), durable=True)
    sync_folder(out)              # the mark's name on disk before anything of the earlier set goes
    for name in ("pairs.jsonl", "synth_config.yaml"):
        (out / name).unlink(missing_ok=True)
    sync_folder(out)


def end_set(out: Path) -> None:
    """The mark removed, synced, once pairs.jsonl and synth_config.yaml are on disk and OUT synced after them:
    killed before, OUT stays refused and the same command run again finishes it."""
    from sigma.tempfiles import sync_folder

    (out / UNFINISHED).unlink(missing_ok=True)
    sync_folder(out)

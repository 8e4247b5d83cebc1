"""A `sigma synth --out` set as a whole: what a run does to OUT before its first PNG and after its pairs.jsonl, so that
a run killed at any point leaves a folder every reader refuses (`sigma.io.unfinished`) rather than one that reads
as pairs of two runs, and a rewrite leaves no PNG of the earlier set that the new one does not list."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from sigma.io.unfinished import UNFINISHED

ROLES = ("original", "edited", "mask")
# the names `sigma synth` gives its PNGs (`pair_name`); only a file of such a name is ever removed, and only one an
# earlier set listed or an unfinished run's mark covers
SYNTH_PNG = re.compile(r"synth(?P<seed>[0-9]+)_(?P<index>[0-9]{5,})_(?P<role>original|edited|mask)\.png")
MAX_MARK_BYTES = 1 << 16
MAX_MARKED_RUNS = 64          # killed runs of other seeds one after the other, remembered until a run ends


def pair_name(seed: int, index: int, role: str) -> str:
    return f"synth{seed}_{index:05d}_{role}.png"


def _synth_png(name: object) -> tuple[int, int] | None:
    """(seed, index) of a name exactly as `pair_name` writes it, else None (`synth00_1_mask.png`, a path)."""
    m = SYNTH_PNG.fullmatch(name) if isinstance(name, str) else None
    if m is None or pair_name(int(m["seed"]), int(m["index"]), m["role"]) != name:
        return None
    return int(m["seed"]), int(m["index"])


def _json_lines(file: Path, limit: int) -> Iterator[object]:
    """The JSON values of `file`'s lines, read a line of at most `limit` bytes at a time; anything unreadable (no
    regular file, a line too long or not JSON) is passed over: what it would name is only left in place."""
    from sigma.io.lines import read_line
    from sigma.regular import open_regular

    try:
        with open_regular(file, "rb") as handle:
            for line in iter(lambda: read_line(handle, limit + 1), b""):
                try:
                    yield json.loads(line) if len(line) <= limit else None
                except (ValueError, RecursionError):      # RecursionError: nested too deeply
                    continue
    except OSError:
        return


def _listed(out: Path) -> set[str]:
    """The PNGs of synth's naming the earlier set's pairs.jsonl lists."""
    from sigma.io.pairs_jsonl import MAX_RECORD_BYTES

    names: set[str] = set()
    for rec in _json_lines(out / "pairs.jsonl", MAX_RECORD_BYTES):
        if isinstance(rec, dict):
            names |= {rec[k] for k in ROLES if _synth_png(rec.get(k))}
    return names


def _marked_runs(out: Path) -> list[tuple[int, int]]:
    """(seed, pairs) of each run the mark an unfinished run left says may have written PNGs no pairs.jsonl lists."""
    mark = next(_json_lines(out / UNFINISHED, MAX_MARK_BYTES), None)
    runs = mark.get("runs") if isinstance(mark, dict) else None
    if not isinstance(runs, list):
        return []
    pairs = [tuple(run) for run in runs if isinstance(run, list) and len(run) == 2]
    return [(s, n) for s, n in pairs if type(s) is int and type(n) is int and s >= 0 and n > 0][-MAX_MARKED_RUNS:]


def _covered(out: Path, runs: Iterable[tuple[int, int]]) -> set[str]:
    """The PNGs in `out` that the runs `runs` (seed, pairs) may have written."""
    extent = dict(runs)
    names = set()
    with os.scandir(out) as entries:
        for entry in entries:
            found = _synth_png(entry.name)
            if found and found[1] < extent.get(found[0], 0):
                names.add(entry.name)
    return names


def refuse_foreign_set(out: Path) -> None:
    """`out_not_empty` when OUT holds a pairs.jsonl that no `sigma synth` wrote (neither its synth_config.yaml nor
    the mark of a killed run beside it): a set of the user's, whose pairs.jsonl `begin_set` removed and replaced by
    the synthetic pairs' — the set's manifest (ids, instructions, which mask is whose) gone, its images left
    unlisted. Said before the photos are read."""
    if os.path.lexists(out / "pairs.jsonl") and not os.path.lexists(out / "synth_config.yaml") \
            and not os.path.lexists(out / UNFINISHED):
        from sigma.errors import InputError

        raise InputError(f"{out}: holds a pairs.jsonl that sigma synth did not write (no synth_config.yaml beside "
                         "it): a set of yours, whose manifest this run would replace. Choose another --out",
                         code="out_not_empty")


def begin_set(out: Path, seed: int, pairs: int, command: str) -> None:
    """Called once the first pair is made (a run that cannot make one leaves the earlier set be): the mark
    `UNFINISHED` put down, then the PNGs of the earlier set this run will not write removed, then the earlier set's
    pairs.jsonl and synth_config.yaml, all synced, before this run replaces the first PNG they may name.

    A rewrite (same --seed, another crop or photo folder) replaces the PNGs pair by pair under the same names:
    killed part way, OUT listed pairs whose original was the new run's and whose edited image, mask and record were
    the earlier's; with the listing gone it held no pairs.jsonl and was read as a plain folder corpus, the same mix,
    silently. The mark makes such a folder a refusal (`unfinished_synth_set`) until a run ends (`end_set`).

    A rewrite with a smaller -n (or another --seed) left the earlier set's other PNGs, listed by nothing, for a
    folder-corpus read to take as pairs. Removed now: only files named as synth names them (`SYNTH_PNG`) that the
    earlier pairs.jsonl lists, or that a run killed since it may have written (the mark's `runs`, kept across
    killed runs until one ends) — never a file of any other name."""
    from sigma.tempfiles import replace_atomically, sync_folder

    _clear_mark_folder(out)
    earlier = _marked_runs(out)
    keep = {pair_name(seed, i, role) for i in range(pairs) for role in ROLES}
    stale = (_listed(out) | _covered(out, earlier)) - keep
    runs = [run for run in earlier if run[0] != seed] + [(seed, max([pairs] + [n for s, n in earlier if s == seed]))]
    mark = {"command": command, "runs": [list(run) for run in runs[-MAX_MARKED_RUNS:]]}
    replace_atomically(out / UNFINISHED, (json.dumps(mark) + "\n").encode(), durable=True)
    sync_folder(out)              # the mark's name on disk before anything of the earlier set goes
    for name in sorted(stale):
        try:
            (out / name).unlink()
        except (FileNotFoundError, IsADirectoryError):      # gone already; a folder of that name is not synth's
            continue
    for name in ("pairs.jsonl", "synth_config.yaml"):
        (out / name).unlink(missing_ok=True)
    sync_folder(out)


def _clear_mark_folder(out: Path) -> None:
    """A folder standing where the mark goes (`mkdir OUT/synth_unfinished.json`, a sync tool's slip) made every
    reader refuse OUT as an unfinished set, saying "run the same `sigma synth` command again" — and that run failed
    with `os_error: Is a directory`, so no command finished it. An empty one holds nothing of anyone's and is exactly
    what the readers ask this run to clear: removed. One with anything in it is the user's, never removed: one line
    (`bad_outdir`) saying what to move. A link is left alone (the mark's rename replaces the link, not its target)."""
    mark = out / UNFINISHED
    if not os.path.isdir(mark) or os.path.islink(mark):
        return
    try:
        os.rmdir(mark)
    except FileNotFoundError:
        return
    except OSError as exc:
        from sigma.errors import InputError

        raise InputError(f"{mark}: a folder ({exc.strerror or exc}) where `sigma synth` puts its mark of an "
                         f"unfinished set; move it out of {out} (or remove it), then run the command again",
                         code="bad_outdir") from exc


def end_set(out: Path) -> None:
    """The mark removed, synced, once pairs.jsonl and synth_config.yaml are on disk and OUT synced after them:
    killed before, OUT stays refused and the same command run again finishes it."""
    from sigma.tempfiles import sync_folder

    (out / UNFINISHED).unlink(missing_ok=True)
    sync_folder(out)

"""IMDL-BenCo training data: `Tp/<name>.png` (the edited image at the mask's size), `Gt/<name>.png` (0/255)
and the JSON list its JsonDataset reads, `[[tp, gt], ...]` with "Negative" for an empty mask.

A negative still gets an all-black Gt file so the Tp/ and Gt/ folders stay pairwise aligned for
IMDL-BenCo's ManiDataset, which pairs the two folders by sorted name. Gt is the run's chosen mask, or, with
`mask=semantic|footprint`, the one a detector of that kind should learn (a footprint export keeps only the
composites).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from array import array
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sigma.batch.layout import atomic_write_bytes, refuse_inside_run, refuse_run_file
from sigma.digest import sha256_file
from sigma.errors import InputError
from sigma.export.select import (
    CheckedRun,
    RowFilter,
    Skipped,
    UniqueNames,
    checked_before_writing,
    iter_pairs,
    nothing_to_export,
    order_key,
    row_mask_counts,
)
from sigma.folderlock import hold_folder, refuse_non_folder
from sigma.io.images import write_png
from sigma.regular import open_regular
from sigma.rle import decode_rle
from sigma.tempfiles import PID_MAX, replace_atomically, sync_folder
from sigma.text import shown


def export_imdl_benco(run_dir: str | Path, out: str | Path, row_filter: RowFilter | None = None,
                      relative: bool = False, json_name: str = "imdl_benco.json", mask: str = "chosen",
                      order: str = "corpus", overwrite: bool = False) -> dict[str, Any]:
    """`mask`: which mask becomes Gt (chosen = the run's mask_mode; semantic; footprint, which skips the
    pairs that are not composites). `order`: the JSON list in corpus order or by confidence. One export
    at a time per folder (`run_locked`): two would mix their Tp/Gt files under one JSON. An OUT that holds an
    export already is refused (`out_not_empty`) unless `overwrite`; then the new Tp/ and Gt/ replace the old
    ones whole once they are complete (a file of the old export left beside the new ones is a pair
    ManiDataset, which reads the folders, trains on; a failed export leaves the old one as it was)."""
    checked_json_name(json_name)                  # before anything is read, made or written
    # said of OUT as given: resolved first, `--out /dev/stdout` with stdout a pipe was refused as a missing
    # `/proc/PID/fd/pipe:[N]` (bad_outdir), a name the user never typed
    refuse_non_folder(Path(out), "; choose another OUT folder")
    # OUT in a run's own folders (`RUN/shards`, `RUN/status`, `RUN/masks/<shard>`) wrote the export among the run's
    # files, which --resume and the readers of those folders own, while `export coco --images` there was refused
    refuse_inside_run(out, "OUT folder")
    # and its JSON on a run's own file: `--out RUN --json-name run.json --overwrite` replaced a batch run's record,
    # `--out TRAIN --json-name best.json` a training run's best step
    refuse_run_file(Path(out) / json_name)
    out = Path(out).resolve()
    run = checked_before_writing(run_dir)          # before OUT is held or made
    with hold_folder(out, other="OUT folder", marker=False):
        return _export(run, out, row_filter, relative, json_name, mask, order, overwrite)


FOLDERS = ("Tp", "Gt")
#: the longest name the export writes is its journal's temporary file, `..NAME-journal.PID.RANDOM.tmp`
#: (`replace_atomically`); a file name is at most 255 bytes on every common file system
MAX_JSON_NAME_BYTES = 255 - len(".-journal") - len(f"..{PID_MAX}.{'0' * 8}.tmp")
JSON_NAME_RULE = ("a plain file name in OUT ending in .json (imdl_benco.json, train.json): no / or \\, no leading "
                  f"dot, no control character, at most {MAX_JSON_NAME_BYTES} bytes")


def checked_json_name(name: object) -> str:
    """`json_name` (`--json-name`) as the export may use it, else `bad_arguments` before anything is written.
    Before, it was joined to OUT unchecked: `sub/x.json` or `../x.json` wrote the JSON (and its journal
    `.sub/x.json-journal`, which no later export looks for) in a subfolder or outside OUT, an absolute name
    anywhere, `.x-journal.json` was a hidden name of the export's own kind, and a NUL byte or a name past 255 bytes
    failed only at the end, after every PNG was written (a ValueError traceback, or `os_error`)."""
    problem = _json_name_problem(name)
    if problem:
        raise InputError(f"--json-name {shown(name, 80)!r}: {problem}; give {JSON_NAME_RULE}", code="bad_arguments")
    return str(name)


def _json_name_problem(name: object) -> str | None:
    """What keeps `name` from being the export's JSON file name in OUT (`JSON_NAME_RULE`), or None."""
    if not isinstance(name, str):
        return f"not text ({type(name).__name__})"
    if "/" in name or "\\" in name:
        return "holds a path separator (the JSON is written in OUT itself)"
    if name.startswith("."):
        return "starts with a dot (hidden: the form of the export's own journal and temporary files)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character (a NUL byte, a newline)"
    if not name.lower().endswith(".json"):
        return "does not end in .json"
    try:
        size = len(os.fsencode(name))
    except UnicodeEncodeError:
        return "is no file name (a lone surrogate)"
    if size > MAX_JSON_NAME_BYTES:
        return f"is {size} bytes long"
    return None


#: a JSON in OUT larger than this is not read to judge OUT when it is another's (an export of a million pairs lists
#: ~200 MB); the export's own JSON is read whatever its size, streamed (`_array_items`): its file names alone are held
MAX_LISTING_BYTES = 256 * 1024 * 1024
#: the most one entry of a listing may take (two paths): past it the file is no IMDL-BenCo listing
MAX_ENTRY_CHARS = 1 << 20
_CHUNK_CHARS = 1 << 20
_CHUNK_BYTES = 1 << 16         # the list is made and written 64 KB at a time
_ENTRY = ' [\n  %s,\n  %s\n ]'       # one [tp, gt] of the list as `json.dumps(indent=1)` lays it out
_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"
_AFTER_ITEM = _SPACE + ",]"


def _array_items(path: Path, chunk: int = _CHUNK_CHARS) -> Iterator[Any]:
    """The items of the JSON array in the file at `path`, one at a time, read `chunk` characters at a time: a
    listing of a million pairs was read whole (its text and every entry at once, ~1 GB for 200 MB) to learn its
    file names. ValueError when the file is not one JSON array (as `json.loads` would say), or holds an item over
    MAX_ENTRY_CHARS."""
    with open_regular(path, "r", encoding="utf-8") as handle:      # a FIFO in OUT: NotRegularFile, not a hang
        buf, pos, eof = "", 0, False

        def more() -> None:
            nonlocal buf, pos, eof
            data = handle.read(max(chunk, len(buf) - pos))     # doubles for an item longer than a chunk
            eof = not data
            buf, pos = buf[pos:] + data, 0

        def skip_space() -> str:
            """The next character that is not white space, "" at the end of the file."""
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in _SPACE:
                    pos += 1
                if pos < len(buf) or eof:
                    return buf[pos] if pos < len(buf) else ""
                more()

        if skip_space() != "[":
            raise ValueError("not a JSON array")
        pos += 1
        first = True
        while True:
            char = skip_space()
            if first and char == "]":
                pos += 1
                break
            while True:
                try:
                    item, end = _DECODER.raw_decode(buf, pos)
                    # an item may go on past the buffer ("-1." of -1.5): taken once what follows it is read
                    if eof or (end < len(buf) and buf[end] in _AFTER_ITEM):
                        break
                except json.JSONDecodeError:
                    if eof:
                        raise
                if len(buf) - pos > MAX_ENTRY_CHARS:
                    raise ValueError(f"an item over {MAX_ENTRY_CHARS} characters")
                more()
            pos = end
            yield item
            first = False
            char = skip_space()
            pos += 1
            if char == "]":
                break
            if char != ",":
                raise ValueError("expected , or ] between the items of a JSON array")
        if skip_space() != "":
            raise ValueError("extra data after the JSON array")


def _listed(path: Path, most: int | None = MAX_LISTING_BYTES) -> set[str]:
    """The Tp file names an IMDL-BenCo JSON list (`[[tp, gt], ...]`) at `path` names; empty when it is none (or is
    not there, or is over `most` bytes: a JSON in OUT may be anyone's; None: the export's own, any size). Only the
    names are held (`_array_items`)."""
    try:
        if not path.is_file() or (most is not None and path.stat().st_size > most):
            return set()
        return {Path(entry[0]).name for entry in _array_items(path)}
    except (OSError, ValueError, TypeError, IndexError, KeyError, RecursionError):
        return set()


def _foreign(out: Path, json_name: str) -> list[Path]:
    """The files in OUT's Tp/ and Gt/ that the export recorded in OUT's JSON did not write."""
    names = _listed(out / json_name, most=None)
    return sorted(p for f in FOLDERS if (out / f).is_dir() for p in (out / f).iterdir() if p.name not in names)


def _other_listing(out: Path, json_name: str, foreign: list[Path]) -> str | None:
    """The name of another JSON in OUT that lists every one of `foreign` — the JSON of an earlier export made with
    another `--json-name` — when its name is one the export may use (`checked_json_name`); else None. Only said in
    the refusal, never taken as the export's own: an IMDL-BenCo corpus (CASIA and the like) comes as Tp/ + Gt/ with
    such a JSON too, and an --overwrite that trusted any listing would delete it."""
    wanted = {p.name for p in foreign}
    for path in sorted(out.glob("*.json")):
        if path.name != json_name and _json_name_problem(path.name) is None and wanted <= _listed(path):
            return path.name
    return None


def _foreign_message(out: Path, json_name: str, foreign: list[Path]) -> str:
    """The refusal of an OUT whose Tp/ or Gt/ holds files `json_name` does not list. Before, an earlier export made
    with another `--json-name` was refused as `not a file of an earlier export` with no word of why: the message
    now names the JSON that lists them and says to pass that --json-name to replace it."""
    first = f"{foreign[0].parent.name}/{foreign[0].name} (and {len(foreign) - 1} more)"
    other = _other_listing(out, json_name, foreign)
    if other is not None:
        return (f"{out}: {first} is listed by {other}, not by {json_name}: an export replaces only the files its own "
                f"JSON lists. If {other} is an earlier export's, pass --json-name {other} with --overwrite to replace "
                "it (then rename the JSON if you want another name); else choose another folder")
    return (f"{out}: {first} is not a file of an earlier export ({json_name} does not list it); an export there "
            "would delete it. Choose another folder")


def _staging(out: Path, folder: str) -> Path:
    return out / f".{folder}.tmp"


def _export(run: CheckedRun, out: Path, row_filter: RowFilter | None, relative: bool, json_name: str,
            mask: str, order: str, overwrite: bool) -> dict[str, Any]:
    key = order_key(order)
    _recover_all(out, json_name)     # an export killed mid-commit: rolled back before OUT is judged
    held = [out / f for f in FOLDERS if (out / f).is_dir() and any((out / f).iterdir())]
    held += [p for p in (out / json_name,) if p.exists()]
    if held and not overwrite:
        raise InputError(f"{out} already holds an IMDL-BenCo export ({', '.join(p.name for p in held)}); pass "
                         "--overwrite to replace it, or choose another folder", code="out_not_empty")
    foreign = _foreign(out, json_name) if held else []
    if foreign:
        # Tp/ (+ Au/, Gt/) is also how CASIA-style corpora are laid out: --overwrite replaces Tp/ and Gt/ whole, so
        # files no earlier export wrote (a corpus, the user's own) would be deleted with them
        raise InputError(_foreign_message(out, json_name, foreign), code="out_not_empty")
    for folder in FOLDERS:        # staged, then swapped in whole: the old export stays until the new one is done
        for stale in (_staging(out, folder), out / f".{folder}.old"):     # left by an interrupted export
            shutil.rmtree(stale, ignore_errors=True)
        _staging(out, folder).mkdir(parents=True)
    try:
        return _write(run, out, row_filter, relative, json_name, mask, order, key)
    finally:
        for folder in FOLDERS:
            shutil.rmtree(_staging(out, folder), ignore_errors=True)
            shutil.rmtree(out / f".{folder}.old", ignore_errors=True)


def _write(run: CheckedRun, out: Path, row_filter: RowFilter | None, relative: bool, json_name: str,
           mask: str, order: str, key) -> dict[str, Any]:
    names = UniqueNames()
    kept = _Kept()
    skipped = Skipped()
    for row, pair, error in iter_pairs(run, row_filter):
        counts = row_mask_counts(row, mask)
        if counts is None:
            skipped.add(row["pair_id"], f"no {mask} mask (not a composite)")
            continue
        if pair is None:
            skipped.add(row["pair_id"], error or "unreadable")
            continue
        name = names(row)
        gt_mask = decode_rle({"size": [row["height"], row["width"]], "counts": counts})
        # fsynced: the journal `_commit` writes vouches for them (`_sync_staged`)
        for folder, image in (("Tp", pair.edited), ("Gt", gt_mask.astype(np.uint8) * 255)):
            _write_staged(image, out, folder, f"{name}.png")
        kept.add(name, bool(gt_mask.any()), key({"confidence": row["confidence"]}) if key is not None else None)
    if not len(kept):
        raise nothing_to_export(skipped, row_filter)
    listing = _Listing(kept, out, relative, sort=key is not None)
    _commit(out, json_name, listing)
    return {"out": str(out), "json": str(out / json_name), "pairs": len(kept), "positives": kept.positives,
            "negatives": len(kept) - kept.positives, "mask": mask, "order": order,
            "unfinished_shards": run.unfinished_shards(), **skipped.report()}


def _write_staged(image: np.ndarray, out: Path, folder: str, name: str) -> None:
    """One PNG into the staged `folder`; a write the system refuses (a full disk, a quota, a file size limit) is said
    of the file the user will find, `OUT/Tp/NAME.png`: it named the hidden staging folder
    (`out_of_space: No space left on device: OUT/.Tp.tmp/NAME.png`), a path that is gone once the export has failed."""
    try:
        write_png(image, _staging(out, folder) / name, durable=True)
    except OSError as exc:
        if exc.filename is None or not str(exc.filename).startswith(str(_staging(out, folder))):
            raise
        raise OSError(exc.errno, exc.strerror, str(out / folder / name)) from exc


class _Kept:
    """The kept pairs as the JSON list needs them: each file name (one NUL-separated byte string), whether its mask
    is empty, its sort key. The export held a dict per pair (two absolute paths in a list, its confidence) until its
    end, then the whole list as one string and the sorted names for the journal beside it: ~1 KB a pair at its
    peak, 1 GB for a million. Now ~40 bytes a pair; the list is written from these (`_Listing`)."""

    def __init__(self) -> None:
        self.names = bytearray()
        self.ends = array("q")           # where each name ends in `names`
        self.negative = bytearray()      # 1: an empty mask ("Negative")
        self.keys = array("d")           # order_key as one float: no confidence is +inf, last either way
        self.positives = 0

    def __len__(self) -> int:
        return len(self.ends)

    def add(self, name: str, positive: bool, key: tuple[bool, float] | None) -> None:
        self.names += name.encode("utf-8", "surrogateescape") + b"\0"
        self.ends.append(len(self.names) - 1)
        self.negative.append(0 if positive else 1)
        self.positives += positive
        self.keys.append(0.0 if key is None else math.inf if key[0] else key[1])

    def name(self, i: int) -> str:
        start = self.ends[i - 1] + 1 if i else 0
        return self.names[start:self.ends[i]].decode("utf-8", "surrogateescape")

    def order(self, sort: bool) -> Iterable[int]:
        """The pairs in output order: as kept, or by their key (stable: ties keep their corpus order)."""
        if not sort:
            return range(len(self))
        return (int(i) for i in np.argsort(np.frombuffer(self.keys, dtype=np.float64), kind="stable"))


class _Listing:
    """The JSON list `[[tp, gt|"Negative"], ...]` of `kept`, made piece by piece (`chunks`) as often as it is read —
    hashed for the journal, then written — byte for byte what `dumps_finite(list, indent=1)` made of it whole."""

    def __init__(self, kept: _Kept, out: Path, relative: bool, sort: bool):
        self.kept, self.sort = kept, sort
        # where the files are once swapped in, as `str(OUT / "Tp" / NAME)` (or relative to OUT) says them: a name is
        # one plain path component (`safe_name`), so the folder's path and the name are joined as strings
        self.tp, self.gt = (str(Path(folder) if relative else out / folder) + "/" for folder in FOLDERS)

    def chunks(self, size: int = _CHUNK_BYTES) -> Iterator[bytes]:
        parts: list[str] = []
        held = 0
        for n, i in enumerate(self.kept.order(self.sort)):
            name = self.kept.name(i)
            gt = "Negative" if self.kept.negative[i] else f"{self.gt}{name}.png"
            part = (",\n" if n else "[\n") + _ENTRY % (json.dumps(f"{self.tp}{name}.png"), json.dumps(gt))
            parts.append(part)
            held += len(part)
            if held >= size:
                yield "".join(parts).encode()
                parts, held = [], 0
        parts.append("\n]")
        yield "".join(parts).encode()

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def write(self, path: Path | int) -> None:
        with open(path, "wb") as handle:
            for chunk in self.chunks():
                handle.write(chunk)

    def write_journal(self, json_name: str, digest: str) -> Callable[[Path], None]:
        """The journal's writer (`_commit`): `{"json": NAME, "sha256": HEX, "names": [...]}`, its names streamed."""
        def write(path: Path) -> None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(f'{{"json": {json.dumps(json_name)}, "sha256": {json.dumps(digest)}, "names": [')
                for i in range(len(self.kept)):
                    handle.write(f'{", " if i else ""}{json.dumps(f"{self.kept.name(i)}.png")}')
                handle.write("]}")
        return write


def _journal(out: Path, json_name: str) -> Path:
    """`.JSON-journal`: written (synced) before Tp/ and Gt/ are swapped in, removed once the JSON listing them is.
    No name the temp-file sweeps take (`.NAME.PID.RANDOM.tmp`, `.pending`): it must outlive the export it marks."""
    return out / f".{json_name}-journal"


def _commit(out: Path, json_name: str, listing: _Listing) -> None:
    """Swap the complete staged Tp/ and Gt/ in, then write the JSON (the commit point), under a journal that says
    which folders are this export's until the JSON lists them. Before, an export killed between the swap and the
    JSON's rename left OUT with new Tp/ and Gt/ that no JSON listed: every later export was refused (`out_not_empty`,
    and with --overwrite "not a file of an earlier export") until the user deleted OUT by hand. Now the next export
    of OUT rolls the half-finished one back (`_recover`) and goes on as if it had never run."""
    _sync_staged(out)
    replace_atomically(_journal(out, json_name), listing.write_journal(json_name, listing.sha256()), durable=True)
    sync_folder(out)
    try:
        for folder in FOLDERS:
            if (out / folder).exists():
                (out / folder).replace(out / f".{folder}.old")     # removed on the way out
            _staging(out, folder).replace(out / folder)
        sync_folder(out)
        # a file of OUT's, which the export holds: a FIFO or device of its name (a link to one) is replaced like
        # a file (as export hf's README.md), never written into — `--overwrite` streamed the list into such a FIFO,
        # said done and left no JSON in OUT
        atomic_write_bytes(out / json_name, listing.write, stream=False)
    except BaseException:
        _recover(out, json_name)     # a JSON that cannot be written (a full disk): the earlier export back whole
        raise
    _journal(out, json_name).unlink()


def _sync_staged(out: Path) -> None:
    """The staged Tp/ and Gt/ on disk before the journal that lets a later export finish or roll back the swap: each
    PNG's bytes were fsynced as it was written (`write_png(durable=True)`); here the staging folders (the PNGs' names)
    and OUT (the staging folders' own entries). Before, the PNGs were only in the page cache when the journal was
    fsynced: a power cut after the JSON could leave a complete-looking export whose images were empty or cut short,
    and `_recover` took it as done."""
    for folder in FOLDERS:
        sync_folder(_staging(out, folder))
    sync_folder(out)


def _recover_all(out: Path, json_name: str) -> None:
    """`_recover` for the journal of `json_name`, then for every other export's journal in OUT (`.NAME-journal`,
    whatever `--json-name` it ran with). Before, only this export's JSON name was looked for: a rerun with another
    `--json-name` did not see a killed export's journal — refused (`out_not_empty`) with its swapped-in Tp/ and Gt/,
    or, killed before its swap, run beside the stale journal, which a later export under the killed one's name then
    "rolled back", moving the finished export's Tp/ and Gt/ away and removing them."""
    _recover(out, json_name)
    for journal in sorted(out.glob(".*-journal")):
        name = journal.name[1:-len("-journal")]
        if name != json_name:
            _recover(out, name)


def _recover(out: Path, json_name: str) -> None:
    """An export of OUT killed after its journal (`_commit`): when its JSON was written it is done (only the journal
    and the old folders stay to remove); otherwise Tp/ and Gt/ are put back as they were before it (the swapped-in
    folders moved back to staging, which the export removes; the earlier export's back from `.X.old`). Every step
    is a rename that a rerun skips once made, so a kill here too is finished by the next export. A swapped-in
    folder holding a file the journal does not name (put there by someone since) is not moved: `out_not_empty`."""
    path = _journal(out, json_name)
    try:
        if path.is_file() and not path.is_symlink():
            with open_regular(path) as handle:        # a FIFO swapped in after the check: not a journal of ours
                journal = json.loads(handle.read())
        else:
            journal = None
        digest, names = journal["sha256"], set(journal["names"])
    except (OSError, ValueError, TypeError, KeyError):
        return                       # none, or not a journal of ours: left as it is
    try:        # the JSON is written once both folders are swapped in: a staging folder left means it was not
        done = (not any(_staging(out, f).exists() for f in FOLDERS)
                and sha256_file(out / json_name) == digest)        # read in blocks: a listing may be 200 MB
    except OSError:
        done = False
    if not done:
        for folder in FOLDERS:
            _roll_back(out, folder, names, path.name)
    for folder in FOLDERS:           # what is left there now is only the killed export's: gone even if OUT is refused
        for leftover in (_staging(out, folder), out / f".{folder}.old"):
            shutil.rmtree(leftover, ignore_errors=True)
    path.unlink(missing_ok=True)


def _roll_back(out: Path, folder: str, names: set[str], journal: str) -> None:
    """Put `folder` back as it was before the swap of a killed export (see `_recover`)."""
    new, staged, old = out / folder, _staging(out, folder), out / f".{folder}.old"
    if not staged.exists() and new.is_dir() and not new.is_symlink():     # swapped in: the killed export's
        foreign = sorted(p.name for p in new.iterdir() if p.name not in names)
        if foreign:
            raise InputError(f"{out}: {folder}/{foreign[0]} is not a file of the export killed there (its journal "
                             f"{journal} does not name it); move it away, or choose another folder",
                             code="out_not_empty")
        new.replace(staged)
    if old.is_dir() and not new.exists():
        old.replace(new)

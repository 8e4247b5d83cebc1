"""The one reader of the `pairs.jsonl` layout (`<set>/pairs.jsonl` + images + masks), as ../shared ships it:
`sigma eval`, training's labelled folders and the batch corpus reader all find sets and read records here."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sigma.errors import InputError
from sigma.io.confine import Confinement
from sigma.io.folders import refuse_unreadable_folder, require_folder
from sigma.io.lines import read_line
from sigma.io.unfinished import UNFINISHED, refuse_unfinished
from sigma.regular import NotRegularFile, broken_link, kind_of, open_regular
from sigma.text import escape_name, find_surrogate, printable
from sigma.text import loads as load_json

MAX_RECORD_BYTES = 1 << 20     # a record (paths, an id, an instruction) is a few hundred bytes
# the folder mkfs puts at the root of an ext2/3/4 file system, root's and mode 700: never a set. A folder of sets
# that is a disk's mount point holds one, and `sigma eval --data /mnt/sets` and `sigma batch run /mnt/sets` failed
# `permission_denied` on it whatever the sets; passed over when the user may not look into it (a readable one holds
# no pairs.jsonl and is passed over as any folder without one)
FILE_SYSTEMS_OWN = "lost+found"


@dataclass(frozen=True)
class EvalRecord:
    set_name: str
    pair_id: str
    original: Path
    edited: Path
    mask: Path | None              # None: the record's mask is null (an unlabelled pair)
    instruction: str | None
    edit_type: str | None
    whole_image_changed: bool
    root: str | None = None        # the set's folder, resolved: each file is opened only inside it (`read_image`)


_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no", ""})


def _flag(value: object, name: str) -> bool:
    """A yes/no field: JSON true/false (null: false), 0/1, or those words as text (a CSV turned JSON). bool() took
    the text "false" for true: a set of such records became a whole-image-change set, out of the editing rows."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _record_problem(rec: object) -> str | None:
    """What makes a parsed line no record, in words: a line that was a list or a string read as
    "string indices must be integers", and `"original": null` became the file "None" (file_not_found)."""
    if not isinstance(rec, dict):
        return f"a JSON {_json_type(rec)}, not an object"
    pair_id = rec.get("id")
    if isinstance(pair_id, float):       # 1.5, 1e400 (read as inf): "a JSON number, not text or a number" said nothing
        return f"id is the JSON number {pair_id!r}, not a whole one; an id is text or a whole number"
    if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)):
        return "no id" if pair_id is None else f"id is a JSON {_json_type(pair_id)}, not text or a whole number"
    for name in ("original", "edited", "mask"):
        value = rec.get(name)
        if name == "mask" and value in (None, ""):
            if name not in rec:
                return "no mask (null when the pair has none)"
            continue           # an unlabelled pair (training's `labelled: false` sources); eval skips it, saying so
        if not isinstance(value, str) or not value:
            return f"no {name}" if value in (None, "") else f"{name} is a JSON {_json_type(value)}, not a file name"
    return None


def _json_type(value: object) -> str:
    kinds = ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "array"), (dict, "object"))
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


class UnreadableManifest(InputError):
    """A set's `pairs.jsonl` that is there but is no file to read (`refuse_unreadable_manifest`): the batch's
    format detection (`sigma.io.corpora.manifest.find_sets`) says it too, rather than look for another format."""


def refuse_unreadable_manifest(manifest: Path) -> None:
    """An UnreadableManifest when something stands at `manifest` that is no regular file: a FIFO, a device, a folder
    (`not_a_regular_file`), a broken link or a link loop (`file_not_found`, in `broken_link`'s words). Such a set was
    "no pairs.jsonl here or in its sub-folders" (`no_pairs`) on its own, and in a folder of sets was passed over
    without a word: its pairs missing from every table. Nothing is opened (a FIFO's open would block). A set's
    folder the user may not look into (`chmod 000`, no `x`) is `permission_denied` naming it: `lexists` said "not
    there", so it was passed over as well, or `no_pairs` alone."""
    try:
        os.lstat(manifest)
    except PermissionError:
        raise UnreadableManifest(f"{manifest.parent}: permission denied (the folder cannot be looked into); a set's "
                                 "folder must be readable to you (chmod u+rx)", code="permission_denied") from None
    except (OSError, ValueError):
        return
    if manifest.is_file():
        return
    gone = broken_link(manifest)
    if gone is not None:
        raise UnreadableManifest(f"{manifest}: {gone.strerror}; a set's manifest must be a file",
                                 code="file_not_found")
    raise UnreadableManifest(f"{manifest}: not a regular file ({kind_of(manifest)}); a set's manifest must be a "
                             "file", code="not_a_regular_file")


def find_sets(data: str | Path) -> list[Path]:
    """`data` is one set (holds pairs.jsonl) or a folder of sets; sets are returned sorted by name. A `data` that is
    there but no folder (a file, a FIFO, /dev/zero) is `not_a_folder` (`require_folder`): it was "evaluation folder
    not found", then `file_not_found` for a file and `not_a_regular_file` for a FIFO."""
    data = Path(data)
    if data.is_file() and data.name == "pairs.jsonl":   # the manifest itself: its folder is the set
        data = data.parent
    if data.exists() and not data.is_dir() and data.name == "pairs.jsonl":
        raise InputError(f"{data}: not a regular file ({kind_of(data)}); a manifest must be a file",
                         code="not_a_regular_file")
    # not `listed`: a set's folder is read through its pairs.jsonl (mode 311 will do); a folder of sets is listed below
    require_folder(data, "expected a set's folder (holding pairs.jsonl), a folder of sets, or a set's pairs.jsonl",
                   missing="evaluation folder not found", listed=False)
    refuse_unfinished(data)         # a killed `sigma synth`: no pairs.jsonl, or the one it had not yet withdrawn
    refuse_unreadable_manifest(data / "pairs.jsonl")
    if (data / "pairs.jsonl").is_file():
        return [data]
    refuse_unreadable_folder(data)      # a folder of sets, listed: glob saw none in one of mode 311 (no_pairs)
    for marked in sorted(data.glob(f"*/{UNFINISHED}")):      # one set of the folder unfinished: not passed over
        refuse_unfinished(marked.parent)
    with os.scandir(data) as entries:     # glob() lists no broken link or link loop: those sets were passed over too
        for manifest in sorted(Path(entry.path) / "pairs.jsonl" for entry in entries if entry.is_dir()):
            try:
                refuse_unreadable_manifest(manifest)
            except UnreadableManifest as exc:
                if not (exc.code == "permission_denied" and manifest.parent.name == FILE_SYSTEMS_OWN):
                    raise
    # regular files only (as the set itself above): a pairs.jsonl that is a FIFO hung the read for ever, one
    # that links to /dev/zero was read as one endless line
    sets = sorted(p.parent for p in data.glob("*/pairs.jsonl") if p.is_file())
    if not sets:
        raise InputError(f"{data}: no pairs.jsonl here or in its sub-folders (expected <set>/pairs.jsonl)",
                         code="no_pairs")
    return sets


def open_manifest(manifest: Path) -> BinaryIO:
    """`manifest` opened for reading if it is a regular file. `find_sets` passes over anything else, but a FIFO put in
    its place after that check hung a plain `open()` for ever; refused here as a set without one is (no_pairs).
    One the user may not read is `permission_denied`, naming it."""
    try:
        return open_regular(manifest, "rb")
    except PermissionError:     # was os_error, unlike the set's images (file_unreadable) and folder (above)
        raise InputError(f"{manifest}: permission denied; a set's pairs.jsonl must be readable to you (chmod u+r)",
                         code="permission_denied") from None
    except NotRegularFile as exc:
        raise InputError(f"{manifest}: not a regular file ({exc.kind}); a manifest must be a file",
                         code="not_a_regular_file") from None


def inside_set(set_dir: Path, confinement: Confinement, name: str, value: str, where: str) -> Path:
    """`set_dir / value` if it lies inside the set's folder, else `path_outside_root` (nothing read). A set is a
    folder others hand around (a download, a shared eval set): a record naming `../../home/u/.ssh/id_rsa.png`, an
    absolute path, or a link in the folder to elsewhere made `sigma eval` and `sigma train` (`eval.data`, `sources`)
    open that file and score or train on it. The test is the batch API's (`..` and links resolved, `Confinement`:
    each folder once); the path kept is the one the record names, so messages say it as the user wrote it."""
    path = set_dir / value
    if confinement.resolved(str(path)) is None:
        raise InputError(printable(f"{where}: {name} {value[:300]!r} lies outside the set's folder {set_dir} (`..`, "
                                   "an absolute path or a link to elsewhere); a pairs.jsonl names files inside its "
                                   "own folder: move the file in (or copy it), then name it from there"),
                         code="path_outside_root")
    return path


def read_set(set_dir: Path) -> Iterator[EvalRecord]:
    """Every record, or an InputError naming the line: a record that is not JSON, lacks a field, holds text
    that cannot be written (a lone UTF-16 surrogate: the first print or hash of it would raise), names a
    file with a NUL byte or a file outside the set's folder (`inside_set`) stops the read, as a malformed
    manifest should, instead of failing somewhere later. So does a record longer than MAX_RECORD_BYTES, read no
    further than that (a 300 MB line took 1.2 GB and became a 300 MB pair id in metrics.json; an endless one, a
    MemoryError traceback)."""
    manifest = set_dir / "pairs.jsonl"
    confinement = Confinement(set_dir)
    # a folder name of non-UTF-8 bytes (0xFF: Python's lone surrogate U+DCFF) is the set's name escaped, `s\udcff`:
    # raw, it reached metrics.json as a lone-surrogate escape strict JSON readers refuse, and the printed table
    # failed `invalid_text` on any stdout that is not surrogate-escaping; a folder named `s\udcff` in plain text is
    # `s\\udcff` (`escape_name`), or its set and the 0xFF one were scored as one
    set_name = escape_name(set_dir.name)
    with open_manifest(manifest) as handle:
        for line_no, raw in enumerate(iter(lambda: read_line(handle, MAX_RECORD_BYTES + 1), b""), 1):
            where = f"{manifest}:{line_no}"
            if len(raw) > MAX_RECORD_BYTES:
                raise InputError(f"{where}: a record longer than {MAX_RECORD_BYTES} bytes; not a pairs.jsonl "
                                 "record", code="bad_manifest")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})",
                                 code="bad_manifest") from exc
            if line_no == 1:
                line = line.removeprefix("\ufeff")    # the byte-order mark Notepad and PowerShell write
            if not line.strip():
                continue
            try:
                rec = load_json(line)
                problem = _record_problem(rec)
                if problem:
                    raise InputError(f"{where}: {problem}; expected an object with id, original, edited, mask",
                                     code="bad_manifest")
                field = find_surrogate(rec)
                if field is not None:
                    raise InputError(f"{where}: {field} holds a lone UTF-16 surrogate (e.g. \\ud800), text no "
                                     "file or terminal can hold; fix the record", code="invalid_text")
                files = {name: rec[name] for name in ("original", "edited", "mask") if rec[name]}
                for name, value in files.items():
                    if "\x00" in value:
                        raise InputError(f"{where}: {name} names a path with a NUL byte", code="invalid_path")
                paths = {name: inside_set(set_dir, confinement, name, value, where) for name, value in files.items()}
                yield EvalRecord(
                    set_name=set_name, pair_id=str(rec["id"]), original=paths["original"],
                    edited=paths["edited"], mask=paths.get("mask"),
                    instruction=rec.get("instruction") or None, edit_type=rec.get("edit_type"),
                    whole_image_changed=_flag(rec.get("whole_image_changed"), "whole_image_changed"),
                    root=confinement.real_root)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise InputError(f"{where}: bad record ({exc})", code="bad_manifest") from exc

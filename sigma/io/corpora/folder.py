"""A folder of image pairs: `<id>_original.<ext>` + `<id>_edited.<ext>` side by side, or two sub-folders
(`original/`, `edited/`) matched by file stem; optional `<id>_mask.*` / `mask/` ground truth and an
instructions file (`instructions.jsonl` with {"id", "instruction"}, `instructions.json` {id: text} or
`instructions.csv` with id,instruction).
"""
from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from sigma.errors import InputError
from sigma.io.corpora.base import Corpus, Shard, SourceItem, safe_name
from sigma.io.folders import require_folder
from sigma.io.lines import read_line
from sigma.io.pairs_jsonl import MAX_RECORD_BYTES
from sigma.io.unfinished import refuse_unfinished
from sigma.regular import NotRegularFile, open_regular
from sigma.text import loads as load_json

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
# image formats a user's corpus plausibly holds that sigma does not read: a pair whose image has one of these is
# listed with an `unsupported_format` error instead of vanishing from the run (both halves GIF: no row at all) or
# being reported as `file_not_found` beside the very file; other files (README.txt, .DS_Store) are not pairs
UNREAD_IMAGE_EXTS = {".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".svg", ".ico", ".psd", ".exr",
                     ".hdr", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"}
# matched whole (`fullmatch`) and across line breaks (DOTALL): `.` stops at a newline and `$` matches before a trailing
# one, so `new\nline_original.png` was no pair at all (its row missing from the run, unsaid) and `x_original\n.png`
# was read as `x`'s original
_SUFFIX = re.compile(r"(?P<id>.+)_(?P<role>original|edited|mask)", re.DOTALL)
INSTRUCTION_FILES = ("instructions.jsonl", "instructions.json", "instructions.csv")
# instructions.json is one object, read whole (and held ~10x in Python): 1M pairs of 200-character instructions
# are ~250 MB. instructions.jsonl is read a line at a time, each at most MAX_RECORD_BYTES, like every manifest.
MAX_INSTRUCTIONS_JSON_BYTES = 256 * 1024 * 1024
ROLES = ("original", "edited", "mask")


def id_key(pair_id: str) -> str:
    """What two spellings of one id share: its Unicode NFC form. macOS writes file names decomposed (NFD: `e` +
    U+0301 for `é`) while a script writing instructions.jsonl, or the other half of a corpus copied another way,
    keeps them composed; byte for byte, `café` was two ids."""
    return unicodedata.normalize("NFC", pair_id)


def _not_a_file(file: Path) -> InputError:
    """The refusal of an instructions file that is no regular file, found by `is_file()` or by the open itself."""
    return InputError(f"{file}: not a regular file (a FIFO, a device, a folder or a broken link); an instructions "
                      "file must be a file", code="bad_manifest")


def looks_like_pair_folder(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "original").is_dir() and (path / "edited").is_dir():
        return True
    return any(_SUFFIX.fullmatch(p.stem) and p.suffix.lower() in IMAGE_EXTS | UNREAD_IMAGE_EXTS for p in path.iterdir())


class FolderCorpus(Corpus):
    format = "folder"

    def __init__(self, path, columns, shard_size, preset=None):
        super().__init__(path, columns, shard_size, preset)
        self._index: list[tuple[str, dict[str, Path]]] | None = None
        self._instructions: dict[str, str] | None = None
        self._by_key: dict[str, str | None] | None = None     # id_key -> instruction, for ids spelled otherwise
        self._ambiguous: dict[str, dict[str, list[Path]]] = {}     # id -> role -> the files found for it

    def _dirs(self) -> tuple[Path, Path, Path] | None:
        # --columns names these folders (and POST /v1/batches takes `columns`): a confined run must not list
        # /etc through {"original": "/etc"} (the pair ids are the file names it finds)
        o = self.confine(self.path / self.columns.get("original", "original"), "--columns original")
        e = self.confine(self.path / self.columns.get("edited", "edited"), "--columns edited")
        if o.is_dir() and e.is_dir():
            return o, e, self.confine(self.path / self.columns.get("mask", "mask"), "--columns mask")
        return None

    def index(self) -> list[tuple[str, dict[str, Path]]]:
        """Sorted (id, {role: path}); an id with only one side is kept so its error is reported. Files are matched
        by their id's spelling, and across spellings by `id_key` (Unicode NFC) when that is unambiguous: `café`
        composed for one image and decomposed for the other is one pair, named as its original's file spells it
        (else its edited image's); two images of one role spelled both ways stay two pairs, as before."""
        if self._index is not None:
            return self._index
        listed: dict[str, dict[str, list[tuple[str, Path]]]] = {}    # id_key -> role -> (spelling, file)

        unread: list[tuple[str, str, Path]] = []      # (id, role, file) in a format sigma does not read

        def add(pair_id: str, role: str, p: Path) -> None:
            if p.suffix.lower() in IMAGE_EXTS:
                listed.setdefault(id_key(pair_id), {}).setdefault(role, []).append((pair_id, p))
            elif p.suffix.lower() in UNREAD_IMAGE_EXTS and role != "mask":
                unread.append((pair_id, role, p))

        # --format folder skips detection: iterdir() said `os_error: Not a directory`; a file there was `no_pairs`
        require_folder(self.path, "a folder corpus is a folder of <id>_original / <id>_edited files or of original/ "
                       "+ edited/ folders", missing="no such folder; a folder corpus is a folder of <id>_original / "
                       "<id>_edited files or of original/ + edited/ folders", missing_code="no_pairs")
        refuse_unfinished(self.path)  # a killed `sigma synth` rewrite: a new original beside an earlier edited image
        dirs = self._dirs()
        if dirs:
            for role, folder in zip(ROLES, dirs):
                if folder.is_dir():
                    for p in sorted(folder.iterdir()):
                        if p.is_file():
                            add(p.stem, role, p)
        else:
            for p in sorted(self.path.iterdir()):
                m = _SUFFIX.fullmatch(p.stem)
                if m and p.is_file():
                    add(m["id"], m["role"], p)
        for pair_id, role, p in unread:       # only where no readable file holds that image (p_edited.png wins)
            roles = listed.setdefault(id_key(pair_id), {})
            if role not in roles:
                roles[role] = [(pair_id, p)]
        if not listed:
            raise InputError(f"{self.path}: no <id>_original.* / <id>_edited.* files and no original/ + edited/ "
                             "folders", code="no_pairs")
        found: dict[str, dict[str, Path]] = {}
        self._ambiguous = {}
        for roles in listed.values():
            one = all(len({name for name, _ in files}) == 1 for files in roles.values())   # one spelling a role
            merged = next(roles[r][0][0] for r in ROLES if r in roles) if one else None
            for role, files in roles.items():
                for name, path in files:
                    pair_id = name if merged is None else merged
                    # two files for one role (p_original.png and p_original.jpg): whichever the disk listed last
                    # won, so a copy of the corpus on another disk could annotate the other image; now the pair's
                    # error
                    held = found.setdefault(pair_id, {})
                    if role in held:
                        self._ambiguous.setdefault(pair_id, {}).setdefault(role, [held[role]]).append(path)
                    held[role] = path
        self._index = sorted(found.items())
        return self._index

    def instructions(self) -> dict[str, str]:
        if self._instructions is not None:
            return self._instructions
        out: dict[str, str] = {}
        name = self.columns.get("instruction")
        candidates = [self.confine(self.path / name, "--columns instruction")] if name else [
            self.path / n for n in INSTRUCTION_FILES]
        for file in candidates:
            if not file.is_file():
                # a FIFO, a device (a link to /dev/zero), a folder or a broken link of that name was passed over in
                # silence: every pair ran without its instruction. Refused, as an unreadable instructions file is
                if os.path.lexists(file):
                    raise _not_a_file(file)
                continue
            try:
                if file.suffix == ".jsonl":
                    with open_regular(file, "rb") as handle:
                        for line in iter(lambda: read_line(handle, MAX_RECORD_BYTES + 1), b""):
                            if len(line) > MAX_RECORD_BYTES:
                                raise ValueError(f"a line longer than {MAX_RECORD_BYTES} bytes")
                            if line.strip():
                                rec = load_json(line)
                                out[str(rec["id"])] = rec.get("instruction")
                elif file.suffix == ".json":
                    if file.stat().st_size > MAX_INSTRUCTIONS_JSON_BYTES:
                        raise ValueError(f"{file.stat().st_size} bytes, more than {MAX_INSTRUCTIONS_JSON_BYTES} "
                                         "in one JSON object; write instructions.jsonl, one line per pair")
                    with open_regular(file, "rb") as handle:
                        out.update({str(k): v for k, v in load_json(handle.read()).items()})
                else:
                    with open_regular(file, "r", newline="", encoding="utf-8") as handle:
                        for rec in csv.DictReader(handle, strict=True):   # an unclosed quote: an error
                            out[str(rec["id"])] = rec.get("instruction") or None
            except NotRegularFile:      # swapped for a FIFO after is_file(): refused as above, not waited on
                raise _not_a_file(file) from None
            except (ValueError, KeyError, TypeError, AttributeError, csv.Error) as exc:
                raise InputError(f"{file}: unreadable instructions file ({exc}); expected {{'id', 'instruction'}} "
                                 "records", code="bad_manifest") from exc
            break
        self._instructions = out
        return out

    def instruction(self, pair_id: str) -> str | None:
        """The instruction the file gives `pair_id`: under its own spelling, else under another spelling of it
        (`id_key`) when the file has only one (two spellings of one id with two texts: neither is guessed)."""
        texts = self.instructions()
        if pair_id in texts:
            return texts[pair_id]
        if self._by_key is None:
            spellings: dict[str, list[str]] = {}
            for name in texts:
                spellings.setdefault(id_key(name), []).append(name)
            self._by_key = {key: texts[names[0]] for key, names in spellings.items() if len(names) == 1}
        return self._by_key.get(id_key(pair_id))

    def plan(self) -> list[Shard]:
        ids = self.index()
        self.instructions()   # an unreadable instructions file is the corpus's error, before any shard runs
        shards = []
        for start in range(0, len(ids), self.shard_size):
            end = min(start + self.shard_size, len(ids))
            key = safe_name(f"pairs.{start:07d}-{end - 1:07d}")
            shards.append(Shard(len(shards), key, {"start": start, "end": end, "first_id": ids[start][0]},
                                end - start))
        return shards

    def read(self, shard: Shard) -> Iterator[SourceItem]:
        ids = self.index()
        self.instructions()
        a, b = int(shard.ref["start"]), int(shard.ref["end"])
        if b > len(ids) or ids[a][0] != shard.ref.get("first_id", ids[a][0]):
            raise InputError(f"{self.path}: folder changed since the run was planned (shard {shard.key})",
                             code="corpus_changed")
        for index, (pair_id, files) in enumerate(ids[a:b]):
            item = SourceItem(index=index, pair_id=pair_id, source=str(files.get("original") or files.get("edited")),
                              instruction=self.instruction(pair_id))
            item.original_path = str(files["original"]) if "original" in files else None
            item.edited_path = str(files["edited"]) if "edited" in files else None
            item.mask_path = str(files["mask"]) if "mask" in files else None
            missing = [r for r in ("original", "edited") if r not in files]
            if missing:
                item.error = ("file_not_found", f"{pair_id}: no {' and no '.join(missing)} image found")
            unread = [files[r].name for r in ("original", "edited")
                      if r in files and files[r].suffix.lower() not in IMAGE_EXTS]
            if unread:
                item.error = ("unsupported_format", f"{pair_id}: {' and '.join(unread)}: a format sigma does not "
                              f"read (it reads {', '.join(sorted(IMAGE_EXTS))}); convert it, e.g. to PNG")
            twice = self._ambiguous.get(pair_id, {})
            if "mask" in twice:             # which ground truth? none, rather than the one the disk listed last
                item.mask_path = None
            images = [p.name for role in ("original", "edited") for p in twice.get(role, [])]
            if images and not missing:
                item.error = ("ambiguous_pair", f"{pair_id}: more than one file for one image "
                              f"({', '.join(sorted(images))}); keep one")
            yield item

"""`sigma eval`'s resume: each batch of pairs scored is appended to `OUT/eval_progress.jsonl` as it ends (fsynced),
under a first line naming what the eval is (`fingerprint`: the resolved config, the annotator as built, the
perturbations, and every record with its files' sizes and mtimes). An eval of the shared set takes 11-14 minutes; a
killed one started over. The next eval on the same `--out` reads the journal and scores only the batches it lacks,
so its metrics.json is the one an uninterrupted run writes, to the last digit: a batch is resumed whole (the
annotator sees the same batches), and each score is stored as JSON's shortest round-trip repr of the float.
A journal of another eval (another config, annotator, data or sigma) is refused (`eval_changed`), never mixed in;
`--restart` starts over. The journal goes when the eval's metrics are written."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sigma.config.schema import MAX_BATCH_SIZE
from sigma.errors import InputError
from sigma.eval.metrics import ImageScore

JOURNAL = "eval_progress.jsonl"
FORMAT = 1
#: the largest journal read: a batch line is about 1 KB per pair and perturbation; far over any eval set's size
MAX_JOURNAL_BYTES = 1 << 30


def fingerprint(config: dict[str, Any], annotator: dict[str, Any], records: list[Any]) -> str:
    """What decides every number of the eval: the resolved config (data, perturbations, batch size, limit, io), the
    annotator as built (`describe()`: its config hash, weights and sigma version), and each record with its files'
    size and mtime, so a pair re-drawn or a mask fixed in between is not scored half old, half new."""
    def files(rec: Any) -> list[Any]:
        out = []
        for path in (rec.original, rec.edited, rec.mask):
            try:
                st = os.stat(path) if path is not None else None
            except OSError:
                st = None
            out.append([str(path), st.st_size if st else None, st.st_mtime_ns if st else None])
        return out

    body = {"format": FORMAT, "config": config, "annotator": annotator,
            "records": [[rec.set_name, rec.pair_id, rec.instruction, rec.whole_image_changed, files(rec)]
                        for rec in records]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _score(d: dict[str, Any] | None) -> ImageScore | None:
    return None if d is None else ImageScore(**d)


def _plain(score: ImageScore | None) -> dict[str, Any] | None:
    return None if score is None else dataclasses.asdict(score)


class Progress:
    """The journal of one eval in `out`: `done` (per (perturbation, start of batch), what that batch gave), `add`
    appends one. Open it with `Progress.open` while holding `out` (`hold_folder`): one writer."""

    def __init__(self, path: Path, fp: str, done: dict[tuple[str, int], dict[str, Any]], started: bool) -> None:
        self.path, self.fp, self.done, self.started = path, fp, done, started

    @classmethod
    def open(cls, out: Path, fp: str, restart: bool = False) -> Progress:
        """The journal for fingerprint `fp`: read and continued when it is this eval's; `eval_changed` when it is
        another eval's. None there (or `restart`): it is made when the first batch ends, so an eval refused before
        scoring anything (a perturbation unavailable) leaves no journal, nor a folder it made. A last line cut by a
        kill is dropped."""
        path = out / JOURNAL
        done: dict[tuple[str, int], dict[str, Any]] = {}
        if not restart and (path.exists() or path.is_symlink()):
            good = _read(path, fp, done)
            if good is not None:
                with open(path, "r+b") as fh:       # a line a kill cut short: gone before the next is appended
                    fh.truncate(good)
                return cls(path, fp, done, started=True)
        return cls(path, fp, done, started=False)

    def add(self, perturbation: str, start: int, rows: list[dict[str, Any]], errors: list[dict[str, Any]]) -> None:
        """One batch's result, on disk (fsynced) before the next batch starts; the journal's header first."""
        from sigma.tempfiles import no_room_said_of, replace_atomically, sync_folder

        if not self.started:
            header = json.dumps({"sigma_eval_progress": FORMAT, "fingerprint": self.fp}) + "\n"
            self.path.unlink(missing_ok=True)         # --restart: another eval's journal, or a symbolic link
            replace_atomically(self.path, header.encode(), durable=True)
            sync_folder(self.path.parent)
            self.started = True
        line = json.dumps({"perturbation": perturbation, "start": start, "rows": rows, "errors": errors}) + "\n"
        # a full disk mid-line leaves a line cut short, which the next run drops (`_read`) and scores again
        with no_room_said_of(self.path), open(self.path, "ab") as fh:
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self) -> None:
        """The eval's metrics are written: its journal is not needed again."""
        self.path.unlink(missing_ok=True)


def _read(path: Path, fp: str, done: dict[tuple[str, int], dict[str, Any]]) -> int | None:
    """Fill `done` from the journal at `path`; the byte length of its whole lines, or None when it holds no header
    (killed before the header was written whole: started anew). `eval_changed` when it is another eval's."""
    if not path.is_file() or path.is_symlink():
        raise InputError(f"{path}: not the progress journal an eval writes (not a regular file); remove it or give "
                         "another --out", code="eval_changed")
    if path.stat().st_size > MAX_JOURNAL_BYTES:
        raise InputError(f"{path}: over {MAX_JOURNAL_BYTES} bytes, not a journal an eval writes; remove it, pass "
                         "--restart, or give another --out", code="eval_changed")
    good = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh):
            if not raw.endswith(b"\n"):
                break                                   # cut by a kill mid-write
            try:
                entry = json.loads(raw)
            except ValueError:
                break
            if n == 0:
                if not isinstance(entry, dict) or entry.get("sigma_eval_progress") is None:
                    raise InputError(f"{path}: not the progress journal an eval writes; remove it, pass --restart, "
                                     "or give another --out", code="eval_changed")
                if entry.get("fingerprint") != fp:
                    if finished_beside(path, path.parent / "metrics.json", fh):
                        return None     # an eval's whole journal beside its metrics: started anew, replaced
                    raise InputError(f"{path}: the progress of an unfinished eval of other settings, annotator or "
                                     "data (changed since it was killed?); this eval would mix its results with "
                                     "those. Run that eval again to finish it, pass --restart to drop its progress "
                                     "and start over, or give another --out", code="eval_changed")
            elif isinstance(entry, dict) and {"perturbation", "start", "rows", "errors"} <= entry.keys():
                _check_batch(path, entry)
                done[(entry["perturbation"], entry["start"])] = entry
            else:
                break
            good += len(raw)
    return good or None


def finished_beside(journal: Path, metrics: Path, batches: Iterable[bytes]) -> bool:
    """Whether `journal` is that of the eval whose `metrics` are written: complete and matching, so it is stale.
    `batches`: the journal's lines after its header, from the handle `_read` read the header with (the journal was
    opened again here and its header parsed a second time). An eval killed between putting its metrics.json in place
    and removing its journal (sigma before the journal's removal was part of the metrics' set) left both, and a rerun
    with other settings was refused `eval_changed` until --restart, for an eval that had finished. Matching:
    metrics.json is no older than the journal and its per-pair rows are the journal's, perturbation by perturbation,
    in order, to the digit (F1, IoU, AUC, fractions). Anything else (an unfinished eval beside an earlier eval's
    metrics, a file that cannot be read): False."""
    try:
        if metrics.stat().st_mtime_ns < journal.stat().st_mtime_ns or metrics.stat().st_size > MAX_JOURNAL_BYTES:
            return False
        per_pair = json.loads(metrics.read_bytes())["per_pair"]
        rows: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
        for raw in batches:
            entry = json.loads(raw)
            kept = rows.setdefault(entry["perturbation"], [])
            kept.extend((entry["start"], row["index"], row["score"]) for row in entry["rows"])
        if not isinstance(per_pair, dict) or set(per_pair) != set(rows):
            return False
        for perturbation, got in rows.items():
            want = per_pair[perturbation]
            if len(want) != len(got):
                return False
            for wanted, (_, _, score) in zip(want, sorted(got, key=lambda r: r[:2])):
                if not all(_same(wanted[key], score[key]) for key in ("f1", "iou", "auc", "gt_fraction",
                                                                       "pred_fraction")):
                    return False
        return True
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False


def _same(written: Any, stored: Any) -> bool:
    """A number of metrics.json (NaN written as null) and the journal's (NaN as NaN) alike."""
    def plain(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and v != v) else v
    return plain(written) == plain(stored)


def _check_batch(path: Path, entry: dict[str, Any]) -> None:
    """`eval_changed` for a batch line that is whole JSON but not what `Progress.add` writes (edited by hand): read
    back as it is, it was a traceback, or scores put on the wrong pairs."""
    try:
        if not isinstance(entry["perturbation"], str):      # `["none"]` was a traceback: unhashable, as a key of `done`
            raise TypeError("perturbation")
        if not _whole(entry["start"]) or not all(_skipped(e, entry["perturbation"]) for e in entry["errors"]):
            raise TypeError("start or errors")
        for row in entry["rows"]:
            index = restored_row(row)[0]
            for name in ("score", "semantic", "footprint"):
                if row[name] is not None:
                    _check_score(row[name])
            if not _whole(index) or not entry["start"] <= index < entry["start"] + MAX_BATCH_SIZE:
                raise ValueError(f"index {index!r}")
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: a line that is not what an eval writes ({type(exc).__name__}: {str(exc)[:100]}): "
                         "edited since? Pass --restart to score every pair again, or give another --out",
                         code="eval_changed") from None


def _skipped(error: Any, perturbation: Any) -> bool:
    """A skipped pair as `evaluate` journals it: its set, id, perturbation (the batch's), code and message, texts.
    `{}` was a KeyError traceback where the eval prints the pairs it skipped, after the whole evaluation."""
    keys = ("set", "id", "perturbation", "code", "message")
    return (isinstance(error, dict) and all(isinstance(error.get(k), str) for k in keys)
            and error["perturbation"] == perturbation)


def _check_score(score: Any) -> None:
    """A stored ImageScore's fields of the types `score_image` gives them: `"f1": "0.5"` was a traceback at the
    tables' mean, and `"f1": true` was averaged as 1.0 (100 %) without a word."""
    numbers = ("f1", "iou", "auc", "gt_fraction", "pred_fraction")
    if (not isinstance(score["manipulated"], bool) or not isinstance(score["pair_id"], str)
            or not all(_number(score[k]) for k in numbers) or not all(_whole(score[k]) for k in ("tp", "fp", "fn"))
            or not (score.get("confidence") is None or _number(score["confidence"]))):
        raise TypeError("a score's field of another type")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value: Any) -> bool:
    """An int as JSON holds one, not a bool: `isinstance(True, int)` holds, and a `"start": true` edited in was read as
    batch 1 (True == 1 as a key) and its pair `"index": true` as pair 1: another batch's scores put on those pairs."""
    return isinstance(value, int) and not isinstance(value, bool)


def stored_row(index: int, score: ImageScore, detail: Any) -> dict[str, Any]:
    """One scored pair as the journal keeps it: the record's index in the eval's order, and every number."""
    return {"index": index, "score": _plain(score), "semantic": _plain(detail.semantic),
            "footprint": _plain(detail.footprint), "composite": detail.composite, "mask_source": detail.mask_source,
            "confidence": detail.confidence}


def restored_row(row: dict[str, Any]) -> tuple[int, ImageScore, dict[str, Any]]:
    """`stored_row` read back: the index, the score and the PairDetail's fields."""
    score = _score(row["score"])
    assert score is not None
    return row["index"], score, {"semantic": _score(row["semantic"]), "footprint": _score(row["footprint"]),
                                 "composite": row["composite"], "mask_source": row["mask_source"],
                                 "confidence": row["confidence"]}

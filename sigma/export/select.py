"""Read a run's shard manifests back, filter rows, and re-read the pairs they came from when pixels are needed.

The manifests hold masks (RLE) but not images; exports and the review page reopen the corpus recorded in
run.json and decode only the rows they keep, shard by shard, so memory stays flat.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sigma.batch.config import BatchConfig
from sigma.batch.layout import RunDir
from sigma.batch.record import FIX, MODIFIED, corpus_problem, options_note, verified_record
from sigma.errors import InputError
from sigma.io.corpora import Corpus
from sigma.io.corpora.base import Shard, SourceItem, safe_name
from sigma.io.corpora.parquet import handle_reader
from sigma.regular import NotRegularFile, open_regular
from sigma.text import printable, shown
from sigma.types import Pair, confidence_value

MASKS = ("chosen", "semantic", "footprint")
ORDERS = ("corpus", "confidence", "confidence-asc")


@dataclass(frozen=True)
class RowFilter:
    """Export-time filters. A row without a confidence fails a confidence bound (the annotator gave none).
    `composite`: True keeps only the pairs found to be composites, False only the others."""

    min_confidence: float | None = None
    max_confidence: float | None = None
    min_area: float | None = None        # fraction of the image
    max_area: float | None = None
    composite: bool | None = None
    include_errors: bool = False
    # what `keep` saw: the run's good rows, and those a confidence bound dropped for having no confidence at all
    # (`without_confidence`), so that an export or page left empty by it can say so
    seen: dict[str, int] = field(default_factory=lambda: {"ok": 0, "no_confidence": 0}, compare=False, hash=False)

    def keep(self, row: dict[str, Any]) -> bool:
        if row["status"] != "ok":
            return self.include_errors
        self.seen["ok"] += 1
        conf = confidence_value(row.get("confidence"))     # NaN < c is False: NaN passed every bound
        if conf is None and (self.min_confidence is not None or self.max_confidence is not None):
            self.seen["no_confidence"] += 1
            return False
        if self.min_confidence is not None and conf < self.min_confidence:
            return False
        if self.max_confidence is not None and conf > self.max_confidence:
            return False
        if self.composite is not None and bool(row.get("is_composite")) != self.composite:
            return False
        if self.min_area is not None and row["area_fraction"] < self.min_area:
            return False
        return not (self.max_area is not None and row["area_fraction"] > self.max_area)


class Skipped:
    """The pairs an export kept but could not export: how many, how many for each reason, and the first `EXAMPLES`
    of them (pair id and reason). A list of one dict per pair grew with the run: a `--mask footprint` export of a
    million pairs that are mostly not composites held a million dicts (~200 MB) to print 20 of them. Reasons are
    counted apart up to `REASONS` of them (an unreadable pair's reason may name it), the rest together."""

    EXAMPLES = 100
    REASONS = 100
    OTHER = "(other reasons)"

    def __init__(self) -> None:
        self.total = 0
        self.examples: list[dict[str, str]] = []
        self.by_reason: dict[str, int] = {}

    def add(self, pair_id: str, reason: str) -> None:
        self.total += 1
        if len(self.examples) < self.EXAMPLES:
            self.examples.append({"pair_id": pair_id, "reason": reason})
        if reason not in self.by_reason and len(self.by_reason) >= self.REASONS:
            reason = self.OTHER
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def __len__(self) -> int:
        return self.total

    def report(self) -> dict[str, Any]:
        """What an export returns of them: `skipped` the examples (a list of {pair_id, reason}, as the whole list
        was, so its callers read it alike), `skipped_total` every one, `skipped_by_reason` the counts."""
        return {"skipped": self.examples, "skipped_total": self.total, "skipped_by_reason": dict(self.by_reason)}


def without_confidence(row_filter: RowFilter | None) -> str:
    """Why a confidence bound kept nothing, when that is why: '' unless some of the rows `row_filter` saw had no
    confidence. An annotator without one (pixel-diff) and `--min-confidence 0.9` gave only 'no pair passes the export
    filters', or an empty review page with exit 0, as if no pair were confident enough."""
    if row_filter is None or not row_filter.seen["no_confidence"]:
        return ""
    n, ok = row_filter.seen["no_confidence"], row_filter.seen["ok"]
    which = f"none of the run's {ok} pairs has" if n == ok else f"{n} of the run's {ok} pairs have no"
    return (f"{which} a confidence (its annotator gives none{'' if n == ok else ' for them'}), and a confidence bound "
            "(--min-confidence / --max-confidence) keeps only pairs that have one")


def nothing_to_export(skipped: Skipped, row_filter: RowFilter | None = None) -> InputError:
    """The one refusal of an export that would keep no pair (every format: nothing is written, the previous
    export stays), saying why when kept pairs could not be exported, or when a confidence bound met pairs without a
    confidence (`without_confidence`)."""
    first = skipped.examples[0] if skipped else None
    why = (f"; {len(skipped)} pair(s) passed the filters but were skipped (e.g. {first['pair_id']}: "
           f"{first['reason']})" if first else "")
    unrated = without_confidence(row_filter)
    return InputError(f"no pair of the run passes the export filters: nothing to export{why}"
                      f"{'; ' + unrated if unrated else ''}", code="no_results")


def row_mask_counts(row: dict[str, Any], which: str = "chosen") -> str | None:
    """The RLE counts of one of a row's masks: `chosen` (*the* mask), `semantic`, or `footprint` (None when
    the pair is not a composite). Runs made without a composite test have only the one (semantic) mask."""
    if which not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {which!r}")
    if which == "chosen":
        return row["rle_counts"]
    if row.get("mask_mode") is None:         # no composite test ran: the mask is the semantic one
        return row["rle_counts"] if which == "semantic" else None
    return row.get(f"{which}_rle")


def order_key(order: str):
    """Sort key for ORDERS over anything with a `confidence` (None, NaN and inf: no confidence, last either way);
    None = keep order. A NaN key left the whole list in no order at all."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if order == "corpus":
        return None
    sign = -1.0 if order == "confidence" else 1.0

    def key(item: dict[str, Any]) -> tuple[bool, float]:
        conf = confidence_value(item.get("confidence"))
        return conf is None, sign * (conf or 0.0)
    return key


# columns the row schema gained after its first release: shard files written before lack them, and every reader
# takes them with row.get
LATER_COLUMNS = frozenset({"mask_mode", "mask_source", "semantic_rle", "footprint_rle", "is_composite", "composite",
                           "intended_area", "side_effect_area", "weights_sha256", "sigma_version"})


def schema_problem(schema) -> str | None:
    """What is wrong with a shard file's columns against the row schema (`sigma.batch.rows.SCHEMA_FIELDS`), or None.
    Readers index rows by these names and compare their values: a file without `confidence` was a KeyError
    traceback in every export and the review page, one whose `confidence` is text a TypeError at the first bound."""
    from sigma.batch.rows import arrow_schema

    for expected in arrow_schema():
        index = schema.get_field_index(expected.name)
        if index < 0:
            if expected.name in LATER_COLUMNS:
                continue
            return f"no column {expected.name!r}"
        if schema.field(index).type != expected.type:
            return f"column {expected.name!r} is {schema.field(index).type}, not {expected.type}"
    return None


def _whole(value: Any, low: int, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def _unit(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def row_problem(row: dict[str, Any], max_pixels: int) -> str | None:
    """What makes a shard row one no run writes, or None: the values the readers compute with, each as `ok_row` /
    `error_row` (`sigma.batch.rows`) give it. A shard edited with its status's sha256 made to match passed the
    column check (`schema_problem`) with nulls or numbers out of range in them: a `height` of 2**31-1 crashed
    the review page and the IMDL-BenCo export with a segmentation fault (the mask's decode), a negative `width`
    was an OverflowError traceback, a null `gt_tp` beside a `gt_f1` a TypeError in the page's metrics, a null
    `bbox` one in the COCO export. `max_pixels`: the run's `io.limits.max_pixels`, which every pair it annotated
    was held to."""
    if not isinstance(row.get("pair_id"), str):
        return "a row with no pair_id"
    if not _whole(row.get("index"), 0):
        return f"row of pair {row['pair_id']!r}: index {row.get('index')!r} is no row index"
    if row.get("status") not in ("ok", "error"):
        return f"row of pair {row['pair_id']!r}: status {row.get('status')!r} is neither ok nor error"
    if row["status"] != "ok":
        return None
    h, w = row.get("height"), row.get("width")
    if not (_whole(h, 1) and _whole(w, 1) and h * w <= max_pixels):
        return (f"row of pair {row['pair_id']!r}: a mask of {h!r} x {w!r} pixels (the run's pairs are at most "
                f"{max_pixels}, io.limits.max_pixels)")
    area = h * w
    bbox = row.get("bbox")
    if (not isinstance(row.get("rle_counts"), str) or not _whole(row.get("area"), 0, area)
            or not _unit(row.get("area_fraction"))
            or not (isinstance(bbox, list) and len(bbox) == 4 and all(_whole(v, 0) for v in bbox))):
        return (f"row of pair {row['pair_id']!r}: its mask (rle_counts, bbox, area, area_fraction) is not one a run "
                "writes")
    if row.get("gt_f1") is not None and not (
            all(_unit(row.get(k)) for k in ("gt_f1", "gt_iou", "gt_fraction"))
            and (row.get("gt_auc") is None or _unit(row["gt_auc"]) or math.isnan(row["gt_auc"]))
            and all(_whole(row.get(k), 0, area) for k in ("gt_tp", "gt_fp", "gt_fn"))):
        return (f"row of pair {row['pair_id']!r}: its ground-truth scores (gt_f1, gt_iou, gt_auc, gt_fraction, "
                "gt_tp/fp/fn) are not ones a run writes (a null, or a number out of range)")
    return None


# what a refusal of a run folder says was not done (every export, the review page)
NOTHING_WRITTEN = "nothing written"
# what a shard changed between an export's check and its read of the rows says (the export may have begun)
EXPORT_STOPPED = "the export stopped"


@dataclass
class CheckedRun:
    """A run folder as one export or review page reads it: run.json read once and held to its run hash
    (`sigma.batch.record.verified_record`), its corpus opened at most once and checked against the record
    (`corpus_problem`). Every reader below takes one (or a folder, checked then): run.json was read again by each
    (five times an export), unchecked, so what the dataset card said (annotator, weights, corpus) and which pairs
    the export read again were whatever run.json said at that moment."""

    rundir: RunDir
    record: dict[str, Any]
    cfg: BatchConfig
    _corpus: Corpus | None = field(default=None, repr=False)
    _outputs: list[tuple[Shard, Path]] | None = field(default=None, repr=False)

    @property
    def run_hash(self) -> str:
        return self.record["run_hash"]

    def corpus(self) -> Corpus:
        """The corpus the run was made from; an export that reads pairs asks before it writes anything."""
        if self._corpus is None:
            from sigma.batch.runner import corpus_from_config

            corpus = corpus_from_config(self.cfg)
            problem = corpus_problem(corpus, self.record)
            if problem:
                raise InputError(f"{self.rundir.run_file}: {problem}; {NOTHING_WRITTEN}. {FIX}", code=MODIFIED)
            self._corpus = corpus
        return self._corpus

    def unfinished_shards(self) -> int:
        """How many of the run's planned shards are not done: said on stderr (`warn_unfinished`) and, as
        `unfinished_shards`, in every export's summary, so a script sees a partial export too (0: the whole run)."""
        return len(self.record["shards"]) - len(self.outputs())

    def outputs(self) -> list[tuple[Shard, Path]]:
        """The finished shards and their files, each shown to hold this run's rows of that shard (its `run_hash` and
        `shard` columns, read alone), once: a shard file of another run put under this run's name (with a status to
        match) was exported as this run's masks. An export asks before it writes anything."""
        if self._outputs is None:
            outputs = self.rundir.done_outputs(self.record)
            for shard, path in outputs:
                with open_shard(path) as raw:       # one handle for the columns and the checksum
                    try:
                        handle = handle_reader(raw)
                        columns = [c for c in ("run_hash", "shard") if c in handle.schema_arrow.names]
                        table = handle.read(columns=columns, use_threads=False)
                    except (ValueError, OSError) as exc:  # ArrowInvalid is a ValueError: a file damaged in place
                        raise InputError(f"{path}: not a readable shard file ({shown(exc, 300)}): damaged since the "
                                         f"run; {NOTHING_WRITTEN}. Delete its status file and run the shard again "
                                         "(--resume)", code=MODIFIED) from exc
                    wrong = schema_problem(handle.schema_arrow)
                    if wrong:
                        raise InputError(f"{path}: {wrong}: not a shard file as the run wrote it, edited since; "
                                         f"{NOTHING_WRITTEN}. Delete its status file and run the shard again "
                                         "(--resume)", code=MODIFIED)
                    for column, own in (("run_hash", self.run_hash), ("shard", shard.key)):
                        other = set(table.column(column).to_pylist()) - {own} if column in columns else set()
                        if other:
                            raise InputError(
                                f"{path}: holds rows of {column} {shown(sorted(map(str, other))[0])!r}, not this "
                                f"run's {shown(own)!r}: a shard file moved between run folders, or edited; "
                                f"{NOTHING_WRITTEN}. Put the run's own file back, or delete its status file and run "
                                "the shard again (--resume)", code=MODIFIED)
                    self._same_as_written(shard, path, raw)
            self._outputs = outputs
        return self._outputs

    def _same_as_written(self, shard: Shard, path: Path, handle: BinaryIO, then: str = NOTHING_WRITTEN) -> None:
        """The shard file's sha256 is the one its status recorded when the run wrote it (`RunDir.as_written`). A
        finished shard was held to its size alone (`RunDir.is_done`): a file of that size with other content (damaged
        in place, its rows edited, or put there from elsewhere) was exported as this run's masks. Read once per
        export (the export reads every shard anyway); a status with no checksum is held to its size as before.
        `then`: what was (not) done, as the message says it."""
        if not self.rundir.as_written(self.rundir.status(shard) or {}, path, handle):
            raise InputError(f"{path}: not the shard file the run wrote (its sha256 differs from the one its status "
                             f"recorded): damaged or replaced since the run; {then}. "
                             "Put the run's own file back, or delete its status file and run the shard again "
                             "(--resume)", code=MODIFIED)


@contextmanager
def open_shard(path: Path, then: str = NOTHING_WRITTEN) -> Iterator[BinaryIO]:
    """A finished shard file, opened once (`open_regular`) for pyarrow to read from that handle: pyarrow opening
    the path blocked for ever on a FIFO put in the shard's place (after `RunDir.is_done` looked at it), and a shard
    gone or replaced between two reads of an export was a traceback. Either is run_modified, as a damaged shard;
    `then`: what was (not) done, as the message says it."""
    try:
        handle = open_regular(path, "rb")
    except NotRegularFile as exc:
        raise InputError(f"{path}: not a regular file (a FIFO, a device or a folder in the shard file's place): "
                         f"replaced since the run; {then}. Put the run's own file back, or delete its "
                         "status file and run the shard again (--resume)", code=MODIFIED) from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read the shard file ({shown(exc, 300)}): removed or changed since the "
                         f"run; {then}. Put the run's own file back, or delete its status file and run "
                         "the shard again (--resume)", code=MODIFIED) from exc
    with handle:
        yield handle


def checked_run(run: str | Path | CheckedRun) -> CheckedRun:
    """`run` once its run.json is shown to hold to its run hash (run_modified otherwise: nothing written)."""
    if isinstance(run, CheckedRun):
        return run
    rundir = RunDir(run)
    record, cfg = verified_record(rundir, NOTHING_WRITTEN)
    note = options_note(record, rundir.run_file)
    if note:        # read as recorded: the masks are the run's; only continuing it needs the annotator built
        print(printable(f"sigma: warning: {note}"), file=sys.stderr)
    return CheckedRun(rundir, record, cfg)


def checked_before_writing(run: str | Path | CheckedRun, corpus: bool = True) -> CheckedRun:
    """What an export or the review page checks before it writes anything: run.json held to its run hash, each
    finished shard file to the run and (`corpus`: it reads the pairs again) the corpus, opened once. Any of them
    refused is run_modified with nothing written."""
    run = checked_run(run)
    warn_unfinished(run)
    if corpus:
        run.corpus()
    return run


def warn_unfinished(run: CheckedRun) -> None:
    """One stderr line when some of the run's shards are not done (the run still running, killed, or given up on):
    an export of such a run holds the finished shards alone, and it said nothing (exit 0, a dataset card counting
    only the pairs annotated), so an export made beside a running `sigma batch run`, or of a run killed and never
    resumed, passed for the whole corpus. No line when none is done: the export is refused then (`no_results`)."""
    planned, unfinished = len(run.record["shards"]), run.unfinished_shards()
    done = planned - unfinished
    if done and unfinished:
        root = run.rundir.root
        print(printable(f"sigma: warning: {root}: {unfinished} of the run's {planned} shards are not done (the run "
                        f"is still running, was interrupted, or failed them: `sigma batch status {root}`); what is "
                        f"written holds the {done} finished ones only. Finish the run (`sigma batch run ... --resume`) "
                        "and run this again for all of them"), file=sys.stderr)


def iter_rows(run: str | Path | CheckedRun, row_filter: RowFilter | None = None
              ) -> Iterator[tuple[Shard, list[dict]]]:
    """Per finished shard: its kept rows (in shard order)."""
    run = checked_run(run)
    outputs = run.outputs()
    if not outputs:
        raise InputError(f"{run.rundir.root}: no finished shards yet (see `sigma batch status {run.rundir.root}`)",
                         code="no_results")
    row_filter = row_filter or RowFilter()
    for shard, path in outputs:
        with open_shard(path, EXPORT_STOPPED) as raw:
            # the rows read are the bytes checked: outputs() hashed the file through an earlier open (before anything
            # was written), and a regular file put in its place since was exported unchecked. One more read a shard.
            run._same_as_written(shard, path, raw, EXPORT_STOPPED)
            raw.seek(0)
            try:
                table = handle_reader(raw).read(use_threads=False)
            except (ValueError, OSError) as exc:
                raise InputError(f"{path}: not a readable shard file ({shown(exc, 300)}): changed while the export "
                                 f"read the run; {EXPORT_STOPPED}. Delete its status file and run the shard again "
                                 "(--resume)", code=MODIFIED) from exc
        rows = table.to_pylist()
        max_pixels = run.cfg.io.limits.max_pixels
        for row in rows:
            wrong = row_problem(row, max_pixels)
            if wrong:
                raise InputError(f"{path}: {shown(wrong, 300)}: not a shard file as the run wrote it, edited since; "
                                 f"{EXPORT_STOPPED}. Delete its status file and run the shard again (--resume)",
                                 code=MODIFIED)
        yield shard, [r for r in rows if row_filter.keep(r)]


def load_rows(run: str | Path | CheckedRun, row_filter: RowFilter | None = None) -> list[dict]:
    return [r for _, rows in iter_rows(run, row_filter) for r in rows]


def iter_items(run: str | Path | CheckedRun, row_filter: RowFilter | None = None
               ) -> Iterator[tuple[dict, SourceItem | None, str | None]]:
    """(row, source item, error) for every kept row, read from the corpus again shard by shard (one shard's
    items in memory at most); error when the row's pair cannot be found as it was annotated."""
    from sigma.batch.decode import writable

    run = checked_run(run)
    corpus = run.corpus()
    for shard, rows in iter_rows(run, row_filter):
        if not rows:
            continue
        wanted = {r["index"]: r for r in rows}
        seen = set()
        try:
            for item in map(writable, corpus.read(shard)):   # ids as the rows hold them (surrogates escaped)
                row = wanted.get(item.index)
                if row is None:
                    continue
                seen.add(item.index)
                if item.pair_id != row["pair_id"]:
                    yield row, None, (f"corpus changed: expected {row['pair_id']} at {row['source']}, "
                                      f"found {item.pair_id}")
                    continue
                yield row, item, None
        except InputError as exc:
            for index, row in wanted.items():
                if index not in seen:
                    yield row, None, exc.message
                    seen.add(index)
        for index, row in wanted.items():
            if index not in seen:
                yield row, None, "not found in the corpus any more"


def iter_pairs(run: str | Path | CheckedRun, row_filter: RowFilter | None = None
               ) -> Iterator[tuple[dict, Pair | None, str | None]]:
    """(row, pair, error) for every kept row, decoding from the corpus again; error when it cannot be re-read."""
    from sigma.batch.decode import decode_one

    run = checked_run(run)
    cfg = run.cfg
    for row, item, error in iter_items(run, row_filter):
        if item is None:
            yield row, None, error
            continue
        decoded = decode_one(item, cfg.io, ground_truth=False, root=cfg.input.root, made_writable=True)
        if decoded.pair is None:
            yield row, None, decoded.error[1]
            continue
        # the images the mask was made from, or none: an image replaced since the run was exported (IMDL-BenCo
        # Tp/Gt, COCO --images, the review page) with the old image's mask, as a training pair, without a word
        changed = [role for role in ("original", "edited")
                   if row.get(f"{role}_sha256") and decoded.meta.get(f"{role}_sha256") != row[f"{role}_sha256"]]
        if changed:
            yield row, None, f"the corpus changed since the run ({' and '.join(changed)}'s sha256 differs)"
            continue
        yield row, decoded.pair, None


# names Windows keeps for devices, whatever the extension or letter case: `Tp/nul.png` is no file there (a copy of
# the export onto such a disk fails, or writes into the device)
_DEVICE_NAMES = frozenset({"con", "prn", "aux", "nul", *(f"{d}{n}" for d in ("com", "lpt") for n in range(10))})


def _harmless(name: str) -> str:
    """`name` (a `safe_name`), or with `_` before it where the name itself is hazardous to a consumer: one that
    starts with `-` is read as an option by the tools the export is handed to (`ls Tp/*`, `cp * dest`, `xargs`:
    a pair `-rf` was `Tp/-rf.png`), and a Windows device name (above). A `safe_name` never starts with `_`, so the
    prefix makes no name another pair's."""
    if name.startswith("-") or name.split(".", 1)[0].casefold() in _DEVICE_NAMES:
        return f"_{name}"
    return name


class UniqueNames:
    """File names from pair ids: safe, stable, and never two pairs on one file."""

    def __init__(self):
        self.used: set[str] = set()

    def __call__(self, row: dict) -> str:
        """A taken name gets the shard and index, and then a counter while that is taken too (a pair whose
        own id is "x-<shard>-2" took the name the second "x" was then given: two pairs on one file). Names
        are compared case-folded, so "A" and "a" stay two files on a case-insensitive disk."""
        name = _harmless(safe_name(row["pair_id"], 100))
        if name.casefold() in self.used:
            base = name = f"{name}-{safe_name(row['shard'], 60)}-{row['index']}"
            n = 1
            while name.casefold() in self.used:
                n += 1
                name = f"{base}-{n}"
        self.used.add(name.casefold())
        return name

"""`sigma eval`: score an annotator on the pair layout, as is and under whole-image perturbations."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sigma.annotators.base import Annotator
from sigma.config.schema import IOConfig
from sigma.errors import InputError, SigmaError
from sigma.eval import perturb
from sigma.eval.metrics import ImageScore, MetricAccumulator, confidence_curve, score_image, spearman
from sigma.eval.progress import Progress, restored_row, stored_row
from sigma.io.images import read_mask
from sigma.io.pairs import load_pair
from sigma.io.pairs_jsonl import EvalRecord, find_sets, read_set
from sigma.text import printable
from sigma.types import confidence_value

TINY_FRACTION = 0.02
EDITING_GROUP = "editing (all but whole-image-change sets)"
CHANGE_GROUP = "whole-image-change sets"
TINY_GROUP = f"tiny edits (<{TINY_FRACTION:.0%} of the image)"
AGGREGATES = frozenset({"overall", EDITING_GROUP, CHANGE_GROUP, TINY_GROUP})


_SET_MARK = " (set)"


def set_group(set_name: str) -> str:
    """A set's row in the tables: its name, unless that is an aggregate's ("overall"), where the set's scores
    merged into the aggregate and its own row was lost without a word. Such a set's row is "overall (set)"; so
    that no other set's name is that row too (a folder named "overall (set)" beside "overall" merged into it,
    six pairs of two sets in one row), a name that is an aggregate's followed by any number of " (set)" gets
    one more: "overall (set)" is "overall (set) (set)". One row per set, whatever the names."""
    base = set_name
    while base.endswith(_SET_MARK):
        base = base[:-len(_SET_MARK)]
    return f"{set_name}{_SET_MARK}" if base in AGGREGATES else set_name


@dataclass
class PairDetail:
    """Beyond the chosen mask's score: the other mask's scores, the composite verdict and the confidence."""

    semantic: ImageScore | None = None      # the semantic mask (under a mask_mode)
    footprint: ImageScore | None = None     # the synthesised footprint (composites only)
    composite: bool | None = None           # None: the annotator ran no composite test
    mask_source: str | None = None          # what the chosen mask is: semantic | footprint
    confidence: float | None = None


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


@dataclass
class EvalResult:
    # scores[perturbation] = list of (record, score of the chosen mask); details[perturbation] aligned with it
    scores: dict[str, list[tuple[EvalRecord, ImageScore]]] = field(default_factory=dict)
    details: dict[str, list[PairDetail]] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)

    def memberships(self, perturbation: str) -> list[list[str]]:
        """Per row, the groups it counts in: its set, then the aggregates people quote (editing sets,
        whole-image-change sets, tiny edits); "overall" is implied."""
        rows = self.scores.get(perturbation, [])
        # A set is a change-detection set when every pair in it is a whole-image change (aerial photos
        # years apart); editing sets may hold a few regenerated images and still count as editing.
        by_set: dict[str, list[bool]] = {}
        for rec, _ in rows:
            by_set.setdefault(rec.set_name, []).append(rec.whole_image_changed)
        changed_sets = {name for name, flags in by_set.items() if all(flags)}
        split = bool(changed_sets) and len(changed_sets) < len(by_set)
        out = []
        for rec, score in rows:
            groups = [set_group(rec.set_name)]
            if split:
                groups.append(CHANGE_GROUP if rec.set_name in changed_sets else EDITING_GROUP)
            if rec.set_name not in changed_sets and 0 < score.gt_fraction < TINY_FRACTION:
                groups.append(TINY_GROUP)
            out.append(groups)
        return out

    def accumulator(self, perturbation: str) -> MetricAccumulator:
        """Per set, then the aggregates people quote: editing sets, whole-image-change sets, tiny, all."""
        rows = self.scores.get(perturbation, [])
        acc = MetricAccumulator()
        for rec, _ in rows:            # the per-set rows first, in set order
            acc.groups.setdefault(set_group(rec.set_name), [])
        for (_, score), groups in zip(rows, self.memberships(perturbation)):
            acc.add(score, *groups)
        return acc

    def groups(self, perturbation: str) -> dict[str, list[ImageScore]]:
        return self.accumulator(perturbation).groups

    def tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {p: self.accumulator(p).summaries() for p in self.scores}

    def _grouped_details(self, perturbation: str) -> dict[str, list[tuple[ImageScore, PairDetail]]]:
        rows = self.scores.get(perturbation, [])
        details = self.details.get(perturbation) or [PairDetail() for _ in rows]
        out: dict[str, list[tuple[ImageScore, PairDetail]]] = {}
        for rec, _ in rows:
            out.setdefault(set_group(rec.set_name), [])
        for (_, score), detail, groups in zip(rows, details, self.memberships(perturbation)):
            for g in dict.fromkeys((*groups, "overall")):
                out.setdefault(g, []).append((score, detail))
        return ({g: v for g, v in out.items() if g != "overall"}
                | ({"overall": out["overall"]} if "overall" in out else {}))

    def mask_tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per perturbation and group: both masks' F1, how many pairs were composites, and Spearman's
        ρ between confidence and the chosen mask's F1 (manipulated pairs only, as the F1 columns)."""
        tables: dict[str, dict[str, dict[str, Any]]] = {}
        for pert in self.scores:
            table = {}
            for group, items in self._grouped_details(pert).items():
                manip = [(s, d) for s, d in items if s.manipulated]
                sem = [d.semantic.f1 for s, d in manip if d.semantic is not None]
                foot = [d.footprint.f1 for s, d in manip if d.footprint is not None]
                conf = [(d.confidence, s.f1) for s, d in manip if d.confidence is not None]
                table[group] = {
                    "pairs": len(items), "manipulated": len(manip),
                    "composites": sum(1 for _, d in items if d.composite),
                    "tested": sum(1 for _, d in items if d.composite is not None),
                    "f1": float(np.mean([s.f1 for s, _ in manip])) if manip else float("nan"),
                    "semantic_f1": float(np.mean(sem)) if sem else float("nan"),
                    "footprint_f1": float(np.mean(foot)) if foot else float("nan"),
                    "footprint_pairs": len(foot),
                    "semantic_f1_on_composites": float(np.mean([d.semantic.f1 for s, d in manip
                                                                if d.footprint is not None and d.semantic is not None]))
                    if foot else float("nan"),
                    "rho_confidence_f1": spearman([c for c, _ in conf], [f for _, f in conf]),
                    "rho_pairs": len(conf),
                }
            tables[pert] = table
        return tables

    def confidence_tables(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Per perturbation: "keep pairs with confidence >= c -> mean F1 x" over the editing pairs (all
        pairs when there is no editing/change split), and over every pair."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for pert in self.scores:
            grouped = self._grouped_details(pert)
            pert_out = {}
            for group in (EDITING_GROUP, "overall"):
                items = [(s, d) for s, d in grouped.get(group, []) if s.manipulated and d.confidence is not None]
                if items:
                    pert_out[group] = confidence_curve([d.confidence for _, d in items], [s.f1 for s, _ in items])
            out[pert] = pert_out
        return out

    def to_dict(self) -> dict[str, Any]:
        per_pair = {}
        for p, rows in self.scores.items():
            details = self.details.get(p) or [PairDetail() for _ in rows]
            per_pair[p] = [{"set": r.set_name, "id": r.pair_id, "f1": s.f1, "iou": s.iou, "auc": s.auc,
                            "gt_fraction": s.gt_fraction, "pred_fraction": s.pred_fraction,
                            "confidence": d.confidence, "composite": d.composite, "mask_source": d.mask_source,
                            "semantic_f1": d.semantic.f1 if d.semantic else None,
                            "footprint_f1": d.footprint.f1 if d.footprint else None}
                           for (r, s), d in zip(rows, details)]
        masks = {p: {g: {k: _nan_to_none(v) for k, v in row.items()} for g, row in t.items()}
                 for p, t in self.mask_tables().items()}
        return {"tables": self.tables(), "masks": masks, "confidence": self.confidence_tables(),
                "per_pair": per_pair, "errors": self.errors}


def _detail(ann, gt, auc: float) -> PairDetail:
    """The chosen mask's companions, scored from the same probability map (`auc`: the chosen mask's)."""
    conf = confidence_value(ann.extra.get("confidence"))
    semantic = footprint = None
    if ann.mask_mode is not None:
        if ann.semantic_mask is not None:
            semantic = score_image(ann.pair_id, ann.semantic_mask, ann.prob, gt, auc)
        if ann.footprint_mask is not None:
            footprint = score_image(ann.pair_id, ann.footprint_mask, ann.prob, gt, auc)
    composite = None if ann.composite is None else bool(ann.composite.get("is_composite"))
    return PairDetail(semantic=semantic, footprint=footprint, composite=composite, mask_source=ann.mask_source,
                      confidence=conf)


def refuse_repeated_ids(records: list[EvalRecord]) -> None:
    """bad_manifest for a set whose pairs.jsonl gives one id to two records (a manifest concatenated twice, `1` beside
    `"1"`): both were scored, the pair counted twice in every table (`pairs` 10 for 9 pairs, its F1 weighed double)
    and metrics.json's per_pair named two rows alike, which no reader could tell apart. A pair is its set and id."""
    seen: dict[tuple[str, str], int] = {}
    for rec in records:
        key = (rec.set_name, rec.pair_id)
        seen[key] = seen.get(key, 0) + 1
    repeated = [key for key, n in seen.items() if n > 1]
    if repeated:
        set_name, pair_id = repeated[0]
        more = f" (and {len(repeated) - 1} more id(s) given twice)" if len(repeated) > 1 else ""
        raise InputError(printable(f"{set_name}/pairs.jsonl: id {pair_id[:200]!r} names {seen[repeated[0]]} "
                                   f"records{more}; each pair needs its own id, or it counts more than once in "
                                   "every table and metrics.json cannot say which row is which"),
                         code="bad_manifest")


def eval_records(data: str | Path, limit: int | None = None) -> list[EvalRecord]:
    """The records `evaluate` scores, in its order: every set's manifest read and checked (bad_manifest, repeated
    ids), the first `limit`; `no_pairs` when none. No image is opened: `sigma train` calls it before its first step
    for `eval.data`, which was read only at the first scoring, after minutes to hours of training."""
    records = [rec for set_dir in find_sets(data) for rec in read_set(set_dir)]
    refuse_repeated_ids(records)
    if limit:
        records = records[:limit]
    if not records:
        raise InputError(f"{data}: the pairs.jsonl files hold no pairs", code="no_pairs")
    return records


def unscoreable(rec: EvalRecord) -> str | None:
    """Why `evaluate` will leave `rec` unscored, as far as a look at its files tells (none opened): its mask null,
    or a file that is not there. None when its files are there (they may still fail to decode)."""
    if rec.mask is None:
        return f"{rec.set_name}/{rec.pair_id}: the record's mask is null (no ground truth)"
    for name, path in (("original", rec.original), ("edited", rec.edited), ("mask", rec.mask)):
        if not path.is_file():
            return f"{rec.set_name}/{rec.pair_id}: its {name} {path} is not a file"
    return None


def evaluate(annotator: Annotator, data: str | Path, perturbations: list[str], io_config: IOConfig | None = None,
             batch_size: int = 4, progress: Callable[[int, int], None] | None = None,
             limit: int | None = None, records: list[EvalRecord] | None = None,
             journal: Progress | None = None) -> EvalResult:
    """Score `annotator` on `data` (or on `records`, read from it already) under each perturbation, a batch of
    `batch_size` pairs at a time. `journal`: each batch's result is appended to it as it ends, and a batch it
    already holds (an eval killed after it) is read back, not scored again (`sigma.eval.progress`)."""
    io_config = io_config or IOConfig()
    perturbations = perturb.expand(perturbations)
    records = eval_records(data, limit) if records is None else records
    result = EvalResult()
    total = len(records) * len(perturbations)
    done = 0
    if progress:
        progress(0, total)            # the bar shows at once, before the perturbations' models load
    perturb.prepare(perturbations)
    for name in perturbations:
        rows = result.scores.setdefault(name, [])
        details = result.details.setdefault(name, [])
        for start in range(0, len(records), batch_size):
            chunk = records[start:start + batch_size]
            stored = journal.done.get((name, start)) if journal is not None else None
            if stored is not None:
                # each pair of the batch is one row or one error: a row deleted or copied by hand dropped that pair
                # from the metrics, or counted it twice, without a word
                indices = [row["index"] for row in stored["rows"]]
                if len(set(indices)) != len(indices) or len(indices) + len(stored["errors"]) != len(chunk):
                    raise InputError(f"{journal.path}: batch {start} holds {len(indices)} scored and "
                                     f"{len(stored['errors'])} skipped pair(s), {len(set(indices))} distinct, for its "
                                     f"{len(chunk)} pairs: edited since? Pass --restart", code="eval_changed")
                restored = [restored_row(row) for row in stored["rows"]]
                for index, score, _ in restored:
                    # its own pair, by place and by id: two rows' indices swapped put each score on the other pair
                    if not start <= index < start + len(chunk) or score.pair_id != records[index].pair_id:
                        raise InputError(f"{journal.path}: batch {start} names pair {index}, not one of its own: "
                                         "edited since? Pass --restart", code="eval_changed")
                # every pair of the batch once, scored or skipped: a pair said skipped beside its own row left
                # another out of the metrics
                said = sorted([(records[i].set_name, records[i].pair_id) for i, _, _ in restored]
                              + [(e["set"], e["id"]) for e in stored["errors"]])
                if said != sorted((rec.set_name, rec.pair_id) for rec in chunk):
                    raise InputError(f"{journal.path}: batch {start} does not account for each of its pairs once: "
                                     "edited since? Pass --restart", code="eval_changed")
                for index, score, detail in restored:
                    rows.append((records[index], score))
                    details.append(PairDetail(**detail))
                result.errors.extend(stored["errors"])
                done += len(chunk)
                if progress:
                    progress(done, total)
                continue
            pairs, gts, kept = [], [], []
            errors_before = len(result.errors)
            for index, rec in enumerate(chunk, start):
                try:
                    pair = load_pair(rec.original, rec.edited, rec.instruction, io_config, pair_id=rec.pair_id,
                                     root=rec.root)
                    if rec.mask is None:
                        raise InputError(f"{rec.set_name}/{rec.pair_id}: the record's mask is null: no ground truth "
                                         "to score against", code="file_not_found")
                    gt = read_mask(rec.mask, io_config.limits, rec.root)
                    if gt.shape != pair.size:
                        raise InputError(f"{rec.mask}: mask {gt.shape} differs from original {pair.size}",
                                         code="mask_size_mismatch")
                    pair.edited = perturb.apply(name, pair.edited, rec.pair_id)
                except SigmaError as exc:
                    result.errors.append({"set": rec.set_name, "id": rec.pair_id, "perturbation": name,
                                          **exc.to_dict()})
                    continue
                pairs.append(pair)
                gts.append(gt)
                kept.append((index, rec))
            stored_rows = []
            for (index, rec), gt, ann in zip(kept, gts, annotator.predict(pairs), strict=True):
                score = score_image(rec.pair_id, ann.mask, ann.prob, gt)
                detail = _detail(ann, gt, score.auc)
                score.confidence = detail.confidence      # the per-set tables' conf_rho reads it
                rows.append((rec, score))
                details.append(detail)
                stored_rows.append(stored_row(index, score, detail))
            if journal is not None:
                journal.add(name, start, stored_rows, result.errors[errors_before:])
            done += len(chunk)
            if progress:
                progress(done, total)
    return result


def _pct(v: float | None) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.1f}"


def _rho(v: float | None) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+6.2f}"


def _curve_cell(row: dict[str, Any], total: int) -> str:
    """One "keep the most confident" cell. Pairs tied at the cut are all kept (`confidence_curve`), so a share can
    keep more than it names: with one confidence for every pair, "top 25 %" kept them all and printed the F1 of all
    of them as the top quarter's. Such a cell says how many it kept."""
    meant = max(1, int(round(row["keep"] * total)))
    ties = f", ties at the cut: {row['pairs']} of {total} kept" if row["pairs"] != meant else ""
    return f"top {row['keep']:.0%} (conf >= {row['min_confidence']:.4f}{ties}): F1 {100 * row['f1']:.1f}"


SET_CELL = 46       # the width of a table's set column


def _shown(group: str) -> str:
    """A set's name as a line shows it: each backslash doubled, as in metrics.json's text, then the characters a
    terminal must not get escaped (`printable`: `\\n`, `\\x1b`, `\\u202e`). Escaped alone, a set folder holding a
    line break and one named in plain text `nl\\nx` printed as one name, `nl\\nx`, in two rows."""
    return printable(group.replace("\\", "\\\\"))


def _set_cell(group: str) -> str:
    """A set's name in its table column (`_shown`), cut in the middle with `…` when longer: cut at its end, two
    sets named alike but for the end (`...-2024-v1`, `...-2024-v2`) printed as one name twice."""
    name = _shown(group)
    if len(name) > SET_CELL:
        head = (SET_CELL - 1) // 2
        name = f"{name[:head]}…{name[-(SET_CELL - 1 - head):]}"
    return f"{name:<{SET_CELL}}"


def format_tables(result: EvalResult) -> str:
    """The tables `sigma eval` prints. A set's name is its folder's: a control character in it is escaped
    (`printable`), or a set named `$'x\\nFAKE'` printed a row of its own and one with an ESC cleared the screen."""
    lines = []
    masks = result.mask_tables()
    curves = result.confidence_tables()
    for name, table in result.tables().items():
        lines.append(f"\n== perturbation: {name} ==")
        lines.append(f"{'set':<{SET_CELL}} {'pairs':>5} {'manip':>5} {'F1':>6} {'IoU':>6} {'AUC':>6} "
                     f"{'pF1':>6} {'cIoU':>6} {'gIoU':>6} {'ρconf':>6}")
        for group, row in table.items():
            lines.append(f"{_set_cell(group)} {row['pairs']:>5} {row['manipulated']:>5} {_pct(row['f1'])} "
                         f"{_pct(row['iou'])} {_pct(row['auc'])} {_pct(row['pooled_f1'])} {_pct(row['ciou'])} "
                         f"{_pct(row['giou'])} {_rho(row.get('conf_rho'))}")
        mt = masks.get(name, {})
        if any(r["tested"] for r in mt.values()) or any(r["rho_pairs"] for r in mt.values()):
            lines.append(f"\n-- {name}: both masks (F1 = the chosen mask; footprint and 'sem@comp' over the "
                         "composites only) and rho = Spearman(confidence, F1) --")
            lines.append(f"{'set':<{SET_CELL}} {'manip':>5} {'comp':>5} {'F1':>6} {'sem':>6} {'foot':>6} "
                         f"{'sem@comp':>8} {'rho':>6}")
            for group, row in mt.items():
                comp = f"{row['composites']}" if row["tested"] else "-"
                lines.append(f"{_set_cell(group)} {row['manipulated']:>5} {comp:>5} {_pct(row['f1'])} "
                             f"{_pct(row['semantic_f1'])} {_pct(row['footprint_f1'])} "
                             f"{_pct(row['semantic_f1_on_composites']):>8} {_rho(row['rho_confidence_f1'])}")
        for group, curve in curves.get(name, {}).items():
            if group == "overall" and EDITING_GROUP in curves.get(name, {}):
                continue
            cells = ", ".join(_curve_cell(row, curve[0]["pairs"]) for row in curve)
            lines.append(f"keep the most confident ({_shown(group.split(' (')[0])}): {cells}")
    return "\n".join(lines)

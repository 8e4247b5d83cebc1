"""Scoring a parser against lines with expected (edit_type, source, target).

Concept match (phrases.concept_match): both absent, or the same head noun with at most two
modifiers more or less after dropping articles, counts, size words and generic scene words
("environment", "setting") and singularising — the SOURCES.md conventions of dev.jsonl, read as
"would a detector be asked for the same thing". A line's concepts match when source AND target do.

Expected edit types must be edit types (`EDIT_TYPES`, or null for "no edit") and concepts strings or null:
anything else is the labels' mistake (`expectation_problem`), refused rather than scored as the parser's miss.

The top-level fields score the first edit. Lines that also list every expected edit (`edits`: a
list of {edit_type, source, target}) are scored as a whole too: `edits_match` counts a line when the
parse has the same number of edits and each, in order, has the right type and concepts.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sigma.parse.phrases import concept_match
from sigma.parse.types import EDIT_TYPES, ParsedInstruction

EXPECTED_FIELDS = ("edit_type", "source", "target")


def has_expectations(record: dict[str, Any]) -> bool:
    return "edit_type" in record


def _edit_problem(edit: Any, where: str) -> str | None:
    if not isinstance(edit, dict):
        return f"{where} is {type(edit).__name__} {edit!r}, not an object with edit_type, source and target"
    kind = edit.get("edit_type")
    if kind is not None and (not isinstance(kind, str) or kind not in EDIT_TYPES):
        return (f"{where} edit_type {kind!r} is not an edit type (known: {', '.join(EDIT_TYPES)}; null: no "
                f"edit expected)")
    for name in ("source", "target"):
        value = edit.get(name)
        if value is not None and not isinstance(value, str):
            return f"{where} {name} must be a string or null, not {type(value).__name__} {value!r}"
    return None


def expectation_problem(record: dict[str, Any]) -> str | None:
    """Why a record's expected fields cannot be scored, or None. An expected edit type the parser can never
    give ('delete', 'Remove', a list) was counted as the parser's miss, silently (and a list or an object, or a
    number where a concept goes, crashed the scoring); it is the labels' mistake, said as one."""
    if not has_expectations(record):
        return None
    problem = _edit_problem(record, "expected")
    if problem is not None:
        return problem
    edits = record.get("edits")
    if edits is None:
        return None
    if not isinstance(edits, list):
        return f"expected edits must be a list, not {type(edits).__name__}"
    for k, edit in enumerate(edits):
        problem = _edit_problem(edit, f"expected edits[{k}]")
        if problem is not None:
            return problem
    return None


def edits_match(parse: ParsedInstruction, expected: list[dict[str, Any]]) -> bool:
    """Every expected edit, in order, with the right type and concepts, and no other."""
    return len(parse.edits) == len(expected) and all(
        e.edit_type == x.get("edit_type") and concept_match(e.source, x.get("source"))
        and concept_match(e.target, x.get("target")) for e, x in zip(parse.edits, expected))


def score_parser(records: Iterable[dict[str, Any]], parse: Callable[[str | None], ParsedInstruction]) -> dict[str, Any]:
    records = [r for r in records if has_expectations(r)]
    return score([(r, parse(r.get("instruction"))) for r in records])


def score(pairs: Iterable[tuple[dict[str, Any], ParsedInstruction]]) -> dict[str, Any]:
    """pairs: (record with expected fields, parse); records without expectations are skipped, records whose
    expectations cannot be scored (`expectation_problem`) are a ValueError."""
    n = type_ok = concept_ok = source_ok = target_ok = fallbacks = 0
    n_multi = edits_ok = count_ok = 0
    per_type: Counter = Counter()
    per_type_ok: Counter = Counter()
    errors: list[dict[str, Any]] = []
    for rec, p in pairs:
        if not has_expectations(rec):
            continue
        problem = expectation_problem(rec)
        if problem is not None:
            raise ValueError(f"{problem} ({rec.get('instruction')!r})")
        n += 1
        t = p.edit_type == rec.get("edit_type")
        s = concept_match(p.source, rec.get("source"))
        g = concept_match(p.target, rec.get("target"))
        type_ok += t
        source_ok += s
        target_ok += g
        concept_ok += s and g
        fallbacks += p.fallback
        per_type[rec.get("edit_type")] += 1
        per_type_ok[rec.get("edit_type")] += t
        whole = True
        if isinstance(rec.get("edits"), list):
            n_multi += 1
            count_ok += len(p.edits) == len(rec["edits"])
            whole = edits_match(p, rec["edits"])
            edits_ok += whole
        if not (t and s and g and whole):
            err = {"instruction": rec.get("instruction"), "expected": {k: rec.get(k) for k in EXPECTED_FIELDS},
                   "got": {k: getattr(p, k) for k in EXPECTED_FIELDS}, "rule": p.rule}
            if isinstance(rec.get("edits"), list):
                err["expected"]["edits"] = [[e.get(k) for k in EXPECTED_FIELDS] for e in rec["edits"]]
                err["got"]["edits"] = [[getattr(e, k) for k in EXPECTED_FIELDS] for e in p.edits]
            errors.append(err)

    def frac(k: int) -> float | None:
        return round(k / n, 4) if n else None

    multi = {"n_with_edits": n_multi, "edits_match": round(edits_ok / n_multi, 4),
             "edit_count_match": round(count_ok / n_multi, 4)} if n_multi else {}
    return {**multi, "n": n, "type_accuracy": frac(type_ok), "concept_match": frac(concept_ok),
            "source_match": frac(source_ok), "target_match": frac(target_ok), "fallbacks": fallbacks,
            "type_accuracy_by_type": {k: round(per_type_ok[k] / v, 4) for k, v in sorted(per_type.items(),
                                                                                          key=lambda kv: str(kv[0]))},
            "errors": errors}

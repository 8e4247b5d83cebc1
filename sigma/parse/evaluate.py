"""Scoring a parser against lines with expected (edit_type, source, target).

Concept match (phrases.concept_match): both absent, or the same head noun with at most two
modifiers more or less after dropping articles, counts, size words and generic scene words
("environment", "setting") and singularising — the SOURCES.md conventions of dev.jsonl, read as
"would a detector be asked for the same thing". A line's concepts match when source AND target do.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sigma.parse.phrases import concept_match
from sigma.parse.types import ParsedInstruction

EXPECTED_FIELDS = ("edit_type", "source", "target")


def has_expectations(record: dict[str, Any]) -> bool:
    return "edit_type" in record


def score_parser(records: Iterable[dict[str, Any]], parse: Callable[[str | None], ParsedInstruction]) -> dict[str, Any]:
    records = [r for r in records if has_expectations(r)]
    return score([(r, parse(r.get("instruction"))) for r in records])


def score(pairs: Iterable[tuple[dict[str, Any], ParsedInstruction]]) -> dict[str, Any]:
    """pairs: (record with expected fields, parse); records without expectations are skipped."""
    n = type_ok = concept_ok = source_ok = target_ok = fallbacks = 0
    per_type: Counter = Counter()
    per_type_ok: Counter = Counter()
    errors: list[dict[str, Any]] = []
    for rec, p in pairs:
        if not has_expectations(rec):
            continue
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
        if not (t and s and g):
            errors.append({"instruction": rec.get("instruction"),
                           "expected": {k: rec.get(k) for k in EXPECTED_FIELDS},
                           "got": {k: getattr(p, k) for k in EXPECTED_FIELDS}, "rule": p.rule})
    def frac(k: int) -> float | None:
        return round(k / n, 4) if n else None
    return {"n": n, "type_accuracy": frac(type_ok), "concept_match": frac(concept_ok),
            "source_match": frac(source_ok), "target_match": frac(target_ok), "fallbacks": fallbacks,
            "type_accuracy_by_type": {k: round(per_type_ok[k] / v, 4) for k, v in sorted(per_type.items(),
                                                                                          key=lambda kv: str(kv[0]))},
            "errors": errors}

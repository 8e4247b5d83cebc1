"""Tolerant reading of near-JSON from small language models.

A 135 M model writes `{edit_type: "replace", 'source': "dog", target: None,}`: unquoted keys, single
quotes, Python literals, trailing commas, prose around the object. We repair only those syntax
slips; the content is still validated by pydantic afterwards.
"""
from __future__ import annotations

import json
import re


def first_object(text: str) -> str | None:
    """The first balanced {...} in `text` (quotes respected), or the unclosed tail closed with '}'."""
    start = text.find("{")
    if start < 0:
        return None
    depth = 0
    quote: str | None = None
    escape = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    tail = text[start:].rstrip().rstrip(",")
    if quote:
        tail += quote
    return tail + "}" * max(depth, 1)


_KEY = re.compile(r'([{,]\s*)([A-Za-z_][A-Za-z0-9_\-]*)\s*:')
_SQ_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")
_TRAILING = re.compile(r",\s*([}\]])")
_LITERALS = {"None": "null", "none": "null", "NULL": "null", "Null": "null", "True": "true", "False": "false",
             "nil": "null", "undefined": "null"}
_BARE_VALUE = re.compile(r'(:\s*)([A-Za-z][A-Za-z \-]*?)(\s*[,}])')


def repair_json(text: str) -> dict | None:
    """Best-effort parse of the first JSON-like object in `text`; None when nothing usable."""
    obj = first_object(text)
    if obj is None:
        return None
    for candidate in _candidates(obj):
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(value, dict):
            return value
    return None


def _candidates(obj: str):
    yield obj
    fixed = _SQ_STRING.sub(lambda m: json.dumps(m.group(1)), obj)
    fixed = _KEY.sub(lambda m: f'{m.group(1)}"{m.group(2)}":', fixed)
    fixed = _TRAILING.sub(r"\1", fixed)
    yield fixed

    def bare(m: re.Match) -> str:
        word = m.group(2).strip()
        return m.group(1) + (_LITERALS.get(word) or json.dumps(word)) + m.group(3)
    yield _BARE_VALUE.sub(bare, fixed)

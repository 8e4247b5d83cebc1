"""Tolerant reading of near-JSON from small language models.

A 135 M model writes `{edit_type: "replace", 'source': "dog", target: None,}`: unquoted keys, single
quotes, Python literals, trailing commas, prose around the object. We repair only those syntax
slips; the content is still validated by pydantic afterwards.
"""
from __future__ import annotations

import json
import re


class QuoteState:
    """Where a left-to-right scan stands with respect to quoted strings (backslash escapes respected):
    the one rule both the repairer and the LLM's stop test need, so that a brace inside a string never
    counts."""

    def __init__(self, quotes: str = "\"'"):
        self.quotes = quotes
        self.open: str | None = None
        self._escape = False

    def structural(self, ch: str) -> bool:
        """Feed one character; True when it stands outside every string and is not a quote itself."""
        if self.open:
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == self.open:
                self.open = None
            return False
        if ch in self.quotes:
            self.open = ch
            return False
        return True


def _object_at(text: str, start: int) -> tuple[str, int]:
    """The balanced {...} starting at text[start] (quotes respected) and where it ends; an unclosed
    tail is closed with '}'."""
    depth = 0
    state = QuoteState()
    for i in range(start, len(text)):
        ch = text[i]
        if not state.structural(ch):
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1], i + 1
    tail = text[start:].rstrip().rstrip(",")
    if state.open:
        tail += state.open
    return tail + "}" * max(depth, 1), len(text)


def first_object(text: str) -> str | None:
    """The first balanced {...} in `text` (quotes respected), or the unclosed tail closed with '}'."""
    start = text.find("{")
    return None if start < 0 else _object_at(text, start)[0]


def all_objects(text: str, limit: int = 8) -> list[str]:
    """Every top-level {...} in `text`, in order (a model answering one object per edit)."""
    out: list[str] = []
    pos = 0
    while len(out) < limit:
        start = text.find("{", pos)
        if start < 0:
            break
        obj, pos = _object_at(text, start)
        out.append(obj)
    return out


_KEY = re.compile(r'([{,]\s*)([A-Za-z_][A-Za-z0-9_\-]*)\s*:')
_SQ_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")
_TRAILING = re.compile(r",\s*([}\]])")
_LITERALS = {"None": "null", "none": "null", "NULL": "null", "Null": "null", "True": "true", "False": "false",
             "nil": "null", "undefined": "null"}
# The word run is possessive (`*+`): a lazy run before `\s*[,}]` rescanned the spaces after every one it took, so a
# value followed by a long run of spaces and no comma cost that run squared (50,000 spaces: 15 s); `bare` strips them.
_BARE_VALUE = re.compile(r'(:\s*)([A-Za-z][A-Za-z \-]*+)(\s*[,}])')


def repair_json(text: str) -> dict | None:
    """Best-effort parse of the first JSON-like object in `text`; None when nothing usable."""
    obj = first_object(text)
    return None if obj is None else repair_object(obj)


def repair_all(text: str, limit: int = 8) -> list[dict | None]:
    """Every JSON-like object in `text`, each repaired (None where one is unusable). An object
    holding a list of edits ({"edits": [...]}) stands for its items."""
    out: list[dict | None] = []
    for obj in all_objects(text, limit):
        value = repair_object(obj)
        items = value.get("edits") if isinstance(value, dict) else None
        if isinstance(items, list) and "edit_type" not in value:
            out += [v if isinstance(v, dict) else None for v in items[:limit]]
        else:
            out.append(value)
    return out[:limit]


def repair_object(obj: str) -> dict | None:
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

"""Instruction parsing: text -> (edit_type, source concept, target concept) for the grounding branch.

`parse_instruction(text, backend="rules")` is the one entry point; backends are registered by name
(`rules` default, `llm`, `qwen-vl`) and built once per process.
"""
from __future__ import annotations

from typing import Any

from sigma.parse.phrases import concept_match, normalize_concept
from sigma.parse.registry import PARSERS, get_parser, parser_names
from sigma.parse.types import EDIT_TYPES, EditType, ParsedInstruction

_CACHE: dict[tuple, Any] = {}


def parse_instruction(text: str | None, backend: str = "rules", **kw: Any) -> ParsedInstruction:
    """Parse one instruction. Backend options (model path, device, ...) go in `kw`; a backend is
    built once per distinct option set and reused. Per-call inputs (`images=` for qwen-vl) are
    passed through."""
    call_kw = {k: kw.pop(k) for k in ("images",) if k in kw}
    key = (backend, tuple(sorted((k, repr(v)) for k, v in kw.items())))
    parser = _CACHE.get(key)
    if parser is None:
        parser = get_parser(backend, **kw)
        _CACHE[key] = parser
    return parser(text, **call_kw)


__all__ = [
    "EDIT_TYPES",
    "PARSERS",
    "EditType",
    "ParsedInstruction",
    "concept_match",
    "get_parser",
    "normalize_concept",
    "parse_instruction",
    "parser_names",
]

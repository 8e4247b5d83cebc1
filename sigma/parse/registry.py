"""Parser backends by name, with the same did-you-mean lookup as the annotator registry."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sigma.registry import Registry

# A backend factory takes keyword options and returns a callable `(text, **call_kw) -> ParsedInstruction`.
PARSERS = Registry("parser backend", builtins=lambda: _ensure_builtins())


def register_parser(name: str, description: str,
                    weights_status: Callable[[], str] | None = None) -> Callable:
    return PARSERS.register(name, description, weights_status)


def _ensure_builtins() -> None:
    from sigma.parse import llm, qwen_vl, rules  # noqa: F401  (each registers itself)


def get_parser(name: str = "rules", **options: Any):
    """Build a parser backend once (an LLM loads its weights here), then call it per instruction."""
    _ensure_builtins()
    return PARSERS.get(name).factory(**options)


def parser_names() -> list[str]:
    _ensure_builtins()
    return PARSERS.names()

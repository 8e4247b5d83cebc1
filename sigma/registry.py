"""One registry: the only way to build an annotator from a name.

Entries hold the factory, a one-line description and a weights probe, kept apart so that
`sigma models` can report what is installed without building anything.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sigma.errors import UnknownNameError


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    weights_status: Callable[[], str]   # "embedded", "none needed", "found at ...", "missing: ..."


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, description: str,
                 weights_status: Callable[[], str] | None = None) -> Callable:
        def deco(factory: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, factory, description,
                                        weights_status or (lambda: "none needed"))
            return factory
        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            known = self.names()
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"Unknown {self.kind} {name!r}.{hint} Known: {', '.join(known)}.")
        return self._entries[name]

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries


ANNOTATORS = Registry("annotator")


def _ensure_builtins() -> None:
    import sigma.annotators  # noqa: F401  (registers the built-in annotators on import)


def create_annotator(name: str, **overrides: Any):
    """Build a registered annotator; `overrides` are validated by the annotator's config model."""
    _ensure_builtins()
    return ANNOTATORS.get(name).factory(**overrides)


def list_annotators() -> list[Entry]:
    _ensure_builtins()
    return ANNOTATORS.entries()

"""The grounder contract and its registry: (original, edited, parse) -> GroundingResult."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from sigma.errors import ConfigError
from sigma.grounding.config import GroundingConfig
from sigma.grounding.prior import full_prior, uninformative_prior
from sigma.grounding.registry import GROUNDERS, ensure_grounders
from sigma.grounding.types import (
    FLAG_GLOBAL,
    FLAG_NO_GROUNDING,
    FLAG_NO_INSTRUCTION,
    FLAG_NOTHING_FOUND,
    GroundingResult,
)
from sigma.parse.types import ParsedInstruction


def _check_pair(original: np.ndarray, edited: np.ndarray) -> tuple[int, int]:
    for name, img in (("original", original), ("edited", edited)):
        if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"grounding: {name} must be uint8 [H, W, 3], got "
                             f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}")
    if original.shape != edited.shape:
        raise ValueError(f"grounding: images differ in shape {original.shape} vs {edited.shape}; "
                         "size-synchronise the pair first (sigma.io.load_pair)")
    return original.shape[0], original.shape[1]


class Grounder(ABC):
    """Batched: `ground_batch` is the real entry; `ground` is one pair."""

    name: str = "grounder"

    def ground(self, original: np.ndarray, edited: np.ndarray, parse: ParsedInstruction) -> GroundingResult:
        return self.ground_batch([original], [edited], [parse])[0]

    def ground_batch(self, originals: list[np.ndarray], edited: list[np.ndarray],
                     parses: list[ParsedInstruction]) -> list[GroundingResult]:
        if not (len(originals) == len(edited) == len(parses)):
            raise ValueError("ground_batch: originals, edited and parses must have the same length")
        sizes = [_check_pair(o, e) for o, e in zip(originals, edited)]
        results: list[GroundingResult | None] = [None] * len(parses)
        pending = []
        for i, (size, parse) in enumerate(zip(sizes, parses)):
            trivial = self._trivial(size, parse)
            if trivial is not None:
                results[i] = trivial
            else:
                pending.append(i)
        if pending:
            start = time.perf_counter()
            grounded = self._ground_pending([originals[i] for i in pending], [edited[i] for i in pending],
                                            [parses[i] for i in pending])
            ms = (time.perf_counter() - start) * 1000.0 / len(pending)
            for i, res in zip(pending, grounded, strict=True):
                res.timings_ms.setdefault("grounding", ms)
                results[i] = res
        return results  # type: ignore[return-value]

    def _trivial(self, size: tuple[int, int], parse: ParsedInstruction) -> GroundingResult | None:
        """The cases no detector is needed for (METHOD §3). With several edits, one global edit makes
        the whole image the edit (its prior is 1 everywhere, which any union with local regions is)."""
        if parse.edit_type is None or not parse.edits:
            return GroundingResult(uninformative_prior(size), parse, flag=FLAG_NO_INSTRUCTION, backend=self.name)
        if "global" in parse.edit_types:
            return GroundingResult(full_prior(size), parse, flag=FLAG_GLOBAL, backend=self.name)
        if not parse.all_concepts():
            return GroundingResult(uninformative_prior(size), parse, flag=FLAG_NOTHING_FOUND, backend=self.name)
        return None

    @abstractmethod
    def _ground_pending(self, originals: list[np.ndarray], edited: list[np.ndarray],
                        parses: list[ParsedInstruction]) -> list[GroundingResult]:
        ...


class NoneGrounder(Grounder):
    """No detector: every local edit gets the uninformative prior and a flag saying why.
    The embedded default (sigma-lite) runs with this; `global` and empty instructions behave as
    with any grounder."""

    name = "none"

    def _ground_pending(self, originals, edited, parses):
        return [GroundingResult(uninformative_prior(o.shape[:2]), p, flag=FLAG_NO_GROUNDING, backend=self.name)
                for o, p in zip(originals, parses)]


def _none_status() -> str:
    return "none needed"


@GROUNDERS.register("none", "no detector: uninformative prior (0.5) with a flag; global -> 1",
                    weights_status=_none_status)
def _build_none(config: GroundingConfig | None = None, **_: Any) -> Grounder:
    return NoneGrounder()


def build_grounder(config: GroundingConfig | str | None = None, **overrides: Any) -> Grounder:
    """`build_grounder("gdino-sam2", detector={"weights": dir}, segmenter={...})` or a GroundingConfig.
    Models can also be handed in directly: `detector=Detector`, `segmenter=Segmenter` objects."""
    ensure_grounders()
    objects = {k: overrides.pop(k) for k in ("detector_obj", "segmenter_obj") if k in overrides}
    if config is None or isinstance(config, str):
        data: dict[str, Any] = {"backend": config or "none", **overrides}
        try:
            config = GroundingConfig(**data)
        except Exception as exc:
            if isinstance(config, str) and config not in GROUNDERS:
                GROUNDERS.get(config)   # raises the did-you-mean error
            raise ConfigError(f"grounding config: {exc}") from exc
    elif overrides:
        raise ConfigError("build_grounder: pass either a GroundingConfig or keyword overrides, not both")
    return GROUNDERS.get(config.backend).factory(config, **objects)


def grounder_names() -> list[str]:
    ensure_grounders()
    return GROUNDERS.names()


def weights_status(backend: str) -> str:
    ensure_grounders()
    return GROUNDERS.get(backend).weights_status()

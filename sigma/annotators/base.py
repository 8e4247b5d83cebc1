"""The annotator contract: a batch of pairs in, one annotation per pair out, at the original size."""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, ValidationError

from sigma.config.loader import config_hash
from sigma.config.schema import Strict
from sigma.errors import ConfigError
from sigma.types import Annotation, Pair


class AnnotatorConfig(Strict):
    threshold: float | None = Field(None, ge=0.0, le=1.0,
                                    description="mask = prob > threshold; None = the annotator's default")


class Annotator(ABC):
    """Subclasses implement `_predict_batch`; thresholding, RLE and timing live here once."""

    name: ClassVar[str]
    config_cls: ClassVar[type[AnnotatorConfig]] = AnnotatorConfig
    default_threshold: ClassVar[float] = 0.5

    def __init__(self, config: AnnotatorConfig | None = None, **overrides: Any):
        if config is None:
            try:
                config = self.config_cls(**overrides)
            except ValidationError as exc:  # → one readable line naming each bad key
                problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                                     for e in exc.errors())
                raise ConfigError(f"{self.name}: {problems}") from exc
            except TypeError as exc:
                raise ConfigError(f"{self.name}: {exc}") from exc
        self.config = config
        self.config_hash = config_hash({"annotator": self.name, **config.model_dump(mode="json")})

    @property
    def threshold(self) -> float:
        return self.default_threshold if self.config.threshold is None else self.config.threshold

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config.model_dump(mode="json"),
                "config_hash": self.config_hash, "threshold": self.threshold}

    @abstractmethod
    def _predict_batch(self, pairs: list[Pair]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """Per pair: a float32 probability map at the pair's size, and extra result fields."""

    def binarize(self, prob: np.ndarray) -> np.ndarray:
        return prob > self.threshold

    def predict(self, pairs: list[Pair]) -> list[Annotation]:
        if not pairs:
            return []
        start = time.perf_counter()
        outputs = self._predict_batch(pairs)
        per_pair_ms = (time.perf_counter() - start) * 1000.0 / len(pairs)
        annotations = []
        for pair, (prob, extra) in zip(pairs, outputs, strict=True):
            if prob.shape != pair.size:
                raise RuntimeError(f"{self.name} returned a {prob.shape} map for a {pair.size} pair")
            prob = np.clip(prob.astype(np.float32, copy=False), 0.0, 1.0)
            timings = {"predict": per_pair_ms, **extra.pop("timings_ms", {})}
            annotations.append(Annotation(pair_id=pair.pair_id, prob=prob, mask=self.binarize(prob),
                                          threshold=self.threshold, annotator=self.name,
                                          config_hash=self.config_hash, timings_ms=timings, extra=extra,
                                          preprocess=pair.preprocess))
        return annotations

    def __call__(self, pairs: list[Pair]) -> list[Annotation]:
        return self.predict(pairs)

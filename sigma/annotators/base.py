"""The annotator contract: a batch of pairs in, one annotation per pair out, at the original size.

Everything derived from the mask (the mask itself, its area, confidence, connected components) comes
from one step, `Annotator.finalize(prob, threshold, ...)`, so a caller that asks for another threshold
(`predict(pairs, threshold=...)` or `rethreshold(annotation, t)`) gets a record that agrees with itself.
"""
from __future__ import annotations

import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, ValidationError

from sigma.annotators.footprint import CompositeTest, FootprintConfig, choose, composite_test
from sigma.config.loader import config_hash
from sigma.config.schema import ReadsWholeNumbers, UnitInterval
from sigma.errors import ConfigError, SigmaError, error_text
from sigma.types import Annotation, MaskMode, Pair, check_mask_mode
from sigma.version import model_identity

# Options that change how fast an annotator runs, never what it outputs (masks are equal across runtimes:
# tests/test_runtime.py); they stay out of config hashes.
SPEED_ONLY_OPTIONS = ("cpu_threads", "batch_size", "runtime", "channels_last", "build_graph")


class AnnotatorConfig(ReadsWholeNumbers):
    exponent_prefix: ClassVar[str] = "options"     # what every front end calls these (AnnotatorSpec.options)
    threshold: UnitInterval | None = Field(None, description="mask = prob > threshold; None = the annotator's default")
    mask_mode: MaskMode | None = Field(None, description="which mask is *the* mask: auto = the synthesised "
                                       "footprint on composites (most pixels untouched), the semantic mask "
                                       "elsewhere; semantic; footprint. Both are reported either way. None = "
                                       "the annotator's default (auto for the SIGMA models; the baselines "
                                       "keep their own mask and skip the composite test)")
    footprint: FootprintConfig = Field(default_factory=FootprintConfig,
                                       description="composite test and footprint settings")


@dataclass
class Prediction:
    """What `_predict_batch` returns per pair: the probability map at the pair's size, the extra fields
    that do not depend on the threshold, and what `derive` needs to re-derive the rest (kept off the
    record). Iterates as `(prob, extra)`, the tuple form plugins may still return."""

    prob: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.prob, self.extra))


Thresholds = float | Sequence[float | None] | None
# How far outside [0, 1] a probability map may stray (rounding in a half-precision or exported network) before it
# is refused as broken rather than clipped: a map on another scale (0-255, logits) is a bug, never slop.
PROB_SLACK = 1e-3


def check_threshold(value: Any) -> float:
    """A threshold given to predict/rethreshold: a real number (a numpy scalar too) in [0, 1]; mask = prob > it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        raise ValueError(f"threshold must be a number in [0, 1], got {type(value).__name__} {value!r}")
    t = float(value)
    if not 0.0 <= t <= 1.0:   # NaN fails too
        raise ValueError(f"threshold must be a number in [0, 1], got {t!r}")
    return t
MaskModes = str | Sequence[str | None] | None


class Annotator(ABC):
    """Subclasses implement `_predict_batch` (and optionally `derive`); thresholding, RLE, timing live here."""

    name: ClassVar[str]
    config_cls: ClassVar[type[AnnotatorConfig]] = AnnotatorConfig
    default_threshold: ClassVar[float] = 0.5
    default_mask_mode: ClassVar[str | None] = None   # None: no composite test, the mask is the annotator's own

    def __init__(self, config: AnnotatorConfig | None = None, **overrides: Any):
        if config is None:
            try:
                config = self.config_cls(**overrides)
            except ValidationError as exc:  # → one readable line naming each bad key
                problems = "; ".join(error_text(e) for e in exc.errors())
                raise ConfigError(f"{self.name}: {problems}") from exc
            except TypeError as exc:
                raise ConfigError(f"{self.name}: {exc}") from exc
        self.config = config
        # sha256 of the trained weights file this annotator runs (None: it has none); set by subclasses
        # once they load, hashed once per process
        self.weights_sha256: str | None = None

    @property
    def threshold(self) -> float:
        return self.default_threshold if self.config.threshold is None else self.config.threshold

    @property
    def mask_mode(self) -> str | None:
        return self.config.mask_mode or self.default_mask_mode

    def identity(self) -> dict[str, Any]:
        """What makes this annotator's outputs what they are: the name, the weights' digest, the package."""
        return model_identity(self.name, self.weights_sha256)

    @property
    def config_hash(self) -> str:
        """Outputs are keyed by config *and* weights *and* package version: upgrading either changes it. Options
        that change only speed (threads, batch size, which runtime runs the network) are left out, so resuming
        a run on another machine or runtime continues it."""
        data = self.config.model_dump(mode="json", exclude=set(SPEED_ONLY_OPTIONS))
        return config_hash({**self.identity(), **data})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config.model_dump(mode="json"),
                "config_hash": self.config_hash, "threshold": self.threshold, **self.identity()}

    @abstractmethod
    def _predict_batch(self, pairs: list[Pair]) -> Sequence[Prediction | tuple[np.ndarray, dict[str, Any]]]:
        """Per pair, in order: a probability map at the pair's size (float, values in [0, 1]) and a dict of extra
        result fields; `predict` refuses anything else (`_prediction`)."""

    # -- the one place a mask is made ---------------------------------------------------------
    def binarize(self, prob: np.ndarray, threshold: float | None = None) -> np.ndarray:
        return prob > (self.threshold if threshold is None else threshold)

    def derive(self, pair_size: tuple[int, int], prob: np.ndarray, mask: np.ndarray, threshold: float,
               context: dict[str, Any]) -> dict[str, Any]:
        """Fields that depend on the mask (confidence, components, ...); subclasses add theirs."""
        return {}

    def _masks(self, semantic: np.ndarray, test: CompositeTest | None, mode: str | None) -> dict[str, Any]:
        """The semantic mask and, under a mask_mode, the footprint and which of the two is *the* mask."""
        if test is None or mode is None:
            return {"mask": semantic}
        chosen = choose(mode, semantic, test, self.config.footprint)
        return {"mask": chosen.mask, "semantic_mask": semantic, "footprint_mask": chosen.footprint,
                "composite": chosen.composite, "mask_mode": chosen.mask_mode, "mask_source": chosen.chosen}

    def _derive_all(self, size: tuple[int, int], prob: np.ndarray, masks: dict[str, Any], threshold: float,
                    context: dict[str, Any]) -> dict[str, Any]:
        """`derive` of *the* mask. When that is the footprint, `confidence` stays the model's own (of the
        semantic mask): the probability map says nothing about the pixels a footprint adds, so a margin
        over it would rank the near-exact footprints of composites lowest (measured: rho(confidence, F1)
        -0.42 instead of +0.21 on the development set's editing pairs; docs/masks.md)."""
        derived = self.derive(size, prob, masks["mask"], threshold, context)
        if masks.get("mask_source") == "footprint" and "confidence" in derived:
            derived["confidence"] = self.mask_confidence(size, prob, masks["semantic_mask"], threshold, context)
        return derived

    def mask_confidence(self, size: tuple[int, int], prob: np.ndarray, mask: np.ndarray, threshold: float,
                        context: dict[str, Any]) -> Any:
        """The `confidence` that `derive` gives `mask`. Annotators whose `derive` does more (components at
        full resolution) override it with the formula alone."""
        return self.derive(size, prob, mask, threshold, context)["confidence"]

    def finalize(self, pair: Pair, prob: np.ndarray, extra: dict[str, Any], context: dict[str, Any],
                 threshold: float, timings: dict[str, float], mask_mode: str | None = None) -> Annotation:
        """`mask_mode`: this pair's (a request's own), None = the annotator's."""
        mode = self.mask_mode if mask_mode is None else mask_mode
        test = None
        if mode is not None:   # threshold-independent: kept in the context for rethreshold
            t0 = time.perf_counter()
            test = composite_test(pair.original, pair.edited, prob, self.config.footprint)
            timings = {**timings, "composite_test": (time.perf_counter() - t0) * 1000.0}
        kept = {"extra": extra, "context": context, "size": pair.size, "composite_test": test, "mask_mode": mode}
        return self._annotation(pair.pair_id, prob, threshold, kept, timings_ms=timings, preprocess=pair.preprocess,
                                annotator=self.name, config_hash=self.config_hash,
                                weights_sha256=self.weights_sha256)

    def rethreshold(self, ann: Annotation, threshold: float) -> Annotation:
        """The same prediction at another threshold, every mask-derived field recomputed."""
        if ann.context is None:
            raise ValueError("rethreshold needs an annotation made by this process's predict()")
        threshold = check_threshold(threshold)
        kept = {"mask_mode": self.mask_mode, **ann.context}
        return self._annotation(ann.pair_id, ann.prob, threshold, kept, timings_ms=dict(ann.timings_ms),
                                preprocess=ann.preprocess, annotator=ann.annotator, config_hash=ann.config_hash,
                                weights_sha256=ann.weights_sha256)

    def _annotation(self, pair_id: str, prob: np.ndarray, threshold: float, kept: dict[str, Any],
                    **fields: Any) -> Annotation:
        """What finalize and rethreshold share, so a mask re-made at another threshold is made exactly as the
        first: the masks at `threshold`, then the fields derived from *the* mask. `kept`: what the prediction
        left that does not depend on the threshold (extra fields, model context, size, composite test, mode)."""
        semantic = self.binarize(prob, threshold)
        masks = self._masks(semantic, kept.get("composite_test"), kept["mask_mode"])
        derived = self._derive_all(kept["size"], prob, masks, threshold, kept["context"])
        return Annotation(pair_id=pair_id, prob=prob, threshold=threshold, extra={**kept["extra"], **derived},
                          context=kept, **fields, **masks)

    @staticmethod
    def _per_pair(value: Any, n: int, what: str) -> list[Any]:
        """One value for every pair (a scalar or None), or one per pair."""
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        scalar = value is None or isinstance(value, (numbers.Number, str, np.generic))
        values = [value] * n if scalar else list(value)
        if len(values) != n:
            raise ValueError(f"{len(values)} {what} for {n} pairs")
        return values

    def _thresholds(self, threshold: Thresholds, n: int) -> list[float]:
        """Checked before the model runs, as the config's threshold is: NaN or a value outside [0, 1] would
        give an empty or a full mask said as a result."""
        return [self.threshold if t is None else check_threshold(t)
                for t in self._per_pair(threshold, n, "thresholds")]

    def _mask_modes(self, mask_mode: MaskModes, n: int) -> list[str | None]:
        """Checked before the model runs: a bad mode must not cost a batch's forward pass."""
        return [m if m is None else check_mask_mode(m) for m in self._per_pair(mask_mode, n, "mask modes")]

    def predict(self, pairs: list[Pair], threshold: Thresholds = None, mask_mode: MaskModes = None
                ) -> list[Annotation]:
        """`threshold`: None (the annotator's), one value, or one per pair (None entries = the default);
        `mask_mode` likewise (a pair's own mode runs the composite test even for a baseline)."""
        if not pairs:
            return []
        thresholds = self._thresholds(threshold, len(pairs))
        modes = self._mask_modes(mask_mode, len(pairs))
        start = time.perf_counter()
        outputs = list(self._predict_batch(pairs))
        per_pair_ms = (time.perf_counter() - start) * 1000.0 / len(pairs)
        if len(outputs) != len(pairs):
            raise self._broken(f"{len(outputs)} results for {len(pairs)} pairs")
        annotations = []
        for pair, out, t, mode in zip(pairs, outputs, thresholds, modes, strict=True):
            pred = self._prediction(out, pair)
            extra = dict(pred.extra)
            timings = {"predict": per_pair_ms, **extra.pop("timings_ms", {})}
            annotations.append(self.finalize(pair, pred.prob, extra, pred.context, t, timings, mode))
        return annotations

    def _broken(self, what: str) -> SigmaError:
        return SigmaError(f"annotator {self.name!r} broke the output contract: {what} (docs/ARCHITECTURE.md, "
                          f"'The annotator output contract')", code="annotator_failed")

    def _prediction(self, out: Any, pair: Pair) -> Prediction:
        """One pair's output, checked against the contract: a floating-point (or bool) array of the pair's size
        with every value in [0, 1] (within PROB_SLACK, then clipped), and a dict of extras. A map on a 0-255
        scale used to be clipped silently (every changed pixel 1, a full box said as a result); NaN thresholded
        to an empty mask. Either is now the pair's error (`annotator_failed`) naming the annotator and the pair."""
        if isinstance(out, Prediction):
            pred = out
        elif isinstance(out, tuple) and len(out) == 2:
            pred = Prediction(out[0], out[1])
        else:
            raise self._broken(f"pair {pair.pair_id}: a {type(out).__name__} instead of a Prediction or a "
                               f"(prob, extra) tuple")
        prob = pred.prob
        if not isinstance(prob, np.ndarray):
            raise self._broken(f"pair {pair.pair_id}: the probability map is a {type(prob).__name__}, not a numpy "
                               f"array")
        if prob.dtype.kind not in "fb":
            raise self._broken(f"pair {pair.pair_id}: a {prob.dtype} probability map; it must be floating-point "
                               f"in [0, 1] (a 0-255 map: divide by 255)")
        if prob.shape != pair.size:
            raise self._broken(f"pair {pair.pair_id}: a {prob.shape} map for a {pair.size} pair")
        for what, value in (("extra fields", pred.extra), ("context", pred.context)):
            if not isinstance(value, dict):
                raise self._broken(f"pair {pair.pair_id}: the {what} must be a dict, not a {type(value).__name__}")
        prob = prob.astype(np.float32, copy=False)
        if prob.size:
            lo, hi = float(prob.min()), float(prob.max())     # NaN propagates to both, inf to one
            if not (lo >= -PROB_SLACK and hi <= 1.0 + PROB_SLACK):
                finite = np.isfinite(prob)
                bad = int(prob.size - np.count_nonzero(finite))
                if bad:   # NaN > t is False: an empty mask said as a result, not an error
                    raise self._broken(f"pair {pair.pair_id}: a probability map with {bad} non-finite values "
                                       f"(NaN or inf)")
                outside = int(np.count_nonzero((prob < -PROB_SLACK) | (prob > 1.0 + PROB_SLACK)))
                hint = " (a 0-255 map? divide by 255)" if hi > 1.0 + PROB_SLACK and hi <= 255.0 else ""
                raise self._broken(f"pair {pair.pair_id}: a probability map with {outside} values outside [0, 1] "
                                   f"(min {lo:g}, max {hi:g}){hint}")
            if lo < 0.0 or hi > 1.0:   # rounding slop only: no 64 MB copy at 16 Mpx when the map is writable
                prob = np.clip(prob, 0.0, 1.0, out=prob if prob.flags.writeable else None)
        return Prediction(prob, pred.extra, pred.context)

    def __call__(self, pairs: list[Pair], threshold: Thresholds = None, mask_mode: MaskModes = None
                 ) -> list[Annotation]:
        return self.predict(pairs, threshold, mask_mode)

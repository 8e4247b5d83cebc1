"""What grounding hands to the model: a dense prior and the regions it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from sigma.parse.types import ParsedInstruction

ImageSide = Literal["original", "edited"]

# Why a prior is uninformative (0.5 everywhere) or trivially full (global edit); None = grounded.
FLAG_NO_INSTRUCTION = "no_instruction"
FLAG_NOTHING_FOUND = "nothing_found"
FLAG_NO_GROUNDING = "grounding_disabled"
FLAG_GLOBAL = "global_edit"
# Several edits, some located and some not: the prior marks what was found over a 0.5 floor (the
# unfound edit may be anywhere, so nothing is called unlikely to have changed)
FLAG_PARTLY_FOUND = "partly_found"
UNINFORMATIVE = 0.5


@dataclass
class Detection:
    """One box from a detector, in pixel coordinates of the image it was found in."""

    box: tuple[float, float, float, float]     # x0, y0, x1, y1
    score: float
    label: str


@dataclass
class Region:
    """A grounded region: a detection plus its mask, tagged with the image it was found in."""

    box: tuple[float, float, float, float]
    score: float
    concept: str
    image: ImageSide
    mask: np.ndarray | None = None             # float32 [H, W] in [0, 1] at the pair's size
    edits: tuple[int, ...] = (0,)              # which edits of the parse asked for this concept

    def to_dict(self) -> dict[str, Any]:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(float(self.score), 4),
                "concept": self.concept, "image": self.image, "edits": list(self.edits),
                "area_fraction": None if self.mask is None else round(float((self.mask > 0.5).mean()), 6)}


@dataclass
class GroundingResult:
    """prior: float32 [H, W] in [0, 1] at the pair's size. `flag` says why it carries no location
    (see FLAG_*), None when it came from detections."""

    prior: np.ndarray
    parse: ParsedInstruction
    regions: list[Region] = field(default_factory=list)
    flag: str | None = None
    backend: str = "none"
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def informative(self) -> bool:
        return self.flag is None

    def edits_found(self) -> list[int]:
        """Per edit of the parse, how many regions were found for it."""
        counts = [0] * len(self.parse.edits)
        for region in self.regions:
            for k in region.edits:
                if 0 <= k < len(counts):
                    counts[k] += 1
        return counts

    def to_extra(self) -> dict[str, Any]:
        """JSON-ready summary for `Annotation.extra` (the prior itself stays an array)."""
        return {"parse": self.parse.to_json_dict(), "grounding": {
            "backend": self.backend, "flag": self.flag, "informative": self.informative,
            "regions": [r.to_dict() for r in self.regions], "regions_per_edit": self.edits_found(),
            "prior_mean": round(float(self.prior.mean()), 6)}}

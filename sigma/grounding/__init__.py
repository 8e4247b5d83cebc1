"""Instruction grounding: a parsed instruction + the two images -> a spatial prior pi in [0, 1].

`build_grounder("none" | "gdino-sam2", ...)` gives a `Grounder`; `grounder.ground_batch(originals,
edited, parses)` gives one `GroundingResult` per pair (prior at the pair's size, regions, flag).
"""
from sigma.grounding.base import GROUNDERS, Grounder, NoneGrounder, build_grounder, grounder_names
from sigma.grounding.config import DetectorConfig, GroundingConfig, SegmenterConfig
from sigma.grounding.prior import compose_prior, full_prior, uninformative_prior
from sigma.grounding.types import (
                                   FLAG_GLOBAL,
                                   FLAG_NO_GROUNDING,
                                   FLAG_NO_INSTRUCTION,
                                   FLAG_NOTHING_FOUND,
                                   FLAG_PARTLY_FOUND,
                                   UNINFORMATIVE,
                                   Detection,
                                   GroundingResult,
                                   Region,
)

__all__ = ["FLAG_GLOBAL", "FLAG_NOTHING_FOUND", "FLAG_NO_GROUNDING", "FLAG_NO_INSTRUCTION", "FLAG_PARTLY_FOUND",
           "GROUNDERS", "UNINFORMATIVE", "Detection", "DetectorConfig", "Grounder", "GroundingConfig",
           "GroundingResult", "NoneGrounder", "Region", "SegmenterConfig", "build_grounder", "compose_prior",
           "full_prior", "grounder_names", "uninformative_prior"]

"""Grounding DINO -> SAM 2 -> prior (METHOD §3).

The source concept is looked for in the original (remove, replace, attribute) and the target in the
edited image (add, replace, attribute), for every edit of the instruction. All detection requests of
a batch go to the detector at once; each image with boxes is encoded once by the segmenter, the boxes
of all its concepts decoded together; the regions of every edit make one prior.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sigma.grounding.base import GROUNDERS, Grounder
from sigma.grounding.config import GroundingConfig
from sigma.grounding.detector import Detector, GroundingDinoDetector
from sigma.grounding.prior import compose_prior, uninformative_prior
from sigma.grounding.segmenter import Segmenter, build_segmenter
from sigma.grounding.types import FLAG_NOTHING_FOUND, FLAG_PARTLY_FOUND, UNINFORMATIVE, GroundingResult, Region
from sigma.parse.types import ParsedInstruction


class DetectSegmentGrounder(Grounder):
    name = "gdino-sam2"

    def __init__(self, detector: Detector, segmenter: Segmenter, config: GroundingConfig | None = None):
        self.detector = detector
        self.segmenter = segmenter
        self.config = config or GroundingConfig(backend="gdino-sam2")

    def _ground_pending(self, originals, edited, parses: list[ParsedInstruction]) -> list[GroundingResult]:
        import time

        # 1. one detection request per (pair, side, concept) that some edit needs; edits naming the same
        #    concept on the same side share it (each concept keeps its own label and box budget)
        requests: list[tuple[int, str, str]] = []
        asked_by: dict[tuple[int, str, str], list[int]] = {}
        for i, parse in enumerate(parses):
            for k, side, concept in parse.all_concepts():
                key = (i, side, concept)
                if key not in asked_by:
                    asked_by[key] = []
                    requests.append(key)
                if k not in asked_by[key]:
                    asked_by[key].append(k)

        def image(i: int, side: str) -> np.ndarray:
            return originals[i] if side == "original" else edited[i]

        t0 = time.perf_counter()
        detections = self.detector.detect([image(i, side) for i, side, _ in requests],
                                          [c for _, _, c in requests]) if requests else []
        t1 = time.perf_counter()
        # 2. boxes -> masks: each image is encoded once, with the boxes of all its concepts together
        by_image: dict[tuple[int, str], list[int]] = {}
        for r, (i, side, _concept) in enumerate(requests):
            by_image.setdefault((i, side), []).append(r)
        groups = list(by_image.items())
        boxes = [np.array([d.box for r in idx for d in detections[r]], np.float32).reshape(-1, 4) for _, idx in groups]
        masks = self.segmenter.segment([image(i, side) for (i, side), _ in groups], boxes) if groups else []
        t2 = time.perf_counter()
        regions: list[list[Region]] = [[] for _ in parses]
        for ((i, side), idx), mks in zip(groups, masks, strict=True):
            m = 0
            for r in idx:
                concept = requests[r][2]
                for det in detections[r]:
                    regions[i].append(Region(det.box, det.score, concept, side, mks[m],  # type: ignore[arg-type]
                                             tuple(asked_by[requests[r]])))
                    m += 1
        n = max(len(parses), 1)
        timings = {"detect": (t1 - t0) * 1000.0 / n, "segment": (t2 - t1) * 1000.0 / n}
        out = []
        for i, parse in enumerate(parses):
            size = originals[i].shape[:2]
            result = GroundingResult(uninformative_prior(size), parse, regions[i], FLAG_NOTHING_FOUND, self.name,
                                     dict(timings))
            if regions[i]:
                unlocated = any(count == 0 for count in result.edits_found())
                result.prior = compose_prior(regions[i], size, floor=UNINFORMATIVE if unlocated else 0.0)
                result.flag = FLAG_PARTLY_FOUND if unlocated else None
            out.append(result)
        return out


def _status() -> str:
    from sigma.errors import WeightsNotFoundError
    from sigma.models.weights import resolve_local

    cfg = GroundingConfig(backend="gdino-sam2")
    found = []
    for what, ref in (("Grounding DINO", cfg.detector.weights), ("SAM 2", cfg.segmenter.weights)):
        try:
            found.append(f"{what} at {resolve_local(ref, what=what)}")
        except WeightsNotFoundError:
            return f"missing: {what} {ref!r} is not in the HF cache (HF_HOME) nor a local folder"
        except Exception as exc:  # noqa: BLE001 - a status line must never raise
            return f"missing: {exc.__class__.__name__}"
    return "found: " + "; ".join(found)


@GROUNDERS.register("gdino-sam2", "Grounding DINO (transformers) boxes -> SAM 2 masks -> score-weighted prior",
                    weights_status=_status)
def _build(config: GroundingConfig | None = None, *, detector_obj: Detector | None = None,
           segmenter_obj: Segmenter | None = None, **_: Any) -> Grounder:
    config = config or GroundingConfig(backend="gdino-sam2")
    detector = detector_obj or GroundingDinoDetector(config.detector, device=config.device, dtype=config.dtype,
                                                     allow_download=config.allow_download)
    segmenter = segmenter_obj or build_segmenter(config.segmenter, device=config.device, dtype=config.dtype,
                                                 allow_download=config.allow_download)
    return DetectSegmentGrounder(detector, segmenter, config)

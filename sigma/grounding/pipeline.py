"""Grounding DINO -> SAM 2 -> prior (METHOD §3).

The source concept is looked for in the original (remove, replace, attribute) and the target in the
edited image (add, replace, attribute). All detection requests of a batch go to the detector at
once; each image with boxes is encoded once by the segmenter, its boxes decoded together.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from sigma.grounding.base import GROUNDERS, Grounder
from sigma.grounding.config import GroundingConfig
from sigma.grounding.detector import Detector, GroundingDinoDetector
from sigma.grounding.prior import compose_prior, uninformative_prior
from sigma.grounding.segmenter import Segmenter, build_segmenter
from sigma.grounding.types import FLAG_NOTHING_FOUND, GroundingResult, Region
from sigma.parse.types import ParsedInstruction


class DetectSegmentGrounder(Grounder):
    name = "gdino-sam2"

    def __init__(self, detector: Detector, segmenter: Segmenter, config: GroundingConfig | None = None):
        self.detector = detector
        self.segmenter = segmenter
        self.config = config or GroundingConfig(backend="gdino-sam2")

    def _ground_pending(self, originals, edited, parses: list[ParsedInstruction]) -> list[GroundingResult]:
        import time

        # 1. one detection request per (pair, side) that the edit type needs
        requests: list[tuple[int, str, np.ndarray, str]] = []
        for i, parse in enumerate(parses):
            for side, concept in parse.concepts().items():
                if concept:
                    requests.append((i, side, originals[i] if side == "original" else edited[i], concept))
        t0 = time.perf_counter()
        detections = self.detector.detect([r[2] for r in requests], [r[3] for r in requests]) if requests else []
        t1 = time.perf_counter()
        # 2. boxes -> masks, each image once
        boxes = [np.array([d.box for d in dets], np.float32).reshape(-1, 4) for dets in detections]
        masks = self.segmenter.segment([r[2] for r in requests], boxes) if requests else []
        t2 = time.perf_counter()
        regions: list[list[Region]] = [[] for _ in parses]
        for (i, side, _img, concept), dets, mks in zip(requests, detections, masks, strict=True):
            for det, mask in zip(dets, mks, strict=True):
                regions[i].append(Region(det.box, det.score, concept, side, mask))  # type: ignore[arg-type]
        n = max(len(parses), 1)
        timings = {"detect": (t1 - t0) * 1000.0 / n, "segment": (t2 - t1) * 1000.0 / n}
        out = []
        for i, parse in enumerate(parses):
            size = originals[i].shape[:2]
            if regions[i]:
                out.append(GroundingResult(compose_prior(regions[i], size), parse, regions[i], None, self.name,
                                           dict(timings)))
            else:
                out.append(GroundingResult(uninformative_prior(size), parse, [], FLAG_NOTHING_FOUND, self.name,
                                           dict(timings)))
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

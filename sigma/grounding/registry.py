"""The grounding registries: backends (`GroundingConfig.backend`) and segmenters (`SegmenterConfig.kind`).

Config fields validate their names against these, so registering a grounder or a segmenter from a plugin
module is all it takes to use it (no `Literal` to edit)."""
from __future__ import annotations

from sigma.registry import Registry

GROUNDERS = Registry("grounding backend", builtins=lambda: ensure_grounders())
SEGMENTERS = Registry("segmenter", builtins=lambda: ensure_segmenters())


def ensure_grounders() -> None:
    from sigma.grounding import base, pipeline  # noqa: F401  (each registers its backends)


def ensure_segmenters() -> None:
    from sigma.grounding import segmenter  # noqa: F401  (registers sam2, box, native-sam2)

"""Importing this package registers every built-in annotator."""
from sigma.annotators import (  # noqa: F401
    feature_diff,
    grounding_only,
    model_annotator,
    pixel_diff,
)
from sigma.annotators.base import Annotator, AnnotatorConfig

__all__ = ["Annotator", "AnnotatorConfig"]

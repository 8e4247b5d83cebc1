"""Importing this package registers every built-in annotator."""
from sigma.annotators import pixel_diff  # noqa: F401
from sigma.annotators import feature_diff, grounding_only, model_annotator  # noqa: F401
from sigma.annotators.base import Annotator, AnnotatorConfig

__all__ = ["Annotator", "AnnotatorConfig"]

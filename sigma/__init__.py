"""SIGMA: pixel-accurate manipulation masks from (original, edited, instruction) triples."""
from sigma.registry import create_annotator, list_annotators
from sigma.types import Annotation, Pair
from sigma.version import __version__

__all__ = ["Annotation", "Pair", "__version__", "create_annotator", "list_annotators"]

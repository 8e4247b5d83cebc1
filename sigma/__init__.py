"""SIGMA: pixel-accurate manipulation masks from (original, edited, instruction) triples."""
from sigma.registry import create_annotator, list_annotators
from sigma.types import Annotation, Pair

__version__ = "0.1.0"
__all__ = ["Annotation", "Pair", "__version__", "create_annotator", "list_annotators"]

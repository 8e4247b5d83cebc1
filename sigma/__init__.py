"""SIGMA: pixel-accurate manipulation masks from (original, edited, instruction) triples.

The names below but `__version__` are imported on first use (PEP 562): every `sigma ...` command and `python -m
sigma` import this package before `sigma.cli.main` can take a Ctrl-C, and it imported numpy through the registry,
a second or more; a Ctrl-C then was a KeyboardInterrupt traceback and exit -2 instead of `sigma: interrupted`, 130.
"""
from __future__ import annotations

from sigma.lazyattrs import lazy_attributes
from sigma.version import __version__

_LAZY = {"create_annotator": "sigma.registry", "list_annotators": "sigma.registry", "Annotation": "sigma.types",
         "Pair": "sigma.types"}

__all__ = ["Annotation", "Pair", "__version__", "create_annotator", "list_annotators"]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

"""The package version: part of every output's identity (config hashes, run hashes, results)."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def model_identity(annotator: str, weights_sha256: str | None) -> dict[str, Any]:
    """What makes an annotator's outputs what they are: its name, the sha256 of its weights file (None: it has
    none) and the package version (read at call time, so an upgrade in place shows)."""
    import sigma.version as this

    return {"annotator": annotator, "weights_sha256": weights_sha256, "sigma_version": this.__version__}

"""SIGMA's networks: config → `build_model` → `SigmaNet`; `save_model` / `load_model` for files.

The names below are imported on first use (PEP 562): the package is also where the torch-free parts live (the
device policy, presets, configs, weights resolution) that the built-in annotators' registration and `sigma models`
read, and importing every network here made each `sigma` command import torch (1.5 s), a pixel-diff run or an
argument refusal included. Torch is imported when a network is built or loaded; `tests/test_cli_startup.py` checks.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sigma.lazyattrs import lazy_attributes

if TYPE_CHECKING:  # the names as the static tools see them; at run time each from its module on first use
    from sigma.models.config import CompactBackboneConfig, Dinov2BackboneConfig, SigmaNetConfig
    from sigma.models.factory import build_model, load_model, make_config, preset_config, read_config, save_model
    from sigma.models.presets import PRESETS
    from sigma.models.refine import EDIT_TYPES, Regions
    from sigma.models.sigma_net import UNINFORMATIVE_PRIOR, SigmaNet, SigmaOutput
    from sigma.models.weights import RESOLUTION_ORDER, WeightsMismatchError, resolve_hf_reference, strict_load

_LAZY = {
    "CompactBackboneConfig": "sigma.models.config",
    "Dinov2BackboneConfig": "sigma.models.config",
    "SigmaNetConfig": "sigma.models.config",
    "build_model": "sigma.models.factory",
    "load_model": "sigma.models.factory",
    "make_config": "sigma.models.factory",
    "preset_config": "sigma.models.factory",
    "read_config": "sigma.models.factory",
    "save_model": "sigma.models.factory",
    "PRESETS": "sigma.models.presets",
    "EDIT_TYPES": "sigma.models.refine",
    "Regions": "sigma.models.refine",
    "UNINFORMATIVE_PRIOR": "sigma.models.sigma_net",
    "SigmaNet": "sigma.models.sigma_net",
    "SigmaOutput": "sigma.models.sigma_net",
    "RESOLUTION_ORDER": "sigma.models.weights",
    "WeightsMismatchError": "sigma.models.weights",
    "resolve_hf_reference": "sigma.models.weights",
    "strict_load": "sigma.models.weights",
}

__all__ = [
    "EDIT_TYPES",
    "PRESETS",
    "RESOLUTION_ORDER",
    "UNINFORMATIVE_PRIOR",
    "CompactBackboneConfig",
    "Dinov2BackboneConfig",
    "Regions",
    "SigmaNet",
    "SigmaNetConfig",
    "SigmaOutput",
    "WeightsMismatchError",
    "build_model",
    "load_model",
    "make_config",
    "preset_config",
    "read_config",
    "resolve_hf_reference",
    "save_model",
    "strict_load",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

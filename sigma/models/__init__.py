"""SIGMA's networks: config → `build_model` → `SigmaNet`; `save_model` / `load_model` for files."""
from sigma.models.config import CompactBackboneConfig, Dinov2BackboneConfig, SigmaNetConfig
from sigma.models.factory import build_model, load_model, make_config, preset_config, read_config, save_model
from sigma.models.presets import PRESETS
from sigma.models.refine import EDIT_TYPES, Regions
from sigma.models.sigma_net import UNINFORMATIVE_PRIOR, SigmaNet, SigmaOutput
from sigma.models.weights import RESOLUTION_ORDER, WeightsMismatchError, resolve_hf_reference, strict_load

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

"""One config system: pydantic models filled from defaults, a YAML file, then `key=value` overrides."""
from sigma.config.loader import (
    Override,
    apply_overrides,
    config_hash,
    load_config,
    parse_overrides,
    read_overrides,
    save_resolved,
)
from sigma.config.schema import AnnotatorSpec, IOConfig, LimitsConfig

__all__ = ["AnnotatorSpec", "IOConfig", "LimitsConfig", "Override", "apply_overrides", "config_hash", "load_config",
           "parse_overrides", "read_overrides", "save_resolved"]

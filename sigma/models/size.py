"""A SigmaNet's parameter count from its config alone, and the limit checked before anything is built.

A model config is user input (a training `model:` mapping, a saved `config.json`, a DINOv2 `hf_config`): a
hidden_size of 10^6, 10^5 transformer layers or a decoder 50000 wide was allocated as it stood — gigabytes, the
OOM killer or minutes of work before any check. The count here is arithmetic on the config (the layer shapes of
`sigma.models.backbones`, `difference`, `refine` and `decoder`, tested against the built networks), so a config
of any size is refused in microseconds, and one that fits is built as before.
"""
from __future__ import annotations

from typing import Any

from sigma.errors import ConfigError
from sigma.models.config import MAX_BLOCKS, CompactBackboneConfig, Dinov2BackboneConfig, SigmaNetConfig
from sigma.models.refine import EDIT_TYPES
from sigma.text import positive_int_env

# sigma-b is 0.1 B parameters, DINOv2-giant 1.1 B: 2 B leaves room for any backbone we would use, and refuses
# what no machine here trains (fp32 weights, gradients and AdamW's two moments are 16 bytes a parameter).
DEFAULT_MAX_PARAMETERS = 2_000_000_000
ENV_MAX_PARAMETERS = "SIGMA_MAX_MODEL_PARAMS"


def max_parameters() -> int:
    """The limit: $SIGMA_MAX_MODEL_PARAMS when set (a positive integer), else `DEFAULT_MAX_PARAMETERS`."""
    return positive_int_env(ENV_MAX_PARAMETERS, DEFAULT_MAX_PARAMETERS,
                            "the model size limit is a positive whole number of parameters (e.g. 2000000000)")


def _conv_bn(cin: int, cout: int, k: int = 1, groups: int = 1) -> int:
    """`ConvBNAct`: a bias-free conv and a BatchNorm (weight and bias)."""
    return cout * (cin // groups) * k * k + 2 * cout


def _inverted_residual(channels: int, expansion: int) -> int:
    hidden = channels * expansion
    return _conv_bn(channels, hidden) + _conv_bn(hidden, hidden, 3, hidden) + _conv_bn(hidden, channels)


def _compact(cfg: CompactBackboneConfig) -> tuple[int, list[int], list[int]]:
    total, cin = 0, 3
    for width, depth in zip(cfg.widths, cfg.depths, strict=False):
        total += _conv_bn(cin, width, 3) + depth * _inverted_residual(width, cfg.expansion)
        cin = width
    return total, list(cfg.widths), [2 ** (i + 1) for i in range(len(cfg.widths))]


def dinov2_parameters(hf_config: Any) -> int:
    """transformers' Dinov2Model / Dinov2WithRegistersModel for this config (embeddings, layers, final norm)."""
    h = int(hf_config.hidden_size)
    layers = int(hf_config.num_hidden_layers)
    patch = int(hf_config.patch_size)
    channels = int(getattr(hf_config, "num_channels", 3) or 3)
    grid = int(getattr(hf_config, "image_size", 224)) // max(patch, 1)
    registers = int(getattr(hf_config, "num_register_tokens", 0) or 0)
    embed = h * (2 + registers + grid * grid + 1) + channels * patch * patch * h + h
    mlp = int(h * float(getattr(hf_config, "mlp_ratio", 4)))
    if getattr(hf_config, "use_swiglu_ffn", False):
        hidden = (int(mlp * 2 / 3) + 7) // 8 * 8
        ffn = h * 2 * hidden + 2 * hidden + hidden * h + h
    else:
        ffn = h * mlp + mlp + mlp * h + h
    bias = h if getattr(hf_config, "qkv_bias", True) else 0
    layer = 2 * h + 3 * (h * h + bias) + h * h + h + h + 2 * h + ffn + h
    return embed + layers * layer + 2 * h


def hf_dinov2_config(fields: dict[str, Any]) -> Any:
    """The transformers config `Dinov2BackboneConfig.hf_config` describes (no weights, no tensors)."""
    try:
        from transformers import Dinov2Config, Dinov2WithRegistersConfig
    except ImportError as exc:  # pragma: no cover - transformers is in the hf extra
        raise ConfigError("DINOv2 backbones need transformers: pip install 'sigma-masks[hf]'") from exc
    fields = dict(fields)
    kind = fields.pop("model_type", "dinov2")
    cls = Dinov2WithRegistersConfig if kind == "dinov2_with_registers" else Dinov2Config
    try:
        hf = cls(**fields)
    except Exception as exc:   # transformers raises validation errors of several kinds
        raise ConfigError(f"DINOv2 hf_config: {' '.join(str(exc).split())[:200]}") from exc
    check_dinov2_shape(hf, "hf_config")
    return hf


def check_dinov2_shape(hf: Any, where: str) -> None:
    """Sizes transformers takes without a word and fails on later: a negative or zero width (a RuntimeError
    traceback when built), a patch of 0 (ZeroDivisionError), heads that do not divide the width (at the first
    forward pass), 10^5 layers (`MAX_BLOCKS`)."""
    def number(name: str, low: int, high: int | None = None) -> int:
        value = getattr(hf, name, None)
        if not isinstance(value, int) or isinstance(value, bool) or value < low or high is not None and value > high:
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"DINOv2 {where}: {name} must be an integer {bound}, got {value!r}")
        return value

    hidden, heads = number("hidden_size", 1), number("num_attention_heads", 1)
    number("num_hidden_layers", 0, MAX_BLOCKS)
    patch = number("patch_size", 1)
    number("image_size", patch)
    number("num_channels", 1, 64)
    number("num_register_tokens", 0, 4096) if hasattr(hf, "num_register_tokens") else None
    ratio = getattr(hf, "mlp_ratio", 4)
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 64:
        raise ConfigError(f"DINOv2 {where}: mlp_ratio must be a number in (0, 64], got {ratio!r}")
    if hidden % heads:
        raise ConfigError(f"DINOv2 {where}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")


def _dinov2(cfg: Dinov2BackboneConfig) -> tuple[int, list[int], list[int]]:
    """(parameters, channels, strides); 0 parameters when the architecture comes from the weights' own
    config.json (read when the backbone is built, and checked there by `check_dinov2`)."""
    if cfg.hf_config is None:
        return 0, [768] * len(cfg.taps), [14] * len(cfg.taps)
    hf = hf_dinov2_config(cfg.hf_config)
    return dinov2_parameters(hf), [hf.hidden_size] * len(cfg.taps), [hf.patch_size] * len(cfg.taps)


def _refinement(dim: int, blocks: int, ffn_ratio: float, max_regions: int) -> int:
    attention = 4 * dim * dim + 4 * dim                     # nn.MultiheadAttention: in_proj (3d x d) + out_proj
    hidden = max(8, int(dim * ffn_ratio))                  # refine.FFN
    ffn = dim * hidden + hidden + hidden * dim + dim
    full = 6 * 2 * dim + 2 * attention + 2 * ffn           # every block but the last also updates the tokens
    last = 3 * 2 * dim + attention + ffn
    total = (dim + 1) * dim + dim + len(EDIT_TYPES) * dim + 2 * dim     # prior_in, type_embed, two tokens
    if max_regions:
        total += dim * dim + dim + 5 * dim + dim + 2 * dim
    if blocks:
        total += (blocks - 1) * full + last + 2 * dim
    return total


def estimate_parameters(cfg: SigmaNetConfig) -> int:
    """The parameter count of `SigmaNet(cfg)` (its backbone included where the config gives its size)."""
    if isinstance(cfg.backbone, CompactBackboneConfig):
        total, channels, strides = _compact(cfg.backbone)
    else:
        total, channels, strides = _dinov2(cfg.backbone)
    dim, skip_dims = cfg.dim, list(cfg.skip_dims)
    coarse = [c for c, s in zip(channels, strides, strict=False) if s >= cfg.token_stride]
    fine = sorted(((s, c) for c, s in zip(channels, strides, strict=False) if s < cfg.token_stride),
                  reverse=True) if not cfg.pixel_stem else []
    total += sum(_conv_bn(2 * c + 1, dim) for c in coarse) + _inverted_residual(dim, 2)
    total += sum(_conv_bn(2 * c + 1, d) for (_, c), d in zip(fine, skip_dims, strict=False))
    if cfg.pixel_stem:
        widths = list(reversed(skip_dims))
        cin = max(8, widths[0] // 2) if widths else 8
        total += _conv_bn(9, cin, 3)
        for w in widths:
            total += _conv_bn(cin, w, 3)
            cin = w
    else:
        skip_dims = skip_dims[:len(fine)]
    total += 2 * (_conv_bn(dim, dim) + dim * dim + dim) + dim + 1          # SplitHeads
    total += _refinement(dim, cfg.refine_blocks, cfg.ffn_ratio, cfg.max_regions)
    cin = dim
    for c in skip_dims:                                                     # Decoder
        total += _conv_bn(cin + c, c) + _conv_bn(c, c, 3)
        cin = c
    total += cin + 1
    if cfg.full_res_head:
        w = cfg.full_res_head
        total += _conv_bn(9, w, 3) + _conv_bn(cin, w) + _conv_bn(2 * w + 1, w, 3) + w + 1
    return total


def _refuse(count: int, what: str, limit: int) -> None:
    if count > limit:
        size = (f"about {count:,} parameters ({count * 4 / 2**30:,.1f} GiB of fp32 weights)" if count < 10**15
                else "more than 10^15 parameters")
        raise ConfigError(f"{what} has {size}, "
                          f"more than the limit of {limit:,}; it was not built. Check the config's sizes "
                          f"(hidden_size, num_hidden_layers, widths, dim, refine_blocks, skip_dims), or raise the "
                          f"limit with ${ENV_MAX_PARAMETERS}", code="model_too_large")


def check_model_size(cfg: SigmaNetConfig, limit: int | None = None) -> int:
    """The estimate, or `model_too_large` above `limit` (default: `max_parameters()`), before any tensor exists."""
    count = estimate_parameters(cfg)
    _refuse(count, f"SigmaNet {cfg.name}", max_parameters() if limit is None else limit)
    return count


def check_dinov2(hf_config: Any, where: str, limit: int | None = None) -> None:
    """A DINOv2 architecture read from the weights' config.json, before it is built or loaded."""
    check_dinov2_shape(hf_config, f"backbone {where}")
    _refuse(dinov2_parameters(hf_config), f"DINOv2 backbone {where}", max_parameters() if limit is None else limit)

"""Backbones behind one interface: `features(images) -> list of [B, C, h, w]`, one per tap.

`channels` and `strides` describe the taps so the difference branch and decoder can be built without
running anything. Images enter as float [0, 1]; each backbone normalises them itself.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sigma.models.config import CompactBackboneConfig, Dinov2BackboneConfig
from sigma.models.size import check_dinov2, hf_dinov2_config
from sigma.models.weights import ResolvedWeights, from_pretrained_or_error, resolve_hf_reference

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand → depthwise 3x3 → 1x1 project, residual: most of the receptive field for few FLOPs."""

    def __init__(self, channels: int, expansion: int):
        super().__init__()
        hidden = channels * expansion
        self.body = nn.Sequential(ConvBNAct(channels, hidden, 1), ConvBNAct(hidden, hidden, 3, groups=hidden),
                                  ConvBNAct(hidden, channels, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Backbone(nn.Module):
    channels: list[int]
    strides: list[int]
    frozen: bool = False

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.features(images)


class CompactBackbone(Backbone):
    """The sigma-lite encoder (METHOD §9's siamese CNN, made cheaper): trained from scratch, all stages tapped."""

    def __init__(self, cfg: CompactBackboneConfig):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        stages, cin = [], 3
        for width, depth in zip(cfg.widths, cfg.depths, strict=True):
            blocks: list[nn.Module] = [ConvBNAct(cin, width, 3, stride=2)]
            blocks += [InvertedResidual(width, cfg.expansion) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.channels = list(cfg.widths)
        self.strides = [2 ** (i + 1) for i in range(len(cfg.widths))]

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


def _dinov2_classes(hf_config: Any):
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    if getattr(hf_config, "model_type", "") == "dinov2_with_registers":
        return Dinov2WithRegistersModel
    return Dinov2Model


class Dinov2Backbone(Backbone):
    """A transformers DINOv2 (plain or with registers), patch tokens read at `taps` of `hidden_states`.

    Frozen by default (the paper): no gradients, always in eval mode, run under no_grad so a frozen
    backbone costs no activation memory.
    """

    def __init__(self, cfg: Dinov2BackboneConfig, *, pretrained: bool = True, allow_download: bool = False):
        super().__init__()
        try:
            from transformers import AutoConfig
        except ImportError as exc:  # pragma: no cover - transformers is in the hf extra
            from sigma.errors import ConfigError
            raise ConfigError("DINOv2 backbones need transformers: pip install 'sigma-masks[hf]'") from exc
        self.resolved: ResolvedWeights | None = None
        if cfg.hf_config is not None:
            hf_config = hf_dinov2_config(cfg.hf_config)      # its size was checked with the whole SigmaNet's
        else:
            self.resolved = resolve_hf_reference(cfg.weights, allow_download=allow_download,
                                                 what="DINOv2 backbone")
            hf_config = from_pretrained_or_error(AutoConfig.from_pretrained,
                                                 self._config_location(self.resolved.location),
                                                 what="DINOv2 backbone config")
            check_dinov2(hf_config, cfg.weights)              # the weights' own config.json: checked before loading
        model_cls = _dinov2_classes(hf_config)
        if pretrained:
            if self.resolved is None:
                self.resolved = resolve_hf_reference(cfg.weights, allow_download=allow_download,
                                                     what="DINOv2 backbone")
            self.model = self._load(model_cls, hf_config, self.resolved.location)
        else:
            self.model = model_cls(hf_config)
        n_layers = hf_config.num_hidden_layers
        for tap in cfg.taps:
            if not 0 <= tap <= n_layers:
                from sigma.errors import ConfigError
                raise ConfigError(f"DINOv2 tap {tap} out of range: hidden_states has 0..{n_layers}")
        self.taps = list(cfg.taps)
        self.patch = hf_config.patch_size
        self.n_prefix = 1 + int(getattr(hf_config, "num_register_tokens", 0) or 0)
        self.channels = [hf_config.hidden_size] * len(self.taps)
        self.strides = [self.patch] * len(self.taps)
        self.frozen = cfg.frozen
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    @staticmethod
    def _config_location(location: str) -> str:
        """A folder is its own config; a bare .safetensors needs config.json (or X.json) beside it."""
        from pathlib import Path

        path = Path(location)
        if path.is_dir():
            return str(path)
        for candidate in (path.parent / "config.json", path.with_suffix(".json")):
            if candidate.is_file():
                return str(candidate)
        from sigma.errors import ConfigError
        raise ConfigError(f"{path}: a bare DINOv2 weights file needs its architecture: put config.json beside "
                          "it or set backbone.hf_config")

    @staticmethod
    def _load(model_cls, hf_config, location: str):
        """transformers' own loader (it maps legacy key names, e.g. attention.query → q_proj), made
        strict: any missing, unexpected or mis-shaped key is an error instead of a warning."""
        import tempfile
        from pathlib import Path

        from sigma.models.weights import WeightsMismatchError

        path = Path(location)
        with tempfile.TemporaryDirectory() as tmp:
            if path.is_file():   # a bare .safetensors: give it the architecture's config beside it
                folder = Path(tmp)
                (folder / "model.safetensors").symlink_to(path.resolve())
                hf_config.save_pretrained(folder)
            else:
                folder = path
            model, info = from_pretrained_or_error(model_cls.from_pretrained, str(folder), what="DINOv2 backbone",
                                                   where=str(path), dtype=torch.float32, output_loading_info=True)
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys",
                                                                  "mismatched_keys", "error_msgs")}
        if problems:
            detail = "; ".join(f"{k}: {', '.join(map(str, list(v)[:5]))}" for k, v in problems.items())
            raise WeightsMismatchError(f"DINOv2 backbone at {path}: weights do not match the architecture — "
                                       f"{detail}")
        return model

    def train(self, mode: bool = True) -> Dinov2Backbone:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = images.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"DINOv2 input {h}x{w} is not a multiple of the patch size {self.patch}")
        x = (images - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        gh, gw = h // self.patch, w // self.patch
        return [hidden[t][:, self.n_prefix:, :].transpose(1, 2).reshape(b, -1, gh, gw) for t in self.taps]


def build_backbone(cfg, *, pretrained: bool = True, allow_download: bool = False) -> Backbone:
    if isinstance(cfg, CompactBackboneConfig):
        return CompactBackbone(cfg)
    if isinstance(cfg, Dinov2BackboneConfig):
        return Dinov2Backbone(cfg, pretrained=pretrained, allow_download=allow_download)
    raise TypeError(f"unknown backbone config {type(cfg).__name__}")

"""Inference-only speed-up: fold every eval-mode BatchNorm into the convolution before it.

On 2 CPU cores BatchNorm is ~9 % of sigma-lite's time, all memory traffic; folded, it costs nothing.
The folded model has different keys (no `.1.running_mean` ...): never save it, save the original.
"""
from __future__ import annotations

import torch
from torch import nn

from sigma.models.backbones import ConvBNAct


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused = fused.to(device=conv.weight.device, dtype=conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """In place; the model must be in eval mode (training would need the batch statistics)."""
    if model.training:
        raise RuntimeError("fuse_batchnorm: call model.eval() first (folding uses the running statistics)")
    for module in model.modules():
        if isinstance(module, ConvBNAct) and isinstance(module[1], nn.BatchNorm2d):
            module[0] = _fold(module[0], module[1])
            module[1] = nn.Identity()
    return model

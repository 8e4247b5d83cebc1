"""Runners: one call `runner(original, edited, prior, edit_type, regions) -> logits` whatever runs the net.

Inputs are the annotator's tensors ([B,3,H,W] float in [0,1], prior [B,1,H,W], edit types as names or
ids, optional grounded regions); the output is float logits [B,1,H,W] on the annotator's device.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sigma.models.refine import edit_type_ids


class TorchRunner:
    """Eager torch: bf16 autocast on CUDA when asked; optionally channels-last on the CPU (NHWC
    convolutions are ~1.6x faster there with oneDNN)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, use_bf16: bool, channels_last: bool,
                 reason: str = ""):
        self.model = model
        self.reason = reason
        self.device = device
        self.use_bf16 = use_bf16
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def __call__(self, original: torch.Tensor, edited: torch.Tensor, prior: torch.Tensor, edit_type: Any,
                 regions: Any = None) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.use_bf16):
            out = self.model(self._layout(original), self._layout(edited), prior=self._layout(prior),
                             edit_type=edit_type, regions=regions)
        return out.logits.float().contiguous()

    def describe(self) -> dict[str, Any]:
        return {"runtime": "torch", "channels_last": self.channels_last,
                "precision": "bf16" if self.use_bf16 else "fp32", "reason": self.reason}


class OrtRunner:
    """ONNX Runtime (CPU execution provider) on the cached graph. Batches with grounded regions go to
    `fallback` (torch): the graph has no region inputs, and the grounded path's cost is the detector
    and segmenter, not this network."""

    name = "onnxruntime"

    def __init__(self, session, fallback: TorchRunner, graph_info: dict[str, Any]):
        self.session = session
        self.fallback = fallback
        self.graph_info = graph_info

    def __call__(self, original: torch.Tensor, edited: torch.Tensor, prior: torch.Tensor, edit_type: Any,
                 regions: Any = None) -> torch.Tensor:
        if regions is not None:
            return self.fallback(original, edited, prior, edit_type, regions)
        from sigma.runtime.ort_graph import run_session

        ids = edit_type_ids(edit_type, original.shape[0], torch.device("cpu"))
        logits = run_session(self.session, original.detach().cpu().numpy(), edited.detach().cpu().numpy(),
                             prior.detach().cpu().float().numpy(), ids.numpy())
        return torch.from_numpy(logits).to(original.device)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", **self.graph_info}

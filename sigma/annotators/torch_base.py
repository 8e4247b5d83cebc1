"""The base of every annotator that runs a torch network: device, precision, threads, batching by working size,
resizing in and upsampling out — written once, so `SigmaAnnotator` and `FeatureDiff` keep only what differs
(how a working size is chosen, what the network computes, how its score becomes a probability).

Per batch: each pair gets a working size; pairs of equal working size run together in chunks of
`batch_size` (bf16 autocast on CUDA with precision auto/bf16, fp32 on CPU); the network's score map is
resized bilinearly to each pair's original size and only then turned into a probability, so the
threshold acts on the same smooth surface at every resolution.
"""
from __future__ import annotations

import time
from abc import abstractmethod
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from sigma.annotators.base import Annotator, AnnotatorConfig, Prediction
from sigma.annotators.thread_room import import_torch_with_room, start_threads_with_room
from sigma.config.schema import MAX_BATCH_SIZE, MAX_THREADS
from sigma.models.device import pick_device
from sigma.types import Pair


class TorchAnnotatorConfig(AnnotatorConfig):
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA")
    cpu_threads: int | None = Field(None, ge=1, le=MAX_THREADS, description="intra-op threads of torch "
                                    "(process-wide) and ONNX Runtime; None = each library's default. On a CPU "
                                    "shared with other jobs 1 can be ~10x faster than 2: threads stall on each "
                                    "other at every op")
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, description="pairs per forward; None = the "
                                   "annotator's default for the device")


def resize_image(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing), bilinear when enlarging."""
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class TorchAnnotator(Annotator):
    """Subclasses implement `working_size`, `_forward` (and optionally `_prepare`, `_to_prob`, `_extra`)."""

    config_cls: ClassVar[type[AnnotatorConfig]] = TorchAnnotatorConfig
    default_batch_size: ClassVar[dict[str, int]] = {"cuda": 16, "cpu": 2}   # larger CPU batches add cache misses

    def __init__(self, config: AnnotatorConfig | None = None, **overrides: Any):
        """The config, then torch's threads, before a subclass loads anything: loading weights runs parallel ops, and
        under `ulimit -v` a thread started there could end the process (`start_threads_with_room`)."""
        super().__init__(config, **overrides)
        torch = import_torch_with_room()

        cpu_threads = getattr(self.config, "cpu_threads", None)
        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        start_threads_with_room(torch)

    def _setup_runtime(self) -> None:
        """Call once the network is built: picks the device, threads, precision and batch size."""
        import torch

        cfg: TorchAnnotatorConfig = self.config  # type: ignore[assignment]
        self.torch = torch
        self.device = pick_device(cfg.device)
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        self.use_bf16 = self.device.type == "cuda" and cfg.precision in ("auto", "bf16")
        self.batch_size = cfg.batch_size or self.default_batch_size.get(self.device.type, 2)

    # -- what subclasses say --------------------------------------------------------------------
    @abstractmethod
    def working_size(self, pair: Pair) -> tuple[int, int]:
        """(height, width) the network sees this pair at."""

    @abstractmethod
    def _forward(self, original, edited, pairs: list[Pair], contexts: list[Any]):
        """[B,3,h,w] float tensors in [0, 1] on the device → a [B,1,h',w'] score map (any resolution)."""

    def _prepare(self, pairs: list[Pair]) -> list[Any]:
        """Per-pair context computed once per batch (e.g. the instruction's guidance)."""
        return [None] * len(pairs)

    def _to_prob(self, score):
        """The upsampled score map → probabilities in [0, 1], in place (default: the score is a logit).
        In place matters: at 16 Mpx every full-resolution float map is 64 MB per pair."""
        return score.sigmoid_()

    def _extra(self, pair: Pair, context: Any, hw: tuple[int, int], model_ms: float) -> Prediction:
        return Prediction(np.empty(0), {"working_size": list(hw), "timings_ms": {"model": model_ms}})

    # -- the shared loop ------------------------------------------------------------------------
    def to_tensor(self, images: list[np.ndarray]):
        arr = np.stack(images).astype(np.float32) / 255.0
        return self.torch.from_numpy(arr).permute(0, 3, 1, 2).to(self.device)

    def _run_chunk(self, pairs: list[Pair], contexts: list[Any], hw: tuple[int, int]) -> list[np.ndarray]:
        torch = self.torch
        original = self.to_tensor([resize_image(p.original, hw) for p in pairs])
        edited = self.to_tensor([resize_image(p.edited, hw) for p in pairs])
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            score = self._forward(original, edited, pairs, contexts)
        with torch.inference_mode():
            score = score.float()
            probs = []
            for i, pair in enumerate(pairs):
                full = torch.nn.functional.interpolate(score[i:i + 1], size=pair.size, mode="bilinear",
                                                       align_corners=False)
                probs.append(self._to_prob(full)[0, 0].cpu().numpy())
        return probs

    def _predict_batch(self, pairs: list[Pair]) -> list[Prediction]:
        contexts = self._prepare(pairs)
        sizes = [self.working_size(p) for p in pairs]
        probs: list[np.ndarray | None] = [None] * len(pairs)
        model_ms = [0.0] * len(pairs)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(sizes):
            groups.setdefault(hw, []).append(i)
        for hw, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                t0 = time.perf_counter()
                out = self._run_chunk([pairs[i] for i in chunk], [contexts[i] for i in chunk], hw)
                per = (time.perf_counter() - t0) * 1000.0 / len(chunk)
                for i, prob in zip(chunk, out, strict=True):
                    probs[i], model_ms[i] = prob, per
        predictions = []
        for i, pair in enumerate(pairs):
            pred = self._extra(pair, contexts[i], sizes[i], model_ms[i])
            pred.prob = probs[i]
            predictions.append(pred)
        return predictions

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": str(self.device)}

"""The batched, device-aware predictor around a SigmaNet: `sigma-lite`, `sigma-b`, `sigma-s`.

Per batch: parse + ground each pair (when configured), resize to the working size, run the network in
batches of equal working size (bf16 autocast on CUDA, fp32 on CPU), resize logits bilinearly to each
original size, then the per-pair extras (parse, prior flag, confidence, intended/side-effect split).

Working size: sigma-lite keeps the aspect ratio (long side 512, both sides multiples of 32). The model is
trained on undistorted crops, so squashing a 2:1 photo into a square would halve every object's width
and show it shapes it never saw; keeping aspect costs only that pairs of different shapes batch apart.
The DINOv2 models use the paper's fixed 518x518 square.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from sigma.annotators.base import Annotator, AnnotatorConfig
from sigma.annotators.guidance import Guidance, Guide, normalised_regions
from sigma.annotators.mask_extras import confidence, split_components
from sigma.errors import ConfigError, WeightsNotFoundError
from sigma.registry import ANNOTATORS
from sigma.types import Pair

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


class ModelAnnotatorConfig(AnnotatorConfig):
    model: str | None = Field(None, description="model preset name; None = the annotator's own")
    weights: str | None = Field(None, description="trained SigmaNet: a save_model folder or X.safetensors "
                                "beside X.json; None = the weights embedded in the package")
    backbone_weights: str | None = Field(None, description="DINOv2 weights (local path or HF repo id) for "
                                         "random_init=true and for trained files saved without their frozen "
                                         "backbone")
    allow_download: bool = Field(False, description="let a missing backbone be downloaded from the Hub")
    random_init: bool = Field(False, description="explicit opt-in to random heads: tests and training only")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA")
    cpu_threads: int | None = Field(None, ge=1, description="intra-op threads of torch (process-wide) and "
                                    "ONNX Runtime; None = each library's default. On a CPU shared with other "
                                    "jobs 1 can be ~10x faster than 2: threads stall on each other at every op")
    runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="what runs the network: auto = ONNX Runtime on the CPU when installed and the "
        "model exports (graph built once, verified, cached; ~2x), torch otherwise and always on CUDA")
    channels_last: bool | None = Field(None, description="torch path: NHWC weights and inputs; None = on "
                                       "for the CPU (~1.6x), off on CUDA")
    fuse_batchnorm: bool = Field(True, description="fold BatchNorm into the convolutions (inference only)")
    batch_size: int | None = Field(None, ge=1, description="pairs per forward; None = 16 on CUDA, 2 on CPU "
                                   "(larger CPU batches only add cache misses)")
    image_size: int | None = Field(None, ge=28, description="working size override (long side)")
    upscale: bool = Field(False, description="enlarge pairs smaller than the working size (keep-aspect "
                          "models); off: small pairs run at their own size, rounded to the size multiple")
    parser: str | None = Field("rules", description="instruction parser backend; None = ignore instructions")
    grounding: str = Field("none", description="grounding backend; none = uninformative prior")
    grounding_options: dict[str, Any] = Field(default_factory=dict)
    intended_overlap: float = Field(0.1, ge=0.0, le=1.0, description="a mask component is intended when "
                                    "this fraction of it lies where the prior is >= 0.5")
    max_components: int = Field(64, ge=0)


def embedded_weights(preset: str) -> Path:
    return WEIGHTS_DIR / f"{preset}.safetensors"


def embedded_status(preset: str) -> str | None:
    path = embedded_weights(preset)
    if path.is_file() and path.with_suffix(".json").is_file():
        return f"embedded (sigma/weights/{path.name})"
    return None


def backbone_status(ref: str) -> str:
    from sigma.models.weights import resolve_hf_reference

    try:
        res = resolve_hf_reference(ref)
    except WeightsNotFoundError:
        return f"backbone {ref}: missing (not a local path, not in the Hugging Face cache)"
    except Exception as exc:  # noqa: BLE001 - a status line must never raise
        return f"backbone {ref}: unknown ({exc.__class__.__name__})"
    return f"backbone {ref}: found at {res.location}"


def pick_device(name: str):
    """auto → CUDA when present, else CPU; an explicit device that does not exist is a config error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available here; use device=auto or cpu")
    return device


def working_size(h: int, w: int, size: int, multiple: int, keep_aspect: bool, upscale: bool) -> tuple[int, int]:
    def snap(v: float) -> int:
        return max(multiple, round(v / multiple) * multiple)

    if not keep_aspect:
        return snap(size), snap(size)
    long_side = max(h, w)
    target = size if (upscale or long_side > size) else long_side
    scale = target / long_side
    return snap(h * scale), snap(w * scale)


def resize_image(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    shrink = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class SigmaAnnotator(Annotator):
    """Subclasses set `name` and `preset`; everything else is shared."""

    name: ClassVar[str] = "sigma"
    preset: ClassVar[str] = "sigma-lite"
    config_cls = ModelAnnotatorConfig

    def __init__(self, config: ModelAnnotatorConfig | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        import torch

        cfg: ModelAnnotatorConfig = self.config
        self.torch = torch
        self.model, self.weights_source = self._load_model(cfg)
        self.model.eval()
        if cfg.fuse_batchnorm:
            from sigma.models.fuse import fuse_batchnorm

            fuse_batchnorm(self.model)
        self.device = pick_device(cfg.device)
        if cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)
        self.model.to(self.device)
        self.use_bf16 = self.device.type == "cuda" and cfg.precision in ("auto", "bf16")
        self.batch_size = cfg.batch_size or (16 if self.device.type == "cuda" else 2)
        mcfg = self.model.config
        self.size = cfg.image_size or mcfg.image_size
        self.multiple = mcfg.size_multiple
        self.keep_aspect = mcfg.keep_aspect
        self.guide = Guide(cfg.parser, cfg.grounding, cfg.grounding_options)
        from sigma.runtime import RuntimeOptions, build_runner

        self.runner = build_runner(
            self.model, RuntimeOptions(cfg.runtime, cfg.channels_last, cfg.cpu_threads), device=self.device,
            use_bf16=self.use_bf16, trained=not self.weights_source.startswith("random_init"),
            label=cfg.model or self.preset,
            working=None if self.keep_aspect else working_size(self.size, self.size, self.size, self.multiple,
                                                               False, cfg.upscale))

    def _load_model(self, cfg: ModelAnnotatorConfig):
        """Trained weights: explicit path > embedded file; random heads only with random_init=true."""
        from sigma.models import build_model, load_model, preset_config

        preset = cfg.model or self.preset
        looked = []
        def load(path):   # a heads-only file resolves its frozen backbone (backbone_weights > its config)
            return load_model(path, allow_download=cfg.allow_download, backbone_weights=cfg.backbone_weights)

        if cfg.weights:
            return load(cfg.weights), f"file {cfg.weights}"
        looked.append("options.weights (not set)")
        embedded = embedded_weights(preset)
        if embedded_status(preset):
            return load(embedded), f"embedded {embedded.name}"
        looked.append(f"embedded {embedded} + {embedded.with_suffix('.json').name} (not in this install)")
        if cfg.random_init:
            mcfg = preset_config(preset)
            if cfg.backbone_weights and getattr(mcfg.backbone, "kind", "") == "dinov2":
                mcfg = mcfg.model_copy(update={"backbone": mcfg.backbone.model_copy(
                    update={"weights": cfg.backbone_weights, "hf_config": None})})
            model = build_model(mcfg, pretrained=bool(cfg.backbone_weights), allow_download=cfg.allow_download)
            return model, "random_init (explicit opt-in)"
        raise WeightsNotFoundError(
            f"{self.name}: no trained weights for model {preset!r}. Looked at: " + "; ".join(looked) + ". "
            "Pass --set options.weights=PATH (a folder written by sigma.models.save_model, or X.safetensors "
            "beside X.json), train one (see docs/training.md), or use another annotator (`sigma models`).")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": self.weights_source, "device": str(self.device),
                "runtime": self.runner.describe()}

    def _to_tensor(self, images: list[np.ndarray]):
        arr = np.stack(images).astype(np.float32) / 255.0
        return self.torch.from_numpy(arr).permute(0, 3, 1, 2).to(self.device)

    def _run(self, pairs: list[Pair], guides: list[Guidance], hw: tuple[int, int]):
        torch = self.torch
        orig = self._to_tensor([resize_image(p.original, hw) for p in pairs])
        edit = self._to_tensor([resize_image(p.edited, hw) for p in pairs])
        prior = torch.from_numpy(np.stack([resize_image(g.prior, hw) for g in guides]))[:, None].to(self.device)
        edit_types = [g.edit_type for g in guides]
        regions = [normalised_regions(g.regions, p.size) for p, g in zip(pairs, guides)]
        regions = regions if any(regions) else None
        logits = self.runner(orig, edit, prior, edit_types, regions)     # torch or ONNX Runtime (sigma.runtime)
        probs = []
        for i, pair in enumerate(pairs):
            full = torch.nn.functional.interpolate(logits[i:i + 1], size=pair.size, mode="bilinear",
                                                   align_corners=False)
            probs.append(torch.sigmoid(full)[0, 0].cpu().numpy())
        return probs

    def _predict_batch(self, pairs: list[Pair]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        cfg: ModelAnnotatorConfig = self.config
        guides = self.guide(pairs)
        sizes = [working_size(*p.size, self.size, self.multiple, self.keep_aspect, cfg.upscale) for p in pairs]
        probs: list[np.ndarray | None] = [None] * len(pairs)
        model_ms = [0.0] * len(pairs)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(sizes):
            groups.setdefault(hw, []).append(i)
        for hw, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                t0 = time.perf_counter()
                for i, p in zip(chunk, self._run([pairs[i] for i in chunk], [guides[i] for i in chunk], hw)):
                    probs[i] = p
                per = (time.perf_counter() - t0) * 1000.0 / len(chunk)
                for i in chunk:
                    model_ms[i] = per
        results = []
        for i, (pair, g) in enumerate(zip(pairs, guides)):
            prob = probs[i]
            mask = prob > self.threshold
            extra = {
                **g.extra,
                "confidence": confidence(prob, mask, self.threshold),
                "components": split_components(mask, g.prior, g.informative, min_overlap=cfg.intended_overlap,
                                               max_components=cfg.max_components),
                "working_size": list(sizes[i]),
                "timings_ms": {**g.timings_ms, "model": model_ms[i]},
            }
            results.append((prob, extra))
        return results


class SigmaLite(SigmaAnnotator):
    name: ClassVar[str] = "sigma-lite"
    preset: ClassVar[str] = "sigma-lite"


class SigmaB(SigmaAnnotator):
    name: ClassVar[str] = "sigma-b"
    preset: ClassVar[str] = "sigma-b"


class SigmaS(SigmaAnnotator):
    name: ClassVar[str] = "sigma-s"
    preset: ClassVar[str] = "sigma-s"


def _lite_status() -> str:
    return embedded_status("sigma-lite") or (
        "missing: sigma/weights/sigma-lite.safetensors (+ .json) is not in this install; pass "
        "options.weights=PATH or train it (docs/training.md)")


def _dinov2_status(preset: str, backbone: str) -> Callable[[], str]:
    def status() -> str:
        found = embedded_status(preset)
        if found:
            return found
        return (f"missing: no trained {preset} weights (looked in sigma/weights/{preset}.safetensors; pass "
                f"options.weights=PATH); {backbone_status(backbone)}")
    return status


@ANNOTATORS.register("sigma-lite", "SIGMA heads on a compact CNN trained from scratch, 512 px, CPU-fast; "
                     "the embedded default", _lite_status)
def build_sigma_lite(**overrides: Any) -> SigmaLite:
    return SigmaLite(**overrides)


@ANNOTATORS.register("sigma-b", "SIGMA on frozen DINOv2-B/14 at 518 px (the paper's model)",
                     _dinov2_status("sigma-b", "facebook/dinov2-base"))
def build_sigma_b(**overrides: Any) -> SigmaB:
    return SigmaB(**overrides)


@ANNOTATORS.register("sigma-s", "SIGMA on frozen DINOv2-S/14 at 518 px",
                     _dinov2_status("sigma-s", "facebook/dinov2-small"))
def build_sigma_s(**overrides: Any) -> SigmaS:
    return SigmaS(**overrides)

"""Boxes -> masks. Each image is encoded once; all of its boxes go through the mask decoder together.

Backends: transformers `Sam2Model` (default), filled boxes (no segmenter), and an adapter for the
native facebookresearch `sam2` package (optional; imported only when asked for).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from sigma.errors import ConfigError, WeightsNotFoundError
from sigma.grounding.config import SegmenterConfig
from sigma.grounding.registry import SEGMENTERS
from sigma.models.device import pick_device, pick_dtype
from sigma.models.weights import resolve_local, strict_from_pretrained

# SAM 2's image normalisation (ImageNet statistics), as in its own image processor
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class Segmenter(ABC):
    @abstractmethod
    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """images: uint8 [H, W, 3]; boxes: float [N, 4] xyxy pixels per image.
        Returns per image float32 [N, H, W] masks in [0, 1]."""


class BoxSegmenter(Segmenter):
    """Filled boxes: the coarsest mask, for a detector-only prior and for machines without SAM."""

    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for img, bxs in zip(images, boxes, strict=True):
            h, w = img.shape[:2]
            masks = np.zeros((len(bxs), h, w), np.float32)
            for k, (x0, y0, x1, y1) in enumerate(np.asarray(bxs, dtype=np.float64).reshape(-1, 4)):
                masks[k, int(np.floor(max(y0, 0))):int(np.ceil(min(y1, h))),
                      int(np.floor(max(x0, 0))):int(np.ceil(min(x1, w)))] = 1.0
            out.append(masks)
        return out


class Sam2Segmenter(Segmenter):
    """transformers `Sam2Model`. Pre/post-processing is done here in torch (resize to the model's
    square input, ImageNet normalisation, box scaling, logits upsampled to the image) because
    transformers' `Sam2ImageProcessor` requires torchvision, which we keep out of the install."""

    def __init__(self, config: SegmenterConfig | None = None, *, model: Any = None, device: str | None = None,
                 dtype: str = "auto", allow_download: bool = False):
        from transformers import Sam2Model

        self.config = config or SegmenterConfig()
        self.device = pick_device(device)
        if model is None:
            folder = resolve_local(self.config.weights, what="SAM 2 weights", allow_download=allow_download,
                                   hint="Download facebook/sam2.1-hiera-tiny into the HF cache on a connected "
                                        "machine or pass a local save_pretrained folder as segmenter.weights.")
            model = strict_from_pretrained(Sam2Model, folder, what="SAM 2")
        self.dtype = pick_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        size = self.model.config.vision_config.backbone_config.image_size
        self.input_size = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))

    def _pixels(self, images: list[np.ndarray]):
        import torch
        import torch.nn.functional as F

        batch = []
        for img in images:
            t = torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
            t = F.interpolate(t, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
            batch.append(t)
        x = torch.cat(batch)
        mean = torch.tensor(_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(_STD, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        out: list[np.ndarray | None] = [None] * len(images)
        todo = [i for i, b in enumerate(boxes) if len(b)]
        for i, img in enumerate(images):
            if not len(boxes[i]):
                out[i] = np.zeros((0, *img.shape[:2]), np.float32)
        sh, sw = self.input_size
        use_autocast = self.device.type == "cuda" and self.dtype != torch.float32
        for start in range(0, len(todo), self.config.batch_size):
            chunk = todo[start:start + self.config.batch_size]
            with torch.inference_mode(), torch.autocast("cuda", dtype=self.dtype, enabled=use_autocast):
                embeddings = self.model.get_image_embeddings(self._pixels([images[i] for i in chunk]))
                for row, i in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    bxs = torch.as_tensor(np.asarray(boxes[i], np.float32).reshape(-1, 4), device=self.device)
                    scale = torch.tensor([sw / w, sh / h, sw / w, sh / h], device=self.device)
                    result = self.model(image_embeddings=[e[row:row + 1] for e in embeddings],
                                        input_boxes=(bxs * scale)[None], multimask_output=False)
                    logits = result.pred_masks[0, :, 0:1].float()           # [N, 1, h', w']
                    probs = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear",
                                                        align_corners=False))[:, 0]
                    out[i] = self._finish(probs.cpu().numpy())
        return out  # type: ignore[return-value]

    def _finish(self, probs: np.ndarray) -> np.ndarray:
        if self.config.mask_threshold is not None:
            return (probs > self.config.mask_threshold).astype(np.float32)
        return probs.astype(np.float32)


class NativeSam2Segmenter(Segmenter):
    """Adapter for the facebookresearch `sam2` package and its `.pt` checkpoints.

    Optional: `sam2` is not a dependency (it imports torchvision; build it with SAM2_BUILD_CUDA=0 and
    the torch constraint, see docs/parsing-grounding.md). Imported only when this class is built.
    """

    def __init__(self, config: SegmenterConfig | None = None, *, device: str | None = None,
                 predictor: Any = None):
        self.config = config or SegmenterConfig(kind="native-sam2")
        self.device = pick_device(device)
        if predictor is None:
            try:
                from sam2.build_sam import build_sam2
                from sam2.sam2_image_predictor import SAM2ImagePredictor
            except Exception as exc:   # ImportError, or torchvision failing inside sam2's imports
                raise ConfigError(
                    "segmenter.kind=native-sam2 needs the `sam2` package (facebookresearch/sam2), which "
                    f"is not importable here ({exc.__class__.__name__}: {exc}). Install it with "
                    "SAM2_BUILD_CUDA=0 pip install sam2, or use segmenter.kind=sam2 (transformers).",
                    code="missing_dependency") from exc
            from pathlib import Path

            if self.config.weights.startswith("hf:"):     # else read as the relative path hf:/owner/name
                raise WeightsNotFoundError(f"native SAM 2 checkpoint {self.config.weights!r}: the native package "
                                           "reads a .pt file at a local path only, not a Hugging Face hub id")
            ckpt = Path(self.config.weights).expanduser()
            if not ckpt.is_file():
                raise WeightsNotFoundError(f"native SAM 2 checkpoint {str(ckpt)!r} not found (looked at that "
                                           "path only; the native package reads .pt files, not the HF cache)")
            predictor = SAM2ImagePredictor(build_sam2(self.config.native_config, str(ckpt), device=self.device))
        self.predictor = predictor

    def segment(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        out = []
        with torch.inference_mode():
            for img, bxs in zip(images, boxes, strict=True):
                if not len(bxs):
                    out.append(np.zeros((0, *img.shape[:2]), np.float32))
                    continue
                self.predictor.set_image(img)                      # encoded once per image
                masks, _, _ = self.predictor.predict(box=np.asarray(bxs, np.float32).reshape(-1, 4),
                                                     multimask_output=False, return_logits=True)
                masks = np.asarray(masks, np.float32).reshape(len(bxs), -1, *img.shape[:2])[:, 0]
                probs = 1.0 / (1.0 + np.exp(-masks))
                out.append(probs if self.config.mask_threshold is None
                           else (probs > self.config.mask_threshold).astype(np.float32))
        return out


@SEGMENTERS.register("sam2", "transformers Sam2Model (facebook/sam2.1-hiera-*), strict local loading")
def _build_sam2(config: SegmenterConfig, *, device: str | None = None, dtype: str = "auto",
                allow_download: bool = False) -> Segmenter:
    return Sam2Segmenter(config, device=device, dtype=dtype, allow_download=allow_download)


@SEGMENTERS.register("box", "filled boxes: no segmenter")
def _build_box(config: SegmenterConfig, **_: Any) -> Segmenter:
    return BoxSegmenter()


@SEGMENTERS.register("native-sam2", "the facebookresearch `sam2` package (optional, not installed by default)")
def _build_native(config: SegmenterConfig, *, device: str | None = None, **_: Any) -> Segmenter:
    return NativeSam2Segmenter(config, device=device)


def build_segmenter(config: SegmenterConfig, *, device: str | None = None, dtype: str = "auto",
                    allow_download: bool = False) -> Segmenter:
    return SEGMENTERS.get(config.kind).factory(config, device=device, dtype=dtype, allow_download=allow_download)

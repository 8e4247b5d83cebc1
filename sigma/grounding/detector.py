"""Open-vocabulary detection: find a named concept in an image.

We use transformers' `GroundingDinoForObjectDetection`, which loads the IDEA-Research Grounding DINO
checkpoints. The `groundingdino-py` package cannot serve here: it fetches `bert-base-uncased` from
the hub by name (fails offline) and breaks on transformers 5 (see docs/parsing-grounding.md).
"""
from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from sigma.grounding.config import DetectorConfig
from sigma.grounding.types import Detection
from sigma.models.device import pick_device, pick_dtype
from sigma.models.weights import resolve_local, strict_from_pretrained


class Detector(ABC):
    """images: uint8 [H, W, 3]; one concept per image; boxes come back in that image's pixels."""

    @abstractmethod
    def detect(self, images: list[np.ndarray], concepts: list[str]) -> list[list[Detection]]:
        ...


def concept_prompt(concept: str) -> str:
    """Grounding DINO's prompt form: lowercase phrases, each ended by ' .'; a compound concept
    ("table and flower vase") becomes two phrases so either can be found."""
    parts = [p.strip() for p in re.split(r"\s+(?:and|&)\s+|,", concept.lower()) if p.strip()]
    return " . ".join(parts or [concept.lower().strip()]) + " ."


class GroundingDinoDetector(Detector):
    def __init__(self, config: DetectorConfig | None = None, *, model: Any = None, processor: Any = None,
                 device: str | None = None, dtype: str = "auto", allow_download: bool = False):
        import torch  # noqa: F401
        from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

        self.config = config or DetectorConfig()
        self.device = pick_device(device)
        if model is None or processor is None:
            folder = resolve_local(self.config.weights, what="Grounding DINO weights", allow_download=allow_download,
                                   hint="Download IDEA-Research/grounding-dino-tiny into the HF cache on a "
                                        "connected machine (huggingface-cli download IDEA-Research/grounding-"
                                        "dino-tiny) or pass a local save_pretrained folder as detector.weights.")
            model = strict_from_pretrained(GroundingDinoForObjectDetection, folder, what="Grounding DINO")
            processor = GroundingDinoProcessor.from_pretrained(folder, local_files_only=True)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        if self.config.image_size is not None:
            ip = self.processor.image_processor
            ip.size = {"shortest_edge": self.config.image_size,
                       "longest_edge": max(self.config.image_size, int(self.config.image_size * 1333 / 800))}

    def detect(self, images: list[np.ndarray], concepts: list[str]) -> list[list[Detection]]:
        out: list[list[Detection]] = []
        bs = self.config.batch_size
        for start in range(0, len(images), bs):
            out.extend(self._detect_batch(images[start:start + bs], concepts[start:start + bs]))
        return out

    def _detect_batch(self, images: list[np.ndarray], concepts: list[str]) -> list[list[Detection]]:
        import torch

        if not images:
            return []
        prompts = [concept_prompt(c) for c in concepts]
        inputs = self.processor(images=list(images), text=prompts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        autocast = torch.autocast("cuda", dtype=self.dtype) if self.device.type == "cuda" and \
            self.dtype != torch.float32 else _nullcontext()
        with torch.inference_mode(), autocast:
            outputs = self.model(**inputs)
        outputs.logits = outputs.logits.float()
        outputs.pred_boxes = outputs.pred_boxes.float()
        results = self.processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.config.box_threshold,
            text_threshold=self.config.text_threshold, target_sizes=[img.shape[:2] for img in images])
        found: list[list[Detection]] = []
        for img, concept, res in zip(images, concepts, results, strict=True):
            h, w = img.shape[:2]
            scores = res["scores"].detach().float().cpu().numpy()
            boxes = res["boxes"].detach().float().cpu().numpy()
            order = np.argsort(-scores)[: self.config.max_detections]
            dets = []
            for i in order:
                x0, y0, x1, y1 = boxes[i].tolist()
                x0, x1 = sorted((min(max(x0, 0.0), w), min(max(x1, 0.0), w)))
                y0, y1 = sorted((min(max(y0, 0.0), h), min(max(y1, 0.0), h)))
                if x1 - x0 < 1 or y1 - y0 < 1:
                    continue
                dets.append(Detection((x0, y0, x1, y1), float(scores[i]), concept))
            found.append(dets)
        return found


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

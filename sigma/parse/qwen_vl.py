"""`qwen-vl` parser backend: Qwen2.5-VL through transformers, shown both images with the text.

Inputs are built here from the tokenizer's chat template and the PIL image processor
(`Qwen2VLImageProcessorPil`): transformers' `Qwen2_5_VLProcessor` insists on a video processor,
which needs torchvision, and we keep torchvision out of the install. `qwen-vl-utils` is optional
(`use_qwen_vl_utils=True` routes the images through its `process_vision_info` resizing); it imports
torchvision at module level, so it is imported only then.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sigma.parse.llm import EXAMPLES, PREFILL, SYSTEM_PROMPT, _AnswerDone, parse_answer
from sigma.parse.registry import register_parser
from sigma.parse.rules import parse_rules
from sigma.parse.types import ParsedInstruction

DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
IMAGE_PAD = "<|image_pad|>"


def _to_pil(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)))
    if isinstance(image, (str, Path)):
        return Image.open(image).convert("RGB")
    raise TypeError(f"qwen-vl: images must be PIL, uint8 [H, W, 3] arrays or paths, got {type(image)}")


class QwenVLParser:
    def __init__(self, model: Any = DEFAULT_MODEL, tokenizer: Any = None, image_processor: Any = None,
                 max_new_tokens: int = 96, device: str | None = None, allow_download: bool = False,
                 use_qwen_vl_utils: bool = False):
        import torch
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

        from sigma.models.device import pick_device, pick_dtype
        from sigma.models.weights import from_pretrained_or_error, resolve_local, strict_from_pretrained

        self.device = pick_device(device)
        if isinstance(model, (str, Path)):
            folder = resolve_local(str(model), what="qwen-vl parser model", allow_download=allow_download,
                                   hint=f"Put {DEFAULT_MODEL} (or another Qwen2.5-VL instruct model) in the HF "
                                        "cache or pass model=<local save_pretrained folder>.")
            dtype = pick_dtype("auto", self.device)
            model = strict_from_pretrained(Qwen2_5_VLForConditionalGeneration, folder, what="Qwen2.5-VL",
                                           dtype=dtype)
            tokenizer = tokenizer or from_pretrained_or_error(AutoTokenizer.from_pretrained, folder, what="Qwen2.5-VL")
            image_processor = image_processor or from_pretrained_or_error(
                Qwen2VLImageProcessorPil.from_pretrained, folder, what="Qwen2.5-VL")
        if tokenizer is None or image_processor is None:
            raise ValueError("QwenVLParser: a model object needs its tokenizer and image processor")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_new_tokens = max_new_tokens
        self.use_qwen_vl_utils = use_qwen_vl_utils
        self.merge = int(getattr(self.model.config.vision_config, "spatial_merge_size", 2))
        self._torch = torch

    def messages(self, instruction: str, n_images: int) -> list[dict]:
        msgs: list[dict] = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
        for question, answer in EXAMPLES:
            msgs += [{"role": "user", "content": [{"type": "text", "text": question}]},
                     {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        content: list[dict] = []
        if n_images:
            content += [{"type": "text", "text": "Original image:"}, {"type": "image"},
                        {"type": "text", "text": "Edited image:"}, {"type": "image"}]
        content.append({"type": "text", "text": f"Instruction: {instruction}"})
        msgs.append({"role": "user", "content": content})
        return msgs

    def _images(self, images) -> list:
        pil = [_to_pil(im) for im in images]
        if self.use_qwen_vl_utils:
            from qwen_vl_utils import process_vision_info  # imports torchvision: only on request

            pil, _ = process_vision_info([{"role": "user", "content": [{"type": "image", "image": im}
                                                                        for im in pil]}])
        return pil

    def inputs(self, instruction: str, images=None) -> dict:
        images = list(images) if images is not None else []
        if images and len(images) != 2:
            raise ValueError("qwen-vl: pass images=(original, edited)")
        text = self.tokenizer.apply_chat_template(self.messages(instruction, len(images)), tokenize=False,
                                                  add_generation_prompt=True)
        text += PREFILL
        extra: dict = {}
        if images:
            vision = self.image_processor(images=self._images(images), return_tensors="pt")
            counts = [int(g.prod()) // (self.merge ** 2) for g in vision["image_grid_thw"]]
            parts = text.split(IMAGE_PAD)
            if len(parts) != len(counts) + 1:
                raise ValueError(f"qwen-vl: chat template produced {len(parts) - 1} image slots "
                                 f"for {len(counts)} images")
            text = parts[0] + "".join(IMAGE_PAD * n + rest for n, rest in zip(counts, parts[1:]))
            extra = {"pixel_values": vision["pixel_values"].to(self.device, self.model.dtype),
                     "image_grid_thw": vision["image_grid_thw"].to(self.device)}
        enc = self.tokenizer([text], return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device),
                "attention_mask": enc["attention_mask"].to(self.device), **extra}

    def generate(self, instruction: str, images=None) -> str:
        enc = self.inputs(instruction, images)
        with self._torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                stopping_criteria=[_AnswerDone(self.tokenizer, enc["input_ids"].shape[1], PREFILL)])
        return PREFILL + self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def __call__(self, text: str | None, images=None, **_: Any) -> ParsedInstruction:
        if text is None or not any(c.isalnum() for c in text):
            return parse_rules(text).model_copy(update={"backend": "qwen-vl"})
        return parse_answer(self.generate(text, images), text, backend="qwen-vl")


def _status() -> str:
    from sigma.errors import WeightsNotFoundError
    from sigma.models.weights import resolve_local

    try:
        return f"found at {resolve_local(DEFAULT_MODEL, what='qwen-vl')}"
    except WeightsNotFoundError:
        return f"missing: {DEFAULT_MODEL} is not in the HF cache (pass model=<folder>)"
    except Exception as exc:  # noqa: BLE001 - a status line must never raise
        return f"missing: {exc.__class__.__name__}"


@register_parser("qwen-vl", "Qwen2.5-VL (transformers) reads the instruction and both images; falls back to "
                            "rules on invalid output", weights_status=_status)
def build_qwen_vl_parser(**options: Any) -> QwenVLParser:
    return QwenVLParser(**options)

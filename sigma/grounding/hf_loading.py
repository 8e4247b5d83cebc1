"""Load a transformers model from a resolved local folder, strictly.

`from_pretrained` silently re-initialises weights it did not find; we ask it for its loading info
and refuse a partial load, so a wrong checkpoint can never pass for a detector.
"""
from __future__ import annotations

from typing import Any

from sigma.errors import WeightsNotFoundError


def resolve_local(ref: str, *, what: str, allow_download: bool = False, hint: str = "") -> str:
    """A local path or HF repo id -> a local folder (local dir > HF cache with local_files_only >
    download only when allowed); WeightsNotFoundError names every place looked."""
    from sigma.models.weights import resolve_hf_reference

    return resolve_hf_reference(ref, allow_download=allow_download, what=what, hint=hint).location


def strict_from_pretrained(model_cls: Any, folder: str, *, what: str, **kwargs: Any):
    model, info = model_cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, **kwargs)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if problems:
        from sigma.models.weights import WeightsMismatchError

        detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise WeightsMismatchError(f"{what} at {folder}: checkpoint does not match the architecture — {detail}")
    return model.eval()


def require_transformers(what: str):
    try:
        import transformers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the hf extra is part of dev installs
        raise WeightsNotFoundError(f"{what} needs transformers: pip install 'sigma-masks[hf]'") from exc


def pick_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]

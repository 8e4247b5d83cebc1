"""Whole-image perturbations of the edited image that are never labelled.

They imitate what an editor does to every pixel besides the edit: VAE re-encoding (served from the cache,
see `engine.py`), JPEG at a random quality, resampling chains, gamma / white-balance drift, sensor-like
noise, blur, and a 0–2 px shift. Parameters are drawn first (`sample`) and applied by a pure function
(`apply`) so the same chain can be applied to the edited image and to the unedited base (for the
noise-regression target of the disentanglement loss).
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_INTERP = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_LANCZOS4, cv2.INTER_NEAREST)


class PerturbConfig(BaseModel):
    """Probabilities of each perturbation (independent; a chain may apply several)."""

    model_config = ConfigDict(extra="forbid")
    vae: float = Field(0.5, ge=0, le=1, description="TAEF2 roundtrip (cached, random scale)")
    jpeg: float = Field(0.35, ge=0, le=1)
    jpeg_quality: tuple[int, int] = (40, 95)
    resample: float = Field(0.2, ge=0, le=1)
    color: float = Field(0.3, ge=0, le=1)
    noise: float = Field(0.15, ge=0, le=1)
    blur: float = Field(0.1, ge=0, le=1)
    shift: float = Field(0.1, ge=0, le=1)


def sample(rng: np.random.Generator, cfg: PerturbConfig) -> list[tuple[str, dict[str, Any]]]:
    chain: list[tuple[str, dict[str, Any]]] = []
    if rng.random() < cfg.resample:
        steps = [(float(rng.uniform(0.45, 0.9)), int(rng.integers(len(_INTERP))), int(rng.integers(len(_INTERP))))
                 for _ in range(int(rng.integers(1, 3)))]
        chain.append(("resample", {"steps": steps}))
    if rng.random() < cfg.blur:
        chain.append(("blur", {"sigma": float(rng.uniform(0.3, 1.2))}))
    if rng.random() < cfg.color:
        chain.append(("color", {"gamma": float(rng.uniform(0.85, 1.15)),
                                "gains": rng.uniform(0.93, 1.07, 3).tolist(),
                                "offset": float(rng.uniform(-8, 8))}))
    if rng.random() < cfg.noise:
        chain.append(("noise", {"std": float(rng.uniform(1.0, 6.0)), "seed": int(rng.integers(1 << 30))}))
    if rng.random() < cfg.shift:
        chain.append(("shift", {"dx": float(rng.uniform(-2, 2)), "dy": float(rng.uniform(-2, 2))}))
    if rng.random() < cfg.jpeg:
        chain.append(("jpeg", {"quality": int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))}))
    return chain


def apply(img: np.ndarray, chain: list[tuple[str, dict[str, Any]]]) -> np.ndarray:
    h, w = img.shape[:2]
    for name, p in chain:
        if name == "resample":
            for f, i1, i2 in p["steps"]:
                small = cv2.resize(img, (max(8, round(w * f)), max(8, round(h * f))), interpolation=_INTERP[i1])
                img = cv2.resize(small, (w, h), interpolation=_INTERP[i2] if _INTERP[i2] != cv2.INTER_AREA
                                 else cv2.INTER_LINEAR)
        elif name == "blur":
            img = cv2.GaussianBlur(img, (0, 0), p["sigma"])
        elif name == "color":
            x = np.power(img.astype(np.float32) / 255.0, p["gamma"]) * np.asarray(p["gains"], np.float32)
            img = np.clip(x * 255.0 + p["offset"] + 0.5, 0, 255).astype(np.uint8)
        elif name == "noise":
            n = np.random.default_rng(p["seed"]).normal(0, p["std"], img.shape).astype(np.float32)
            img = np.clip(img.astype(np.float32) + n + 0.5, 0, 255).astype(np.uint8)
        elif name == "shift":
            m = np.float32([[1, 0, p["dx"]], [0, 1, p["dy"]]])
            img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        elif name == "jpeg":
            ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, p["quality"]])
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
    return img

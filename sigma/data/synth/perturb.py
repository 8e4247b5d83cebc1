"""Whole-image perturbations of the edited image that are never labelled.

Two families (the primitives live in `sigma.data.perturb`, shared with `sigma eval`):

- *regenerators*: what an editor does to every pixel besides the edit: VAE re-encoding (served from the
  cache, see `engine.py`), JPEG / WebP at random qualities, chroma subsampling, resampling chains with
  different kernels, texture re-rendering (denoise + sharpen, posterise + dither, noise + median), gamma /
  white-balance drift, sensor-like noise, blur, a 0–2 px shift. `mode: stack` draws 1–3 of them (weighted)
  in a random order, so no single artefact signature is learned; `mode: independent` (the original
  recipe) draws each with its own probability.
- *illumination / season change* (`illum`): global colour transfer towards another photo, smooth local
  relighting, cast-shadow-like soft darkening, haze — what a second photograph of the same scene looks
  like; applied to the edited image *before* the regenerators, unlabelled, so the model learns that
  bi-temporal lighting is not an edit while the structural edit under it stays labelled.

Parameters are drawn first (`sample`) and applied by a pure function (`apply`), so the same chain can be
applied to the edited image and to the unedited base (the noise-regression target of Stage II).
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from sigma.config.schema import Strict
from sigma.data import perturb as K

Chain = list[tuple[str, dict[str, Any]]]
REGENERATORS = ("resample", "blur", "color", "noise", "shift", "jpeg", "webp", "chroma", "texture", "dither",
                "median")
CODECS = ("jpeg", "webp")   # in stack mode a codec always comes last, as an encoder's output would


class IllumConfig(Strict):
    """Unlabelled illumination / season change of the edited image (bi-temporal pairs)."""

    p: float = Field(0.0, ge=0, le=1, description="probability for an ordinary photo")
    aerial_p: float = Field(0.0, ge=0, le=1, description="probability for an aerial tile (set by the engine)")
    transfer: float = Field(0.6, ge=0, le=1, description="colour transfer towards another photo")
    relight: float = Field(0.5, ge=0, le=1)
    shadow: float = Field(0.35, ge=0, le=1)
    haze: float = Field(0.25, ge=0, le=1)
    season: float = Field(0.3, ge=0, le=1, description="vegetation hue/saturation shift")


class PerturbConfig(Strict):
    """Probabilities (independent mode) or weights (stack mode) of each regenerator."""

    mode: Literal["independent", "stack"] = "independent"
    stack_p: float = Field(0.85, ge=0, le=1, description="stack mode: probability of any regenerator")
    stack: tuple[int, int] = Field((1, 3), description="stack mode: how many regenerators (inclusive)")
    vae: float = Field(0.5, ge=0, le=1, description="TAEF2 roundtrip (cached, random scale)")
    vae_online: float = Field(0.0, ge=0, le=1, description=(
        "share of the VAE pairs whose roundtrip is run after the edit, on the edited crop, as a regenerator "
        "does (the edit's own pixels and borders go through the VAE too); ~0.5 s per 224 px crop on one "
        "thread, in the data worker"))
    jpeg: float = Field(0.35, ge=0, le=1)
    jpeg_quality: tuple[int, int] = (40, 95)
    webp: float = Field(0.0, ge=0, le=1)
    webp_quality: tuple[int, int] = (30, 95)
    chroma: float = Field(0.0, ge=0, le=1, description="chroma subsampling (2x or 4x)")
    resample: float = Field(0.2, ge=0, le=1)
    color: float = Field(0.3, ge=0, le=1)
    noise: float = Field(0.15, ge=0, le=1)
    blur: float = Field(0.1, ge=0, le=1)
    shift: float = Field(0.1, ge=0, le=1)
    texture: float = Field(0.0, ge=0, le=1, description="denoise + sharpen re-rendering")
    dither: float = Field(0.0, ge=0, le=1, description="posterise + dither re-rendering")
    median: float = Field(0.0, ge=0, le=1, description="noise + median re-rendering")
    illum: IllumConfig = Field(default_factory=IllumConfig)

    @model_validator(mode="after")
    def _ranges(self) -> PerturbConfig:
        """Integer ranges the sampler draws from, checked at load (a reversed `stack` raised inside a
        training run's data worker; a JPEG quality of 0 or 300 means nothing)."""
        for name, (lo, hi), top in (("stack", self.stack, 16), ("jpeg_quality", self.jpeg_quality, 100),
                                    ("webp_quality", self.webp_quality, 100)):
            if not (1 <= lo <= hi <= top):
                raise ValueError(f"perturb.{name} must be (low, high) with 1 <= low <= high <= {top}, "
                                 f"got ({lo}, {hi})")
        return self


def _params(name: str, rng: np.random.Generator, cfg: PerturbConfig) -> dict[str, Any]:
    if name == "resample":
        n = len(K.INTERPOLATIONS)
        return {"steps": [(float(rng.uniform(0.45, 0.9)), int(rng.integers(n)), int(rng.integers(n)))
                          for _ in range(int(rng.integers(1, 3)))]}
    if name == "blur":
        return {"sigma": float(rng.uniform(0.3, 1.2))}
    if name == "color":
        return {"gamma": float(rng.uniform(0.85, 1.15)), "gains": rng.uniform(0.93, 1.07, 3).tolist(),
                "offset": float(rng.uniform(-8, 8))}
    if name == "noise":
        return {"std": float(rng.uniform(1.0, 6.0)), "seed": int(rng.integers(1 << 30))}
    if name == "shift":
        return {"dx": float(rng.uniform(-2, 2)), "dy": float(rng.uniform(-2, 2))}
    if name == "jpeg":
        return {"quality": int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)),
                "subsampling": int(rng.choice([0, 1, 2], p=[0.2, 0.2, 0.6]))}
    if name == "webp":
        return {"quality": int(rng.integers(cfg.webp_quality[0], cfg.webp_quality[1] + 1))}
    if name == "chroma":
        return {"factor": int(rng.choice([2, 4], p=[0.7, 0.3])), "down": int(rng.integers(4)),
                "up": int(rng.choice([0, 1, 3, 4]))}
    if name == "texture":
        return {"strength": float(rng.uniform(15, 60)), "amount": float(rng.uniform(0.3, 1.5)),
                "radius": float(rng.uniform(0.7, 2.0))}
    if name == "dither":
        return {"levels": int(rng.integers(12, 40)), "seed": int(rng.integers(1 << 30)),
                "ordered": bool(rng.random() < 0.5)}
    if name == "median":
        return {"k": int(rng.choice([3, 5])), "noise": float(rng.uniform(0, 6)), "seed": int(rng.integers(1 << 30))}
    raise ValueError(name)


def with_donor(params: dict[str, Any], donor: np.ndarray) -> dict[str, Any]:
    """Fill a colour transfer's target statistics from the photo it moves towards."""
    if "mean" in params:
        return params
    mean, std = K.lab_stats(donor)
    return {**params, "mean": mean, "std": std}


def sample_illum(rng: np.random.Generator, cfg: IllumConfig, p: float,
                 donor: np.ndarray | None = None) -> Chain:
    """An illumination / season change with probability `p` (at least one component when drawn). The
    colour transfer's target statistics come from `donor`; drawn without one, they are filled in later
    (`with_donor`)."""
    if p <= 0 or rng.random() >= p:
        return []
    chain: Chain = []
    while not chain:
        if rng.random() < cfg.transfer:
            step = {"strength": float(rng.uniform(0.3, 0.9))}
            chain.append(("transfer", with_donor(step, donor) if donor is not None else step))
        if rng.random() < cfg.relight:
            chain.append(("relight", {"amplitude": float(rng.uniform(0.08, 0.35)), "seed": int(rng.integers(1 << 30)),
                                      "cells": int(rng.integers(2, 5))}))
        if rng.random() < cfg.shadow:
            chain.append(("shadow", {"darkness": float(rng.uniform(0.15, 0.5)), "seed": int(rng.integers(1 << 30))}))
        if rng.random() < cfg.haze:
            grey = float(rng.uniform(170, 250))
            chain.append(("haze", {"amount": float(rng.uniform(0.08, 0.35)), "seed": int(rng.integers(1 << 30)),
                                   "airlight": (grey + rng.uniform(-12, 12, 3)).tolist()}))
        if rng.random() < cfg.season:
            chain.append(("season", {"hue_shift": float(rng.uniform(-45, 25)), "sat_gain": float(rng.uniform(0.5, 1.4)),
                                     "seed": int(rng.integers(1 << 30))}))
        if cfg.transfer == cfg.relight == cfg.shadow == cfg.haze == cfg.season == 0:
            break
    return chain


def sample(rng: np.random.Generator, cfg: PerturbConfig) -> Chain:
    """The regenerator chain (VAE excluded: the engine serves it from the cache)."""
    if cfg.mode == "independent":
        order = ("resample", "blur", "color", "noise", "shift", "texture", "dither", "median", "chroma", "jpeg", "webp")
        return [(n, _params(n, rng, cfg)) for n in order if rng.random() < getattr(cfg, n)]
    names = [n for n in REGENERATORS if getattr(cfg, n) > 0]
    if not names or rng.random() >= cfg.stack_p:
        return []
    w = np.array([getattr(cfg, n) for n in names], np.float64)
    k = min(len(names), int(rng.integers(cfg.stack[0], cfg.stack[1] + 1)))
    picked = [names[i] for i in rng.choice(len(names), size=k, replace=False, p=w / w.sum())]
    rng.shuffle(picked)
    picked = [n for n in picked if n not in CODECS] + [n for n in picked if n in CODECS]
    return [(n, _params(n, rng, cfg)) for n in picked]


def apply(img: np.ndarray, chain: Chain) -> np.ndarray:
    for name, p in chain:
        if name == "resample":
            for f, i1, i2 in p["steps"]:
                img = K.resample(img, f, i1, i2)
        elif name == "blur":
            img = K.blur(img, p["sigma"])
        elif name == "color":
            img = K.color_drift(img, p["gamma"], p["gains"], p["offset"])
        elif name == "noise":
            img = K.gaussian_noise(img, p["std"], p["seed"])
        elif name == "shift":
            img = K.shift(img, p["dx"], p["dy"])
        elif name == "jpeg":
            img = K.jpeg(img, p["quality"], p.get("subsampling"))
        elif name == "webp":
            img = K.webp(img, p["quality"])
        elif name == "chroma":
            img = K.chroma_subsample(img, p["factor"], p["down"], p["up"])
        elif name == "texture":
            img = K.denoise_sharpen(img, p["strength"], p["amount"], p["radius"])
        elif name == "dither":
            img = K.posterize_dither(img, p["levels"], p["seed"], p["ordered"])
        elif name == "median":
            img = K.median_rerender(img, p["k"], p["noise"], p["seed"])
        elif name == "transfer":
            img = K.color_transfer(img, p["mean"], p["std"], p["strength"])
        elif name == "relight":
            img = K.relight(img, p["amplitude"], p["seed"], p["cells"])
        elif name == "shadow":
            img = K.soft_shadow(img, p["darkness"], p["seed"])
        elif name == "haze":
            img = K.haze(img, p["amount"], p["airlight"], p["seed"])
        elif name == "season":
            img = K.season_shift(img, p["hue_shift"], p["sat_gain"], p["seed"])
        else:
            raise ValueError(f"unknown perturbation {name!r}")
    return img

"""The synthetic-edit engine: a pair (original, edited, mask) from (seed, index), deterministically.

Recipe (METHOD §6 Stage I, §9 for what worked): a random crop of a real photo; an edit of one kind inside
a random object-like mask (remove / splice (add, replace, copy-move) / attribute / global / latent edit /
no edit); then a chain of whole-image perturbations of the edited image that are never labelled (VAE
roundtrip at several scales, JPEG, resampling chains, colour drift, noise, blur, shift).

Labelling policy: the mask is the region the edit was confined to; no-edit pairs are labelled empty
(whatever perturbation they carry); `global` edits are labelled by `global_label` ("full" = the whole image
changed semantically, the default; "empty" = treat a global restyle as a perturbation).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sigma.errors import InputError

from . import edits as E
from . import perturb as P
from .cache import list_photos, load_photo
from .masks import random_mask

KINDS = ("none", "remove", "splice", "attribute", "global", "latent")


class SynthConfig(BaseModel):
    """Everything that shapes the generated distribution; saved with every run."""

    model_config = ConfigDict(extra="forbid")
    photos: str = Field("", description="photo folder (used when no cache is given)")
    cache: str = Field("", description="folder built by build_cache (index.json + .npz per photo)")
    crop: int = Field(192, ge=32)
    scale_range: tuple[float, float] = (0.75, 1.33)
    mix: dict[str, float] = Field(default_factory=lambda: {
        "none": 0.06, "remove": 0.16, "splice": 0.25, "attribute": 0.15, "global": 0.02, "latent": 0.36})
    shapes: dict[str, float] = Field(default_factory=lambda: {
        "blob": 3.0, "ellipse": 1.5, "polygon": 1.5, "brush": 1.5, "rectangle": 0.7, "superpixels": 1.0,
        "thin": 0.3})
    area_range: tuple[float, float] = (0.005, 0.6)
    multi_p: float = Field(0.15, ge=0, le=1)
    latent_whole_p: float = Field(0.5, ge=0, le=1, description="latent edit decoded whole vs composited back")
    global_label: Literal["full", "empty"] = "full"
    min_change: float = Field(4.0, ge=0, description="mean |Δ| (0–255) an edit must make inside its mask")
    perturb: P.PerturbConfig = Field(default_factory=P.PerturbConfig)
    noise_blur: float = Field(4.0, ge=0, description="σ (px) of the low-pass on the noise-regression target")


@dataclass
class SynthSample:
    original: np.ndarray        # uint8 [H,W,3]
    edited: np.ndarray          # uint8 [H,W,3]
    mask: np.ndarray            # bool [H,W]
    kind: str                   # one of KINDS
    edit_type: str | None       # pairs.jsonl vocabulary: add|remove|replace|attribute|global|None
    noise: np.ndarray           # float32 [H,W]: low-passed |perturbed base − original| / 255
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def noise_only(self) -> bool:
        return not self.mask.any()


class PhotoBank:
    """Aligned per-photo arrays: `img`, `rt<scale>` (VAE roundtrips), `lat<k>`/`latmask<k>` (latent edits)."""

    def __init__(self, cache: str | Path | None = None, photos: str | Path | None = None, max_side: int = 384):
        self.cache = Path(cache) if cache else None
        if self.cache is not None:
            idx = self.cache / "index.json"
            if not idx.is_file():
                raise InputError(f"{self.cache}: not a synth cache (no index.json); build it with "
                                 "`sigma synth --build-cache`", code="file_not_found")
            self.files = [self.cache / f["file"] for f in json.loads(idx.read_text())["files"]]
            self.files = [f for f in self.files if f.is_file()]
            if len(self.files) < 2:
                raise InputError(f"{self.cache}: fewer than 2 cached photos", code="no_photos")
        elif photos:
            self.files = list_photos(photos)
        else:
            raise InputError("no photos: give a photo folder or a synth cache", code="no_photos")
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.files)

    def get(self, i: int) -> dict[str, np.ndarray]:
        return _load_entry(str(self.files[i]), self.cache is not None, self.max_side)


@lru_cache(maxsize=64)
def _load_entry(path: str, cached: bool, max_side: int) -> dict[str, np.ndarray]:
    if cached:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    return {"img": load_photo(Path(path), max_side)}


def _window(rng: np.random.Generator, h: int, w: int, crop: int, scale_range: tuple[float, float]):
    size = int(round(crop * rng.uniform(*scale_range)))
    size = max(8, min(size, h, w))
    return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size


def _crop(arr: np.ndarray, win, crop: int, is_mask: bool = False) -> np.ndarray:
    y, x, s = win
    a = arr[y:y + s, x:x + s]
    if s == crop:
        return np.ascontiguousarray(a)
    interp = cv2.INTER_AREA if s > crop else cv2.INTER_LINEAR
    return cv2.resize(a, (crop, crop), interpolation=cv2.INTER_LINEAR if is_mask else interp)


class SynthEngine:
    def __init__(self, cfg: SynthConfig, seed: int = 0, bank: PhotoBank | None = None):
        self.cfg = cfg
        self.seed = int(seed)
        self.bank = bank or PhotoBank(cfg.cache or None, cfg.photos or None)
        kinds = [k for k in KINDS if cfg.mix.get(k, 0) > 0]
        unknown = set(cfg.mix) - set(KINDS)
        if unknown:
            raise InputError(f"synth mix has unknown kinds {sorted(unknown)}; choose from {KINDS}",
                             code="invalid_config")
        self.kinds = kinds
        p = np.array([cfg.mix[k] for k in kinds], np.float64)
        self.kind_p = p / p.sum()

    def sample(self, index: int) -> SynthSample:
        rng = np.random.default_rng([self.seed, int(index)])
        cfg = self.cfg
        n = len(self.bank)
        pi = int(rng.integers(n))
        qi = (pi + 1 + int(rng.integers(n - 1))) % n
        ent, dent = self.bank.get(pi), self.bank.get(qi)
        h, w = ent["img"].shape[:2]
        win = _window(rng, h, w, cfg.crop, cfg.scale_range)
        dh, dw = dent["img"].shape[:2]
        dwin = _window(rng, dh, dw, win[2] if win[2] <= min(dh, dw) else min(dh, dw), (1.0, 1.0))
        c = cfg.crop
        orig = _crop(ent["img"], win, c)
        rts = sorted(k for k in ent if k.startswith("rt"))
        lats = sorted(k for k in ent if k.startswith("lat") and not k.startswith("latmask"))
        kind = str(self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))])
        if kind == "latent" and not lats:
            kind = "splice"
        use_vae = bool(rts) and rng.random() < cfg.perturb.vae
        rt_key = str(rng.choice(rts)) if use_vae else None
        base = _crop(ent[rt_key], win, c) if rt_key else orig
        donor_full = dent[rt_key] if rt_key and rt_key in dent else dent["img"]
        donor = _crop(donor_full, (dwin[0], dwin[1], dwin[2]), c)
        meta: dict[str, Any] = {"photo": pi, "donor": qi, "vae": rt_key}

        edit_type: str | None
        shape = ""
        for attempt in range(4):
            if kind == "none":
                mask = np.zeros((c, c), bool)
                edited, edit_type = base, None
                break
            if kind == "global":
                params = E.sample_global(rng, c, c)
                edited = E.apply_global(base, donor, np.ones((c, c), bool), params)
                mask = np.full((c, c), cfg.global_label == "full")
                edit_type, shape = "global", "full"
                meta["params"] = params
                break
            if kind == "latent":
                k = str(rng.choice(lats))
                lat = _crop(ent[k], win, c)
                mask = _crop(ent["latmask" + k[3:]], win, c, is_mask=True) > 127
                whole = rng.random() < cfg.latent_whole_p
                edited = lat if whole else E.blend(base, lat, E.feather(mask, float(rng.uniform(0.5, 3))))
                edit_type, shape = "replace", "latent"
                meta["latent"] = {"key": k, "whole": bool(whole)}
                if not whole:
                    base_for_check = base
                else:
                    base_for_check = _crop(ent["rt100"], win, c) if "rt100" in ent else base
                if mask.sum() >= 16 and _change(base_for_check, edited, mask) >= cfg.min_change:
                    break
                kind = "splice"  # latent region fell outside the crop or changed nothing: use a splice
                continue
            mask, shape = random_mask(rng, c, c, cfg.shapes, tuple(cfg.area_range), cfg.multi_p, image=orig)
            params = E.SAMPLERS[kind](rng, c, c)
            edited = E.APPLIERS[kind](base, donor, mask, params)
            meta["params"] = params
            edit_type = {"remove": "remove", "attribute": "attribute"}.get(kind) or (
                "add" if params.get("copy_move") or rng.random() < 0.5 else "replace")
            if _change(base, edited, mask) >= cfg.min_change:
                break
            if attempt == 2:
                kind = "splice"
        meta["kind"], meta["shape"] = kind, shape

        chain = P.sample(rng, cfg.perturb)
        meta["perturb"] = [name for name, _ in chain] + ([f"vae:{rt_key}"] if rt_key else [])
        edited = P.apply(edited, chain)
        clean_base = _crop(ent["rt100"], win, c) if (kind == "latent" and meta["latent"]["whole"]
                                                    and "rt100" in ent) else base
        pert_base = P.apply(clean_base, chain) if chain else clean_base
        noise = np.abs(pert_base.astype(np.float32) - orig.astype(np.float32)).mean(2) / 255.0
        if cfg.noise_blur > 0:
            noise = cv2.GaussianBlur(noise, (0, 0), cfg.noise_blur)
        if rng.random() < 0.5:
            orig, edited, mask, noise = orig[:, ::-1], edited[:, ::-1], mask[:, ::-1], noise[:, ::-1]
        return SynthSample(np.ascontiguousarray(orig), np.ascontiguousarray(edited), np.ascontiguousarray(mask),
                           kind, edit_type, np.ascontiguousarray(noise, dtype=np.float32), meta)


def _change(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if not mask.any():
        return 0.0
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(2)[mask].mean())
